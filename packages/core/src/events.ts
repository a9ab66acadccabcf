import type { CacheErrorReason } from './errors.js';
/**
 * The events a client emits, each with its payload: `app.on(name, listener)` is typed by this map.
 *
 * Every event is also a log line: the payload holds the line's fields plus its `level` and `message`,
 * and never a token, a ticket, a secret or a URL with its query string. `key` is the store key, masked
 * where a profile's key holds the secret.
 *
 * @example
 * ```ts
 * app.on('access_token.fetched', (event) => metrics.observe('wechat_token_fetch_ms', event.ms));
 * app.on('cache.unavailable', (event) => alert(`token store down (${event.op}): ${event.error}`));
 * ```
 */
export type TokenEvents = PerLabel<'fetched', TokenFetchedEvent> &
  PerLabel<'fetch_failed', TokenFetchFailedEvent> &
  PerLabel<'invalidated', TokenInvalidatedEvent> &
  PerLabel<'invalidated_externally', TokenInvalidatedExternallyEvent> &
  PerLabel<'force_spaced', TokenEventBase> &
  PerLabel<'refresh_ahead_failed', RefreshAheadFailedEvent> &
  PerLabel<'refresh_ahead_skipped', TokenEventBase> & {
  /** Another process held the refresh lock past `lockWaitMs` without a result; the call fails with ERR_WXKIT_NO_TOKEN. */
  'lock.wait_timeout': LockWaitTimeoutEvent;
  /** A lock this process took while the store did not answer was deleted, by owner, once it answered. */
  'lock.cleaned_up': TokenEventBase;
  /** The store failed; tokens are served from this process until it answers (once per outage). */
  'cache.unavailable': CacheUnavailableEvent;
  /** The store answers again. */
  'cache.recovered': CacheRecoveredEvent;
  /**
   * The store refuses to tell of writes for want of rights (a Redis ACL user without the `wxkit:written`
   * channel): waits for another process's refresh poll it instead (once per store and process).
   */
  'cache.watch_refused': CacheWatchRefusedEvent;
  /** A stored value is no valid entry of the schema; it counts as a miss. */
  'cache.corrupt_entry': CacheCorruptEntryEvent;
  /** The fallback directory cannot be used; while the store is down each process keeps to itself. */
  'cache.fallback_unusable': CacheFallbackUnusableEvent;
  /** `NODE_ENV=production` and no cache was set: nothing is shared between processes (once per process). */
  'cache.process_local': TokenEventBase;
  /** A stored value is another program's encoding that this schema cannot read: a miss, never overwritten. */
  'cache.foreign_entry': CacheCorruptEntryEvent;
  /**
   * A refresh lock was taken over: a peer's (WxJava's jedis-lock) whose expiry had passed, as the peer
   * does (`expired`, info); or, once a wait for it ran out, one the store kept without expiry, which no
   * holder writes and which would otherwise stop every refresh for good (`no_expiry`, a warning).
   */
  'lock.taken_over': LockTakenOverEvent;
  /**
   * A peer's refresh lock (jedis-lock) had passed its expiry, but the store has no atomic compareAndSet,
   * so it was not taken over (two takers could both win); delete the key, or use a store that has one.
   */
  'lock.takeover_refused': TokenEventBase;
  /** OpenPlatform: a component_verify_ticket push was decrypted and stored. */
  'component_verify_ticket.received': ComponentVerifyTicketReceivedEvent;
  /**
   * OpenPlatform: a component_verify_ticket push was not stored: pushed more than 12 hours ago (`expired`),
   * or the stored record changed under each of its three writes (`contended`: other processes storing
   * pushes at the same moment). WeChat pushes again within 10 minutes.
   */
  'component_verify_ticket.not_stored': ComponentVerifyTicketNotStoredEvent;
  /**
   * OpenPlatform: handleCallback() refused a signed push whose timestamp lies beyond `pushMaxAgeMs` from
   * this process's clock (logged at most once a minute). A push sent again later, or a host whose clock
   * is off: then every push is refused, no ticket is stored, and the component token fails once the last
   * ticket runs out.
   */
  'component_callback.expired': ComponentCallbackExpiredEvent;
  /** OpenPlatform: an account authorized the component; its first tokens are stored. */
  'authorizer.authorized': AuthorizerAuthorizedEvent;
  /** OpenPlatform: WeChat handed out a new authorizer refresh token, and the durable store took it. */
  'authorizer_refresh_token.rotated': AuthorizerEvent;
  /**
   * OpenPlatform: the durable store did not take a refresh token WeChat handed out. After a refresh, this
   * process keeps it and writes it when the store answers again; after an authorization (whose rejection
   * names the account when no attempt went through), the account's first refresh takes the current one
   * from WeChat. Logged again with `closed: true` when close() sent a kept one once more and the store
   * did not take it either.
   */
  'authorizer_refresh_token.unsaved': AuthorizerEvent;
  /**
   * OpenPlatform: the cache did not take the record of a spent authorization code, so another caller of
   * the same code (the push and the redirect carry the same one) gets WeChat's 61009.
   */
  'authorization_code.unrecorded': AuthorizerEvent & { reason?: CacheErrorReason };
  /** OpenPlatform: the refresh token was missing, interrupted or rejected (61023), and the current one was read from WeChat. */
  'authorizer_refresh_token.recovered': AuthorizerRefreshTokenRecoveredEvent;
  /**
   * OpenPlatform: a refresh found the durable record changed under it (another process took over the
   * refresh after this one's lease ran out, or an authorization stored the token api_query_auth handed
   * out) and left it alone: it never writes back a refresh token WeChat may have rotated away since.
   */
  'authorizer_refresh_token.superseded': AuthorizerEvent;
  /**
   * OpenPlatform on a profile whose peer keeps its own copy of an authorizer's token (EasyWeChat 6): the
   * store did not take wxkit's copy (`op` write: the peer fetches one of its own), or did not answer its
   * read (`op` read: wxkit refreshes as usual).
   */
  'authorizer_access_token.copy_failed': AuthorizerCopyFailedEvent;
  /** OpenPlatform: the durable store is a memcached, which evicts; refresh tokens may be lost. */
  'durable_store.evictable': TokenEventBase;
};

