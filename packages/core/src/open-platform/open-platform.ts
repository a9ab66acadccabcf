import { createHash } from 'node:crypto';
import type { RequestOptions } from '../api-client.js';
import { binaryToText, textToBinary } from '../bytes.js';
import type { TokenCache } from '../cache.js';
import { ClientCore, ID_RULE, checkClientOptions, clientSchema, kForwardEvents, kPoolCore, type ClientOptions, type OwnKeys } from '../client-core.js';
import { kTokenSource, type CustomToken } from '../clients/app-token.js';
import { ClientLru, LetGo } from '../clients/client-lru.js';
import { MiniProgram, kCode2Session, sessionOf, type Code2SessionResult, type MiniProgramOptions } from '../clients/mini-program.js';
import { OfficialAccount, type OfficialAccountOptions } from '../clients/official-account.js';
import { clientClosed, type WeChatClient } from '../clients/wechat-client.js';
import type { TokenEvents } from '../events.js';
import { BadResponseError, CacheError, ConfigError, MessageCryptoError, TokenUnavailableError, WeChatApiError, isTokenRejection } from '../errors.js';
import type { HttpRequest } from '../http.js';
import { GuardedStore, TOKEN_CACHE_RULE } from '../store.js';
import { type OpenPlatformEntry, type StoredEntry } from '../token/entry.js';
import { EntryStore } from '../token/entry-store.js';
import { FailureGate, decodeMarker, failureKey } from '../token/failure.js';
import type { TokenManager } from '../token/manager.js';
import { keepAliveMs, RefreshLock } from '../token/refresh-lock.js';
import { pollWithBackoff } from '../token/refresher.js';
import { credentialDigest, validateFetched, type Fetched, type Upstream } from '../token/upstream.js';
import { durationMs, integer, invalidOption, nonEmptyString, required, typeName, type OptionSchema } from '../validate.js';
import { CALLBACK_TOKEN_RULE, ENCODING_AES_KEY_RULE, MessageCrypto, queryText } from './crypto.js';
import { parseFlatXml } from './xml.js';
import { isPlausibleToken } from '../token/plausible.js';

/** Options of {@link OpenPlatform}: the component app's credentials, its callback settings, and where its tokens live. */
export interface OpenPlatformOptions extends ClientOptions {
  /** The component (third-party platform) AppID. */
  appId: string;
  /** The component AppSecret, sent to api_component_token only. */
  secret: string;
  /** The callback Token set on WeChat's console ("消息校验Token"). */
  token: string;
  /** The callback EncodingAESKey ("消息加解密Key"), 43 characters. */
  encodingAESKey: string;
  /**
   * Where the authorizers' refresh tokens and the last component_verify_ticket live: a store that keeps
   * what it is given (Postgres or MySQL through Keyv, a FileCache on a persistent disk, Redis with AOF
   * and `maxmemory-policy noeviction`). A lost refresh token costs a call to WeChat to get it back, and
   * an account that revoked meanwhile must authorize again; a memcached store warns at start (it evicts).
   * Access tokens stay in `cache`.
   */
  durableStore: TokenCache;
  /**
   * At most this many authorizer clients are kept; the least recently used one is dropped beyond it
   * (calls under way on it finish). A client is cheap to make again (its tokens are in the store).
   * @default 1000
   */
  maxClients?: number;
  /** An authorizer client unused this long is dropped at the next lookup (no timers). @default 600000 */
  clientIdleMs?: number;
  /**
   * How far a push's signed `timestamp` may lie from this process's clock, in ms, either way. A signature
   * proves a push came from WeChat, not when: a push captured on the way (WeChat calls plain-http
   * callback URLs too) and sent again later is refused (`MessageCryptoError`, reason `expired`), and
   * nothing of it is stored or returned. Within the window a replay still passes: confirm an
   * `unauthorized` push with WeChat before acting on it. Raise it if this host's clock may be off.
   * @default 300000
   */
  pushMaxAgeMs?: number;
}

/**
 * What {@link OpenPlatform.handleAuthorization} learned from api_query_auth: the same for every caller
 * handed the same code (the one that asked WeChat, and the others, from the record it left).
 */
export interface Authorization {
  authorizerAppId: string;
  /** The permission sets (funcscope_category ids) the account granted. */
  funcInfo: number[];
}

/** A callback push, decrypted: WeChat's fields by name (`InfoType`, `AuthorizerAppid`, `AuthorizationCode`…). */
export interface OpenPlatformPush {
  infoType: string;
  fields: Record<string, string>;
}

/**
 * The request WeChat sent to the callback URL: its query (a URLSearchParams, or the object a framework
 * parsed it into, such as Express's `req.query`) and raw body. Of a parsed query only text values count
 * (the first of a repeated one, a whole number as its digits); nested objects are ignored.
 */
export interface CallbackRequest {
  query: URLSearchParams | Readonly<Record<string, unknown>>;
  body: string | Buffer;
}

/** The durable record of one authorizer as this refresh last saw it: read, or written by this refresh. */
interface HeldRecord {
  key: string;
  raw: string | undefined;
}

/**
 * A refresh token WeChat handed back that the durable store did not take (every attempt failed): kept by
 * this process, and written over the write-ahead it was to replace when the store answers again.
 */
interface UnsavedRefresh {
  /** The record as the refresh left it (its write-ahead): the write replaces it only. */
  held: HeldRecord;
  value: string;
  /** WeChat handed out a new token (logged as rotated once stored). */
  rotated: boolean;
  writing?: Promise<void> | undefined;
  /** Written at the store's next recovery, or at the next try of a store not taken for down. */
  waiting?: boolean;
  /** Tries made while the store was not taken for down: the pause before the next one grows with them. */
  tries?: number;
}

/** The token a refresh goes on with: the stored record's, or one api_get_authorizer_info just named current (`fromWeChat`). */
interface RefreshLine {
  token: string;
  origin?: string | undefined;
  fromWeChat?: boolean;
}

/** @internal */
export interface RefreshRecord {
  token: string;
  /**
   * {@link refreshOrigin} of the token this record's line of rotations started from: the one
   * api_query_auth handed to an authorization, or api_get_authorizer_info to a recovery. Every refresh
   * keeps it, so an authorization can tell a token WeChat rotated its own into from an older one.
   */
  origin?: string | undefined;
  /** Unix seconds; set while a refresh with `token` is under way (the write-ahead). */
  pendingSince?: number;
  pendingBy?: string;
}

const OWN_OPTIONS = {
  appId: required(ID_RULE),
  secret: required(nonEmptyString()),
  token: CALLBACK_TOKEN_RULE,
  encodingAESKey: ENCODING_AES_KEY_RULE,
  durableStore: required(
    TOKEN_CACHE_RULE,
    "is required: the authorizers' refresh tokens must live in a store that does not evict (Postgres through Keyv, a FileCache, Redis with persistence and noeviction)",
  ),
  maxClients: integer(1, Number.MAX_SAFE_INTEGER),
  clientIdleMs: durationMs(),
  pushMaxAgeMs: durationMs(),
} as const satisfies OptionSchema<OwnKeys<OpenPlatformOptions>>;
const SCHEMA = clientSchema<OpenPlatformOptions>(OWN_OPTIONS);
const DEFAULTS = Object.freeze({ maxClients: 1000, clientIdleMs: 600_000, pushMaxAgeMs: 300_000 });
/** A verify ticket is valid for 12 hours after its push (WeChat's component_verify_ticket doc). */
const TICKET_TTL_SECONDS = 12 * 3600;
/** Refresh tokens do not expire while the authorization stands; the record is rewritten at every refresh. */
const REFRESH_TTL_SECONDS = 365 * 24 * 3600;
/**
 * A durable write of a refresh token WeChat handed out (a refresh's final write, an authorization's) is
 * sent this many times before it is given up (and logged), past the store's breaker: its first failure
 * takes the store for down, and the breaker would refuse the next attempts unsent.
 */
const DURABLE_WRITE_ATTEMPTS = 3;
/** The pause before each further attempt of such a write: a dropped connection is made again meanwhile. */
const DURABLE_RETRY_PAUSE_MS = 250;
// An authorization's compare-and-set loses only to a write that landed between its read and its write.
// A refresh under way writes the record at most six times (a token this process kept from an earlier
// refresh whose final write the store did not take, its write-ahead, a second one after a 61023, its
// final write and that write's two retries), and a refresh with the authorization's token is then left
// alone: this many rounds outlast it.
const AUTHORIZATION_WRITE_ROUNDS = 7;
// The longest path of an authorizer refresh, all of it under the refresh lock (its lease counts it):
// no record (api_get_authorizer_info), the write-ahead, api_authorizer_token rejected with 61023,
// api_get_authorizer_info again, a second write-ahead, api_authorizer_token, the final write.
const REFRESH_HTTP_CALLS = 4;
// Durable store calls on that path: a refresh token this process kept when the store did not take it,
// written first (a compare-and-set and a read, as below); the read; two write-aheads, each a
// compare-and-set that a store without an atomic one makes a read and a write, and, when it finds the
// record changed to the token WeChat named (an authorization wrote it), a read and the compare-and-set
// again; the final write, as many attempts, each such a compare-and-set and a read that checks whether
// an attempt whose answer was lost went through, with a pause before each further one.
const REFRESH_DURABLE_CALLS = 3 + 1 + 2 * (2 + 1 + 2) + DURABLE_WRITE_ATTEMPTS * 3;
const REFRESH_PAUSES_MS = (DURABLE_WRITE_ATTEMPTS - 1) * DURABLE_RETRY_PAUSE_MS;
// Store calls beside it, under the lock, on a profile whose peer keeps its own copy of the token: the
// copy read before (the refresh token record, then the copy and its TTL side by side) and the copies
// written after (under the refresh token used and the new one, side by side), each counted as one call.
const REFRESH_COPY_CALLS = 4;
// A peer's token with less than this left is not taken: wxkit would keep it only briefly (its entry lives
// 500 s less on that profile), then fetch anyway.
const PEER_TOKEN_MIN_MS = 600_000;
// The life WeChat gives an authorizer token: a peer's token is never taken as living longer.
const PEER_TOKEN_MAX_LIFE_S = 7200;
/**
 * How long the record of a spent code answers its other callers: the push and the redirect come within
 * seconds of each other, WeChat's retries of the push within a minute. Not the code's hour: the redirect's
 * `auth_code` is left in browser histories, Referer headers and access logs, and a replay of it is
 * answered 61009 once the record is gone.
 */
