import { createHash } from 'node:crypto';
import { createClient, createCluster, type RedisClientOptions } from '@keyv/redis';
import { CacheError, ConfigError, type TokenCache } from '@wxkit/core';
import { Connection, type RedisClientLike } from './connection.js';

export type { RedisClientLike } from './connection.js';

/** Options of {@link RedisCache}. */
export interface RedisCacheOptions {
  /**
   * `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. A user name selects an ACL user;
   * the path selects the database.
   */
  url?: string;
  /** Redis Cluster root nodes, as URLs (`redis://user:pass@10.0.0.1:7000`). Every wxkit command uses one key, so any slot layout works. */
  cluster?: string[];
  /** An existing node-redis client or cluster. wxkit neither configures nor closes it. */
  client?: RedisClientLike;
  /**
   * How long the first connection may take, in ms. A store that is down answers with a CacheError after
   * this long, and wxkit's clients serve the token they hold meanwhile.
   * @default 1000
   */
  connectTimeoutMs?: number;
  /** More node-redis client options (TLS `socket.ca`, `pingInterval`…), merged over wxkit's. */
  clientOptions?: RedisClientOptions;
}

const DEFAULTS = Object.freeze({ connectTimeoutMs: 1000 });

// Each script reads and writes one key, so it runs on Redis Cluster too, on the node that owns it.
const COMPARE_AND_DELETE = script("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end");
// GET of an absent key is false in Lua, never equal to a string: an absent key is never created.
const COMPARE_AND_SET = script(
  "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end",
);

/**
 * A TokenCache on Redis, through node-redis as @keyv/redis ships it: raw keys and values
 * (`redis-cli GET wechat:…` prints the documented value), `add` as `SET NX PX`, `deleteIfEquals` and
 * `compareAndSet` as one-key Lua scripts. Standalone servers, ACL users, databases, TLS and Redis Cluster.
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
    const opts = normalize(options);
    const connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
    if (typeof connectTimeoutMs !== 'number' || !Number.isFinite(connectTimeoutMs) || connectTimeoutMs <= 0) {
      throw invalid('connectTimeoutMs', 'a number > 0', connectTimeoutMs);
    }
    // A command sent while the connection is down fails at once instead of waiting in node-redis's
    // offline queue, where it would run late, after the outage, over whatever was written meanwhile.
    const common: RedisClientOptions = {
      disableOfflineQueue: true,
      socket: { connectTimeout: connectTimeoutMs, reconnectStrategy: (attempt: number) => Math.min(100 * 2 ** attempt, 2000) },
    };
    const merge = (extra: RedisClientOptions = {}): RedisClientOptions => ({
      ...common,
      ...extra,
      socket: { ...common.socket, ...extra.socket } as RedisClientOptions['socket'],
    });
    let source: RedisClientLike | (() => RedisClientLike);
    if (opts.client) {
      source = opts.client;
      this.#where = 'the given Redis client';
    } else if (opts.cluster) {
      // Root nodes serve only to discover the cluster, through a client of their own that node-redis
      // never ends if a node accepts and never answers: a socket timeout ends its handshake.
      const rootNodes = opts.cluster.map((url) => ({ url, socket: { socketTimeout: connectTimeoutMs } }));
      source = () => createCluster({ rootNodes, defaults: merge(opts.clientOptions) }) as RedisClientLike;
      this.#where = `Redis Cluster ${opts.cluster.map(maskUrl).join(',')}`;
    } else {
      source = () => createClient(merge({ ...opts.clientOptions, url: opts.url })) as RedisClientLike;
      this.#where = maskUrl(opts.url!);
    }
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

function normalize(options: unknown): RedisCacheOptions {
  if (typeof options === 'string') return { url: checkUrl(options) };
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(`RedisCache options must be a redis:// URL, an options object or a node-redis client (got ${typeName(options)})`, 'options');
  }
  if (typeof (options as { connect?: unknown }).connect === 'function') return { client: options as RedisClientLike };
  const opts = options as RedisCacheOptions;
  const sources = [opts.url !== undefined, opts.cluster !== undefined, opts.client !== undefined].filter(Boolean).length;
  if (sources !== 1) throw new ConfigError('RedisCache options must have exactly one of url, cluster or client', 'url');
  if (opts.url !== undefined) checkUrl(opts.url);
  if (opts.cluster !== undefined) {
    if (!Array.isArray(opts.cluster) || opts.cluster.length === 0) throw invalid('cluster', 'a non-empty array of redis:// URLs', opts.cluster);
    opts.cluster.forEach((url) => checkUrl(url, 'cluster'));
  }
  if (opts.client !== undefined && typeof (opts.client as { connect?: unknown }).connect !== 'function') {
    throw invalid('client', 'a node-redis client or cluster', opts.client);
  }
  return opts;
}

function checkUrl(url: unknown, option = 'url'): string {
  let parsed: URL | undefined;
  try {
    parsed = typeof url === 'string' ? new URL(url) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!parsed || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') || !parsed.hostname) {
    // Never echo the URL: it may hold a password.
    throw invalid(option, 'a redis:// or rediss:// URL such as redis://user:password@host:6379/0', url);
  }
  if (parsed.pathname.length > 1 && !/^\/\d+$/.test(parsed.pathname)) {
    throw new ConfigError(`RedisCache options.${option} path must be a database number such as /0 (got ${maskUrl(String(url))})`, option);
  }
  return url as string;
}

/** `redis://user:secret@host` → `redis://user:***@host`: URLs in messages never show a password. */
export function maskUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}

function typeName(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
}

function invalid(name: string, rule: string, value: unknown): ConfigError {
  return new ConfigError(`RedisCache options.${name} must be ${rule} (got ${typeName(value)})`, name);
}
