import { EventEmitter } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Dispatcher } from 'undici';
import { MemoryCache, type TokenCache } from './cache.js';
import { ConfigError } from './errors.js';
import { FileCache } from './file-cache.js';
import { HttpClient } from './http.js';
import { Log, type Logger } from './logger.js';
import { GuardedStore, assertTokenCache } from './store.js';
import { EntryStore } from './token/entry-store.js';
import { nativeSchema, type KeySchema } from './token/entry.js';
import { writerId } from './token/identity.js';
import { TokenManager } from './token/manager.js';
import type { ProtocolSettings, Refresher, TokenContext } from './token/refresher.js';
import { FollowRefresher } from './token/refreshers/follow.js';
import { LockedFetchRefresher } from './token/refreshers/locked-fetch.js';
import { RemoteRefresher } from './token/refreshers/remote.js';
import { StoreTiers, hostFallback } from './token/tiers.js';
import type { Upstream } from './token/upstream.js';
import type { TokenSource, TokenSourceRequest } from './token-source.js';
import { assertOptionsObject, invalidOption, optionalChoice, optionalFunction, optionalNumber, typeName } from './validate.js';
import { VERSION } from './version.js';

/** Options every wxkit client accepts, next to its credentials. */
export interface ClientOptions {
  /**
   * Where WeChat's API is. Point it at a mock server in tests, or at an egress proxy that forwards to
   * WeChat. A path prefix is kept (`https://proxy.internal/wechat` → `…/wechat/cgi-bin/token`).
   * @default 'https://api.weixin.qq.com'
   */
  baseUrl?: string;
  /**
   * Where tokens and tickets are shared. Every process that should share a token must point at the
   * same store with the same schema.
   * @default a MemoryCache shared by the clients of this process (nothing shared between processes)
   */
  cache?: TokenCache;
  /**
   * Key names and value format in the store.
   * @default nativeSchema() — keys `wechat:…`, documented in docs/key-schema.md
   */
  schema?: KeySchema;
  /**
   * Deadline of one HTTP exchange with WeChat, connect to last body byte, in ms.
   * @default 10000
   */
  timeoutMs?: number;
  /**
   * Largest response body accepted, in bytes. Larger bodies fail with ERR_WXKIT_BAD_RESPONSE.
   * @default 1048576
   */
  maxResponseBytes?: number;
  /**
   * An undici dispatcher to send requests through (a ProxyAgent, say). wxkit does not close it.
   * @default a connection pool per origin shared by every client of this process (128 connections);
   * closing a client leaves it to the others, and the last client to close closes it
   */
  dispatcher?: Dispatcher;
  /**
   * How long this process answers from memory before it reads the store again, in ms. Shorter notices
   * a token changed by another process sooner; 0 reads the store on every call.
   * @default 30000
   */
  memoMs?: number;
  /**
   * How long a process waits for another one's refresh, in ms. A waiter never fetches beside a holder:
   * it takes the holder's token or the holder's error, or the lock once the holder's lease ends (a
   * holder that died). The lease itself is computed from the critical section it guards (`timeoutMs`
   * and `cacheTimeoutMs`; about 25 s by default), so the default outlasts it.
   * @default the lock's lease + 5000
   */
  lockWaitMs?: number;
  /**
   * Where the processes of this host share tokens, locks and failures while the store is down (and
   * the refresh lock, for a store without atomic `add`), so an outage costs one fetch per host, not one
   * per process. A directory of this host only (files 0600); `false`: each process keeps to itself.
   * Not used when the store is a MemoryCache or a FileCache.
   * @default `${os.tmpdir()}/wxkit-${uid}/fallback`
   */
  fallbackDir?: string | false;
  /**
   * A name for this program, recorded with `host:pid` as the `fetched_by` of every token it fetches, so
   * a token invalidated from outside the fleet can be traced to its last writer (`order-service`).
   * Letters, digits, `.`, `_` and `-`, at most 64.
   */
  serviceName?: string;
  /**
   * Deadline of one store call, in ms. A store that does not answer in time counts as down, and the
   * process serves the token it holds (see docs).
   * @default 2000
   */
  cacheTimeoutMs?: number;
  /** Where log lines go: `console`, a pino logger, or `false` for none. Default: warnings to stderr. */
  logger?: Logger | false;
  /** Clock in ms since the epoch, for tests. @default Date.now */
  now?: () => number;
  /**
   * `auto`: fetch from WeChat when the store has no valid token (one process at a time).
   * `never`: follower mode, for a client joining a deployment where another program owns the refresh:
   * it only reads the store, waits up to `lockWaitMs` for the owner to write, and on 40001 waits for a
   * newer entry. It never calls WeChat's token endpoints and needs no secret.
   * @default 'auto'
   */
  refresh?: 'auto' | 'never';
  /**
   * Take tokens from a token service instead of WeChat, e.g. `remoteTokenSource({ url, key })` for
   * `wxkit serve`. The client then needs no secret; on 40001 it reports the token to the service.
   */
  tokenSource?: TokenSource;
  /**
   * Refresh in the background when the entry has less than this many seconds left in the store: one
   * process (the lock's winner, after a random delay) fetches while the current token keeps serving,
   * so no caller waits at expiry. Useful with endpoints that issue a new token on request (classic);
   * the stable endpoint and WeCom hand back the same token until shortly before it expires. 0: off.
   * @default 0
   */
  refreshAheadSeconds?: number;
  /**
   * Longest random delay before a background refresh, in ms, so processes do not all try at once.
   * @default 5000
   */
  refreshAheadJitterMs?: number;
}

