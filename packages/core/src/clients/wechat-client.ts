import { AccessToken } from '../access-token.js';
import { ApiClient } from '../api-client.js';
import type { TokenCache } from '../cache.js';
import type { ClientCore } from '../client-core.js';
import type { LogFields } from '../logger.js';
import type { TokenManager } from '../token/manager.js';

/** An event a client emits: the fields of the log line of the same name, with its level and message. */
export type ClientEvent = LogFields & { level: 'debug' | 'info' | 'warn' | 'error'; message: string };

/**
 * What every wxkit client has: its access token, a client for any API, the store hook, and events.
 * OfficialAccount, MiniProgram and Work extend it.
 */
export abstract class WeChatClient {
  /** The access token, shared through the cache. */
  readonly accessToken: AccessToken;
  /** Any API call with the token injected and one resend after a token error. */
  readonly client: ApiClient;
  /** @internal */
  protected readonly core: ClientCore;

  /** @internal */
  protected constructor(core: ClientCore, token: TokenManager) {
    this.core = core;
    this.accessToken = new AccessToken(core, token);
    this.client = new ApiClient(core, token);
  }

  /**
   * Shares this client's tokens and tickets through `cache` from now on. Every process that should
   * share them must use the same store. Returns the client, for chaining.
   */
  setCache(cache: TokenCache): this {
    this.core.setCache(cache);
    return this;
  }

  /** The store in use. */
  get cache(): TokenCache {
    return this.core.cache;
  }

  /**
   * Listens to an event: `access_token.fetched`, `access_token.invalidated`, `access_token.refreshed_ahead`,
   * `jsapi_ticket.fetched`, `lock.wait_timeout`, `cache.unavailable`, `cache.recovered`,
   * `cache.corrupt_entry`. Fields carry the appId, the key and timings, never a token or secret.
   *
   * @example
   * ```ts
   * app.on('access_token.fetched', (event) => metrics.increment('wechat.token_fetch', { ms: event.ms }));
   * ```
   */
  on(event: string, listener: (event: ClientEvent) => void): this {
    this.core.events.on(event, listener);
    return this;
  }

  /** Stops listening. */
  off(event: string, listener: (event: ClientEvent) => void): this {
    this.core.events.off(event, listener);
    return this;
  }

  /** Closes the HTTP connections this client opened (and its token source's). The cache is yours to close. */
  close(): Promise<void> {
    return this.core.close();
  }
}
