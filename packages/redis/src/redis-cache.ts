import { createHash } from 'node:crypto';
import { CacheError, type TokenCache } from '@wxkit/core';
import { Connection, type RedisClientLike } from './connection.js';
import { resolveOptions, type RedisCacheOptions } from './options.js';

export type { RedisClientLike } from './connection.js';
export type { RedisCacheOptions, RedisCacheSentinelOptions } from './options.js';

/** Options of {@link RedisCache}: exactly one of `url`, `cluster`, `sentinel` or `client`. */

// Each script reads and writes one key, so it runs on Redis Cluster too, on the node that owns it.
const COMPARE_AND_DELETE = script("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end");
// GET of an absent key is false in Lua, never equal to a string: an absent key is never created.
const COMPARE_AND_SET = script(
  "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end",
);

/**
 * A TokenCache on Redis, through node-redis as @keyv/redis ships it: raw keys and values
 * (`redis-cli GET wechat:…` prints the documented value), `add` as `SET NX PX`, `deleteIfEquals` and
 * `compareAndSet` as one-key Lua scripts. Standalone servers, ACL users, databases, TLS, Redis Cluster
 * and Redis Sentinel.
 *
 * @example
 * ```ts
 * app.setCache(new RedisCache('redis://:password@10.0.0.5:6379/0'));
 * ```
 */
export class RedisCache implements TokenCache {
  readonly #connection: Connection;
  /** The URL or node list with passwords masked, for messages. */
  readonly #where: string;
  #closed = false;

  constructor(options: string | RedisCacheOptions | RedisClientLike) {
    const { source, where, connectTimeoutMs } = resolveOptions(options);
    this.#where = where;
    this.#connection = new Connection(source, connectTimeoutMs);
  }

  get(key: string): Promise<string | undefined> {
    return this.#run('get', async (client) => {
      // Bulk strings as Buffers, not UTF-8 text: an igbinary entry is binary, and node-redis's default
      // decoding would turn each byte that is not UTF-8 into U+FFFD.
      const value = (await asBytes(client).get(key)) as Buffer | null;
      return value === null ? undefined : value.toString('latin1');
    });
  }

  set(key: string, value: string, ttlSeconds: number): Promise<void> {
    return this.#run('set', async (client) => {
      await client.set(key, binary(value), { expiration: { type: 'PX', value: ttlMs(ttlSeconds) } });
    });
  }

  delete(key: string): Promise<void> {
    return this.#run('delete', async (client) => {
      await client.del(key);
    });
  }

  add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    return this.#run('add', async (client) => {
      const reply = await client.set(key, binary(value), { condition: 'NX', expiration: { type: 'PX', value: ttlMs(ttlSeconds) } });
      return reply === 'OK';
    });
  }

  deleteIfEquals(key: string, expected: string): Promise<boolean> {
    return this.#run('deleteIfEquals', async (client) => (await evalScript(client, COMPARE_AND_DELETE, key, [binary(expected)])) === 1);
  }

  compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    return this.#run(
      'compareAndSet',
      async (client) => (await evalScript(client, COMPARE_AND_SET, key, [binary(expected), binary(value), String(ttlMs(ttlSeconds))])) === 1,
    );
  }

  ttlMs(key: string): Promise<number | undefined> {
    return this.#run('ttlMs', async (client) => {
      // PTTL: -2 when absent, -1 when the key has no expiry (not one wxkit wrote).
      const pttl = Number(await client.pTTL(key));
      return pttl === -2 ? undefined : pttl === -1 ? Number.POSITIVE_INFINITY : pttl;
    });
  }

  /** Closes the connection it opened, or is opening; a client passed in stays open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#connection.close();
  }

  async #run<T>(op: string, fn: (client: RedisClientLike) => Promise<T>): Promise<T> {
    if (this.#closed) throw new CacheError(`RedisCache ${op} after close() (${this.#where})`);
    try {
      return await fn(await this.#connection.client());
    } catch (error) {
      throw new CacheError(`RedisCache ${op} failed on ${this.#where}`, { cause: error });
    }
  }
}

// RESP_TYPES.BLOB_STRING of node-redis (`$`), which @keyv/redis does not re-export.
const BLOB_STRING = 36;

/** The client, answering bulk strings as Buffers. */
function asBytes(client: RedisClientLike): RedisClientLike {
  return (client as unknown as { withTypeMapping(mapping: Record<number, unknown>): RedisClientLike }).withTypeMapping({ [BLOB_STRING]: Buffer });
}

/**
 * The bytes of a value: TokenCache values are binary strings, one character per byte (see TokenCache).
 * node-redis would send a string as UTF-8, turning each byte 0x80–0xff into two.
 */
function binary(value: string): Buffer {
  if (/[^\x00-\xff]/.test(value)) {
    throw new RangeError('RedisCache values are binary strings (char codes 0–255, one per byte); encode text as UTF-8 first');
  }
  return Buffer.from(value, 'latin1');
}

/** EVALSHA, and EVAL when the server does not hold the script yet (first use, a restart, another cluster node). */
async function evalScript(client: RedisClientLike, lua: Script, key: string, args: (string | Buffer)[]): Promise<unknown> {
  const options = { keys: [key], arguments: args };
  try {
    return await client.evalSha(lua.sha, options);
  } catch (error) {
    if (!String((error as Error).message).startsWith('NOSCRIPT')) throw error;
    return await client.eval(lua.source, options);
  }
}

interface Script {
  source: string;
  sha: string;
}

function script(source: string): Script {
  return { source, sha: createHash('sha1').update(source).digest('hex') };
}

function ttlMs(ttlSeconds: number): number {
  if (typeof ttlSeconds !== 'number' || !Number.isFinite(ttlSeconds) || ttlSeconds <= 0) {
    throw new RangeError(`RedisCache ttlSeconds must be a finite number > 0 (got ${String(ttlSeconds)})`);
  }
  return Math.max(1, Math.round(ttlSeconds * 1000));
}
