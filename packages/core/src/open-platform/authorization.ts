import type { ClientCore } from '../client-core.js';
import { ID_RULE } from '../client-core.js';
import { BadResponseError, CacheError, ConfigError, WeChatApiError } from '../errors.js';
import { EntryStore } from '../token/entry-store.js';
import { decodeMarker, failureKey } from '../token/failure.js';
import { keepAliveMs, RefreshLock } from '../token/refresh-lock.js';
import { pollWithBackoff } from '../token/refresher.js';
import { validateFetched, type Fetched } from '../token/upstream.js';
import { DURABLE_WRITE_ATTEMPTS, REFRESH_PAUSES_MS, isRefreshToken, type AuthorizerRefresh } from './authorizer-refresh.js';
import { BadAnswer, type Component } from './component.js';
import type { PlatformContext } from './context.js';
import type { PeerCopies } from './peer-copy.js';
import { authorizationCodeDigest, decodeAuthorizationRecord, encodeAuthorizationRecord, type Authorization } from './records.js';

/**
 * How long the record of a spent code answers its other callers: the push and the redirect come within
 * seconds of each other, WeChat's retries of the push within a minute. Not the code's hour: the redirect's
 * `auth_code` is left in browser histories, Referer headers and access logs, and a replay of it is
 * answered 61009 once the record is gone.
 */
const AUTHORIZATION_CODE_TTL_SECONDS = 300;
/** Rounds of looking for the record and taking the code's lock before a caller asks WeChat unlocked. */
const AUTHORIZATION_LOCK_ROUNDS = 3;

/**
 * Authorizations (api_query_auth with the code of the redirect or of the `authorized` push): one ask of
 * WeChat per code for the fleet, under the code's lock in the cache, its tokens stored, and a record of
 * the spent code that its other callers are given (see {@link OpenPlatform.handleAuthorization}).
 */
export class Authorizations {
  readonly #appId: string;
  readonly #core: ClientCore;
  readonly #key: PlatformContext['key'];
  readonly #ended: AbortSignal;
  readonly #component: Component;
  readonly #refresh: AuthorizerRefresh;
  readonly #peers: PeerCopies;
  /** Counts work under way until it settles: the platform's close() waits for it. */
  readonly #track: <T>(work: Promise<T>) => Promise<T>;
  /** Authorizations under way in this process, by the key of their code's record: one per code. */
  readonly #authorizing = new Map<string, Promise<Authorization>>();

  constructor(ctx: PlatformContext, component: Component, refresh: AuthorizerRefresh, peers: PeerCopies, track: <T>(work: Promise<T>) => Promise<T>) {
    this.#appId = ctx.appId;
    this.#core = ctx.core;
    this.#key = ctx.key;
    this.#ended = ctx.ended;
    this.#component = component;
    this.#refresh = refresh;
    this.#peers = peers;
    this.#track = track;
  }

