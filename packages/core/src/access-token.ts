import type { TokenCache } from './cache.js';
import type { ClientCore } from './client-core.js';
import type { StoredEntry } from './token/entry.js';
import type { TokenManager } from './token/manager.js';

/**
 * Where an AccessToken holds its report of a token WeChat rejected before any call is known to have gone
 * through with it (see `invalidateUnproven` in `@wxkit/core/internal`): a method of its prototype, out
 * of the public type. `Symbol.for`, as the two entry points are bundled apart.
 */
export const kInvalidateUnproven = Symbol.for('wxkit.internal.invalidateUnproven');

/** Per-call options of token methods. */
export interface TokenCallOptions {
  /** Stops this caller's wait. Other callers sharing the same refresh are not affected. */
  signal?: AbortSignal;
}

/**
 * A client's access token, shared through its cache. Reached as `app.accessToken`, as in EasyWeChat.
 *
 * @example
 * ```ts
 * const token = await app.accessToken.getToken();
 * ```
 */
export class AccessToken {
  /** The store key of this token, e.g. `wechat:stable_access_token:wx1234abcd5678ef90`. */
  readonly cacheKey: string;
  readonly #core: ClientCore;
  readonly #manager: TokenManager;

  /** @internal Created by the client. */
  constructor(core: ClientCore, manager: TokenManager) {
    this.#core = core;
    this.#manager = manager;
    this.cacheKey = manager.key;
  }

  // One method of every AccessToken, on the prototype and out of the public type, where each instance
  // held a closure of its own (and the scope it kept): 10,000 accounts, 10,000 of them.
  static {
    Object.defineProperty(AccessToken.prototype, kInvalidateUnproven, {
      value(this: AccessToken, token: string, errcode?: number): Promise<void> {
        return this.#manager.invalidate(token, errcode, false);
      },
    });
  }

  /**
   * A valid access token: from this process's memory, from the store, or fetched from WeChat by exactly
   * one process at a time while the others wait for it (bounded by `lockWaitMs`).
   *
   * @throws {WeChatApiError} WeChat refused the credentials (40013, 40125, 40164…) or the quota (45009).
   * @throws {HttpError} WeChat could not be reached in time.
   * @throws {BadResponseError} WeChat's answer was unusable.
   */
  getToken(options: TokenCallOptions = {}): Promise<string> {
    // `?.` here and below: a JavaScript caller may pass null, which the default does not replace.
    return this.#manager.get(options?.signal);
  }

  /**
   * Like getToken(), with the token's expiry and fetch time (unix seconds) when they are known: the
   * store's format records them, or this process fetched the token. What a token service hands out, or
   * what a dashboard shows.
   */
  getEntry(options: TokenCallOptions = {}): Promise<StoredEntry> {
    return this.#manager.getEntry(options?.signal);
  }

  /**
   * Fetches a new token now and stores it. On the stable endpoint this sends `force_refresh: true`,
   * which invalidates the token every other program holds (20 a day at most). Use it by hand, rarely;
   * wxkit never calls it on its own.
   */
  forceRefresh(options: TokenCallOptions = {}): Promise<string> {
    return this.#manager.forceRefresh(options?.signal);
  }

  /**
   * Reports that WeChat rejected `token` (40001, 40014, 42001). The cached entry is removed only if it
   * still holds that token, so a newer token written by another process is kept. `client` calls this
   * for you; call it when you send requests with the token yourself, with WeChat's `errcode` if you have
   * it (a 40001 on the token the store still holds is reported as invalidated from outside the fleet).
   * Once the client is closed it forgets the token and rejects with a TokenUnavailableError: the store
   * (which the program may have closed) and the token service are told nothing.
   */
  invalidate(token: string, errcode?: number): Promise<void> {
    return this.#manager.invalidate(token, errcode);
  }

  /** Points this client at another store (same as `app.setCache()`). */
  setCache(cache: TokenCache): this {
    this.#core.setCache(cache);
    return this;
  }
}