export const CLIENT_DEFAULTS = Object.freeze({
  baseUrl: 'https://api.weixin.qq.com',
  timeoutMs: 10_000,
  maxResponseBytes: 1024 * 1024,
  memoMs: 30_000,
  cacheTimeoutMs: 2_000,
  refreshAheadJitterMs: 5_000,
});

const CLIENT_OPTION_NAMES = [
  'baseUrl',
  'cache',
  'schema',
  'timeoutMs',
  'maxResponseBytes',
  'dispatcher',
  'memoMs',
  'lockWaitMs',
  'fallbackDir',
  'serviceName',
  'cacheTimeoutMs',
  'logger',
  'now',
  'refresh',
  'tokenSource',
  'refreshAheadSeconds',
  'refreshAheadJitterMs',
] as const;

const USER_AGENT = `wxkit/${VERSION}`;
let sharedMemoryCache: MemoryCache | undefined;
// The default schema, one for every client: it holds no state, and 10,000 clients need not hold 10,000 copies.
let defaultSchema: KeySchema | undefined;
// Where a client's entries go while its store is down: this host's directory, or this process.
let processFallback: MemoryCache | undefined;
const DEFAULT_FALLBACK_DIR = join(tmpdir(), `wxkit-${process.getuid?.() ?? 'user'}`, 'fallback');
let warnedDefaultStore = false;

/** Options that were renamed or dropped, with what to use instead. */
const RETIRED_OPTIONS: Record<string, string> = {
  lockLeaseMs: 'the lease is now computed from timeoutMs and cacheTimeoutMs (the critical section it guards); drop the option',
};

/** The parts of a client that its token managers, API client and helpers share. */
export class ClientCore {
  readonly owner: string;
  readonly appId: string;
  readonly http: HttpClient;
  readonly log: Log;
  #events: EventEmitter | undefined;
  readonly schema: KeySchema;
  readonly settings: ProtocolSettings;
  readonly cacheTimeoutMs: number;
  /** `auto`, `never` (follower) or `remote` (a token source). */
  readonly refresh: 'auto' | 'never' | 'remote';
  /** `host:pid[:service]`, recorded as `fetched_by`. */
  readonly writer: string;
  readonly #source: TokenSource | undefined;
  #store: GuardedStore;
  #defaultStore: boolean;
  readonly #tiers: StoreTiers;
  readonly #local: GuardedStore;
  #fallbackDir: string | false;
  #host: GuardedStore | undefined;
  readonly #managers: TokenManager[] = [];