const AUTHORIZATION_CODE_TTL_SECONDS = 300;
/** Rounds of looking for the record and taking the code's lock before a caller asks WeChat unlocked. */
const AUTHORIZATION_LOCK_ROUNDS = 3;
/** A callback body larger than this is refused before it is parsed; WeChat's pushes are a few kilobytes. */
const MAX_CALLBACK_BYTES = 64 * 1024;
/** What a read of a key holding another kind of value (a Redis hash, say) gives. */
const OTHER_KIND: unique symbol = Symbol('another kind of value');

/**
 * A WeChat open-platform component (第三方平台, "OpenPlatform" as EasyWeChat names it): it receives the
 * component_verify_ticket pushes, keeps the component_access_token under wxkit's token protocol (one
 * fetch per fleet, shared failures, 40001 recovery), takes accounts through authorization, and hands out
 * ordinary clients for the authorized accounts, whose tokens it refreshes with their refresh tokens.
 *
 * A refresh token is written to `durableStore` before the old one is dropped: every refresh first
 * records, under the refresh lock, that it is under way (write-ahead), then calls WeChat, then writes
 * the new token. A process that dies in between leaves the record marked; the next refresh sees it,
 * and if WeChat has already rotated the token, takes the current one from api_get_authorizer_info.
 *
 * @example
 * ```ts
 * const open = new OpenPlatform({ appId, secret, token, encodingAESKey, cache: redis, durableStore: postgres });
 * app.post('/wechat/open', async (req, res) => {
 *   try {
 *     await open.handleCallback({ query: req.query, body: req.body });
 *     res.send('success');
 *   } catch (error) {
 *     res.status(error instanceof MessageCryptoError ? 403 : 500).end(); // not from WeChat, or a store down: WeChat retries
 *   }
 * });
 * await open.officialAccount(authorizerAppId).templateMessage.send({ touser, template_id, data });
 * ```
 */
export class OpenPlatform {
  readonly appId: string;
  readonly #core: ClientCore;
  readonly #secret: string;
  readonly #crypto: MessageCrypto;
  readonly #pushMaxAgeMs: number;
  readonly #durable: GuardedStore;
  readonly #component: TokenManager;
  readonly #authorizerShared: Omit<Upstream<string>, 'fetch'>;
  /** The refresh tokens under which a fetched token's copies for the peer are written, until they are. */
  readonly #copyUnder = new WeakMap<Fetched, readonly string[]>();
  /** Refresh tokens WeChat handed back that the durable store did not take, by authorizer, until it does. */
  readonly #unsaved = new Map<string, UnsavedRefresh>();
  /** The options every authorizer client is made with: the client options, without the component's own. */
  readonly #options: ClientOptions;
  readonly #clients: ClientLru<{ client: WeChatClient; kind: 'official_account' | 'mini_program' }>;
  readonly #letGo = new LetGo();
  /** Authorizations under way in this process, by the key of their code's record: one per code. */
  readonly #authorizing = new Map<string, Promise<Authorization>>();
  /** Authorizations under way (the ask of WeChat and the writes after it), and verify-ticket pushes whose writes are. */
  readonly #storing = new Set<Promise<void>>();
  #closed = false;
  /** Aborted by close(): a caller waiting for another's authorization stops waiting. */
  readonly #ended = new AbortController();
  #closing: Promise<void> | undefined;

