import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join, relative, resolve } from 'node:path';
import type { Dispatcher } from 'undici';
import { MemoryCache, type TokenCache } from './cache.js';
import { localityOf } from './locality.js';
import { ConfigError } from './errors.js';
import { HttpClient } from './http.js';
import { Log, type EventSource, type Logger } from './logger.js';
import { GuardedStore, TOKEN_CACHE_RULE, assertTokenCache } from './store.js';
import { EntryStore, type EntryStoreInit } from './token/entry-store.js';
import { nativeSchema, type KeySchema } from './token/entry.js';
import { writerId } from './token/identity.js';
import { TokenManager } from './token/manager.js';
import type { ProtocolSettings, Refresher, TokenContext } from './token/refresher.js';
import { FollowRefresher } from './token/refreshers/follow.js';
import { LockedFetchRefresher } from './token/refreshers/locked-fetch/locked-fetch.js';
import { RemoteRefresher } from './token/refreshers/remote.js';
import { StoreTiers, hostFallback, type TierStores } from './token/tiers.js';
import type { Upstream } from './token/upstream.js';
import { SOURCE_BUDGET_MS, type TokenSource, type TokenSourceRequest } from './token-source.js';
import { Closing } from './token/closing.js';
import { flattened } from './bytes.js';
import {
  MAX_TIMER_MS,
  checkOptions,
  durationMs,
  fn,
  hasMethods,
  integer,
  matching,
  oneOf,
  rule,
  type OptionSchema,
  type RetiredOptions,
} from './validate.js';
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
   * Deadline of one HTTP exchange with WeChat, from the moment it is on a connection to the last body
   * byte, in ms; and, separately, the longest a request waits for a free connection of the pool (one
   * that never got one fails with `HttpError.sent` false: it was not sent). Time spent waiting for a
   * connection never turns an answer into a timeout.
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
   * @default a connection pool per origin shared by every client of this process (128 connections, and
   * a pool of 64 for token and ticket fetches, so queued API calls never hold back a fetch);
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
   * holder that died). Within a pause after rejected tokens, a call waits for another process's token
   * at most this long too (and at most 2 s). The lease itself is computed from the critical section it
   * guards (`timeoutMs` twice, for the wait for a connection and the exchange, and `cacheTimeoutMs`;
   * about 35 s by default), so the default outlasts it. A follower (`refresh: 'never'`) waits for the owner's access token 20000 by default.
   * @default the lock's lease + 5000; a follower's wait for the access token: 20000
   */
  lockWaitMs?: number;
  /**
   * Where the processes of this host share tokens, locks and failures while the store is down (and
   * the refresh lock, for a store without atomic `add`), so an outage costs one fetch per host, not one
   * per process. A directory of this host only (files 0600); `false`: each process keeps to itself.
   * Not used when the store is a MemoryCache, or a FileCache whose directory is this one, or holds or lies in it.
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

/**
 * The rule of every ClientOptions field, checked in one pass with the client's own (see
 * {@link clientSchema}). `satisfies` keeps it whole: an option added to ClientOptions without a rule
 * does not compile.
 */
export const CLIENT_OPTIONS = {
  baseUrl: rule('an http:// or https:// URL without query, fragment or credentials', (value) => isPlainHttpUrl(value) && !API_PATH_END.test(value as string), {
    // The API paths (cgi-bin/token, sns/…, wxa/…) are added to it: a base ending in one sends to /cgi-bin/cgi-bin/….
    nearMiss: (value) =>
      isPlainHttpUrl(value) && API_PATH_END.test(value as string)
        ? 'must be the origin (or a proxy prefix) without /cgi-bin, such as https://api.weixin.qq.com: the API paths are added to it'
        : undefined,
  }),
  cache: TOKEN_CACHE_RULE,
  schema: rule('a KeySchema such as nativeSchema()', isKeySchema),
  timeoutMs: durationMs(),
  // The body is held in one Buffer; 2^31 − 1 bytes fits one on every platform Node runs on.
  maxResponseBytes: integer(1024, 2 ** 31 - 1, 'bytes'),
  dispatcher: rule('an undici Dispatcher (Agent, Pool, ProxyAgent…)', (value) => hasMethods(value, 'dispatch')),
  // 0 reads the store on every call.
  memoMs: durationMs(0),
  // 0 would give up on a holder before it could write: a process would never take another's token.
  lockWaitMs: durationMs(1),
  fallbackDir: rule('a directory path or false', (value) => value === false || (typeof value === 'string' && value.length > 0)),
  serviceName: matching(/^[A-Za-z0-9._-]{1,64}$/, 'up to 64 letters, digits, `.`, `_` or `-`'),
  cacheTimeoutMs: durationMs(),
  logger: rule('an object with a warn() method (console, pino…) or false', (value) => value === false || hasMethods(value, 'warn')),
  now: fn(),
  refresh: oneOf(['auto', 'never']),
  tokenSource: rule('a TokenSource such as remoteTokenSource({ url, key })', (value) => hasMethods(value, 'fetch', 'invalidate')),
  // Counted in ms by the refresh-ahead timer, so it stops where a timer does.
  refreshAheadSeconds: integer(0, Math.floor(MAX_TIMER_MS / 1000), 's'),
  refreshAheadJitterMs: durationMs(0),
} as const satisfies OptionSchema<keyof ClientOptions>;