/** `component_verify_ticket.received`. */
export interface ComponentVerifyTicketReceivedEvent extends TokenEventBase {
  /** The push's CreateTime, unix seconds. */
  createTime?: number;
}

/** `component_verify_ticket.not_stored`. */
export interface ComponentVerifyTicketNotStoredEvent extends ComponentVerifyTicketReceivedEvent {
  /**
   * `expired`: pushed more than 12 hours ago; `contended`: the record changed under each write; `older`:
   * the store holds a ticket pushed later (logged at info).
   */
  reason: 'expired' | 'contended' | 'older';
  /** With `older`: when the stored ticket was pushed, in unix seconds. */
  storedCreateTime?: number;
}

/** `component_callback.expired`. */
export interface ComponentCallbackExpiredEvent extends TokenEventBase {
  /** The push's timestamp less this process's clock, in seconds: negative when the push is older. */
  offSeconds?: number;
}

/** OpenPlatform events about one authorizer. */
export interface AuthorizerEvent extends TokenEventBase {
  /** The authorizer's appId. */
  authorizerAppId: string;
}

/** `authorizer.authorized`. */
export interface AuthorizerAuthorizedEvent extends AuthorizerEvent {
  /** The cache took the access token api_query_auth handed out. */
  stored: boolean;
  /** The cache kept a token fetched later instead (a client of the account refreshed meanwhile). */
  keptNewer: boolean;
}

/** `authorizer_access_token.copy_failed`. */
export interface AuthorizerCopyFailedEvent extends AuthorizerEvent {
  op: 'read' | 'write';
  /** Why the store refused, when it could tell. */
  reason?: CacheErrorReason;
}

/** `authorizer_refresh_token.recovered`. */
export interface AuthorizerRefreshTokenRecoveredEvent extends AuthorizerEvent {
  reason: 'missing' | 'interrupted' | 'rejected';
}

/** `<label>.<what>` for the access token and each ticket, e.g. `access_token.fetched`, `jsapi_ticket.fetched`. */
export type PerLabel<What extends string, Payload> = { [L in TokenLabel as `${L}.${What}`]: Payload };

/** The name of any event of {@link TokenEvents}. */
export type TokenEventName = keyof TokenEvents;

/** Any event's payload. */
export type ClientEvent = TokenEvents[TokenEventName];

/** What a token event is about: the access token, or one of the tickets. */
export type TokenLabel =
  | 'access_token'
  | 'jsapi_ticket'
  | 'wx_card_ticket'
  | 'agent_jsapi_ticket'
  | 'component_access_token'
  | 'authorizer_access_token';

/** Where a token was fetched or read: the shared store, or this host's or process's fallback while it is down. */
export type TokenTier = 'shared' | 'host' | 'process';

/** Fields every event carries. */
export interface TokenEventBase {
  /** The event's name, e.g. `access_token.fetched`. */
  event: string;
  level: 'debug' | 'info' | 'warn' | 'error';
  /** The log line's text. */
  message: string;
  /** The client's appId (a WeCom corpId). */
  appId?: string;
  /** The store key concerned, masked where it holds a secret. */
  key?: string;
}

