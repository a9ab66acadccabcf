import { createClient, createCluster, createSentinel, type RedisClientOptions } from '@keyv/redis';
import { ConfigError } from '@wxkit/core';
import { MAX_TIMER_MS, checkOptions, durationMs, integer, maskUrl, nonEmptyString, required, rule, typeName, type OptionSchema } from '@wxkit/core/internal';
import type { RedisClientLike } from './connection.js';
import { lasting } from './failure.js';

/** Options of {@link RedisCache}: one of `url`, `cluster`, `sentinel` or `client`. */
export interface RedisCacheOptions {
  /**
   * `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. A user name selects an ACL user;
   * the path selects the database.
   */
  url?: string;
  /**
   * Redis Cluster root nodes, as URLs (`redis://user:pass@10.0.0.1:7000`). Their user, password and scheme
   * are used for every node the cluster discovers, so they are the same in each URL. Every wxkit command
   * uses one key, so any slot layout works.
   */
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
   * this long, and wxkit's clients serve the token they hold meanwhile. A server that refuses the
   * credentials, the database or the certificate answers at once (reason `auth`, `database`, `tls`).
   * @default 1000
   */
  connectTimeoutMs?: number;
  /**
   * How long a call may wait for its answer, in ms, before it rejects with reason `timeout`: a connection
   * gone silent (a NAT or firewall that lost its state, a half-dead proxy) or a node that hangs sends no
   * error and no close, and node-redis would wait on it until the kernel drops the socket, 15 minutes or
   * more. With `url`, the connection is ended too (its pending calls fail, and the next call connects
   * anew). A Cluster's or Sentinel's client, and a `client` of yours, are left open: a hung node sets off
   * no discovery, so only the call is given up, and the client answers again once the node does (or once
   * its discovery moves on). Keep it above the longest pause your server takes (`CLIENT PAUSE`, `FAILOVER`).
   * @default 10000
   */
  stallTimeoutMs?: number;
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

const DEFAULTS = Object.freeze({ connectTimeoutMs: 1000, stallTimeoutMs: 10_000 });

/** What RedisCache needs from its options, checked before any I/O. */
export interface ResolvedOptions {
  /** The caller's client, or how to make one of our own. */
  source: RedisClientLike | ((ended: AbortSignal) => RedisClientLike);
  /** Where the store is, passwords masked, for messages. */
  where: string;
  connectTimeoutMs: number;
  /** How long a call waits for its answer. */
  stallTimeoutMs: number;
  /**
   * Whether a call unanswered after stallTimeoutMs ends the connection as well: only a single server's
   * client of our own. A Cluster's or Sentinel's client holds the other nodes' connections too and finds
   * its nodes anew by itself, and a caller's client is the caller's.
   */
  endsStalled: boolean;
}

/**
 * The Sentinel clients made here, and how to connect to the primary they name as their primary's clients
 * are (user, password, database, TLS, reconnecting until given up).
 */
const primaryClients = new WeakMap<object, (node: { host: string; port: number }) => RedisClientLike>();

/**
 * How to make a client of the primary that `client` names, when `client` is a Sentinel client made from
 * options; undefined for any other client, and for a caller's Sentinel client, whose options are its own.
 */
export function primaryClientOf(client: RedisClientLike): ((node: { host: string; port: number }) => RedisClientLike) | undefined {
  return primaryClients.get(client);
}

export function resolveOptions(options: unknown): ResolvedOptions {
  const opts = normalize(options);
  const connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
  // A command sent while the connection is down fails at once instead of waiting in node-redis's
  // offline queue, where it would run late, after the outage, over whatever was written meanwhile.
  // Reconnect with a backoff up to 2 s, until RedisCache gives the client up.
  // A caller's own reconnectStrategy in clientOptions still gives up once the client is given up (a
  // Sentinel's destroy() waits for a reconnect loop that never stops). `refusals`: it also gives up after a
  // refusal no retry of the same handshake can mend (a wrong password: node-redis would send it again
  // before the attempt ends), where a client given up is made anew (RedisCache's own, a Sentinel's node
  // clients); never a Cluster's node clients, which the cluster keeps closed for good.
  const merge = (ended: AbortSignal, extra: RedisClientOptions = {}, refusals = true): RedisClientOptions => {
    const theirs = (extra.socket as { reconnectStrategy?: unknown } | undefined)?.reconnectStrategy;
    const reconnectStrategy = (attempt: number, cause: unknown): number | false | Error => {
      if (ended.aborted || (refusals && lasting(cause))) return false;
      if (typeof theirs === 'function') return (theirs as (attempt: number, cause: unknown) => number | false | Error)(attempt, cause);
      return typeof theirs === 'number' || theirs === false ? theirs : Math.min(100 * 2 ** attempt, 2000);
    };
    return {
      disableOfflineQueue: true,
      ...extra,
      socket: { connectTimeout: connectTimeoutMs, ...extra.socket, reconnectStrategy } as RedisClientOptions['socket'],
    };
  };
  const stallTimeoutMs = opts.stallTimeoutMs ?? DEFAULTS.stallTimeoutMs;
  if (opts.client) return { source: opts.client, where: 'the given Redis client', connectTimeoutMs, stallTimeoutMs, endsStalled: false };
  if (opts.cluster) {
    // Root nodes serve only to discover the cluster, through a client of their own that node-redis
    // never ends if a node accepts and never answers: a socket timeout ends its handshake.
    const rootNodes = opts.cluster.map((url) => ({ url, socket: { socketTimeout: connectTimeoutMs } }));
    // node-redis reads a root node's URL for discovery only: the clients of the nodes it discovers are
    // made from `defaults`. The URLs' user, password and scheme go there too (clientOptions win).
    const first = new URL(opts.cluster[0]!);
    const fromUrl: RedisClientOptions = {
      ...(first.username ? { username: decodeURIComponent(first.username) } : {}),
      ...(first.password ? { password: decodeURIComponent(first.password) } : {}),
      ...(first.protocol === 'rediss:' ? { socket: { tls: true } as RedisClientOptions['socket'] } : {}),
    };
    const clusterDefaults: RedisClientOptions = {
      ...fromUrl,
      ...opts.clientOptions,
      socket: { ...fromUrl.socket, ...opts.clientOptions?.socket } as RedisClientOptions['socket'],
    };
    return {
      source: (ended) => createCluster({ rootNodes, defaults: merge(ended, clusterDefaults, false) }) as unknown as RedisClientLike,
      where: `Redis Cluster ${opts.cluster.map(maskUrl).join(',')}`,
      connectTimeoutMs,
      stallTimeoutMs,
      endsStalled: false,
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
    // node-redis asks the Sentinels one after the other, and waits on one that takes connections and
    // never answers (a hung host) as long as the kernel keeps the socket: the attempt would time out on
    // the first Sentinel, every time, and close() would wait for it. Each Sentinel gets a share of the
    // connect timeout, so that the next ones are asked within it; the connection that stays open to
    // hear of failovers PINGs within that time, so that being idle does not end it.
    const perSentinelMs = Math.max(2, Math.floor(connectTimeoutMs / sentinels.length));
    return {
      source: (ended) => {
        const nodeClientOptions = merge(ended, node);
        const sentinel = createSentinel({
          name: masterName,
          sentinelRootNodes: nodes.map((url) => ({ host: url.hostname, port: Number(url.port || 26379) })),
          nodeClientOptions: nodeClientOptions as never,
          // The primary's and replicas' connect errors reach the client's 'error' listener (wrapped, with
          // the error as cause) instead of staying inside it: a wrong password there ends the attempt at once.
          passthroughClientErrorEvents: true,
          sentinelClientOptions: {
            ...credentials(decodeURIComponent(nodes[0]!.username), decodeURIComponent(nodes[0]!.password)),
            socket: { connectTimeout: perSentinelMs, socketTimeout: perSentinelMs },
            pingInterval: Math.ceil(perSentinelMs / 2),
          },
        }) as unknown as RedisClientLike;
        // Connected as the primary's clients are, and given up with them.
        primaryClients.set(sentinel, ({ host, port }) =>
          createClient({ ...nodeClientOptions, socket: { ...nodeClientOptions.socket, host, port } as RedisClientOptions['socket'] }) as unknown as RedisClientLike,
        );
        return sentinel;
      },
      where: `Redis Sentinel master ${masterName} via ${sentinels.map(maskUrl).join(',')}`,
      connectTimeoutMs,
      stallTimeoutMs,
      endsStalled: false,
    };
  }
  return {
    source: (ended) => createClient(merge(ended, { ...opts.clientOptions, url: opts.url })) as unknown as RedisClientLike,
    where: maskUrl(opts.url!),
    connectTimeoutMs,
    stallTimeoutMs,
    endsStalled: true,
  };
}

const URL_RULE = 'a redis:// or rediss:// URL such as redis://user:password@host:6379/0';
const SENTINEL_URL_RULE = 'redis://[user:password@]host:port URLs, without a database';

const REDIS_OPTIONS = {
  url: rule(URL_RULE, (value) => redisUrl(value) === 'ok', { nearMiss: (value) => badDatabase(value) ?? withQuery(value) ?? unparsable(value) }),
  // The nodes discovered are all connected with one user, password and scheme: the URLs must agree on them.
  cluster: rule(
    "a non-empty array of redis:// or rediss:// URLs, one or more of the cluster's nodes, such as ['redis://user:password@host:7000']",
    (value) => nonEmptyArray(value) && value.every((url) => redisUrl(url) === 'ok') && logins(value) === 1 && schemes(value) === 1,
    {
      nearMiss: (value) => {
        // One URL where the nodes go: the cluster is found from any of them, but they are given as a list.
        if (typeof value === 'string') return "must be an array of node URLs, even for one: cluster: ['redis://host:7000', 'redis://host2:7000'] (got string)";
        if (!nonEmptyArray(value)) return undefined;
        const database = value.map(badDatabase).find(Boolean);
        if (database || !value.every((url) => redisUrl(url) === 'ok')) return database;
        if (logins(value) !== 1) return `must be URLs with one user and password, as every node is connected with them (got ${logins(value)} different)`;
        return schemes(value) === 1 ? undefined : 'must be URLs of one scheme, redis:// or rediss://, as every node is connected with it (got both)';
      },
    },
  ),
  sentinel: rule('an object { sentinels, masterName }', isObject),
  client: rule('a node-redis client, cluster or sentinel', (value) => isObject(value) && typeof value.connect === 'function'),
  connectTimeoutMs: durationMs(),
  stallTimeoutMs: durationMs(),
  clientOptions: rule('an object of node-redis client options', isObject),
} as const satisfies OptionSchema<keyof RedisCacheOptions>;

const SENTINEL_OPTIONS = {
  // Sentinels speak plain TCP here; Sentinels behind TLS take a node-redis sentinel passed as `client`.
  sentinels: required(
    rule(`a non-empty array of ${SENTINEL_URL_RULE}`, (value) => nonEmptyArray(value) && value.every(isSentinelUrl) && logins(value) === 1, {
      // Never echo a URL: it may hold a password. Its masked form is enough to find it.
      nearMiss: (value) => {
        const odd = nonEmptyArray(value) ? value.find((url) => !isSentinelUrl(url)) : undefined;
        if (typeof odd === 'string') return `must be ${SENTINEL_URL_RULE} (got ${maskUrl(odd)})`;
        if (nonEmptyArray(value) && odd === undefined) {
          return `must be URLs with one user and password, as the Sentinels share one (got ${logins(value)} different)`;
        }
        return undefined;
      },
    }),
  ),
  masterName: required(nonEmptyString()),
  username: rule('a string', (value) => typeof value === 'string'),
  password: rule('a string', (value) => typeof value === 'string'),
  database: integer(0, MAX_TIMER_MS),
} as const satisfies OptionSchema<keyof RedisCacheSentinelOptions>;

function normalize(options: unknown): RedisCacheOptions {
  if (typeof options === 'string') return { url: checkOptions<RedisCacheOptions>('RedisCache', REDIS_OPTIONS, { url: options }).url };
  if (!isObject(options)) {
    throw new ConfigError(`RedisCache options must be a redis:// URL, an options object or a node-redis client (got ${typeName(options)})`, 'options');
  }
  if (typeof options.connect === 'function') return { client: options as unknown as RedisClientLike };
  const opts = checkOptions<RedisCacheOptions>('RedisCache', REDIS_OPTIONS, options);
  const sources = [opts.url, opts.cluster, opts.sentinel, opts.client].filter((source) => source !== undefined).length;
  if (sources !== 1) throw new ConfigError('RedisCache options must have exactly one of url, cluster, sentinel or client', 'url');
  if (opts.sentinel !== undefined) checkSentinel(opts.sentinel);
  // node-redis refuses a socket.tls that contradicts a URL's scheme at every connect (a TypeError quoting
  // the URL, password and all): no retry mends it, so it is an invalid option, said once here rather than
  // as a store failure at every call. A cluster's root nodes are connected from their URLs too.
  const tls = (opts.clientOptions?.socket as { tls?: unknown } | undefined)?.tls;
  const contradicted = tls === undefined ? undefined : [opts.url ?? [], opts.cluster ?? []].flat().find((url) => tls !== (new URL(url).protocol === 'rediss:'));
  if (contradicted !== undefined) {
    throw new ConfigError(
      `RedisCache options.clientOptions socket.tls must be left out, or agree with the URL: true for rediss://, false for redis:// (got ${typeof tls === 'boolean' ? String(tls) : typeName(tls)} for ${maskUrl(contradicted)})`,
      'clientOptions',
    );
  }
  return opts;
}

function checkSentinel(sentinel: RedisCacheSentinelOptions): void {
  checkOptions<RedisCacheSentinelOptions>('RedisCache', SENTINEL_OPTIONS, sentinel, { path: 'sentinel' });
}

/** How many user:password pairs the Sentinel URLs carry: one, or a mistake. */
function logins(urls: unknown[]): number {
  return new Set(urls.map((url) => `${new URL(url as string).username}:${new URL(url as string).password}`)).size;
}

/** How many schemes (redis:, rediss:) the URLs use. */
function schemes(urls: unknown[]): number {
  return new Set(urls.map((url) => new URL(url as string).protocol)).size;
}

/**
 * `ok`, `database` (a path that is no database number), `query` (a query string, which node-redis does
 * not read: `?db=3` would leave the client on database 0), or `no` (not a redis:// or rediss:// URL with a host).
 */
function redisUrl(url: unknown): 'ok' | 'database' | 'query' | 'no' {
  let parsed: URL | undefined;
  try {
    parsed = typeof url === 'string' ? new URL(url) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!parsed || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') || !parsed.hostname) return 'no';
  if (parsed.search !== '') return 'query';
  // Redis numbers its databases below 2³¹ − 1 (`databases` is an int): a larger number is no database
  // SELECT can parse ("value is not an integer"), not one the server lacks.
  if (parsed.pathname.length <= 1) return 'ok';
  return /^\/\d+$/.test(parsed.pathname) && Number(parsed.pathname.slice(1)) < 2 ** 31 - 1 ? 'ok' : 'database';
}

function isSentinelUrl(url: unknown): boolean {
  return redisUrl(url) === 'ok' && (url as string).startsWith('redis:') && new URL(url as string).pathname.length <= 1;
}

/**
 * The message for a redis:// URL that does not parse, most often for a password holding a character a
 * URL gives a meaning to. The URL is not echoed: where it fails to parse, no mask can find its password.
 */
function unparsable(url: unknown): string | undefined {
  if (typeof url !== 'string' || !/^rediss?:\/\//i.test(url.trim()) || redisUrl(url) !== 'no') return undefined;
  return (
    `must be ${URL_RULE}; this one does not parse as a URL: a user or password holding @ : / ? # % or a space ` +
    'is written percent-encoded, as encodeURIComponent(password) gives it'
  );
}

/** The message for a URL whose path is no database number, with the URL masked: never its password. */
function badDatabase(url: unknown): string | undefined {
  return redisUrl(url) === 'database' ? `path must be a database number such as /0, below 2147483647 (got ${maskUrl(String(url))})` : undefined;
}

/** The message for a URL with a query string, masked: node-redis reads no option from it. */
function withQuery(url: unknown): string | undefined {
  if (redisUrl(url) !== 'query') return undefined;
  // Not echoed whole: a query may hold a password (?password=…), which no mask looks for.
  const shown = new URL(String(url));
  shown.search = '';
  return `must be ${URL_RULE}, without a query string: node-redis reads nothing from it (a database goes in the path, redis://host:6379/3; a password before the host) (got ${maskUrl(shown.href)}?…)`;
}

function nonEmptyArray(value: unknown): value is unknown[] {
  return Array.isArray(value) && value.length > 0;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}