  constructor(options: OpenPlatformOptions) {
    const opts = checkClientOptions<OpenPlatformOptions>('OpenPlatform', SCHEMA, options);
    // A token service serves apps' own tokens (official_account/{id}): asked for the component's, it
    // would hand back an access token of the component's AppID, not a component_access_token, and for an
    // authorizer one its refresh token never made.
    if (opts.tokenSource !== undefined) {
      throw new ConfigError(
        "OpenPlatform options.tokenSource is for an app's own tokens: the component_access_token and the authorizers' tokens are fetched by the platform itself, under the lock of the shared cache; drop the option",
        'tokenSource',
      );
    }
    this.appId = opts.appId;
    this.#secret = opts.secret;
    this.#crypto = new MessageCrypto({ token: opts.token, encodingAESKey: opts.encodingAESKey, appId: this.appId });
    this.#pushMaxAgeMs = opts.pushMaxAgeMs ?? DEFAULTS.pushMaxAgeMs;
    this.#clients = new ClientLru({
      maxClients: opts.maxClients ?? DEFAULTS.maxClients,
      idleMs: opts.clientIdleMs ?? DEFAULTS.clientIdleMs,
      now: () => performance.now(),
      // The clients share the platform's HTTP client and store, which stay open. A dropped client is only
      // let go of: a caller that still holds it finishes its calls (closing it would end their token
      // waits); it is closed with the platform.
      drop: ({ client }) => this.#letGo.add(client),
    });
    const clientOptions: Record<string, unknown> = { ...opts };
    for (const name of Object.keys(OWN_OPTIONS)) delete clientOptions[name];
    this.#options = clientOptions;
    this.#core = new ClientCore('OpenPlatform', this.appId, this.#options);
    if (!this.#core.schema.openPlatformKey) {
      throw invalidOption('OpenPlatform', 'schema', `a KeySchema with open-platform keys (${this.#core.schema.name} has none; use nativeSchema())`, opts.schema);
    }
    this.#durable = new GuardedStore(opts.durableStore, this.#core.cacheTimeoutMs, this.#core.log, this.appId);
    this.#warnIfEvictable(opts.durableStore);
    // The authorizer clients share this platform's HTTP client, stores and key schema: each account
    // costs its token manager, not a copy of those. Without a dispatcher of the caller's, that HTTP client
    // sends through the process's shared pools of the origin, as a plain client does: sockets per origin
    // and process, not per account nor per platform.
    (this.#options as Record<symbol, unknown>)[kPoolCore] = this.#core;
    // open.on('authorizer_access_token.fetched', …) hears every authorizer's client, made again or not.
    (this.#options as Record<symbol, unknown>)[kForwardEvents] = this.#core;
    this.#authorizerShared = this.#sharedAuthorizerUpstream();
    this.#component = this.#core.manager(
      'component_access_token',
      this.#key('component_access_token'),
      { kind: 'official_account', id: this.appId, field: 'access_token' },
      this.#componentUpstream(),
    );
  }

  /**
   * Listens to an event (`component_access_token.fetched`, `component_verify_ticket.received`,
   * `authorizer_refresh_token.recovered`…), and to the token events of every authorizer's client
   * (`authorizer_access_token.fetched`, `.fetch_failed`, `jsapi_ticket.fetched`…, each with the account's
   * `appId`), however often the clients are dropped and made again. The store's `cache.*` events are the
   * platform's own, once per outage.
   */
  on<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.#core.events.on(event, listener);
    return this;
  }

  off<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.#core.events.off(event, listener);
    return this;
  }

  /**
   * Handles a request to the component's callback URL ("授权事件接收URL"): checks the signature, decrypts,
   * and stores a component_verify_ticket for every process. Answer WeChat with `success` once it resolves.
   * Other pushes (`authorized`, `updateauthorized`, `unauthorized`) are returned for the caller to act on.
   * Rejects with a MessageCryptoError for a request that is not from WeChat, or whose signed timestamp
   * lies further than `pushMaxAgeMs` from this process's clock (a push sent again later: `expired`), and
   * with a ConfigError once the platform is closed.
   */
  async handleCallback(request: CallbackRequest): Promise<OpenPlatformPush> {
    // After close() the stores may be closed, and a ticket written now would go unwaited for.
    if (this.#closed) throw new ConfigError('OpenPlatform is closed: handleCallback() after close() stores nothing', 'request');
    if (typeof request !== 'object' || request === null) {
      throw new MessageCryptoError('format', `handleCallback() takes { query, body }: the callback's query string and its raw body (got ${typeName(request)})`);
    }
    const query = request.query instanceof URLSearchParams ? request.query : new URLSearchParams(flattenQuery(request.query));
    // The body is read before its signature can be checked: one far larger than any push is refused unread.
    const size = typeof request.body === 'string' ? Buffer.byteLength(request.body) : Buffer.isBuffer(request.body) ? request.body.length : undefined;
    if (size === undefined || size > MAX_CALLBACK_BYTES) {
      throw new MessageCryptoError('format', `the callback body is not a string or Buffer of at most ${MAX_CALLBACK_BYTES} bytes: WeChat's pushes are a few kilobytes`);
    }
    const body = typeof request.body === 'string' ? request.body : request.body.toString('utf8');
    const timestamp = query.get('timestamp') ?? '';
    const xml = this.#crypto.decrypt({ msgSignature: query.get('msg_signature') ?? '', timestamp, nonce: query.get('nonce') ?? '', encrypt: parseFlatXml(body).Encrypt ?? '' });
    // The timestamp is under the signature: checked once the signature holds, so a forged request is named so.
    const offMs = Number(timestamp) * 1000 - this.#core.settings.now();
    if (!(Math.abs(offMs) <= this.#pushMaxAgeMs)) {
      throw new MessageCryptoError(
        'expired',
        `the push's timestamp (${timestamp}) is ${Number.isFinite(offMs) ? `${Math.round(Math.abs(offMs) / 1000)} s ${offMs < 0 ? 'behind' : 'ahead of'}` : 'not a time near'} this process's clock, beyond options.pushMaxAgeMs (${this.#pushMaxAgeMs} ms): a push sent again after it was made, or this host's clock is off; nothing was stored`,
      );
    }
    const fields = parseFlatXml(xml);
    const infoType = fields.InfoType ?? '';
    if (infoType === 'component_verify_ticket' && fields.ComponentVerifyTicket) {
      await this.#whileStoring(this.#storeTicket(fields.ComponentVerifyTicket, Number(fields.CreateTime) || Math.floor(this.#core.settings.now() / 1000)));
    }
    return { infoType, fields };
  }

  /** The component_access_token, from the store or fetched (one process of the fleet at a time). */
  componentAccessToken(signal?: AbortSignal): Promise<string> {
    return this.#component.get(signal);
  }

  /**
   * A pre_auth_code for the authorization page (`api_create_preauthcode`), valid for `expiresIn` seconds.
   * `signal` stops this caller's waits (for the component token, for WeChat's answer), as for a send.
   */
  async createPreAuthCode(options: RequestOptions = {}): Promise<{ preAuthCode: string; expiresIn: number }> {
    const body = await this.#componentCall('cgi-bin/component/api_create_preauthcode', { component_appid: this.appId }, options.signal);
    const { value, expiresIn } = validateFetched(body, 'pre_auth_code', 'cgi-bin/component/api_create_preauthcode');
    return { preAuthCode: value, expiresIn };
  }

  /**
   * The authorization page's URL (PC): the account admin scans it and WeChat redirects to `redirectUri`
   * with `auth_code`. `authType`: 1 official accounts, 2 mini programs, 3 both.
   */
  authorizationUrl(preAuthCode: string, redirectUri: string, authType: 1 | 2 | 3 = 3): string {
    const query = new URLSearchParams({ component_appid: this.appId, pre_auth_code: preAuthCode, redirect_uri: redirectUri, auth_type: String(authType) });
    return `https://mp.weixin.qq.com/cgi-bin/componentloginpage?${query}`;
  }

  /**
   * Completes an authorization (`auth_code` from the redirect, or `AuthorizationCode` from an
   * `authorized` push) with api_query_auth: the authorizer's refresh token goes to the durable store
   * first, then its access token to the cache. An answer whose access token is unusable rejects with a
   * BadResponseError only after the refresh token is stored: the account is authorized, and its first
   * call fetches an access token.
   *
   * The authorization code is spent once api_query_auth answers: from then on a rejection (CacheError,
   * BadResponseError) names the account, `authorizerAppId` on the error and in its message. The refresh
   * token's write is sent up to three times, a pause apart, even while the store is taken for down; if
   * none goes through, the rejection says so (logged at error level), and the account's first refresh
   * takes its current token from WeChat (api_get_authorizer_info).
   *
   * Another process may be refreshing the account's token meanwhile (an admin who authorizes again, or
   * a client used as soon as the `authorized` push arrived). The refresh token is written as a
   * compare-and-set against the record read, and not at all when the record already holds it or a token
   * WeChat rotated it into: every record names the token its line of rotations started from (`origin`),
   * so a refresh that learnt this token from api_get_authorizer_info (its own answered 61023) and
   * rotated it before this write landed keeps its rotation. A record with a token from before the
   * authorization, which WeChat no longer takes, is replaced; a refresh with it then leaves this record
   * in place, or, if its call was still to be made, gets 61023 and goes on with this token. A peer's
   * bare record has no room for `origin`: there, a rotation that lands first costs the next refresh a
   * 61023 and a recovery from WeChat, never the authorization. The access token is written as a
   * refresh writes one: it never replaces a token fetched after api_query_auth was asked.
   *
   * WeChat hands one code to the `authorized` push and to the redirect: call this from both. The callers
   * of one code (in this process, or in others sharing the cache, within five minutes) get the same
   * answer, and WeChat is asked once: the caller that asks holds the code's lock in the cache, and leaves
   * a record (the account and its permissions, keyed by the code's SHA-256; no token) that the others
   * return, even when its own writes failed. On a cache without an atomic add each caller asks, and one
   * answered 61009 waits for the other's record. With no record, a spent or expired code rejects with
   * WeChat's 61009 or 61010.
   */
  async handleAuthorization(authorizationCode: string): Promise<Authorization> {
    if (typeof authorizationCode !== 'string' || authorizationCode === '') {
      throw new ConfigError(`OpenPlatform handleAuthorization(authorizationCode) must be given a non-empty string (got ${typeof authorizationCode})`, 'authorizationCode');
    }
    // WeChat hands one code both to the push and to the redirect, and answers a second api_query_auth
    // with 61009: the callers of one code, in this process and in the others, share one ask.
    const digest = authorizationCodeDigest(authorizationCode);
    const key = this.#key('authorization_code', digest);
    // A schema written before this entry (its openPlatformKey ignoring the id it is given) would put
    // every code's record under one key: a caller would get the account another code authorized.
    if (!key.includes(digest)) {
      throw new ConfigError(
        `OpenPlatform: the key schema's openPlatformKey('authorization_code', componentAppId, digest) must keep the digest in the key (got ${this.#core.schema.redactKey?.(key) ?? key}): one key for every code would hand a caller the account another code authorized`,
        'schema',
      );
    }
    let shared = this.#authorizing.get(key);
    if (!shared) {
      // Counted under way from its start: close() waits for an ask of WeChat and the writes after it.
      shared = this.#whileStoring(this.#authorizeOnce(authorizationCode, key).finally(() => this.#authorizing.delete(key)));
      this.#authorizing.set(key, shared);
    }
    return shared;
  }

  /**
   * The record of the code, or the answer of api_query_auth asked under the code's lock: a caller that
   * finds the lock held waits for the record its holder writes, and takes the lock itself if the holder
   * let go without one (it failed before WeChat answered). A store without an atomic add, or that does
   * not answer, leaves each caller to ask WeChat; one answered 61009 then waits for the record of the
   * caller WeChat answered.
   */
  async #authorizeOnce(authorizationCode: string, key: string): Promise<Authorization> {
    const core = this.#core;
    const lock = new RefreshLock(core.schema.lockKey(key), core.schema.redactKey?.(core.schema.lockKey(key)) ?? core.schema.lockKey(key), core.log, this.appId, 'owner', core.schema.name);
    const watch = (onChange: () => void) => core.store.watch([key, lock.key], onChange);
    for (let round = 0; round < AUTHORIZATION_LOCK_ROUNDS; round += 1) {
      if (this.#closed) throw new ConfigError('OpenPlatform is closed', 'authorizationCode');
      const recorded = await this.#authorizationRecord(key);
      if (recorded) return recorded;
      let attempt: Awaited<ReturnType<RefreshLock['tryAcquire']>>;
      try {
        const leaseMs = this.#authorizationLeaseMs();
        attempt = await lock.tryAcquire(core.store, leaseMs, keepAliveMs(core.cacheTimeoutMs, leaseMs));
      } catch (error) {
        if (!(error instanceof CacheError)) throw error;
        attempt = 'unavailable';
      }
      if (attempt === 'unavailable') break;
      if (attempt !== 'held') {
        try {
          // After a holder let go without a record, it may still be writing one (held past its lease).
          return await this.#queryAuth(authorizationCode, key, round > 0);
        } finally {
          await attempt.release();
        }
      }
      // Another caller asks WeChat: its record, or its lock gone without one.
      const seen = await pollWithBackoff(
        this.#authorizationLeaseMs(),
        async () => (await this.#authorizationRecord(key)) ?? ((await lock.holder(core.store)) === undefined ? ('free' as const) : undefined),
        watch,
        this.#ended.signal,
      );
      if (seen !== undefined && seen !== 'free') return seen;
    }
    if (this.#closed) throw new ConfigError('OpenPlatform is closed', 'authorizationCode');
    return this.#queryAuth(authorizationCode, key, true);
  }

  /** How long a caller holds a code's lock: the component token and api_query_auth, then the writes of its answer. */
  #authorizationLeaseMs(): number {
    const core = this.#core;
    return 2 * core.http.callBudgetMs + (DURABLE_WRITE_ATTEMPTS * 3 + 4) * core.cacheTimeoutMs + REFRESH_PAUSES_MS;
  }

  /** The record a caller that spent the code left; undefined when there is none, or the store does not answer. */
  async #authorizationRecord(key: string): Promise<Authorization | undefined> {
    try {
      return decodeAuthorizationRecord(await this.#core.store.get(key));
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      return undefined;
    }
  }

  /**
   * api_query_auth, its tokens stored, then the code's record for the other callers. `others`: another
   * caller may have asked (no lock, or one it held past its lease), so a 61009 waits for the record of
   * the one WeChat answered; else it reads the record once.
   */
  async #queryAuth(authorizationCode: string, key: string, others: boolean): Promise<Authorization> {
    const path = 'cgi-bin/component/api_query_auth';
    const startedAt = Math.floor(this.#core.settings.now() / 1000);
    let body: Record<string, unknown>;
    try {
      body = await this.#componentCall(path, { component_appid: this.appId, authorization_code: authorizationCode });
    } catch (error) {
      if (!(error instanceof WeChatApiError) || error.errcode !== 61009) throw error;
      // Spent: by another caller whose record is there, or (others) is on its way; else the code is bad.
      const recorded = others
        ? await pollWithBackoff(this.#authorizationLeaseMs(), () => this.#authorizationRecord(key), (onChange) => this.#core.store.watch([key], onChange), this.#ended.signal)
        : await this.#authorizationRecord(key);
      if (recorded) return recorded;
      // close() ended the wait: the code may well be good, and another caller's record on its way.
      if (this.#closed) throw new ConfigError('OpenPlatform is closed', 'authorizationCode');
      throw error;
    }
    const info = body.authorization_info as Record<string, unknown> | undefined;
    const authorizerAppId = info?.authorizer_appid;
    const refresh = info?.authorizer_refresh_token;
    if (!info || typeof authorizerAppId !== 'string' || !ID_RULE.accepts(authorizerAppId)) throw new BadAnswer(path);
    // The code is spent: close() waits for what follows (the authorization is counted under way), so
    // that a program which closes its stores once close() resolves does not close them under these writes.
    const funcInfo = Array.isArray(info.func_info)
      ? info.func_info.map((item) => (item as { funcscope_category?: { id?: unknown } })?.funcscope_category?.id).filter((id): id is number => typeof id === 'number')
      : [];
    const authorization: Authorization = { authorizerAppId, funcInfo };
    if (typeof refresh !== 'string' || refresh === '') {
      // The account is authorized all the same (WeChat spent the code): the other callers of the code
      // learn it from the record, and its first refresh takes its refresh token from WeChat.
      await this.#recordAuthorization(key, authorization);
      throw new BadResponseError(
        `WeChat answered ${path} without the authorizer's refresh token; the account ${authorizerAppId} is authorized, and its first refresh takes its refresh token from WeChat (api_get_authorizer_info)`,
        { path, authorizerAppId },
      );
    }
    try {
      await this.#completeAuthorization(path, startedAt, info, authorizerAppId, refresh);
    } finally {
      // The code is spent whatever became of the writes: the account is authorized, and the other
      // callers of the code learn it from this record.
      await this.#recordAuthorization(key, authorization);
    }
    return authorization;
  }

  /** Writes the record of a spent code; a store that does not take it leaves the other callers their 61009 (logged). */
  async #recordAuthorization(key: string, authorization: Authorization): Promise<void> {
    const core = this.#core;
    try {
      await core.store.set(key, encodeAuthorizationRecord(authorization, Math.floor(core.settings.now() / 1000), core.writer), AUTHORIZATION_CODE_TTL_SECONDS);
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      core.log.warn(
        { event: 'authorization_code.unrecorded', appId: this.appId, authorizerAppId: authorization.authorizerAppId, ...(error.reason ? { reason: error.reason } : {}) },
        'The cache did not take the record of a spent authorization code: another caller handed the same code (the push and the redirect carry the same one) gets 61009 from WeChat',
      );
    }
  }

  /** The rest of {@link handleAuthorization} once api_query_auth has answered: its tokens stored. */
  async #completeAuthorization(path: string, startedAt: number, info: Record<string, unknown>, authorizerAppId: string, refresh: string): Promise<void> {
    // The refresh token first: the authorization code is spent, and the account's only way back
    // without its admin is this token. An unusable access token beside it costs a fetch, not the account.
    await this.#storeAuthorization(authorizerAppId, refresh, startedAt);
    await this.#endRevokedBackoff(this.#key('authorizer_access_token', authorizerAppId));
    let fetched: Fetched;
    try {
      fetched = validateFetched(info, 'authorizer_access_token', path);
    } catch (error) {
      if (!(error instanceof BadResponseError)) throw error;
      throw new BadResponseError(
        `${error.message}; the account ${authorizerAppId} is authorized (its refresh token is stored), and its first call fetches an access token`,
        { path, cause: error, authorizerAppId },
      );
    }
    const key = this.#key('authorizer_access_token', authorizerAppId);
    const core = this.#core;
    // Written as a refresh writes it: never over a token dated later than api_query_auth's ask (a client
    // of the account refreshed meanwhile), through the guarded store (bounded by cacheTimeoutMs, a
    // CacheError on failure). A format that records no date (the peers') is overwritten, as the peers'
    // own authorizations do. Only the token and its life reach the schema: the answer also holds the
    // refresh token, which belongs in the durable store alone.
    const entries = new EntryStore({
      key,
      field: 'access_token',
      schema: core.schema,
      label: 'authorizer_access_token',
      appId: authorizerAppId,
      logKey: core.schema.redactKey?.(key) ?? key,
      log: core.log,
      now: core.settings.now,
    });
    const token: Fetched = { value: fetched.value, expiresIn: fetched.expiresIn, response: { authorizer_access_token: fetched.value, expires_in: fetched.expiresIn } };
    let written: Awaited<ReturnType<EntryStore['write']>>;
    try {
      written = await entries.write(core.store, entries.encode(token, startedAt, core.writer), { leaseHeld: true });
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      throw new CacheError(
        `${error.message}; the account ${authorizerAppId} is authorized (its refresh token is stored), and its first call fetches an access token`,
        { cause: error, reason: error.reason, authorizerAppId },
      );
    }
    if (written.stored) await this.#copyForPeer(authorizerAppId, [refresh], written.entry, fetched.expiresIn);
    this.#core.log.info(
      { event: 'authorizer.authorized', appId: this.appId, authorizerAppId, stored: written.stored, keptNewer: written.entry.value !== fetched.value },
      'An account authorized the component',
    );
  }

  /**
   * An ordinary OfficialAccount for an authorized account: template messages, JS-SDK tickets, any API;
   * its token is the authorizer_access_token, refreshed by this platform. Made on first use, kept while used.
   */
  officialAccount(authorizerAppId: string): OfficialAccount {
    return this.#client(authorizerAppId, 'official_account') as OfficialAccount;
  }

  /** An ordinary MiniProgram for an authorized mini program, as {@link officialAccount}. */
  miniProgram(authorizerAppId: string): MiniProgram {
    return this.#client(authorizerAppId, 'mini_program') as MiniProgram;
  }

  /**
   * Closes every authorizer client, the ones it dropped too while a caller holds them or awaits one of
   * their calls (their waits end; their refreshes and reports under way write, and release their locks,
   * before it resolves), waits for the writes of authorizations past api_query_auth and of verify-ticket
   * pushes under way, sends once more each refresh token WeChat handed back that the durable store has
   * not taken yet, and leaves the process's shared connection pools (closed with their last user; a
   * dispatcher of yours is left open). The cache and the durable store are yours to close.
   */
  close(): Promise<void> {
    // Once: a second call resolves when the first one's work is done, not before.
    return (this.#closing ??= this.#close());
  }

  async #close(): Promise<void> {
    this.#closed = true;
    this.#ended.abort();
    // The component token's waits end now, not once the authorizer clients are closed: their refreshes,
    // and the authorizations under way, wait for that token first (for another process's refresh of it,
    // up to lockWaitMs), and close() waits for them.
    this.#core.endWaits();
    await Promise.all([...this.#clients.clear().map(({ client }) => client.close()), this.#letGo.closeAll(), this.#core.closeBusy(), this.#storedAll()]);
    // The refreshes have ended: no refresh token is added to those kept unsaved any more.
    await this.#saveUnsavedAtClose();
    this.#durable.dispose();
    await this.#core.close();
  }

  /** `work` (an authorization, or a push's writes), counted under way until it settles: close() waits for it. */
  #whileStoring<T>(work: Promise<T>): Promise<T> {
    const settled: Promise<void> = work.then(
      () => void this.#storing.delete(settled),
      () => void this.#storing.delete(settled),
    );
    this.#storing.add(settled);
    return work;
  }

  /** Resolves once the writes under way (and any they let start) have settled; never rejects. */
  async #storedAll(): Promise<void> {
    while (this.#storing.size > 0) await Promise.all(this.#storing);
  }

  #key(entry: OpenPlatformEntry, authorizerAppId?: string): string {
    return this.#core.schema.openPlatformKey!(entry, this.appId, authorizerAppId);
  }

  #client(authorizerAppId: string, kind: 'official_account' | 'mini_program'): WeChatClient {
    if (this.#closed) throw new ConfigError('OpenPlatform is closed', 'authorizerAppId');
    if (!ID_RULE.accepts(authorizerAppId)) throw invalidOption('OpenPlatform', 'authorizerAppId', ID_RULE.allowed, authorizerAppId);
    const id = authorizerAppId;
    const held = this.#clients.get(id);
    if (held?.kind === kind && !clientClosed(held.client)) return held.client;
    // The account was last used as the other kind, or its caller closed the client (it would start no
    // refresh): that client goes.
    if (held) this.#letGo.add(this.#clients.delete(id)!.client);
    const custom: CustomToken = () => ({
      key: this.#key('authorizer_access_token', id),
      label: 'authorizer_access_token',
      upstream: this.#authorizerUpstream(id),
    });
    const options = {
      ...this.#options,
      appId: id,
      [kTokenSource]: custom,
      // A mini program's wx.login() codes go to WeChat with the component's token: no AppSecret of it here.
      ...(kind === 'mini_program' ? { [kCode2Session]: (jsCode: string, request: RequestOptions) => this.#code2Session(id, jsCode, request) } : {}),
    };
    const client =
      kind === 'official_account' ? new OfficialAccount(options as unknown as OfficialAccountOptions) : new MiniProgram(options as unknown as MiniProgramOptions);
    this.#clients.set(id, { client, kind });
    return client;
  }

  #componentUpstream(): Upstream<string> {
    const core = this.#core;
    const path = 'cgi-bin/component/api_component_token';
    const secret = this.#secret;
    const appId = this.appId;
    return {
      budgetMs: core.http.callBudgetMs,
      // A new component token supersedes the old one after a grace window, as the classic endpoint does.
      invalidatesPrevious: true,
      // A failure WeChat blames on the component secret holds back the processes on that secret only.
      get credentialDigest() {
        return credentialDigest(appId, secret);
      },
      prepare: () => this.#ticket(),
      fetch: async (_force, ticket) => {
        const body = await core.http.json({
          method: 'POST',
          path,
          json: { component_appid: this.appId, component_appsecret: this.#secret, component_verify_ticket: ticket },
          tokenFetch: true,
        });
        return validateFetched(body, 'component_access_token', path);
      },
    };
  }

  /** The stored verify ticket: every process reads the one the push handler wrote. */
  async #ticket(): Promise<string> {
    const key = this.#key('component_verify_ticket');
    const ticket = this.#decodeTicket(key, await this.#durable.get(key));
    if (!ticket) {
      throw new TokenUnavailableError(
        `No component_verify_ticket is stored for ${this.appId}: WeChat pushes one every 10 minutes to the callback URL, which must call handleCallback(); until then no component_access_token can be fetched`,
      );
    }
    return ticket.ticket;
  }

  async #storeTicket(ticket: string, createTime: number): Promise<void> {
    const key = this.#key('component_verify_ticket');
    const codec = this.#core.schema.openPlatformRecord?.(key);
    // A peer's format records no push time: there, the newer-ticket check cannot hold.
    const now = Math.floor(this.#core.settings.now() / 1000);
    // The ticket lasts 12 hours from its push, not from its arrival: a push delivered late, or a captured
    // one handed in again, keeps only what is left of its life, and one with none left is not stored.
    const ttl = Math.min(TICKET_TTL_SECONDS, createTime + TICKET_TTL_SECONDS - now);
    if (ttl <= 0) {
      this.#core.log.warn(
        { event: 'component_verify_ticket.not_stored', appId: this.appId, createTime, reason: 'expired' },
        'A pushed component_verify_ticket was not stored: it was pushed more than 12 hours ago, and is no longer valid',
      );
      return;
    }
    const value = codec ? codec.encode(ticket) : encodeTicketRecord(ticket, createTime, now);
    // A push delivered late (WeChat retries) must not replace a newer ticket, even one another process
    // stores between this read and this write: the write is an add or a compare-and-set on what was read.
    for (let round = 0; ; round += 1) {
      // A read that fails is the push's failure (the callback answers an error, and WeChat pushes again):
      // read as "no ticket", it sent an add against a key that holds one, refused three times, unlogged.
      const raw = await this.#durable.getOrOtherKind(key, OTHER_KIND);
      if (raw === OTHER_KIND) {
        throw new CacheError(
          `The key ${key} holds another kind of value than a component_verify_ticket (written by another program); the pushed ticket was not stored, and no component_access_token can be fetched until that key is removed`,
          { reason: 'type' },
        );
      }
      const stored = this.#decodeTicket(key, raw);
      if (stored && stored.createTime > createTime) return;
      let written: boolean;
      if (raw === undefined) {
        const added = this.#durable.add(key, value, ttl);
        written = added === undefined ? (await this.#durable.set(key, value, ttl), true) : await added;
      } else if (this.#durable.atomicCompareAndSet) {
        written = await this.#durable.compareAndSet(key, raw, value, ttl);
      } else {
        // A store without compare-and-set: the newer-ticket check above is all there is.
        await this.#durable.set(key, value, ttl);
        written = true;
      }
      if (written) break;
      // Written by someone else meanwhile; read again. A key rewritten this often is given up on.
      if (round >= 2) {
        this.#core.log.warn(
          { event: 'component_verify_ticket.not_stored', appId: this.appId, createTime, reason: 'contended' },
          'A pushed component_verify_ticket was not stored: the record changed under each of three writes (other processes storing pushes at once)',
        );
        return;
      }
    }
    this.#core.log.info({ event: 'component_verify_ticket.received', appId: this.appId, createTime }, 'Stored a new component_verify_ticket');
    await this.#endTicketBackoff();
  }

  /**
   * A new ticket ends the fleet's back-off of the component token that the old one caused (61005
   * expired, 61006 unknown): the next call fetches with the new ticket at once, rather than failing with
   * the old ticket's error for up to a minute more. One fetch more per push at most. Best effort: the
   * back-off also ends by itself.
   */
  async #endTicketBackoff(): Promise<void> {
    const store = this.#core.store;
    const key = new FailureGate(this.#component.key, 'component_access_token').key;
    try {
      const raw = await store.get(key);
      const errcode = decodeMarker(raw)?.errcode;
      if (raw !== undefined && (errcode === 61005 || errcode === 61006)) await store.deleteIfEquals(key, raw);
    } catch {
      // The store did not answer: the marker runs out by itself.
    }
  }

  /**
   * A new authorization ends the fleet's back-off of the account's token that the old one caused (61003
   * revoked, up to an hour; 61023 a refresh token no longer valid): the account's next refresh, with the
   * new refresh token, reaches WeChat at once rather than failing with the old authorization's error.
   * Best effort: the back-off also ends by itself.
   */
  async #endRevokedBackoff(entryKey: string): Promise<void> {
    const store = this.#core.store;
    const key = failureKey(entryKey);
    try {
      const raw = await store.get(key);
      const errcode = decodeMarker(raw)?.errcode;
      if (raw !== undefined && (errcode === 61003 || errcode === 61023)) await store.deleteIfEquals(key, raw);
    } catch {
      // The store did not answer: the marker runs out by itself.
    }
  }

  /** POST to a component API with the component token; on 40001/40014/42001, once more with a newer token. */
  #componentCall(path: string, json: Record<string, unknown>, signal?: AbortSignal): Promise<Record<string, unknown>> {
    return this.#withComponentToken(
      (token) => this.#sendWithComponentToken(token, { method: 'POST', path, query: { component_access_token: token }, json, signal }),
      signal,
    );
  }

  /**
   * An authorized mini program's `wx.login()` code for its user's session (`sns/component/jscode2session`):
   * with the component's token, which recovers from 40001 as for every component call.
   */
  async #code2Session(authorizerAppId: string, jsCode: string, options: RequestOptions): Promise<Code2SessionResult> {
    const path = 'sns/component/jscode2session';
    const query = { appid: authorizerAppId, js_code: jsCode, grant_type: 'authorization_code', component_appid: this.appId };
    const body = await this.#withComponentToken(
      (token) => this.#sendWithComponentToken(token, { method: 'GET', path, query: { ...query, component_access_token: token }, signal: options.signal }),
      options.signal,
    );
    return sessionOf(body, path);
  }

  /**
   * `call` with the component token; on 40001/40014/42001, once more with a newer token (twice at most).
   * `signal` (a caller's) stops this caller's waits for the token, as it stops a send's.
   */
  async #withComponentToken<T>(call: (token: string) => Promise<T>, signal?: AbortSignal): Promise<T> {
    let token = await this.#component.get(signal);
    const recovery = { fetched: false };
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await call(token);
      } catch (error) {
        if (!isTokenRejection(error) || attempt >= 2) throw error;
        const next = await this.#component.recover(token, error.errcode, recovery, signal);
        if (next === undefined) throw error;
        token = next;
      }
    }
  }

  #authorizerUpstream(authorizerAppId: string): Upstream<string> {
    // Only the fetch is the account's own: 10,000 accounts share the rest.
    return {
      ...this.#authorizerShared,
      fetch: (_force, componentToken) => this.#refreshAuthorizer(authorizerAppId, componentToken),
      fromPeer: (rejected) => this.#peerToken(authorizerAppId, rejected),
      afterWrite: async (fetched, stored) => {
        const under = this.#copyUnder.get(fetched);
        if (!under) return;
        this.#copyUnder.delete(fetched);
        await this.#copyForPeer(authorizerAppId, under, stored, fetched.expiresIn);
      },
    };
  }

  #sharedAuthorizerUpstream(): Omit<Upstream<string>, 'fetch'> {
    const core = this.#core;
    return {
      budgetMs: REFRESH_HTTP_CALLS * core.http.callBudgetMs + (REFRESH_DURABLE_CALLS + REFRESH_COPY_CALLS) * core.cacheTimeoutMs + REFRESH_PAUSES_MS,
      invalidatesPrevious: true,
      // The component token is got before the lock is taken, so the lock guards only the refresh itself.
      prepare: (signal) => this.#component.get(signal),
      rejectsInput: (error) => isTokenRejection(error) && error.path.startsWith('cgi-bin/component/'),
      dropInput: (componentToken, error) => this.#component.rejectedOnCall(componentToken, (error as WeChatApiError).errcode),
    };
  }

  /**
   * One refresh of an authorizer's access token, under its refresh lock:
   * 1. write-ahead: the record is marked "refresh under way with token T" (no call without it);
   * 2. api_authorizer_token with T;
   * 3. the token WeChat handed back (maybe a new one) replaces T in the record.
   * A holder that dies between 2 and 3 leaves T marked; if WeChat rotated it meanwhile (61023), the next
   * holder asks api_get_authorizer_info for the current one, so the refresh token is never lost.
   *
   * Every write is a compare-and-set against the record this refresh read or last wrote. A holder
   * stalled past its lease (a long queue, a GC pause, a slow durable store) may find that another took
   * the lock, recovered and rotated the token meanwhile: the record has changed, and the stalled holder
   * writes nothing, so it never puts back a refresh token WeChat has rotated away. An authorization
   * writes without the lock (see {@link OpenPlatform.handleAuthorization}): every record keeps the
   * `origin` of its line, so that the authorization can tell whether a token was rotated from its own.
   */
  async #refreshAuthorizer(authorizerAppId: string, componentToken: string): Promise<Fetched> {
    const key = this.#key('authorizer_refresh_token', authorizerAppId);
    // A token WeChat handed this process that the store did not take is written before the record is read.
    const unsaved = this.#unsaved.get(authorizerAppId);
    if (unsaved) await this.#saveUnsaved(authorizerAppId, unsaved);
    const raw = await this.#durable.get(key);
    // A peer's bare refresh token carries no write-ahead: a 61023 is then recovered all the same.
    const stored = this.#decodeRefreshRecord(key, raw);
    const held: HeldRecord = { key, raw };
    // A token api_get_authorizer_info names starts a line of its own (its origin).
    let line: RefreshLine = stored ?? { token: await this.#currentRefreshToken(authorizerAppId, componentToken, 'missing'), fromWeChat: true };
    try {
      return await this.#refreshWith(authorizerAppId, componentToken, line, held);
    } catch (error) {
      if (!(error instanceof WeChatApiError) || error.errcode !== 61023) throw error;
      // WeChat no longer takes T: a holder died after WeChat rotated it (the record says so when it was
      // left marked), the account authorized again, or the record was restored from an old copy. WeChat
      // tells the current one.
      const current = await this.#currentRefreshToken(authorizerAppId, componentToken, stored?.pendingSince !== undefined ? 'interrupted' : 'rejected');
      if (current === line.token) throw error;
      line = { token: current, fromWeChat: true };
      return await this.#refreshWith(authorizerAppId, componentToken, line, held);
    }
  }

  async #refreshWith(authorizerAppId: string, componentToken: string, line: RefreshLine, held: HeldRecord): Promise<Fetched> {
    const path = 'cgi-bin/component/api_authorizer_token';
    const { token } = line;
    // The record keeps the origin of its line: a token WeChat named starts one, a rotation keeps it.
    const origin = line.fromWeChat ? refreshOrigin(token) : line.origin;
    const now = Math.floor(this.#core.settings.now() / 1000);
    // The write-ahead: if it fails, WeChat is not asked (a rotation then could not be recorded). If the
    // record changed since it was read, another process holds the refresh now: WeChat is not asked either,
    // unless the record now holds, unmarked, the very token WeChat just named current: an authorization
    // wrote it meanwhile, over the token this refresh read and WeChat refused. No refresh is under way
    // with it, and the write-ahead goes on from that record.
    const ahead = this.#refreshValue(held.key, { token, origin, pendingSince: now, pendingBy: this.#core.writer });
    let marked = await this.#replaceRefresh(held, ahead, false);
    if (!marked && line.fromWeChat && (await this.#adoptSettled(held, token))) marked = await this.#replaceRefresh(held, ahead, false);
    if (!marked) {
      this.#superseded(authorizerAppId);
      throw new TokenUnavailableError(
        `The refresh token record of authorizer ${authorizerAppId} changed under this refresh (another process took over after this one outlived its lock's lease, or an authorization stored a new token); the next call takes the token stored since`,
      );
    }
    const body = await this.#postWithComponentToken(path, componentToken, { component_appid: this.appId, authorizer_appid: authorizerAppId, authorizer_refresh_token: token }, true);
    const next = typeof body.authorizer_refresh_token === 'string' && body.authorizer_refresh_token !== '' ? body.authorizer_refresh_token : token;
    let fetched: Fetched;
    try {
      fetched = validateFetched(body, 'authorizer_access_token', path);
    } catch (error) {
      // A new refresh token beside an unusable access token is WeChat's current one all the same (the
      // one sent is refused from now on): it is stored first, as an authorization stores its own.
      if (!(error instanceof BadResponseError) || next === token) throw error;
      if ((await this.#storeRefreshed(authorizerAppId, held, { token: next, origin }, true)) !== 'stored') throw error;
      throw new BadResponseError(`${error.message}; the new refresh token in the answer is stored, and the next call fetches an access token with it`, {
        path,
        cause: error,
      });
    }
    const outcome = await this.#storeRefreshed(authorizerAppId, held, { token: next, origin }, next !== token);
    const result: Fetched = { value: fetched.value, expiresIn: fetched.expiresIn, response: { authorizer_access_token: fetched.value, expires_in: fetched.expiresIn } };
    // The peers' copies are written once the cache holds the entry (afterWrite), under these refresh tokens.
    if (outcome !== 'superseded' && this.#core.schema.openPlatformTokenCopy) this.#copyUnder.set(result, [token, next]);
    return result;
  }

  /**
   * A refresh's final write: the refresh token WeChat handed back, over the write-ahead. Sent up to
   * DURABLE_WRITE_ATTEMPTS times, whatever the store's breaker says, a pause apart. `superseded`: the
   * record changed meanwhile (another process took over after this one outlived its lease, or an
   * authorization stored a newer token), and is left alone. `unsaved`: no attempt went through; this
   * process keeps the token and writes it when the store answers again (or at the account's next
   * refresh here), and until then the record holds the old token, marked.
   */
  async #storeRefreshed(authorizerAppId: string, held: HeldRecord, record: RefreshRecord, rotated: boolean): Promise<'stored' | 'superseded' | 'unsaved'> {
    const value = this.#refreshValue(held.key, record);
    let replaced: boolean;
    try {
      replaced = await persist((retry) => this.#replaceRefresh(held, value, retry, true));
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      const unsaved: UnsavedRefresh = { held: { ...held }, value, rotated };
      this.#unsaved.set(authorizerAppId, unsaved);
      this.#saveAtRecovery(authorizerAppId, unsaved);
      this.#core.log.error(
        { event: 'authorizer_refresh_token.unsaved', appId: this.appId, authorizerAppId, ...(error.reason ? { reason: error.reason } : {}) },
        'WeChat handed back a refresh token that the durable store did not take; this process writes it when the store answers again (if it exits first, the next refresh asks WeChat for it)',
      );
      return 'unsaved';
    }
    this.#refreshStored(authorizerAppId, replaced, rotated);
    return replaced ? 'stored' : 'superseded';
  }

  /**
   * Writes a refresh token the store did not take (see {@link #storeRefreshed}) over the record it was to
   * replace, once at a time; never rejects. Not taken again (refused unsent while the store is taken for
   * down): written at the store's next recovery.
   */
  #saveUnsaved(authorizerAppId: string, unsaved: UnsavedRefresh, insist = false): Promise<void> {
    unsaved.writing ??= (async () => {
      try {
        const replaced = await this.#replaceRefresh(unsaved.held, unsaved.value, true, insist);
        if (this.#unsaved.get(authorizerAppId) === unsaved) this.#unsaved.delete(authorizerAppId);
        this.#refreshStored(authorizerAppId, replaced, unsaved.rotated);
      } catch {
        unsaved.writing = undefined;
        if (this.#unsaved.get(authorizerAppId) === unsaved) this.#saveAtRecovery(authorizerAppId, unsaved);
      }
    })();
    return unsaved.writing;
  }

  #saveAtRecovery(authorizerAppId: string, unsaved: UnsavedRefresh): void {
    // Closed: the last try was close()'s own; the store may be closed by now.
    if (unsaved.waiting || this.#closed) return;
    unsaved.waiting = true;
    const save = () => {
      unsaved.waiting = false;
      if (!this.#closed) void this.#saveUnsaved(authorizerAppId, unsaved);
    };
    // A store not taken for down (it answered another client meanwhile, or failed in a way that is no
    // outage) has no recovery to wait for: tried again after a pause, 1 s doubling up to a minute.
    if (!this.#durable.downFor(unsaved.held.key)) {
      const tries = (unsaved.tries = (unsaved.tries ?? 0) + 1);
      setTimeout(save, Math.min(1_000 * 2 ** (tries - 1), 60_000)).unref?.();
      return;
    }
    this.#durable.onRecovered(save, unsaved.held.key);
  }

  /**
   * At close(), each refresh token still kept unsaved is sent once more, even while the store is taken for
   * down (its recovery or its next try would come after the process may have exited, or closed the store).
   * One that does not go through is logged: the account's next refresh takes its current one from WeChat.
   */
  async #saveUnsavedAtClose(): Promise<void> {
    await Promise.all(
      [...this.#unsaved].map(async ([authorizerAppId, unsaved]) => {
        await unsaved.writing;
        if (this.#unsaved.get(authorizerAppId) === unsaved) await this.#saveUnsaved(authorizerAppId, unsaved, true);
        if (this.#unsaved.get(authorizerAppId) !== unsaved) return;
        this.#unsaved.delete(authorizerAppId);
        this.#core.log.error(
          { event: 'authorizer_refresh_token.unsaved', appId: this.appId, authorizerAppId, closed: true },
          "The platform closed before the durable store took the refresh token WeChat handed back; the account's next refresh takes its current one from WeChat",
        );
      }),
    );
  }

  /** What became of a refresh token this refresh wrote: logged as stored (when WeChat rotated it), or as superseded. */
  #refreshStored(authorizerAppId: string, replaced: boolean, rotated: boolean): void {
    if (!replaced) this.#superseded(authorizerAppId);
    else if (rotated) {
      this.#core.log.info({ event: 'authorizer_refresh_token.rotated', appId: this.appId, authorizerAppId }, 'WeChat handed out a new authorizer refresh token; stored it');
    }
  }

  /**
   * One POST with a component token (a component API's call, or an authorizer's refresh: `tokenFetch`):
   * whether WeChat took the token is told to the component token's manager. A token that worked and is
   * rejected later was replaced, and its replacement is fetched at once; one that never did is spaced.
   */
  #postWithComponentToken(path: string, componentToken: string, json: Record<string, unknown>, tokenFetch: boolean): Promise<Record<string, unknown>> {
    return this.#sendWithComponentToken(componentToken, { method: 'POST', path, query: { component_access_token: componentToken }, json, tokenFetch });
  }

  /** A request carrying `componentToken`, which tells the component token's manager whether WeChat took it. */
  #sendWithComponentToken(componentToken: string, request: HttpRequest): Promise<Record<string, unknown>> {
    return this.#component.carrying(componentToken, () => this.#core.http.json(request));
  }

  /** The refresh token WeChat holds now for the authorizer (api_get_authorizer_info), written to the durable store. */
  async #currentRefreshToken(authorizerAppId: string, componentToken: string, why: 'missing' | 'interrupted' | 'rejected'): Promise<string> {
    const path = 'cgi-bin/component/api_get_authorizer_info';
    const body = await this.#postWithComponentToken(path, componentToken, { component_appid: this.appId, authorizer_appid: authorizerAppId }, true);
    const token = (body.authorization_info as Record<string, unknown> | undefined)?.authorizer_refresh_token;
    if (typeof token !== 'string' || token === '') throw new BadAnswer(path);
    this.#core.log.warn(
      { event: 'authorizer_refresh_token.recovered', appId: this.appId, authorizerAppId, reason: why },
      why === 'missing'
        ? 'No refresh token was stored for the authorizer; took the current one from WeChat'
        : why === 'interrupted'
          ? 'A refresh was interrupted after WeChat rotated the refresh token; took the current one from WeChat'
          : 'WeChat no longer accepted the stored refresh token; took the current one from WeChat',
    );
    return token;
  }

  /** The refresh token WeChat holds now for the authorizer (api_get_authorizer_info), or undefined when it did not say. */
  async #refreshTokenAtWeChat(authorizerAppId: string): Promise<string | undefined> {
    try {
      const body = await this.#componentCall('cgi-bin/component/api_get_authorizer_info', { component_appid: this.appId, authorizer_appid: authorizerAppId });
      const token = (body.authorization_info as Record<string, unknown> | undefined)?.authorizer_refresh_token;
      return typeof token === 'string' && token !== '' ? token : undefined;
    } catch {
      return undefined;
    }
  }

  /** The record's value: wxkit's record, or a peer's format for the key (the token alone, no write-ahead mark). */
  #refreshValue(key: string, record: RefreshRecord): string {
    const codec = this.#core.schema.openPlatformRecord?.(key);
    return codec ? codec.encode(record.token) : encodeRefreshRecord(record, Math.floor(this.#core.settings.now() / 1000), this.#core.writer);
  }

  /**
   * Writes `value` if the record still holds what `held` says (absent: `add`), and remembers it. `retry`:
   * an earlier attempt's answer was lost, so a refusal is checked against what the store holds (that
   * attempt may have written it). `insist`: sent while the store is taken for down. A store without an
   * atomic add writes unconditionally, and one without an atomic compareAndSet reads and compares first:
   * both are then only as safe as the lease.
   */
  async #replaceRefresh(held: HeldRecord, value: string, retry: boolean, insist = false): Promise<boolean> {
    let replaced: boolean;
    if (held.raw === undefined) {
      const added = this.#durable.add(held.key, value, REFRESH_TTL_SECONDS, insist);
      if (added === undefined) await this.#durable.set(held.key, value, REFRESH_TTL_SECONDS, insist);
      replaced = added === undefined ? true : await added;
    } else {
      replaced = await this.#durable.compareAndSet(held.key, held.raw, value, REFRESH_TTL_SECONDS, insist);
    }
    if (!replaced && retry) replaced = (await this.#durable.get(held.key, insist)) === value;
    if (replaced) held.raw = value;
    return replaced;
  }

  #superseded(authorizerAppId: string): void {
    this.#core.log.warn(
      { event: 'authorizer_refresh_token.superseded', appId: this.appId, authorizerAppId },
      'The authorizer refresh token record changed during this refresh (another process took over after this one outlived its lock lease, or an authorization stored a newer token); left it as it is',
    );
  }

  /** The stored record: wxkit's, or a peer's bare token (no write-ahead mark, no origin). */
  #decodeRefreshRecord(key: string, raw: string | undefined): RefreshRecord | undefined {
    const codec = this.#core.schema.openPlatformRecord?.(key);
    return codec ? wrapToken(raw === undefined ? undefined : codec.decode(raw)) : decodeRefresh(raw);
  }

  /** Whether the record holds `token` unmarked (wxkit's record only); if so, `held` takes it as what was read. */
  async #adoptSettled(held: HeldRecord, token: string): Promise<boolean> {
    if (this.#core.schema.openPlatformRecord?.(held.key)) return false;
    const raw = await this.#durable.get(held.key);
    const stored = decodeRefresh(raw);
    if (stored?.token !== token || stored.pendingSince !== undefined) return false;
    held.raw = raw;
    return true;
  }

  /**
   * The refresh token api_query_auth handed out, written unless the record already holds it or a token
   * WeChat rotated it into (same origin): a compare-and-set against what was read, read again when
   * another write landed in between.
   */
  async #storeAuthorization(authorizerAppId: string, token: string, askedAt: number): Promise<void> {
    const key = this.#key('authorizer_refresh_token', authorizerAppId);
    const origin = refreshOrigin(token);
    const value = this.#refreshValue(key, { token, origin });
    for (let round = 0; round < AUTHORIZATION_WRITE_ROUNDS; round += 1) {
      // The authorization code is spent: a round that fails is sent again, past the store's breaker. An
      // attempt whose answer was lost after the store took it is found by the next one's read.
      let done: boolean;
      try {
        done = await persist(async () => {
          const held: HeldRecord = { key, raw: await this.#durable.get(key, true) };
          const stored = this.#decodeRefreshRecord(key, held.raw);
          if (stored?.token === token || stored?.origin === origin) return true;
          // A record of another line written since api_query_auth was asked may hold the token of a later
          // authorization of the account (the admin authorized again), which replaced this one at WeChat:
          // WeChat says which is current, and a token it no longer takes is not written over it.
          // Another host's updated_at is on its clock: one behind ours by up to an hour still counts as since.
          if (stored && updatedSince(held.raw, askedAt - AUTHORIZATION_CLOCK_SKEW_S)) {
            const current = await this.#refreshTokenAtWeChat(authorizerAppId);
            if (current !== undefined && current !== token) return true;
          }
          return this.#replaceRefresh(held, value, false, true);
        });
      } catch (error) {
        if (!(error instanceof CacheError)) throw error;
        this.#core.log.error(
          { event: 'authorizer_refresh_token.unsaved', appId: this.appId, authorizerAppId, ...(error.reason ? { reason: error.reason } : {}) },
          "The durable store did not take the refresh token of an account that has just authorized (its authorization code is spent); the account's first refresh takes its current one from WeChat",
        );
        throw new CacheError(
          `The durable store did not take the refresh token of authorizer ${authorizerAppId}, which has authorized the component (the authorization code is spent and cannot be used again); its first refresh takes the current refresh token from WeChat (api_get_authorizer_info)`,
          { cause: error, reason: error.reason, authorizerAppId },
        );
      }
      if (done) return;
    }
    this.#core.log.error(
      { event: 'authorizer_refresh_token.unsaved', appId: this.appId, authorizerAppId },
      'The authorization\'s refresh token could not be stored: the record kept changing under it; the next refresh asks WeChat for the current one',
    );
  }

  /**
   * The peer's own copy of an authorizer's access token (EasyWeChat 6 keys it by the md5 of the refresh
   * token its caller passes in): `entry`, the one this process just put in the cache, written for each
   * refresh token given (the one a refresh used and, if WeChat rotated it, the new one), side by side.
   * Best effort: a copy the store does not take costs the peer a refresh of its own (and wxkit one more
   * fetch or one recovery from 40001), so it is logged, never thrown, and it does not take the store for
   * down. `expiresIn`: the token's life when the entry records no expiry.
   */
  async #copyForPeer(authorizerAppId: string, refreshTokens: readonly string[], entry: StoredEntry, expiresIn: number): Promise<void> {
    const { schema, settings, store } = this.#core;
    const life = entry.expiresAt === undefined ? expiresIn : entry.expiresAt - Math.floor(settings.now() / 1000);
    if (!schema.openPlatformTokenCopy || life <= 0) return;
    const copyUnder = async (refreshToken: string) => {
      try {
        const copy = schema.openPlatformTokenCopy!(this.appId, authorizerAppId, refreshToken);
        if (copy) await store.setBeside(copy.key, copy.encode(entry.value), copy.ttlSeconds(life));
      } catch (error) {
        this.#copyFailed(authorizerAppId, 'write', error);
      }
    };
    await Promise.all([...new Set(refreshTokens)].map(copyUnder));
  }

  /**
   * The token a peer SDK fetched on its own and keeps in its copy for the refresh token wxkit holds
   * (EasyWeChat 6 refreshed while wxkit did not), unless `rejected` refuses it or less than ten minutes of
   * its copy are left: taken instead of a refresh, which would invalidate the token the peer uses. The
   * copy's TTL runs `marginSeconds` short of the token's life (EasyWeChat's 500 s), so its life is the
   * TTL left plus that, and wxkit's entry (as short) runs out with the copy. Undefined otherwise.
   */
  async #peerToken(authorizerAppId: string, rejected: (value: string) => boolean): Promise<Fetched | undefined> {
    const schema = this.#core.schema;
    if (!schema.openPlatformTokenCopy) return undefined;
    try {
      const recordKey = this.#key('authorizer_refresh_token', authorizerAppId);
      const record = this.#decodeRefreshRecord(recordKey, await this.#durable.get(recordKey));
      // A refresh left under way (its holder died) may have had WeChat replace the copy's token already.
      const copy = record && record.pendingSince === undefined ? schema.openPlatformTokenCopy(this.appId, authorizerAppId, record.token) : undefined;
      if (!copy) return undefined;
      const { raw, ttlMs } = await this.#core.store.readBeside(copy.key);
      const value = raw === undefined ? undefined : copy.decode(raw);
      // A copy without an expiry (ttlMs Infinity), or a TTL no store gives, is not taken either.
      if (value === undefined || !isPlausibleToken(value) || rejected(value)) return undefined;
      if (ttlMs === undefined || !Number.isFinite(ttlMs) || ttlMs < PEER_TOKEN_MIN_MS) return undefined;
      return { value, expiresIn: Math.min(Math.floor(ttlMs / 1000) + copy.marginSeconds, PEER_TOKEN_MAX_LIFE_S) };
    } catch (error) {
      this.#copyFailed(authorizerAppId, 'read', error);
      return undefined;
    }
  }

  #copyFailed(authorizerAppId: string, op: 'read' | 'write', error: unknown): void {
    this.#core.log.warn(
      { event: 'authorizer_access_token.copy_failed', appId: this.appId, authorizerAppId, op, ...(error instanceof CacheError && error.reason ? { reason: error.reason } : {}) },
      op === 'write'
        ? "The store did not take the copy of the authorizer's access token the peer SDK reads; the peer fetches one of its own"
        : "The store did not answer the read of the peer SDK's copy of the authorizer's access token; a refresh goes on as usual",
    );
  }

  /** The stored ticket, in wxkit's record or in a peer's format (which records no push time). */
  #decodeTicket(key: string, raw: string | undefined): { ticket: string; createTime: number } | undefined {
    const codec = this.#core.schema.openPlatformRecord?.(key);
    if (!codec) return decodeTicket(raw);
    const ticket = raw === undefined ? undefined : codec.decode(raw);
    return ticket ? { ticket, createTime: 0 } : undefined;
  }

  #warnIfEvictable(store: TokenCache): void {
    // The class of the store and of the store it wraps, and every class they extend (a subclass of
    // MemcachedCache that counts or logs its calls is a memcached all the same).
    const names = [store, (store as { store?: unknown })?.store].flatMap(classNames);
    if (!names.some((name) => /memcache/i.test(name))) return;
    this.#core.log.warn(
      { event: 'durable_store.evictable', appId: this.appId },
      'OpenPlatform options.durableStore is a memcached: it evicts entries under memory pressure and on restart, and a lost refresh token must be fetched from WeChat again (or, if the account revoked meanwhile, authorized again). Use Postgres through Keyv, a FileCache, or Redis with persistence',
    );
  }
}

