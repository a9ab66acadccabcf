import { createHash } from 'node:crypto';
import type { RedisClientOptions } from '@keyv/redis';
import { CacheError, type TokenCache } from '@wxkit/core';
import { Connection, type RedisClientLike } from './connection.js';
import { resolveOptions } from './options.js';

export type { RedisClientLike } from './connection.js';

/** Options of {@link RedisCache}: exactly one of `url`, `cluster`, `sentinel` or `client`. */
export interface RedisCacheOptions {
  /**
   * `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. A user name selects an ACL user;
   * the path selects the database.
   */
  url?: string;
  /** Redis Cluster root nodes, as URLs (`redis://user:pass@10.0.0.1:7000`). Every wxkit command uses one key, so any slot layout works. */
  cluster?: string[];
  /**
   * A primary and its replicas behind Redis Sentinel: commands go to whichever node the Sentinels name
   * as master, and follow it through a failover.
   */
  sentinel?: RedisCacheSentinelOptions;
  /** An existing node-redis client, cluster or sentinel. wxkit neither configures nor closes it. */
  client?: RedisClientLike;
  /**
   * How long the first connection may take, in ms. A store that is down answers with a CacheError after
   * this long, and wxkit's clients serve the token they hold meanwhile.
   * @default 1000
   */
  connectTimeoutMs?: number;
  /**
   * More node-redis client options (TLS `socket.ca`, `pingInterval`…), merged over wxkit's. With
   * `sentinel`, they apply to the primary and replicas, not to the Sentinels.
   */
  clientOptions?: RedisClientOptions;
}

/** Options of {@link RedisCacheOptions.sentinel}. */
export interface RedisCacheSentinelOptions {
  /**
   * The Sentinels to ask, as URLs: `redis://[user:password@]host:26379`. A user and password here are
   * the Sentinels' own (Sentinel's `requirepass`), the same in every URL.
   */
  sentinels: string[];
  /** The name the Sentinels monitor the primary under (`sentinel monitor <name> …` in sentinel.conf). */
  masterName: string;
  /** ACL user on the primary and replicas. */
  username?: string;
  /** Password on the primary and replicas (their `requirepass`, or the ACL user's). Never shown in messages. */
  password?: string;
  /**
   * Database number on the primary and replicas.
   * @default 0
   */
  database?: number;
}

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
    return this.#run('get', async (client) => (await client.get(key)) ?? undefined);
  }

  set(key: string, value: string, ttlSeconds: number): Promise<void> {
    return this.#run('set', async (client) => {
      await client.set(key, value, { expiration: { type: 'PX', value: ttlMs(ttlSeconds) } });
    });
  }

  delete(key: string): Promise<void> {
    return this.#run('delete', async (client) => {
      await client.del(key);
    });
  }

  add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    return this.#run('add', async (client) => {
      const reply = await client.set(key, value, { condition: 'NX', expiration: { type: 'PX', value: ttlMs(ttlSeconds) } });
      return reply === 'OK';
    });
  }

  deleteIfEquals(key: string, expected: string): Promise<boolean> {
    return this.#run('deleteIfEquals', async (client) => (await evalScript(client, COMPARE_AND_DELETE, key, [expected])) === 1);
  }

  compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    return this.#run(
      'compareAndSet',
      async (client) => (await evalScript(client, COMPARE_AND_SET, key, [expected, value, String(ttlMs(ttlSeconds))])) === 1,
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

/** EVALSHA, and EVAL when the server does not hold the script yet (first use, a restart, another cluster node). */
async function evalScript(client: RedisClientLike, lua: Script, key: string, args: string[]): Promise<unknown> {
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
