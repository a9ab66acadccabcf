import { AccessToken } from '../access-token.js';
import { ApiClient } from '../api-client.js';
import type { TokenCache } from '../cache.js';
import type { ClientCore } from '../client-core.js';
import type { TokenEvents } from '../events.js';
import type { TokenManager } from '../token/manager.js';

/** Each client's core, for {@link releaseClient}: kept off the public API. */
const cores = new WeakMap<WeChatClient, ClientCore>();

/**
 * A ClientPool or OpenPlatform lets go of `client` (beyond maxClients, idle, deleted): its refresh-ahead
 * timers stop, and calls under way on it finish; a caller still holding it may go on using it. Its HTTP
 * client and stores are the pool's, so nothing else of it is open. Unlike `close()`, it ends no wait.
 * @internal
 */
export function releaseClient(client: WeChatClient): void {
  cores.get(client)?.release();
}

/**
 * Whether `client` was closed by its caller: a ClientPool or OpenPlatform that still holds it makes a new
 * one for the account rather than hand out a client that starts no refresh.
 * @internal
 */
export function clientClosed(client: WeChatClient): boolean {
  return cores.get(client)?.closed ?? false;
}

/**
 * Whether WeChat refused the secret `client` (a pool's) fetched with: its ClientPool makes the account's
 * client anew, asking the resolver again, rather than hand out one that fails with the refused secret.
 * @internal
 */
export function clientSecretRefused(client: WeChatClient): boolean {
  return cores.get(client)?.secretRefused ?? false;
}

/**
 * The fleet's failure that refused `client`'s secret (see ClientCore.refusalSeen), to hand to the client
 * its pool makes anew: that failure, read again by the new client, does not make a third one.
 * @internal
 */
export function secretRefusalSeen(client: WeChatClient): number | undefined {
  return cores.get(client)?.refusalSeen;
}

/** @internal Sets what {@link secretRefusalSeen} reads, on a client just made. */
export function inheritSecretRefusal(client: WeChatClient, failedAt: number | undefined): void {
  const core = cores.get(client);
  if (core && failedAt !== undefined) core.refusalSeen = failedAt;
}

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
    cores.set(this, core);
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
   * Listens to an event. {@link TokenEvents} lists every event and its payload: token and ticket
   * fetches, failures and invalidations (`access_token.fetched`, `jsapi_ticket.fetch_failed`…), lock
   * waits, and the store's health (`cache.unavailable`, `cache.recovered`…). Payloads carry the appId,
   * the key and timings, never a token or secret. A listener does not keep the client: one the program
   * no longer holds is collected with its listeners, whatever it was waiting for (the store's probe
   * during an outage holds its clients weakly, so that clients made per request and never closed are
   * not kept). Hold the client whose events you wait on.
   *
   * @example
   * ```ts
   * app.on('access_token.fetched', (event) => metrics.increment('wechat.token_fetch', { ms: event.ms }));
   * ```
   */
  on<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.core.events.on(event, listener);
    return this;
  }

  /** Listens to the next `event` only. */
  once<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.core.events.once(event, listener);
    return this;
  }

  /** Stops listening. */
  off<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.core.events.off(event, listener);
    return this;
  }

  /** Closes the HTTP connections this client opened (and its token source's). The cache is yours to close. */
  close(): Promise<void> {
    return this.core.close();
  }
}