/**
 * `write`, sent again after a CacheError, up to DURABLE_WRITE_ATTEMPTS times in all and
 * DURABLE_RETRY_PAUSE_MS apart; `retry` tells it an earlier attempt failed (whose answer may have been
 * lost after the store took it). A value no store can hold is not sent again. The last failure is thrown.
 */
async function persist<T>(write: (retry: boolean) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await write(attempt > 1);
    } catch (error) {
      if (!(error instanceof CacheError) || error.reason === 'value' || attempt >= DURABLE_WRITE_ATTEMPTS) throw error;
      await new Promise((resolve) => setTimeout(resolve, DURABLE_RETRY_PAUSE_MS));
    }
  }
}

/** An answer without the fields WeChat documents. */
class BadAnswer extends BadResponseError {
  constructor(path: string) {
    super(`WeChat answered ${path} without the fields it documents`, { path });
  }
}

/**
 * The stored verify ticket (docs/key-schema.md): WeChat's field name first, then the push's CreateTime
 * and when it was received, unix seconds.
 * @internal
 */
export function encodeTicketRecord(ticket: string, createTime: number, receivedAt: number): string {
  return textToBinary(JSON.stringify({ component_verify_ticket: ticket, create_time: createTime, received_at: receivedAt }));
}

/**
 * The stored refresh token (docs/key-schema.md). `pending_since` / `pending_by` are the write-ahead:
 * present while a refresh with this token is under way, or after one was interrupted.
 * @internal
 */
