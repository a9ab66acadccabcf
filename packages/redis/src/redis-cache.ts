import { createHash } from 'node:crypto';
import KeyvRedis, { type RedisClientOptions, type RedisClientType, type RedisClusterType } from '@keyv/redis';
import { CacheError, ConfigError, type TokenCache } from '@wxkit/core';

/** A node-redis client or cluster, e.g. from `createClient()` / `createCluster()` of @keyv/redis. */
export type RedisClientLike = RedisClientType | RedisClusterType;

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
 * A TokenCache on Redis, built on @keyv/redis: raw keys and values (`redis-cli GET wechat:…` prints the
 * documented value), `add` as `SET NX PX`, `deleteIfEquals` and `compareAndSet` as one-key Lua scripts.
 * Standalone servers, ACL users, databases, TLS and Redis Cluster.
 *
 * @example
 * ```ts
 * app.setCache(new RedisCache('redis://:password@10.0.0.5:6379/0'));
 * ```
 */
export class RedisCache implements TokenCache {
  readonly #store: KeyvRedis<string>;
  readonly #owned: boolean;
  /** The URL or node list with passwords masked, for messages. */
  readonly #where: string;
  #closed = false;
  #connecting: Promise<unknown> | undefined;
  #connected = false;

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
    let connect: ConstructorParameters<typeof KeyvRedis>[0];
    if (opts.client) {
      connect = opts.client as never;
      this.#where = 'the given Redis client';
    } else if (opts.cluster) {
      connect = { rootNodes: opts.cluster.map((url) => ({ url })), defaults: merge(opts.clientOptions) } as never;
      this.#where = `Redis Cluster ${opts.cluster.map(maskUrl).join(',')}`;
    } else {
      connect = merge({ ...opts.clientOptions, url: opts.url });
      this.#where = maskUrl(opts.url!);
    }
    this.#owned = !opts.client;
    this.#store = new KeyvRedis<string>(connect, {
      throwOnErrors: true,
      throwOnConnectError: true,
      connectionTimeout: connectTimeoutMs,
      useUnlink: false,
    });
    // node-redis reports every failed reconnect as an 'error' event; the calls that fail carry the news.
    this.#store.on('error', () => undefined);
  }

  get(key: string): Promise<string | undefined> {
    return this.#run('get', async () => (await this.#store.get(key)) ?? undefined);
  }

  set(key: string, value: string, ttlSeconds: number): Promise<void> {
    return this.#run('set', () => this.#store.set(key, value, ttlMs(ttlSeconds)).then(() => undefined));
  }

  delete(key: string): Promise<void> {
    return this.#run('delete', () => this.#store.delete(key).then(() => undefined));
  }

  add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    return this.#run('add', async () => {
      const client = this.#store.client;
      const reply = await client.set(key, value, { condition: 'NX', expiration: { type: 'PX', value: ttlMs(ttlSeconds) } });
      return reply === 'OK';
    });
  }

  deleteIfEquals(key: string, expected: string): Promise<boolean> {
    return this.#run('deleteIfEquals', async () => (await this.#eval(COMPARE_AND_DELETE, key, [expected])) === 1);
  }

  compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    return this.#run('compareAndSet', async () => (await this.#eval(COMPARE_AND_SET, key, [expected, value, String(ttlMs(ttlSeconds))])) === 1);
  }

  ttlMs(key: string): Promise<number | undefined> {
    return this.#run('ttlMs', async () => {
      // PTTL: -2 when absent, -1 when the key has no expiry (not one wxkit wrote).
      const pttl = Number(await this.#store.client.pTTL(key));
      return pttl === -2 ? undefined : pttl === -1 ? Number.POSITIVE_INFINITY : pttl;
    });
  }

  /** Closes the connection it opened; a client passed in stays open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#owned) await this.#store.disconnect(true).catch(() => undefined);
  }

  /**
   * Connects once, shared by concurrent first calls: @keyv/redis hands out its client as soon as the
   * socket opens, before it is ready, and a command sent then fails. A failed attempt is retried by the
   * next call; once connected, node-redis reconnects on its own after an outage.
   */
  async #connect(): Promise<void> {
    if (this.#connected && this.#store.client.isOpen) return;
    this.#connecting ??= this.#store.getClient().then(
      () => {
        this.#connected = true;
        this.#connecting = undefined;
      },
      (error: unknown) => {
        this.#connecting = undefined;
        throw error;
      },
    );
    await this.#connecting;
  }

  /** EVALSHA, and EVAL when the server does not hold the script yet (first use, a restart, another cluster node). */
  async #eval(lua: Script, key: string, args: string[]): Promise<unknown> {
    const client = this.#store.client;
    const options = { keys: [key], arguments: args };
    try {
      return await client.evalSha(lua.sha, options);
    } catch (error) {
      if (!String((error as Error).message).startsWith('NOSCRIPT')) throw error;
      return await client.eval(lua.source, options);
    }
  }

  async #run<T>(op: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new CacheError(`RedisCache ${op} after close() (${this.#where})`);
    try {
      await this.#connect();
      return await fn();
    } catch (error) {
      throw new CacheError(`RedisCache ${op} failed on ${this.#where}`, { cause: error });
    }
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
