import type { RequestOptions } from '../api-client.js';
import type { TokenCache } from '../cache.js';
import { ClientCore, ID_RULE, checkClientOptions, clientSchema, kForwardEvents, kPoolCore, type ClientOptions, type OwnKeys } from '../client-core.js';
import { kTokenSource, type CustomToken } from '../clients/app-token.js';
import { ClientLru, LetGo } from '../clients/client-lru.js';
import { MiniProgram, kCode2Session, type MiniProgramOptions } from '../clients/mini-program.js';
import { OfficialAccount, type OfficialAccountOptions } from '../clients/official-account.js';
import { clientClosed, type WeChatClient } from '../clients/wechat-client.js';
import type { TokenEvents } from '../events.js';
import { ConfigError } from '../errors.js';
import { GuardedStore, TOKEN_CACHE_RULE } from '../store.js';
import type { OpenPlatformEntry } from '../token/entry.js';
import { validateFetched } from '../token/upstream.js';
import { durationMs, integer, invalidOption, required, secretString, type OptionSchema } from '../validate.js';
import { Authorizations } from './authorization.js';
import { AuthorizerRefresh } from './authorizer-refresh.js';
import { CallbackReader, type CallbackRequest, type OpenPlatformPush } from './callback.js';
import { Component } from './component.js';
import type { PlatformContext } from './context.js';
import { CALLBACK_TOKEN_RULE, ENCODING_AES_KEY_RULE, MessageCrypto } from './crypto.js';
import { PeerCopies } from './peer-copy.js';
import type { Authorization } from './records.js';
import { VerifyTicket } from './verify-ticket.js';

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
  /** An authorizer client unused longer than this, in ms, is dropped at the next lookup (no timers). @default 600000 */
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