export function encodeRefreshRecord(record: RefreshRecord, updatedAt: number, updatedBy: string): string {
  return textToBinary(
    JSON.stringify({
      authorizer_refresh_token: record.token,
      updated_at: updatedAt,
      updated_by: updatedBy,
      ...(record.origin === undefined ? {} : { origin: record.origin }),
      ...(record.pendingSince === undefined ? {} : { pending_since: record.pendingSince, pending_by: record.pendingBy }),
    }),
  );
}

/** @internal */
export function decodeTicket(raw: string | undefined): { ticket: string; createTime: number } | undefined {
  const record = parseObject(raw);
  const ticket = record?.component_verify_ticket;
  if (typeof ticket !== 'string' || ticket === '') return undefined;
  return { ticket, createTime: typeof record!.create_time === 'number' ? record!.create_time : 0 };
}

/**
 * What a record keeps of the token its line started from: the first 16 hex digits of the SHA-256 of its
 * UTF-8 bytes (docs/key-schema.md). Enough to recognise the token, and no copy of it.
 * @internal
 */
export function refreshOrigin(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex').slice(0, 16);
}

/**
 * What the key of a code's record holds of the code: the SHA-256 of its UTF-8 bytes, 64 hex digits
 * (docs/key-schema.md). The code grants the account's tokens until it is spent: it is never stored.
 * @internal
 */
