import type { ClientCore } from '../client-core.js';
import { BadResponseError, CacheError, TokenUnavailableError, WeChatApiError, isTokenRejection } from '../errors.js';
import type { GuardedStore } from '../store.js';
import { isPlausibleToken } from '../token/plausible.js';
import { validateFetched, type Fetched, type Upstream } from '../token/upstream.js';
import { BadAnswer, type Component } from './component.js';
import type { PlatformContext } from './context.js';
import type { PeerCopies } from './peer-copy.js';
import { decodeRefresh, decodeStoredRefresh, encodeRefreshRecord, refreshOrigin, updatedSince, type RefreshRecord } from './records.js';

/** Refresh tokens do not expire while the authorization stands; the record is rewritten at every refresh. */
const REFRESH_TTL_SECONDS = 365 * 24 * 3600;
/**
 * A durable write of a refresh token WeChat handed out (a refresh's final write, an authorization's) is
 * sent this many times before it is given up (and logged), past the store's breaker: its first failure
 * takes the store for down, and the breaker would refuse the next attempts unsent.
 */
export const DURABLE_WRITE_ATTEMPTS = 3;
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
export const REFRESH_PAUSES_MS = (DURABLE_WRITE_ATTEMPTS - 1) * DURABLE_RETRY_PAUSE_MS;
// Store calls beside it, under the lock, on a profile whose peer keeps its own copy of the token: the
// copy read before (the refresh token record, then the copy and its TTL side by side) and the copies
// written after (under the refresh token used and the new one, side by side), each counted as one call.
const REFRESH_COPY_CALLS = 4;
/** How far behind ours (seconds) the clock of a host that wrote a record since api_query_auth may run. */
const AUTHORIZATION_CLOCK_SKEW_S = 3600;

/**
 * Whether `value`, the refresh token in an answer of WeChat's, can be one: a plausible token (1–512
 * printable ASCII characters, no spaces, as every token WeChat hands out), and not the access token
 * beside it. Anything else is a garbled answer: stored, it would replace the account's only way back
 * without its admin, and be sent to WeChat at every refresh.
 */