const USER_AGENT = `wxkit/${VERSION}`;
let sharedMemoryCache: MemoryCache | undefined;
// The default schema, one for every client: it holds no state, and 10,000 clients need not hold 10,000 copies.
let defaultSchema: KeySchema | undefined;
// Where a client's entries go while its store is down: this host's directory, or this process.
let processFallback: MemoryCache | undefined;
const DEFAULT_FALLBACK_DIR = join(tmpdir(), `wxkit-${process.getuid?.() ?? 'user'}`, 'fallback');
let warnedDefaultStore = false;

/**
 * A token manager's context, and its entry store's init: a class, so that `rejected` is one method of
 * all, not a closure of each (a platform's process holds 10,000 of them). It holds what is the manager's
 * own (its key and labels, its entry store, the manager) and reads what the client's managers share from
 * the core (its settings, stores, log, close()), where it held a copy of each field, and the entry store
 * an init object of its own with copies of them again.
 */
class ManagerContext implements TokenContext, EntryStoreInit {
  readonly label: string;
  readonly field: TokenContext['field'];
  readonly key: string;
  readonly logKey: string;
  readonly entries: TokenContext['entries'];
  readonly #core: ClientCore;
  /** Set once the manager is made (it takes this context). */
  manager: TokenManager | undefined = undefined;

  constructor(core: ClientCore, label: string, field: TokenContext['field'], key: string, logKey: string) {
    this.label = label;
    this.field = field;
    this.key = key;
    this.logKey = logKey;
    this.#core = core;
    this.entries = new EntryStore(this);
  }

  get appId(): string {
    return this.#core.appId;
  }

  get settings(): TokenContext['settings'] {
    return this.#core.settings;
  }

  get tiers(): TokenContext['tiers'] {
    return this.#core.tiers;
  }

  get log(): Log {
    return this.#core.log;
  }

  get writer(): string {
    return this.#core.writer;
  }

  get closed(): TokenContext['closed'] {
    return this.#core.closing;
  }

  get schema(): KeySchema {
    return this.#core.schema;
  }

  get now(): () => number {
    return this.#core.settings.now;
  }

  rejected(value: string): boolean {
    return this.manager?.isRejected(value) ?? false;
  }

  secretRefused(failedAt: number | undefined, own: boolean): void {
    this.#core.noteSecretRefused(failedAt, own);
  }
}

/**
 * Settings objects shared by the clients that read the same ones (a platform's 10,000 accounts made
 * alike): by `key`, and only where `same` holds of the one found (the same clock: `Date.now` is another
 * function under a test's fake timers); `false` makes one of its own (a dispatcher of the caller's).
 * Frozen, as every holder only reads them. Bounded: past 64 kinds, each client gets its own.
 */
const INTERNED = new Map<string, object>();
function interned<T extends object>(key: string | false, make: () => T, same: (found: T) => boolean = () => true): T {
  if (key === false) return make();
  const found = INTERNED.get(key) as T | undefined;
  if (found !== undefined && same(found)) return found;
  const made = Object.freeze(make());
  if (found === undefined && INTERNED.size < 64) INTERNED.set(key, made);
  return made;
}