export function authorizationCodeDigest(code: string): string {
  return createHash('sha256').update(code, 'utf8').digest('hex');
}

/**
 * The record of a spent authorization code (docs/key-schema.md): what api_query_auth answered that a
 * second caller of the code is given, no token.
 * @internal
 */
export function encodeAuthorizationRecord(authorization: Authorization, authorizedAt: number, authorizedBy: string): string {
  return textToBinary(
    JSON.stringify({ authorizer_appid: authorization.authorizerAppId, func_info: authorization.funcInfo, authorized_at: authorizedAt, authorized_by: authorizedBy }),
  );
}

/** @internal */
export function decodeAuthorizationRecord(raw: string | undefined): Authorization | undefined {
  const record = parseObject(raw);
  const appId = record?.authorizer_appid;
  if (typeof appId !== 'string' || !ID_RULE.accepts(appId)) return undefined;
  const funcInfo = Array.isArray(record!.func_info) ? record!.func_info.filter((id): id is number => typeof id === 'number') : [];
  return { authorizerAppId: appId, funcInfo };
}


/** The names of the classes `value` is an instance of, its own first (none for a value that is no object). */
function classNames(value: unknown): string[] {
  const names: string[] = [];
  let proto: unknown = typeof value === 'object' && value !== null ? Object.getPrototypeOf(value) : null;
  for (let depth = 0; proto && proto !== Object.prototype && depth < 16; depth += 1) {
    const name = (proto as { constructor?: { name?: unknown } }).constructor?.name;
    if (typeof name === 'string') names.push(name);
    proto = Object.getPrototypeOf(proto);
  }
  return names;
}