const OWN_OPTIONS = {
  appId: required(ID_RULE),
  secret: required(secretString()),
  token: CALLBACK_TOKEN_RULE,
  encodingAESKey: ENCODING_AES_KEY_RULE,
  durableStore: required(
    TOKEN_CACHE_RULE,
    "is required: the authorizers' refresh tokens must live in a store that does not evict (Postgres through Keyv, a FileCache, Redis with persistence and noeviction)",
  ),
  maxClients: integer(1, Number.MAX_SAFE_INTEGER),
  clientIdleMs: durationMs(),
  pushMaxAgeMs: durationMs(1000),
} as const satisfies OptionSchema<OwnKeys<OpenPlatformOptions>>;
const SCHEMA = clientSchema<OpenPlatformOptions>(OWN_OPTIONS);
const DEFAULTS = Object.freeze({ maxClients: 1000, clientIdleMs: 600_000, pushMaxAgeMs: 300_000 });


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
 * // The raw body, as WeChat sent it (a string or its bytes): no JSON or form parser on this route.
 * app.post('/wechat/open', express.text({ type: () => true }), async (req, res) => {
 *   try {
 *     await open.handleCallback({ query: req.query, body: req.body });
 *     res.send('success');
 *   } catch (error) {
 *     console.warn('WeChat callback refused:', error); // its code, reason and message; never the body or a secret
 *     res.status(error instanceof MessageCryptoError ? 403 : 500).end(); // not from WeChat, or a store down: WeChat retries
 *   }
 * });
 * await open.officialAccount(authorizerAppId).templateMessage.send({ touser, template_id, data });
 * ```
 */
export class OpenPlatform {
  readonly appId: string;
  readonly #core: ClientCore;
  readonly #durable: GuardedStore;
  readonly #callbacks: CallbackReader;
  readonly #ticket: VerifyTicket;
  readonly #component: Component;
  readonly #refresh: AuthorizerRefresh;
  readonly #authorizations: Authorizations;
  /** The options every authorizer client is made with: the client options, without the component's own. */
  readonly #options: ClientOptions;
  readonly #clients: ClientLru<{ client: WeChatClient; kind: 'official_account' | 'mini_program' }>;
  readonly #letGo = new LetGo();
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
    // Checked before the core is made, which holds a use of the process's shared connection pools from
    // then on: a platform refused after it would keep them open past their last client. The default
    // schema (nativeSchema()) has open-platform keys.
    if (opts.schema !== undefined && !opts.schema.openPlatformKey) {
      throw invalidOption('OpenPlatform', 'schema', `a KeySchema with open-platform keys (${opts.schema.name} has none; use nativeSchema())`, opts.schema);
    }
    this.#core = new ClientCore('OpenPlatform', this.appId, this.#options);
    this.#durable = new GuardedStore(opts.durableStore, this.#core.cacheTimeoutMs, this.#core.log, this.appId);
    this.#warnIfEvictable(opts.durableStore);
    // The authorizer clients share this platform's HTTP client, stores and key schema: each account
    // costs its token manager, not a copy of those. Without a dispatcher of the caller's, that HTTP client
    // sends through the process's shared pools of the origin, as a plain client does: sockets per origin
    // and process, not per account nor per platform.
    (this.#options as Record<symbol, unknown>)[kPoolCore] = this.#core;
    // open.on('authorizer_access_token.fetched', …) hears every authorizer's client, made again or not.
    (this.#options as Record<symbol, unknown>)[kForwardEvents] = this.#core;
    const schema = this.#core.schema;
    const ctx: PlatformContext = {
      appId: this.appId,
      core: this.#core,
      durable: this.#durable,
      ended: this.#ended.signal,
      key: (entry: OpenPlatformEntry, authorizerAppId?: string) => schema.openPlatformKey!(entry, this.appId, authorizerAppId),
    };
    const pushMaxAgeMs = opts.pushMaxAgeMs ?? DEFAULTS.pushMaxAgeMs;
    this.#callbacks = new CallbackReader(new MessageCrypto({ token: opts.token, encodingAESKey: opts.encodingAESKey, appId: this.appId }), pushMaxAgeMs, this.#core.settings.now, this.#core.log, this.appId);
    this.#ticket = new VerifyTicket(ctx, pushMaxAgeMs);
    this.#component = new Component(ctx, opts.secret, this.#ticket);
    const peers = new PeerCopies(ctx);
    this.#refresh = new AuthorizerRefresh(ctx, this.#component, peers);
    this.#authorizations = new Authorizations(ctx, this.#component, this.#refresh, peers, (work) => this.#whileStoring(work));
  }

  /**
   * Listens to an event (`component_access_token.fetched`, `component_verify_ticket.received`,
   * `authorizer_refresh_token.recovered`…), and to the events of every authorizer's client
   * (`authorizer_access_token.fetched`, `.fetch_failed`, `jsapi_ticket.fetched`…, and `cache.corrupt_entry`
   * / `cache.foreign_entry` for an entry of its own, each with the account's `appId`), however often the
   * clients are dropped and made again. The store's outages (`cache.unavailable`, `cache.recovered`) are
   * the platform's own, once per outage.
   */
  on<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.#core.events.on(event, listener);
    return this;
  }

  /** Listens to the next `event` only, of whichever account's client or of the store it comes. */
  once<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.#core.events.once(event, listener);
    return this;
  }

  /** Stops listening. */
  off<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.#core.events.off(event, listener);
    return this;
  }

  /**
   * Handles a request to the component's callback URL ("授权事件接收URL"): checks the signature, decrypts,
   * and stores a component_verify_ticket for every process. Answer WeChat with `success` once it resolves.
   * Other pushes (`authorized`, `updateauthorized`, `unauthorized`) are returned for the caller to act on.
   * Rejects with a MessageCryptoError for a request that is not from WeChat, or whose signed timestamp
   * lies further than `pushMaxAgeMs` from this process's clock (a push sent again later: `expired`), or
   * whose body is no string or bytes (`body`: a body parser read it first, or none ran; or no
   * `{ query, body }` was passed at all), and with a ConfigError once the platform is closed.
   */
  async handleCallback(request: CallbackRequest): Promise<OpenPlatformPush> {
    // After close() the stores may be closed, and a ticket written now would go unwaited for.
    if (this.#closed) throw new ConfigError('OpenPlatform is closed: handleCallback() after close() stores nothing', 'request');
    const push = this.#callbacks.open(request);
    const { ComponentVerifyTicket: ticket, CreateTime: createTime } = push.fields;
    if (push.infoType === 'component_verify_ticket' && ticket) {
      await this.#whileStoring(this.#ticket.store(ticket, Number(createTime) || Math.floor(this.#core.settings.now() / 1000)));
    }
    return push;
  }

  /** The component_access_token, from the store or fetched (one process of the fleet at a time). */
  componentAccessToken(signal?: AbortSignal): Promise<string> {
    return this.#component.manager.get(signal);
  }

  /**
   * A pre_auth_code for the authorization page (`api_create_preauthcode`), valid for `expiresIn` seconds.
   * `signal` stops this caller's waits (for the component token, for WeChat's answer), as for a send.
   */
  async createPreAuthCode(options: RequestOptions = {}): Promise<{ preAuthCode: string; expiresIn: number }> {
    const body = await this.#component.call('cgi-bin/component/api_create_preauthcode', { component_appid: this.appId }, options.signal);
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
   * none goes through, the rejection says so (logged at error level), the answer's access token still
   * goes to the cache, and the account's first refresh takes its current refresh token from WeChat
   * (api_get_authorizer_info).
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
  handleAuthorization(authorizationCode: string): Promise<Authorization> {
    return this.#authorizations.handle(authorizationCode);
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
    await this.#refresh.saveUnsavedAtClose();
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

  #client(authorizerAppId: string, kind: 'official_account' | 'mini_program'): WeChatClient {
    if (this.#closed) throw new ConfigError('OpenPlatform is closed', 'authorizerAppId');
    if (!ID_RULE.accepts(authorizerAppId)) throw invalidOption('OpenPlatform', 'authorizerAppId', ID_RULE.allowed, authorizerAppId);
    const id = authorizerAppId;
    const found = this.#clients.get(id);
    if (found) {
      const { value: held, idle } = found;
      if (held.kind === kind && !idle && !clientClosed(held.client)) return held.client;
      // Unused past clientIdleMs (the map forgot it already), the account was last used as the other
      // kind, or its caller closed the client (it would start no refresh): that client goes.
      if (!idle) this.#clients.delete(id);
      this.#letGo.add(held.client);
    }
    const custom: CustomToken = () => ({
      key: this.#core.schema.openPlatformKey!('authorizer_access_token', this.appId, id),
      label: 'authorizer_access_token',
      upstream: this.#refresh.upstream(id),
    });
    const options = {
      ...this.#options,
      appId: id,
      [kTokenSource]: custom,
      // A mini program's wx.login() codes go to WeChat with the component's token: no AppSecret of it here.
      ...(kind === 'mini_program' ? { [kCode2Session]: (jsCode: string, request: RequestOptions, client: { readonly closed: boolean }) => this.#component.code2Session(id, jsCode, request, client) } : {}),
    };
    const client =
      kind === 'official_account' ? new OfficialAccount(options as unknown as OfficialAccountOptions) : new MiniProgram(options as unknown as MiniProgramOptions);
    this.#clients.set(id, { client, kind });
    return client;
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