/** Options that were renamed or dropped, with what to use instead. */
const RETIRED_OPTIONS: RetiredOptions = {
  lockLeaseMs: 'the lease is now computed from timeoutMs and cacheTimeoutMs (the critical section it guards); drop the option',
};

/**
 * A client made by a ClientPool or an OpenPlatform passes the pool's core under this symbol: it reuses
 * the pool's HTTP client, store, fallbacks and settings, and keeps only its token managers and events,
 * so 10,000 accounts cost 10,000 token managers, not 10,000 copies of what they have in common.
 * @internal
 */
export const kPoolCore = Symbol.for('wxkit.internal.poolCore');
/** Internal option: a core (an OpenPlatform's) whose listeners hear this client's token events too. */
export const kForwardEvents = Symbol.for('wxkit.internal.forwardEvents');

/** The parts of a client that its token managers, API client and helpers share. */
export class ClientCore implements TierStores, EventSource {
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
  /** The process's own fallback, made when first needed (the store and the host's directory down). */
  #local: GuardedStore | undefined;
  #fallbackDir: string | false;
  #host: GuardedStore | undefined;
  /**
   * The fallback directory was found unusable, and why (said once per reason); `now` while the outage of
   * the store that found it so lasts. It is looked at again at the next outage: a directory that could
   * not be made on a full disk since freed, or whose mode was fixed, serves without a restart, as a
   * FileCache's own directory does.
   */
  #fallbackRefused: { reason: string; now: boolean } | undefined;
  /** Replaced, never pushed to: an array grown by push() holds room for 16 more, 10,000 clients over. */
  #managers: readonly TokenManager[] = [];
  /** Aborted by close(): the token managers' waits end, and no refresh starts. */
  readonly #closing = new Closing();
  #closed: Promise<void> | undefined;
  /** Set by release(): the pool let go of this client. */
  #released = false;
  /** The pool's core whose HTTP client and stores this one uses, closed by the pool, not by this client. */
  readonly #pool: ClientCore | undefined;
  /**
   * A pool's core: the cores of its clients with a refresh or a report under way, and how many each
   * has. The pool holds the clients it let go of weakly, and a caller that awaits a token or a send holds
   * that promise, not the client: without this, such a client could be collected mid-refresh, and the
   * pool's close() would neither end its wait nor wait for its writes and its lock's release.
   */
  #busy: Map<ClientCore, number> | undefined;

  /** `options` come checked by {@link checkClientOptions}: the core only reads them. */
  constructor(owner: string, appId: string, options: ClientOptions, defaultBaseUrl: string = CLIENT_DEFAULTS.baseUrl) {
    this.owner = owner;
    this.appId = appId;
    const baseUrl = options.baseUrl ?? defaultBaseUrl;
    const timeoutMs = options.timeoutMs ?? CLIENT_DEFAULTS.timeoutMs;
    const maxResponseBytes = options.maxResponseBytes ?? CLIENT_DEFAULTS.maxResponseBytes;
    const memoMs = options.memoMs ?? CLIENT_DEFAULTS.memoMs;
    const lockWaitMs = options.lockWaitMs;
    this.cacheTimeoutMs = options.cacheTimeoutMs ?? CLIENT_DEFAULTS.cacheTimeoutMs;
    this.writer = writerId(options.serviceName);
    this.#fallbackDir = options.fallbackDir ?? DEFAULT_FALLBACK_DIR;
    const now = options.now ?? Date.now;
    const refreshAheadSeconds = options.refreshAheadSeconds ?? 0;
    const refreshAheadJitterMs = options.refreshAheadJitterMs ?? CLIENT_DEFAULTS.refreshAheadJitterMs;
    const source = options.tokenSource;
    this.#source = source;
    this.refresh = source ? 'remote' : (options.refresh ?? 'auto');
    const dispatcher = options.dispatcher;
    const logger = options.logger;
    const pool = (options as Record<symbol, unknown>)[kPoolCore] as ClientCore | undefined;
    const schema = options.schema ?? pool?.schema ?? (defaultSchema ??= nativeSchema());

    this.schema = schema;
    this.log = new Log(logger as Logger | false | undefined, this, (options as Record<symbol, unknown>)[kForwardEvents] as ClientCore | undefined);
    this.#pool = pool;
    if (pool) {
      // Same options as the pool's (it checked them already), so the same settings, HTTP client and stores.
      this.settings = pool.settings;
      this.http = pool.http;
      this.#defaultStore = pool.#defaultStore;
      this.#store = pool.#store;
      this.#fallbackDir = pool.#fallbackDir;
      this.#tiers = pool.#tiers;
      return;
    }
    const cacheTimeoutMs = this.cacheTimeoutMs;
    const refreshAheadMs = refreshAheadSeconds * 1000;
    this.settings = interned(
      `token ${memoMs} ${lockWaitMs} ${cacheTimeoutMs} ${refreshAheadMs} ${refreshAheadJitterMs}`,
      () => ({ memoMs, lockWaitMs, cacheTimeoutMs, now, refreshAheadMs, refreshAheadJitterMs }),
      (found) => found.now === now,
    );
    this.http = new HttpClient(
      interned(dispatcher === undefined && `http ${baseUrl} ${timeoutMs} ${maxResponseBytes}`, () => ({
        baseUrl,
        timeoutMs,
        maxResponseBytes,
        dispatcher: dispatcher as Dispatcher | undefined,
        userAgent: USER_AGENT,
      })),
    );
    this.#defaultStore = options.cache === undefined;
    this.#store = this.#guard(options.cache ?? (sharedMemoryCache ??= new MemoryCache()));
    this.#tiers = new StoreTiers(this);
  }