export function isRefreshToken(value: unknown, accessToken: unknown): value is string {
  return isPlausibleToken(value) && value !== accessToken;
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

/**
 * The authorizers' refresh tokens in the durable store, and the refresher of their access tokens: a
 * refresh token WeChat hands out is written before the old one is dropped (a write-ahead under the
 * refresh lock), and one the store did not take is kept by this process until it does.
 */
export class AuthorizerRefresh {
  readonly #appId: string;
  readonly #core: ClientCore;
  readonly #durable: GuardedStore;
  readonly #key: PlatformContext['key'];
  readonly #ended: AbortSignal;
  readonly #component: Component;
  readonly #peers: PeerCopies;
  /** What every authorizer's refresher shares: only the fetch is the account's own, so 10,000 accounts share the rest. */
  readonly #shared: Omit<Upstream<string>, 'fetch'>;
  /** Refresh tokens WeChat handed back that the durable store did not take, by authorizer, until it does. */
  readonly #unsaved = new Map<string, UnsavedRefresh>();

  constructor(ctx: PlatformContext, component: Component, peers: PeerCopies) {
    this.#appId = ctx.appId;
    this.#core = ctx.core;
    this.#durable = ctx.durable;
    this.#key = ctx.key;
    this.#ended = ctx.ended;
    this.#component = component;
    this.#peers = peers;
    const core = this.#core;
    this.#shared = {
      budgetMs: REFRESH_HTTP_CALLS * core.http.callBudgetMs + (REFRESH_DURABLE_CALLS + REFRESH_COPY_CALLS) * core.cacheTimeoutMs + REFRESH_PAUSES_MS,
      invalidatesPrevious: true,
      // The component token is got before the lock is taken, so the lock guards only the refresh itself.
      prepare: (signal) => component.manager.get(signal),
      rejectsInput: (error) => isTokenRejection(error) && error.path.startsWith('cgi-bin/component/'),
      dropInput: (componentToken, error) => component.manager.rejectedOnCall(componentToken, (error as WeChatApiError).errcode),
      recheckInput: (componentToken) => component.manager.recheck(componentToken),
    };
  }

  /** The refresher of an authorizer's access token, for its client's token manager. */
  upstream(authorizerAppId: string): Upstream<string> {
    return {
      ...this.#shared,
      fetch: (_force, componentToken) => this.#refreshAuthorizer(authorizerAppId, componentToken),
      fromPeer: (rejected) => this.#peers.read(authorizerAppId, rejected),
      afterWrite: (fetched, stored) => this.#peers.afterWrite(authorizerAppId, fetched, stored),
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
    const stored = decodeStoredRefresh(this.#core.schema, key, raw);
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
    const body = await this.#component.post(path, componentToken, { component_appid: this.#appId, authorizer_appid: authorizerAppId, authorizer_refresh_token: token }, true);
    // An answer without a refresh token leaves the one sent current. One whose refresh token is no token
    // is refused whole: the record keeps the token sent, marked as a refresh under way with it, so that
    // the next refresh takes the current one from WeChat if WeChat rotated it meanwhile.
    const answered = body.authorizer_refresh_token;
    if (answered !== undefined && answered !== '' && !isRefreshToken(answered, body.authorizer_access_token)) {
      throw new BadResponseError(
        `WeChat answered ${path} with an authorizer_refresh_token that is no refresh token; the stored one is kept (if WeChat rotated it meanwhile, the next refresh takes the current one from WeChat)`,
        { path },
      );
    }
    const next = typeof answered === 'string' && answered !== '' ? answered : token;
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
    if (outcome !== 'superseded') this.#peers.remember(result, [token, next]);
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
        { event: 'authorizer_refresh_token.unsaved', appId: this.#appId, authorizerAppId, ...(error.reason ? { reason: error.reason } : {}) },
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
    if (unsaved.waiting || this.#ended.aborted) return;
    unsaved.waiting = true;
    const save = () => {
      unsaved.waiting = false;
      if (!this.#ended.aborted) void this.#saveUnsaved(authorizerAppId, unsaved);
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
  async saveUnsavedAtClose(): Promise<void> {
    await Promise.all(
      [...this.#unsaved].map(async ([authorizerAppId, unsaved]) => {
        await unsaved.writing;
        if (this.#unsaved.get(authorizerAppId) === unsaved) await this.#saveUnsaved(authorizerAppId, unsaved, true);
        if (this.#unsaved.get(authorizerAppId) !== unsaved) return;
        this.#unsaved.delete(authorizerAppId);
        this.#core.log.error(
          { event: 'authorizer_refresh_token.unsaved', appId: this.#appId, authorizerAppId, closed: true },
          "The platform closed before the durable store took the refresh token WeChat handed back; the account's next refresh takes its current one from WeChat",
        );
      }),
    );
  }

  /** What became of a refresh token this refresh wrote: logged as stored (when WeChat rotated it), or as superseded. */
  #refreshStored(authorizerAppId: string, replaced: boolean, rotated: boolean): void {
    if (!replaced) this.#superseded(authorizerAppId);
    else if (rotated) {
      this.#core.log.info({ event: 'authorizer_refresh_token.rotated', appId: this.#appId, authorizerAppId }, 'WeChat handed out a new authorizer refresh token; stored it');
    }
  }

  /** The refresh token WeChat holds now for the authorizer (api_get_authorizer_info), written to the durable store. */
  async #currentRefreshToken(authorizerAppId: string, componentToken: string, why: 'missing' | 'interrupted' | 'rejected'): Promise<string> {
    const path = 'cgi-bin/component/api_get_authorizer_info';
    const body = await this.#component.post(path, componentToken, { component_appid: this.#appId, authorizer_appid: authorizerAppId }, true);
    const token = (body.authorization_info as Record<string, unknown> | undefined)?.authorizer_refresh_token;
    if (!isPlausibleToken(token)) throw new BadAnswer(path);
    this.#core.log.warn(
      { event: 'authorizer_refresh_token.recovered', appId: this.#appId, authorizerAppId, reason: why },
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
      const body = await this.#component.call('cgi-bin/component/api_get_authorizer_info', { component_appid: this.#appId, authorizer_appid: authorizerAppId });
      const token = (body.authorization_info as Record<string, unknown> | undefined)?.authorizer_refresh_token;
      return isPlausibleToken(token) ? token : undefined;
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
      { event: 'authorizer_refresh_token.superseded', appId: this.#appId, authorizerAppId },
      'The authorizer refresh token record changed during this refresh (another process took over after this one outlived its lock lease, or an authorization stored a newer token); left it as it is',
    );
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
  async storeAuthorization(authorizerAppId: string, token: string, askedAt: number): Promise<void> {
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
          const stored = decodeStoredRefresh(this.#core.schema, key, held.raw);
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
          { event: 'authorizer_refresh_token.unsaved', appId: this.#appId, authorizerAppId, ...(error.reason ? { reason: error.reason } : {}) },
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
      { event: 'authorizer_refresh_token.unsaved', appId: this.#appId, authorizerAppId },
      'The authorization\'s refresh token could not be stored: the record kept changing under it; the next refresh asks WeChat for the current one',
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