/** `<label>.fetched`: this process got a new token or ticket, from WeChat or from the token service. */
export interface TokenFetchedEvent extends TokenEventBase {
  /** Asked for by `forceRefresh()` / `refreshTicket()`. */
  forced?: boolean;
  /** A background refresh ahead of expiry (`refreshAheadSeconds`). */
  ahead?: boolean;
  /** This process held the refresh lock. */
  locked?: boolean;
  tier?: TokenTier;
  /** The store took the new entry. */
  stored?: boolean;
  /** The store held a token asked for later, and that one was kept instead. */
  keptNewer?: boolean;
  /**
   * `remote`: from a token source such as `wxkit serve`. `peer`: taken from where a peer SDK keeps the
   * token it fetched on its own (EasyWeChat 6's copy of an authorizer's token), not from WeChat.
   */
  source?: 'remote' | 'peer';
  /** WeChat's `expires_in`, in seconds. */
  expiresIn: number;
  /** How long the fetch took, in ms. */
  ms: number;
}

/**
 * `<label>.fetch_failed`: a fetch failed; the shared failure marker makes the whole fleet back off, or,
 * when the request never left this process (`sent` false), this process backs off alone. A client of a
 * token service (`tokenSource`) says so with `tier: 'process'` when the service did not answer and the
 * token it holds serves on (once until the service answers again).
 */
export interface TokenFetchFailedEvent extends TokenEventBase {
  /** The error's `code`, e.g. `ERR_WXKIT_WECHAT_API`. */
  code?: string;
  /** WeChat's errcode, when WeChat answered one. */
  errcode?: number;
  /** The error's message: why the request failed (`ECONNREFUSED; it went to …`, WeChat's errmsg). Never a secret. */
  error?: string;
  tier: TokenTier;
  /**
   * False when the request never left this process (no connection, DNS failure, connect timeout, no free
   * connection in time): it tells nothing about WeChat, so no failure marker was written and only this
   * process backs off.
   */
  sent: boolean;
}

/** `<label>.invalidated`: WeChat rejected the token (40001, 40014, 42001), or it was reported to the token service. */
export interface TokenInvalidatedEvent extends TokenEventBase {
  errcode?: number;
  /** This process removed the entry; false when the store already held a newer one. */
  deleted?: boolean;
  ms?: number;
  source?: 'remote';
}

/** `<label>.invalidated_externally`: WeChat said 40001 for the token the store held: a program outside the fleet fetched one. */
export interface TokenInvalidatedExternallyEvent extends TokenEventBase {
  /** The last writer of that token, `host:pid[:service]`, when the entry records it. */
  fetchedBy?: string;
  /** When that token was fetched, unix seconds. */
  fetchedAt?: number;
  /** How many times this process has seen it. */
  count: number;
}

/** `<label>.refresh_ahead_failed`: the background refresh failed; the current token keeps serving. */
export interface RefreshAheadFailedEvent extends TokenEventBase {
  /** The error's message. */
  error?: string;
}

/** `lock.taken_over`. */
export interface LockTakenOverEvent extends TokenEventBase {
  reason: 'expired' | 'no_expiry';
}

/** `lock.wait_timeout`. */
export interface LockWaitTimeoutEvent extends TokenEventBase {
  /** The lock's owner, `host:pid[:service]…`, when it could be read. */
  holder?: string;
  waitedMs: number;
}

/** `cache.unavailable`. */
export interface CacheUnavailableEvent extends TokenEventBase {
  /** The store call that failed: `get`, `set`, `add`… */
  op: string;
  /** What the store's driver said, without secrets. */
  error: string;
  /**
   * How many clients of this process use the store. Every one of them emits this event; the log line is
   * written once per store and outage (once per logger, where clients log to different ones).
   */
  clients: number;
  /**
   * Outages in a row, this one included, each of which began within a minute of the last one's end (the
   * store flapping: most often its reads answer while its writes fail); 0 where this one did not. Only
   * the first of each minute is written to the log (and any that lasts 5 s); every one is emitted.
   */
  again: number;
}

/** `cache.recovered`. */
export interface CacheRecoveredEvent extends TokenEventBase {
  op: string;
  /** How many clients of this process use the store (the line is written once, as for `cache.unavailable`). */
  clients: number;
}

/** `cache.watch_refused`. */
export interface CacheWatchRefusedEvent extends TokenEventBase {
  /** What the store said, and what to grant. */
  error: string;
}

/** `cache.corrupt_entry`. */
export interface CacheCorruptEntryEvent extends TokenEventBase {
  /** The key schema's name. */
  schema: string;
  /** Length of the stored value. */
  bytes: number;
  /** Another program's encoding: never replaced by wxkit. */
  foreign: boolean;
}

/** `cache.fallback_unusable`. */
export interface CacheFallbackUnusableEvent extends TokenEventBase {
  reason: string;
}