  constructor(
    owner: string,
    appId: string,
    options: Record<string, unknown>,
    ownNames: readonly string[],
    defaultBaseUrl: string = CLIENT_DEFAULTS.baseUrl,
  ) {
    this.owner = owner;
    this.appId = appId;
    for (const [name, instead] of Object.entries(RETIRED_OPTIONS)) {
      if (options[name] !== undefined) throw new ConfigError(`${owner} options.${name} is no longer an option: ${instead}`, name);
    }
    rejectUnknownOptions(owner, options, [...ownNames, ...CLIENT_OPTION_NAMES]);

    const baseUrl = options.baseUrl ?? defaultBaseUrl;
    if (typeof baseUrl !== 'string' || !isHttpUrl(baseUrl)) {
      throw invalidOption(owner, 'baseUrl', 'an http:// or https:// URL', baseUrl);
    }
    if (/[?#]/.test(baseUrl) || new URL(baseUrl).username || new URL(baseUrl).password) {
      throw new ConfigError(`${owner} options.baseUrl must not carry a query, fragment or credentials`, 'baseUrl');
    }
    const timeoutMs = optionalNumber(owner, options, 'timeoutMs', CLIENT_DEFAULTS.timeoutMs, { min: 1 });
    const maxResponseBytes = optionalNumber(owner, options, 'maxResponseBytes', CLIENT_DEFAULTS.maxResponseBytes, {
      min: 1024,
      integer: true,
    });
    const memoMs = optionalNumber(owner, options, 'memoMs', CLIENT_DEFAULTS.memoMs);
    const lockWaitMs = options.lockWaitMs === undefined ? undefined : optionalNumber(owner, options, 'lockWaitMs', 0, { min: 1 });
    this.cacheTimeoutMs = optionalNumber(owner, options, 'cacheTimeoutMs', CLIENT_DEFAULTS.cacheTimeoutMs, { min: 1 });
    const serviceName = options.serviceName;
    if (serviceName !== undefined && (typeof serviceName !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(serviceName))) {
      throw invalidOption(owner, 'serviceName', 'up to 64 letters, digits, `.`, `_` or `-`', serviceName);
    }
    this.writer = writerId(serviceName as string | undefined);
    const fallbackDir = options.fallbackDir ?? DEFAULT_FALLBACK_DIR;
    if (fallbackDir !== false && (typeof fallbackDir !== 'string' || fallbackDir.length === 0)) {
      throw invalidOption(owner, 'fallbackDir', 'a directory path or false', fallbackDir);
    }
    this.#fallbackDir = fallbackDir;
    const now = optionalFunction<() => number>(owner, options, 'now') ?? Date.now;
    const refreshAheadSeconds = optionalNumber(owner, options, 'refreshAheadSeconds', 0);
    const refreshAheadJitterMs = optionalNumber(owner, options, 'refreshAheadJitterMs', CLIENT_DEFAULTS.refreshAheadJitterMs);
    const refresh = optionalChoice(owner, options, 'refresh', ['auto', 'never'], 'auto');
    const source = options.tokenSource as TokenSource | undefined;
    if (source !== undefined && (source === null || typeof source.fetch !== 'function' || typeof source.invalidate !== 'function')) {
      throw invalidOption(owner, 'tokenSource', 'a TokenSource such as remoteTokenSource({ url, key })', source);
    }
    if (source && refresh === 'never') {
      throw new ConfigError(`${owner} options.tokenSource and options.refresh 'never' exclude each other: pick one owner of the refresh`, 'refresh');
    }
    this.#source = source;
    this.refresh = source ? 'remote' : refresh;

    const dispatcher = options.dispatcher;
    if (dispatcher !== undefined && (dispatcher === null || typeof (dispatcher as Dispatcher).dispatch !== 'function')) {
      throw invalidOption(owner, 'dispatcher', 'an undici Dispatcher (Agent, Pool, ProxyAgent…)', dispatcher);
    }
    const logger = options.logger;
    if (logger !== undefined && logger !== false && (logger === null || typeof (logger as Logger).warn !== 'function')) {
      throw invalidOption(owner, 'logger', 'an object with a warn() method (console, pino…) or false', logger);
    }
    const schema = options.schema ?? (defaultSchema ??= nativeSchema());
    if (!isKeySchema(schema)) throw invalidOption(owner, 'schema', 'a KeySchema such as nativeSchema()', schema);

    this.schema = schema;
    this.settings = {
      memoMs,
      lockWaitMs,
      cacheTimeoutMs: this.cacheTimeoutMs,
      now,
      refreshAheadMs: refreshAheadSeconds * 1000,
      refreshAheadJitterMs,
    };
    this.log = new Log(logger as Logger | false | undefined, () => this.#events);
    this.http = new HttpClient({
      baseUrl,
      timeoutMs,
      maxResponseBytes,
      dispatcher: dispatcher as Dispatcher | undefined,
      userAgent: USER_AGENT,
    });
    if (options.cache !== undefined) assertTokenCache(`${owner} options.cache`, options.cache);
    this.#defaultStore = options.cache === undefined;
    this.#store = this.#guard((options.cache as TokenCache | undefined) ?? (sharedMemoryCache ??= new MemoryCache()));
    this.#local = this.#guard((processFallback ??= new MemoryCache()));
    this.#tiers = new StoreTiers(() => this.#store, () => this.#hostStore(), this.#local);
  }

  /** Where the client's events are emitted; made when first asked for (a listener is added). */
  get events(): EventEmitter {
    return (this.#events ??= new EventEmitter());
  }

  /** Swaps the store for every token and ticket of this client. */
  setCache(cache: TokenCache): void {
    assertTokenCache(`${this.owner} setCache() cache`, cache);
    this.#store.dispose();
    this.#store = this.#guard(cache);
    this.#defaultStore = false;
    for (const manager of this.#managers) manager.reset();
  }

  get cache(): TokenCache {
    return this.#store.cache;
  }

  /** The store as the token protocol uses it: each call bounded by cacheTimeoutMs, failures as CacheError. */
  get store(): GuardedStore {
    return this.#store;
  }

  /**
   * The token manager of one entry. `request` names it to a token source; `upstream` fetches it from
   * WeChat. Access tokens follow the client's refresh mode; tickets come from the token source when
   * there is one, and otherwise from WeChat (a follower still fetches tickets: they invalidate nobody).
   */
  manager(label: string, key: string, request: TokenSourceRequest, upstream: Upstream): TokenManager {
    const logKey = this.schema.redactKey?.(key) ?? key;
    let manager: TokenManager | undefined;
    const ctx: TokenContext = {
      label,
      field: request.field,
      key,
      logKey,
      appId: this.appId,
      settings: this.settings,
      entries: new EntryStore({ key, field: request.field, schema: this.schema, label, appId: this.appId, logKey, log: this.log, now: this.settings.now }),
      tiers: this.#tiers,
      log: this.log,
      writer: this.writer,
      rejected: (value) => manager?.isRejected(value) ?? false,
    };
    manager = new TokenManager(ctx, this.#refresher(ctx, request, upstream), () => this.#warnIfDefaultStore());
    this.#managers.push(manager);
    return manager;
  }

  /** Throws when the client was built without the secret a call needs. */
  requireSecret(secret: string | undefined, what: string): string {
    if (secret === undefined) {
      throw new ConfigError(`${this.owner} ${what} needs options.secret, which this client was built without`, 'secret');
    }
    return secret;
  }

  async close(): Promise<void> {
    for (const manager of this.#managers) manager.close();
    this.#store.dispose();
    this.#local.dispose();
    this.#host?.dispose();
    await Promise.all([this.http.close(), this.#source?.close?.()]);
  }

  #refresher(ctx: TokenContext, request: TokenSourceRequest, upstream: Upstream): Refresher {
    if (this.#source) return new RemoteRefresher(ctx, this.#source, request, this.http.timeoutMs);
    if (this.refresh === 'never' && request.field === 'access_token') return new FollowRefresher(ctx);
    return new LockedFetchRefresher(ctx, upstream, this.schema.lockKey(ctx.key));
  }

  /**
   * This host's fallback, made on first need: only for a store shared beyond this host (a MemoryCache
   * is this process's already, a FileCache this host's).
   */
  #hostStore(): GuardedStore | undefined {
    const shared = this.#store.cache;
    if (this.#fallbackDir === false || shared instanceof MemoryCache || shared instanceof FileCache) return undefined;
    if (!this.#host) {
      const cache = hostFallback(this.#fallbackDir);
      if (typeof cache === 'string') {
        this.log.warn(
          { event: 'cache.fallback_unusable', appId: this.appId, reason: cache },
          `The fallback directory cannot be used (${cache}): while the store is down, each process keeps to itself. Set options.fallbackDir to a directory of this user only`,
        );
        this.#fallbackDir = false;
        return undefined;
      }
      this.#host = this.#guard(cache);
    }
    return this.#host;
  }

  #guard(cache: TokenCache): GuardedStore {
    const redact = this.schema.redactKey ? this.schema.redactKey.bind(this.schema) : undefined;
    return new GuardedStore(cache, this.cacheTimeoutMs, this.log, this.appId, redact);
  }

  #warnIfDefaultStore(): void {
    if (!this.#defaultStore || warnedDefaultStore || process.env.NODE_ENV !== 'production') return;
    warnedDefaultStore = true;
    this.log.warn(
      { event: 'cache.process_local', appId: this.appId },
      'No cache was set, so tokens live in this process only: every other process fetches its own and they invalidate each other. Call setCache() with a FileCache, RedisCache or MemcachedCache shared by all of them',
    );
  }
}

function rejectUnknownOptions(owner: string, options: Record<string, unknown>, known: readonly string[]): void {
  for (const name of Object.keys(options)) {
    if (known.includes(name) || options[name] === undefined) continue;
    const near = known.find((candidate) => candidate.toLowerCase() === name.toLowerCase().replace(/[_-]/g, ''));
    throw new ConfigError(`${owner} options.${name} is not an option${near ? ` (did you mean ${near}?)` : ''}`, name);
  }
}

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:';
  } catch {
    return false;
  }
}

function isKeySchema(value: unknown): value is KeySchema {
  const schema = value as Partial<KeySchema> | null;
  return (
    typeof schema === 'object' &&
    schema !== null &&
    typeof schema.accessTokenKey === 'function' &&
    typeof schema.encode === 'function' &&
    typeof schema.decode === 'function' &&
    typeof schema.lockKey === 'function' &&
    typeof schema.ticketKey === 'function' &&
    typeof schema.ttlSeconds === 'function'
  );
}

/** Validates a credential-like id (appId, corpId) that becomes part of a store key. */
export function requireId(owner: string, options: Record<string, unknown>, name: string): string {
  const value = options[name];
  if (typeof value !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(value)) {
    throw invalidOption(owner, name, 'a string of letters, digits, `_`, `.` or `-` (WeChat ids look like wx1234abcd5678ef90)', value);
  }
  return value;
}

/**
 * Validates a secret without ever echoing it. It may be left out when the client does not fetch tokens
 * itself (`tokenSource`, or `refresh: 'never'`).
 */
export function requireSecret(owner: string, options: Record<string, unknown>, name: string): string | undefined {
  const value = options[name];
  const optional = options.tokenSource !== undefined || options.refresh === 'never';
  if (value === undefined && optional) return undefined;
  if (typeof value !== 'string' || value.trim().length === 0) {
    throw new ConfigError(
      `${owner} options.${name} must be a non-empty string (got ${typeName(value)})${optional ? '' : "; only a client with options.tokenSource or refresh: 'never' can do without it"}`,
      name,
    );
  }
  return value;
}

export { assertOptionsObject };