  /** The emitter, if anyone asked for it (the client's Log emits to it). */
  get emitter(): EventEmitter | undefined {
    return this.#events;
  }

  /** Where the client's events are emitted; made when first asked for (a listener is added). */
  get events(): EventEmitter {
    return (this.#events ??= new EventEmitter());
  }

  /** Swaps the store for every token and ticket of this client. */
  setCache(cache: TokenCache): void {
    if (this.#pool) {
      throw new ConfigError(`${this.owner} setCache(): this client shares the store of the ${this.#pool.owner} that made it; set the cache there`, 'cache');
    }
    assertTokenCache(`${this.owner} setCache() cache`, cache);
    // A closed client sends nothing: a store given to it now would be watched by nobody's close().
    if (this.#closed !== undefined) throw new ConfigError(`${this.owner} setCache() after close(): the client is closed; make a new one with the cache`, 'cache');
    this.#store.dispose();
    this.#store = this.#guard(cache);
    this.#defaultStore = false;
    // The outage that found the fallback directory unusable was the old store's.
    if (this.#fallbackRefused) this.#fallbackRefused.now = false;
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
  manager(label: string, entryKey: string, request: TokenSourceRequest, upstream: Upstream): TokenManager {
    // Held by every part of the manager for the client's life: one flat string, not the parts it was joined from.
    const key = flattened(entryKey);
    const logKey = flattened(this.schema.redactKey?.(key) ?? key);
    const ctx = new ManagerContext(this, label, request.field, key, logKey);
    // A pool's client: its refreshes and reports keep its core known to the pool's until they end (see #busy).
    // Only a client on the process's default store has anything to warn about at first use.
    const manager = new TokenManager(ctx, this.#refresher(ctx, request, upstream), this.#defaultStore ? this.#firstUseWarning() : undefined, this.#pool && this.#heldBy(this.#pool));
    ctx.manager = manager;
    this.#managers = this.#managers.concat(manager);
    // A manager made after the pool let go of this client (a ticket first asked for since) starts no
    // background refresh either.
    if (this.#released) manager.close();
    return manager;
  }

  /** Throws when the client was built without the secret a call needs. */
  requireSecret(secret: string | undefined, what: string): string {
    if (secret === undefined) {
      throw new ConfigError(`${this.owner} ${what} needs options.secret, which this client was built without`, 'secret');
    }
    return secret;
  }

  /**
   * The pool let go of this client (see `releaseClient`): no refresh-ahead timer is left, and calls under
   * way finish, as the HTTP client and stores they use are the pool's and stay open.
   */
  release(): void {
    this.#released = true;
    for (const manager of this.#managers) manager.close();
  }

  /**
   * A pool's core: closes the clients of the pool that have a refresh or a report under way, those it
   * let go of and that were collected since too (their waits end, a lock holder writes and releases).
   * The pool closes the clients it holds or can still reach itself.
   */
  async closeBusy(): Promise<void> {
    await Promise.all([...(this.#busy?.keys() ?? [])].map((core) => core.close()));
  }

  /**
   * What close() does first, and nothing more: the waits of this core's token managers end, and no refresh
   * starts any more. An OpenPlatform's own core ends its component token's waits so at the start of its
   * close(), as the authorizer clients' refreshes it waits for may be waiting for that token.
   */
  endWaits(): void {
    this.#closing.abort();
    for (const manager of this.#managers) manager.close();
  }

  /**
   * A pool's client: WeChat refused the secret one of its fetches used (40125…). Its pool makes the
   * account's client anew, asking its resolver again: the account's record may have been fixed since.
   */
  secretRefused = false;

  /**
   * A pool's client: the fleet's failure (its marker's `failed_at`) that refused this client's secret, or
   * the one its predecessor was made anew for (see ClientPool): the same failure, read again, does not
   * make the account's client anew once more.
   */
  refusalSeen: number | undefined;

  /**
   * WeChat refused the secret a fetch of one of this client's managers used (see TokenContext): noted
   * on a pool's client only (see secretRefused).
   */
  noteSecretRefused(failedAt: number | undefined, own: boolean): void {
    if (!this.#pool) return;
    // The fleet's failure the client this one replaced was made anew for: it says nothing new of this
    // client's secret, which the resolver answered since.
    if (!own && failedAt === this.refusalSeen) return;
    this.secretRefused = true;
    if (failedAt !== undefined) this.refusalSeen = failedAt;
  }

  /** The stores of this client's entries, as its managers' contexts read them. */
  get tiers(): StoreTiers {
    return this.#tiers;
  }

  /** Aborted by close(), as its managers' contexts read it. */
  get closing(): Closing {
    return this.#closing;
  }

  /** Whether close() was called: a ClientPool or OpenPlatform then makes a new client rather than hand this one out. */
  get closed(): boolean {
    return this.#closing.aborted;
  }

  /** Closes once: a second call resolves when the first one's work is done, not before. */
  close(): Promise<void> {
    return (this.#closed ??= this.#close());
  }

  async #close(): Promise<void> {
    // Ends the waits of refreshes under way, and starts no refresh any more.
    this.#closing.abort();
    for (const manager of this.#managers) manager.close();
    // A refresh holding the lock writes its fetch and releases the lock before close() resolves: the
    // program may close its store or exit next, which would leave the fleet waiting for the lease.
    const settled = this.#settled();
    // The HTTP client and the stores are the pool's: it closes them.
    if (this.#pool) {
      await settled;
      return;
    }
    // Refuses new requests at once; those under way finish.
    const http = this.http.close();
    await settled;
    this.#store.dispose();
    this.#local?.dispose();
    this.#host?.dispose();
    await Promise.all([http, this.#source?.close?.()]);
  }

  /**
   * Resolves once no manager of this client has a refresh or a report under way (one manager's work can
   * start another's: a ticket's fetch meets a rejected access token), then ends their reports: a
   * rejection that comes after close() reports nothing to a store the program may close next.
   */
  async #settled(): Promise<void> {
    do await Promise.all(this.#managers.map((manager) => manager.settled()));
    while (this.#managers.some((manager) => manager.busy));
    for (const manager of this.#managers) manager.end();
  }

  /** Counts `work` of the client core `core` under way until it settles. */
  #hold(core: ClientCore, work: Promise<unknown>): void {
    // Made on first need: only a pool's core counts, and a plain client's is one of 10,000.
    const busy = (this.#busy ??= new Map());
    busy.set(core, (busy.get(core) ?? 0) + 1);
    const ended = () => {
      const left = busy.get(core)! - 1;
      if (left > 0) busy.set(core, left);
      else busy.delete(core);
    };
    work.then(ended, ended);
  }

  #refresher(ctx: TokenContext, request: TokenSourceRequest, upstream: Upstream): Refresher {
    if (this.#source) {
      // remoteTokenSource says how long its calls may take (its own timeoutMs, which may be the longer).
      const budget = (this.#source as { [SOURCE_BUDGET_MS]?: unknown })[SOURCE_BUDGET_MS];
      const deadlineMs = typeof budget === 'number' && Number.isFinite(budget) ? Math.max(this.http.timeoutMs, budget) : this.http.timeoutMs;
      return new RemoteRefresher(ctx, this.#source, request, Math.min(deadlineMs, MAX_TIMER_MS));
    }
    if (this.refresh === 'never' && request.field === 'access_token') return new FollowRefresher(ctx);
    return new LockedFetchRefresher(ctx, upstream, this.schema.lockKey(ctx.key));
  }

  /**
   * The fallback for one look while the store answers (StoreTiers.lookInFallback): the host's directory
   * where it exists and is not down, else the process's own; the handle this client holds on it, or
   * where it holds none yet, one made for the look (`made`), which the caller disposes of after it.
   */
  fallbackForLook(): { name: 'host' | 'process'; entries: GuardedStore; made: boolean } {
    let host = this.#host;
    let made = false;
    if (!host) {
      const cache = this.#existingHostCache();
      if (cache) [host, made] = [this.#guard(cache), true];
    }
    if (host && !host.down) return { name: 'host', entries: host, made };
    if (made) this.lookedIn('host', host!);
    if (this.#local) return { name: 'process', entries: this.#local, made: false };
    return { name: 'process', entries: this.#processGuard(), made: true };
  }

  /**
   * A handle fallbackForLook() made, after its look (see TierStores.lookedIn): kept where the store is
   * down and the client holds none on it yet, and is not closed (close() let go of its handles already).
   * Were it let go, a handle that took the store for down would leave its health down with no client to probe it,
   * and this process's later looks would find it down for good.
   */
  lookedIn(name: 'host' | 'process', entries: GuardedStore): void {
    if (entries.down && this.#closed === undefined) {
      if (name === 'host' && this.#host === undefined) {
        this.#host = entries;
        return;
      }
      if (name === 'process' && this.#local === undefined) {
        this.#local = entries;
        return;
      }
    }
    entries.dispose();
  }

  /**
   * This host's directory as hostStore(true) takes it: where it is this store's fallback, not found
   * unusable within the outage, already made, and usable; undefined otherwise.
   */
  #existingHostCache(): TokenCache | undefined {
    const dir = this.#fallbackDir;
    if (dir === false || !this.#hostUsed() || this.#fallbackRefused?.now || !existsSync(dir)) return undefined;
    const cache = hostFallback(dir);
    return typeof cache === 'string' ? undefined : cache;
  }

  /** A new handle on the process's own fallback, shared by every client of the process. */
  #processGuard(): GuardedStore {
    return this.#guard((processFallback ??= new MemoryCache()));
  }

  /** Whether this host's directory is a fallback of this client's store at all (see hostStore). */
  #hostUsed(): boolean {
    const locality = localityOf(this.#store.cache);
    if (this.#fallbackDir === false || locality?.scope === 'process') return false;
    return !(locality?.scope === 'host' && nested(locality.dir, this.#fallbackDir));
  }

  /** The process's own fallback (StoreTiers asks for it only when neither the store nor the host's directory can serve). */
  processStore(): GuardedStore {
    return (this.#local ??= this.#processGuard());
  }

  /**
   * This host's fallback, made on first need: for a store shared beyond this process (a MemoryCache is
   * this process's already). A FileCache is this host's, but its directory may fail while the fallback
   * directory works (a full or read-only volume, a directory taken away): the processes then share
   * through the fallback rather than each keep to itself. Not where the fallback lies in, or holds, the
   * FileCache's own directory. `existing`: asked while the store answers (a token a holder of the host
   * kept there), which makes no directory, and says nothing of one that cannot be used.
   */
  hostStore(existing = false): GuardedStore | undefined {
    const dir = this.#fallbackDir;
    if (dir === false || !this.#hostUsed()) return undefined;
    if (!this.#host && existing) {
      // Asked while the store answers: no directory made, nothing said of one that cannot be used.
      const cache = this.#existingHostCache();
      if (cache) {
        this.#fallbackRefused = undefined;
        this.#host = this.#guard(cache);
      }
    } else if (!this.#host) {
      // Not looked at again within the outage that found it unusable: a directory that became usable
      // midway would cost each host one more fetch, its processes having fetched on their own already.
      if (this.#fallbackRefused?.now) return undefined;
      const cache = hostFallback(dir);
      if (typeof cache === 'string') {
        if (this.#fallbackRefused?.reason !== cache) {
          this.log.warn(
            { event: 'cache.fallback_unusable', appId: this.appId, reason: cache },
            `The fallback directory cannot be used (${cache}): while the store is down, each process keeps to itself. Set options.fallbackDir to a directory of this user only`,
          );
        }
        const refused = { reason: cache, now: true };
        this.#fallbackRefused = refused;
        this.#store.onRecovered(() => void (refused.now = false));
        return undefined;
      }
      this.#fallbackRefused = undefined;
      this.#host = this.#guard(cache);
    }
    return this.#host;
  }

  #guard(cache: TokenCache): GuardedStore {
    const redact = this.schema.redactKey ? this.schema.redactKey.bind(this.schema) : undefined;
    return new GuardedStore(cache, this.cacheTimeoutMs, this.log, this.appId, redact);
  }

  // The closures a manager may get, each made in a method of its own: a closure made in manager() would
  // have every manager() call keep a scope object for the manager's life.
  #firstUseWarning(): () => void {
    return () => this.#warnIfDefaultStore();
  }

  #heldBy(pool: ClientCore): (work: Promise<unknown>) => void {
    return (work) => pool.#hold(this, work);
  }

  #warnIfDefaultStore(): void {
    if (!this.#defaultStore || warnedDefaultStore || process.env.NODE_ENV !== 'production') return;
    warnedDefaultStore = true;
    this.log.warn(
      { event: 'cache.process_local', appId: this.appId },
      'No cache was set, so tokens live in this process only: every other process fetches its own (on the classic endpoint, each fetch kills the token the others hold). Call setCache() with a FileCache, RedisCache or MemcachedCache shared by all of them',
    );
  }
}

const API_PATH_END = /\/cgi-bin\/*$/i;

function isPlainHttpUrl(value: unknown): boolean {
  try {
    const url = new URL(value as string);
    return (
      typeof value === 'string' &&
      (url.protocol === 'http:' || url.protocol === 'https:') &&
      !/[?#]/.test(value) &&
      url.username === '' &&
      url.password === ''
    );
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

/**
 * The rules of a client's options: its own (credentials, first, so they are reported first) and every
 * ClientOptions field. Declare `own` as `satisfies OptionSchema<OwnKeys<XOptions>>`.
 */
export function clientSchema<T extends ClientOptions>(own: OptionSchema<OwnKeys<T>>): OptionSchema<keyof T> {
  return Object.freeze({ ...own, ...CLIENT_OPTIONS }) as unknown as OptionSchema<keyof T>;
}

/** The options a client declares beside ClientOptions. */
export type OwnKeys<T extends ClientOptions> = Exclude<keyof T, keyof ClientOptions>;

/**
 * Checks a client's options in one pass from its schema (retired and unknown names, then each rule),
 * then the one combination no single rule can see. Returns them typed, for {@link ClientCore}.
 */
export function checkClientOptions<T extends ClientOptions>(owner: string, schema: OptionSchema<keyof T>, options: unknown): T {
  const checked = checkOptions<T>(owner, schema, options, { retired: RETIRED_OPTIONS });
  if (checked.tokenSource !== undefined && checked.refresh === 'never') {
    throw new ConfigError(`${owner} options.tokenSource and options.refresh 'never' exclude each other: pick one owner of the refresh`, 'refresh');
  }
  return checked;
}

export { ID_RULE } from './validate.js';

/**
 * A secret, checked by the schema (a non-empty string without spaces or control characters, never
 * echoed), and here required unless the client does not fetch tokens itself (`tokenSource`, or
 * `refresh: 'never'`).
 */
export function requireSecret(owner: string, options: ClientOptions & { secret?: string }, name = 'secret'): string | undefined {
  const value = options.secret;
  if (value !== undefined || options.tokenSource !== undefined || options.refresh === 'never') return value;
  throw new ConfigError(
    `${owner} options.${name} must be a non-empty string (got undefined); only a client with options.tokenSource or refresh: 'never' can do without it`,
    name,
  );
}

/** Whether one of two directories is the other or lies inside it. */
function nested(a: string, b: string): boolean {
  const inside = (parent: string, child: string) => {
    const path = relative(resolve(parent), resolve(child));
    return path === '' || (!path.startsWith('..') && !isAbsolute(path));
  };
  return inside(a, b) || inside(b, a);
}