  /** See {@link OpenPlatform.handleAuthorization}. */
  async handle(authorizationCode: string): Promise<Authorization> {
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
    const shared = this.#authorizing.get(key);
    if (shared) {
      // A caller that joins another's ask in this process gets what a caller in another process gets:
      // the code's record, which the ask leaves even when its own writes failed (that rejection is its own).
      // The read is counted under way as the ask is: close() lets the ask finish, and waits for this read
      // too (made as the ask settles, before close() goes on), so the store is still open for it.
      return shared.catch((error: unknown) =>
        this.#track(this.#authorizationRecord(key)).then((recorded) => {
          if (recorded) return recorded;
          throw error;
        }),
      );
    }
    // Counted under way from its start: close() waits for an ask of WeChat and the writes after it.
    const asked = this.#track(this.#authorizeOnce(authorizationCode, key).finally(() => this.#authorizing.delete(key)));
    this.#authorizing.set(key, asked);
    return asked;
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
    const lock = new RefreshLock(core.schema.lockKey(key), core.schema.redactKey?.(core.schema.lockKey(key)) ?? core.schema.lockKey(key), core.log, this.#appId, 'owner', core.schema.name);
    const watch = (onChange: () => void) => core.store.watch([key, lock.key], onChange);
    for (let round = 0; round < AUTHORIZATION_LOCK_ROUNDS; round += 1) {
      if (this.#ended.aborted) throw new ConfigError('OpenPlatform is closed', 'authorizationCode');
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
        this.#ended,
      );
      if (seen !== undefined && seen !== 'free') return seen;
    }
    if (this.#ended.aborted) throw new ConfigError('OpenPlatform is closed', 'authorizationCode');
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
      body = await this.#component.call(path, { component_appid: this.#appId, authorization_code: authorizationCode });
    } catch (error) {
      if (!(error instanceof WeChatApiError) || error.errcode !== 61009) throw error;
      // Spent: by another caller whose record is there, or (others) is on its way; else the code is bad.
      const recorded = others
        ? await pollWithBackoff(this.#authorizationLeaseMs(), () => this.#authorizationRecord(key), (onChange) => this.#core.store.watch([key], onChange), this.#ended)
        : await this.#authorizationRecord(key);
      if (recorded) return recorded;
      // close() ended the wait: the code may well be good, and another caller's record on its way.
      if (this.#ended.aborted) throw new ConfigError('OpenPlatform is closed', 'authorizationCode');
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
    if (!isRefreshToken(refresh, info.authorizer_access_token)) {
      // None, or one that is no token (a garbled answer, never stored): the account is authorized all the same (WeChat spent the code): the other callers of the code
      // learn it from the record, and its first refresh, no longer held back by a revoked authorization's
      // pause, takes its refresh token from WeChat.
      await this.#endRevokedBackoff(this.#key('authorizer_access_token', authorizerAppId));
      await this.#recordAuthorization(key, authorization);
      throw new BadResponseError(
        `WeChat answered ${path} without a usable authorizer refresh token; the account ${authorizerAppId} is authorized, and its first refresh takes its refresh token from WeChat (api_get_authorizer_info)`,
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
        { event: 'authorization_code.unrecorded', appId: this.#appId, authorizerAppId: authorization.authorizerAppId, ...(error.reason ? { reason: error.reason } : {}) },
        'The cache did not take the record of a spent authorization code: another caller handed the same code (the push and the redirect carry the same one) gets 61009 from WeChat',
      );
    }
  }

  /** The rest of {@link handleAuthorization} once api_query_auth has answered: its tokens stored. */
  async #completeAuthorization(path: string, startedAt: number, info: Record<string, unknown>, authorizerAppId: string, refresh: string): Promise<void> {
    // The refresh token first: the authorization code is spent, and the account's only way back
    // without its admin is this token. An unusable access token beside it costs a fetch, not the account.
    // A refresh token the durable store did not take is the caller's rejection, once the access token
    // is in the cache: that token serves the account (about two hours) until its first refresh, which
    // takes the current refresh token from WeChat.
    let unsaved: CacheError | undefined;
    try {
      await this.#refresh.storeAuthorization(authorizerAppId, refresh, startedAt);
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      unsaved = error;
    } finally {
      // The account is authorized again whatever became of that write: a revoked authorization's pause
      // (up to an hour) would refuse it, unasked, the refresh that takes its token from WeChat.
      await this.#endRevokedBackoff(this.#key('authorizer_access_token', authorizerAppId));
    }
    let fetched: Fetched;
    try {
      fetched = validateFetched(info, 'authorizer_access_token', path);
    } catch (error) {
      if (!(error instanceof BadResponseError)) throw error;
      if (unsaved) throw unsaved;
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
      if (unsaved) throw unsaved;
      throw new CacheError(
        `${error.message}; the account ${authorizerAppId} is authorized (its refresh token is stored), and its first call fetches an access token`,
        { cause: error, reason: error.reason, authorizerAppId },
      );
    }
    if (written.stored) await this.#peers.write(authorizerAppId, [refresh], written.entry, fetched.expiresIn);
    this.#core.log.info(
      { event: 'authorizer.authorized', appId: this.#appId, authorizerAppId, stored: written.stored, keptNewer: written.entry.value !== fetched.value },
      'An account authorized the component',
    );
    if (unsaved) throw unsaved;
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
}
