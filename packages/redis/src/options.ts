import { createClient, createCluster, createSentinel, type RedisClientOptions } from '@keyv/redis';
import { ConfigError } from '@wxkit/core';
import { maskUrl } from '@wxkit/core/internal';
import type { RedisClientLike } from './connection.js';

/** Options of {@link RedisCache}: one of `url`, `cluster`, `sentinel` or `client`. */
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

const DEFAULTS = Object.freeze({ connectTimeoutMs: 1000 });

/** What RedisCache needs from its options, checked before any I/O. */
export interface ResolvedOptions {
  /** The caller's client, or how to make one of our own. */
  source: RedisClientLike | ((ended: AbortSignal) => RedisClientLike);
  /** Where the store is, passwords masked, for messages. */
  where: string;
  connectTimeoutMs: number;
}

export function resolveOptions(options: unknown): ResolvedOptions {
  const opts = normalize(options);
  const connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
  if (typeof connectTimeoutMs !== 'number' || !Number.isFinite(connectTimeoutMs) || connectTimeoutMs <= 0) {
    throw invalid('connectTimeoutMs', 'a number > 0', connectTimeoutMs);
  }
  // A command sent while the connection is down fails at once instead of waiting in node-redis's
  // offline queue, where it would run late, after the outage, over whatever was written meanwhile.
  // Reconnect with a backoff up to 2 s, until RedisCache gives the client up.
  const merge = (ended: AbortSignal, extra: RedisClientOptions = {}): RedisClientOptions => ({
    disableOfflineQueue: true,
    ...extra,
    socket: {
      connectTimeout: connectTimeoutMs,
      reconnectStrategy: (attempt: number) => (ended.aborted ? false : Math.min(100 * 2 ** attempt, 2000)),
      ...extra.socket,
    } as RedisClientOptions['socket'],
  });
  if (opts.client) return { source: opts.client, where: 'the given Redis client', connectTimeoutMs };
  if (opts.cluster) {
    // Root nodes serve only to discover the cluster, through a client of their own that node-redis
    // never ends if a node accepts and never answers: a socket timeout ends its handshake.
    const rootNodes = opts.cluster.map((url) => ({ url, socket: { socketTimeout: connectTimeoutMs } }));
    return {
      source: (ended) => createCluster({ rootNodes, defaults: merge(ended, opts.clientOptions) }) as RedisClientLike,
      where: `Redis Cluster ${opts.cluster.map(maskUrl).join(',')}`,
      connectTimeoutMs,
    };
  }
  if (opts.sentinel) {
    const { sentinels, masterName, username, password, database } = opts.sentinel;
    const nodes = sentinels.map((url) => new URL(url));
    const credentials = (user: string | undefined, pass: string | undefined) => ({
      ...(user ? { username: user } : {}),
      ...(pass ? { password: pass } : {}),
    });
    const node = { ...opts.clientOptions, ...credentials(username, password), ...(database === undefined ? {} : { database }) };
    return {
      source: (ended) =>
        createSentinel({
          name: masterName,
          sentinelRootNodes: nodes.map((url) => ({ host: url.hostname, port: Number(url.port || 26379) })),
          nodeClientOptions: merge(ended, node) as never,
          sentinelClientOptions: {
            ...credentials(decodeURIComponent(nodes[0]!.username), decodeURIComponent(nodes[0]!.password)),
            socket: { connectTimeout: connectTimeoutMs },
          },
        }) as unknown as RedisClientLike,
      where: `Redis Sentinel master ${masterName} via ${sentinels.map(maskUrl).join(',')}`,
      connectTimeoutMs,
    };
  }
  return { source: (ended) => createClient(merge(ended, { ...opts.clientOptions, url: opts.url })) as RedisClientLike, where: maskUrl(opts.url!), connectTimeoutMs };
}

function normalize(options: unknown): RedisCacheOptions {
  if (typeof options === 'string') return { url: checkUrl(options) };
  if (!isObject(options)) {
    throw new ConfigError(`RedisCache options must be a redis:// URL, an options object or a node-redis client (got ${typeName(options)})`, 'options');
  }
  if (typeof options.connect === 'function') return { client: options as unknown as RedisClientLike };
  const opts = options as RedisCacheOptions;
  const sources = [opts.url, opts.cluster, opts.sentinel, opts.client].filter((source) => source !== undefined).length;
  if (sources !== 1) throw new ConfigError('RedisCache options must have exactly one of url, cluster, sentinel or client', 'url');
  if (opts.url !== undefined) checkUrl(opts.url);
  if (opts.cluster !== undefined) {
    if (!Array.isArray(opts.cluster) || opts.cluster.length === 0) throw invalid('cluster', 'a non-empty array of redis:// URLs', opts.cluster);
    opts.cluster.forEach((url) => checkUrl(url, 'cluster'));
  }
  if (opts.sentinel !== undefined) checkSentinel(opts.sentinel);
  if (opts.client !== undefined && !(isObject(opts.client) && typeof opts.client.connect === 'function')) {
    throw invalid('client', 'a node-redis client, cluster or sentinel', opts.client);
  }
  return opts;
}

function checkSentinel(sentinel: RedisCacheSentinelOptions): void {
  if (!isObject(sentinel)) throw invalid('sentinel', 'an object { sentinels, masterName }', sentinel);
  const { sentinels, masterName, username, password, database } = sentinel;
  if (!Array.isArray(sentinels) || sentinels.length === 0) throw invalid('sentinel.sentinels', 'a non-empty array of redis:// URLs', sentinels);
  for (const url of sentinels) {
    // Sentinels speak plain TCP here; Sentinels behind TLS take a node-redis sentinel passed as `client`.
    if (!checkUrl(url, 'sentinel.sentinels').startsWith('redis:') || new URL(url).pathname.length > 1) {
      throw new ConfigError(`RedisCache options.sentinel.sentinels must be redis://[user:password@]host:port URLs, without a database (got ${maskUrl(url)})`, 'sentinel.sentinels');
    }
  }
  const login = (url: string) => `${new URL(url).username}:${new URL(url).password}`;
  if (new Set(sentinels.map(login)).size > 1) {
    throw new ConfigError('RedisCache options.sentinel.sentinels must all carry the same user and password (the Sentinels share one)', 'sentinel.sentinels');
  }
  if (typeof masterName !== 'string' || masterName === '') throw invalid('sentinel.masterName', 'a non-empty string', masterName);
  if (username !== undefined && typeof username !== 'string') throw invalid('sentinel.username', 'a string', username);
  if (password !== undefined && typeof password !== 'string') throw invalid('sentinel.password', 'a string', password);
  if (database !== undefined && !(Number.isInteger(database) && database >= 0)) throw invalid('sentinel.database', 'an integer >= 0', database);
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

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function typeName(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
}

function invalid(name: string, rule: string, value: unknown): ConfigError {
  return new ConfigError(`RedisCache options.${name} must be ${rule} (got ${typeName(value)})`, name);
}