/** How far behind ours (seconds) the clock of a host that wrote a record since api_query_auth may run. */
const AUTHORIZATION_CLOCK_SKEW_S = 3600;

/**
 * Whether the refresh-token record `raw` may have been written at or after `at` (unix seconds): wxkit's
 * record says when by updated_at; a bare token (a peer's layout, which wxkit's processes write too) never
 * says, so it may have been.
 */
function updatedSince(raw: string | undefined, at: number): boolean {
  const updatedAt = parseObject(raw)?.updated_at;
  return typeof updatedAt !== 'number' || updatedAt >= at;
}

function wrapToken(token: string | undefined): RefreshRecord | undefined {
  return token ? { token } : undefined;
}

/** @internal */
export function decodeRefresh(raw: string | undefined): RefreshRecord | undefined {
  const record = parseObject(raw);
  const token = record?.authorizer_refresh_token;
  if (typeof token !== 'string' || token === '') return undefined;
  return {
    token,
    ...(typeof record!.origin === 'string' ? { origin: record!.origin } : {}),
    ...(typeof record!.pending_since === 'number' ? { pendingSince: record!.pending_since } : {}),
    ...(typeof record!.pending_by === 'string' ? { pendingBy: record!.pending_by } : {}),
  };
}

/** A stored record: UTF-8 JSON, handed over by the store as a binary string (see TokenCache). */
function parseObject(raw: string | undefined): Record<string, unknown> | undefined {
  if (raw === undefined) return undefined;
  try {
    const parsed = JSON.parse(binaryToText(raw)) as unknown;
    return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

// A framework's parser may hand over arrays (`?nonce=1&nonce=2`), objects (`?nonce[a]=1`) or numbers (a
// parser that converts digits: WeChat's timestamp and nonce are digits, so the number is their text).
function flattenQuery(query: Readonly<Record<string, unknown>>): [string, string][] {
  const pairs: [string, string][] = [];
  for (const [name, value] of Object.entries(query ?? {})) {
    const first = queryText(Array.isArray(value) ? value[0] : value);
    if (first !== undefined) pairs.push([name, first]);
  }
  return pairs;
}

