import type { RequestOptions } from '../api-client.js';
import type { ClientCore } from '../client-core.js';
import { sessionOf, type Code2SessionResult } from '../clients/mini-program.js';
import { BadResponseError, closedRefusal, isTokenRejection } from '../errors.js';
import type { HttpRequest } from '../http.js';
import type { TokenManager } from '../token/manager.js';
import { credentialDigest, validateFetched, type Upstream } from '../token/upstream.js';
import type { PlatformContext } from './context.js';
import type { VerifyTicket } from './verify-ticket.js';

/**
 * The component's side of WeChat: its component_access_token, fetched with the stored verify ticket
 * under wxkit's token protocol (one fetch per fleet, shared failures, 40001 recovery), and the calls
 * that carry it (the component APIs, an authorizer's refresh, a mini program's code2Session).
 */
export class Component {
  /** The component_access_token's manager: whether WeChat took a token is told to it. */
  readonly manager: TokenManager;
  readonly #appId: string;
  readonly #core: ClientCore;
  readonly #secret: string;
  readonly #ticket: VerifyTicket;

  constructor(ctx: PlatformContext, secret: string, ticket: VerifyTicket) {
    this.#appId = ctx.appId;
    this.#core = ctx.core;
    this.#secret = secret;
    this.#ticket = ticket;
    this.manager = ctx.core.manager(
      'component_access_token',
      ctx.key('component_access_token'),
      { kind: 'official_account', id: ctx.appId, field: 'access_token' },
      this.#upstream(),
    );
  }

  #upstream(): Upstream<string> {
    const core = this.#core;
    const path = 'cgi-bin/component/api_component_token';
    const secret = this.#secret;
    const appId = this.#appId;
    return {
      budgetMs: core.http.callBudgetMs,
      // A new component token supersedes the old one after a grace window, as the classic endpoint does.
      invalidatesPrevious: true,
      // A failure WeChat blames on the component secret holds back the processes on that secret only.
      get credentialDigest() {
        return credentialDigest(appId, secret);
      },
      prepare: () => this.#ticket.read(),
      fetch: async (_force, ticket) => {
        const body = await core.http.json({
          method: 'POST',
          path,
          json: { component_appid: this.#appId, component_appsecret: this.#secret, component_verify_ticket: ticket },
          tokenFetch: true,
        });
        return validateFetched(body, 'component_access_token', path);
      },
    };
  }

  /** POST to a component API with the component token; on 40001/40014/42001, once more with a newer token. */
  call(path: string, json: Record<string, unknown>, signal?: AbortSignal): Promise<Record<string, unknown>> {
    return this.withToken(
      (token) => this.send(token, { method: 'POST', path, query: { component_access_token: token }, json, signal }),
      signal,
    );
  }

  /**
   * An authorized mini program's `wx.login()` code for its user's session (`sns/component/jscode2session`):
   * with the component's token, which recovers from 40001 as for every component call. `client`, the
   * authorizer's: once it is closed, the call is refused as any of its calls, before the component's token is
   * asked for.
   */
  async code2Session(authorizerAppId: string, jsCode: string, options: RequestOptions, client: { readonly closed: boolean }): Promise<Code2SessionResult> {
    const path = 'sns/component/jscode2session';
    // Refused before the component's token is asked for: a closed client has WeChat fetch nothing for it.
    if (client.closed) throw closedRefusal(path);
    const query = { appid: authorizerAppId, js_code: jsCode, grant_type: 'authorization_code', component_appid: this.#appId };
    const body = await this.withToken(
      (token) => this.send(token, { method: 'GET', path, query: { ...query, component_access_token: token }, signal: options.signal, client }),
      options.signal,
    );
    return sessionOf(body, path);
  }

  /**
   * `call` with the component token; on 40001/40014/42001, once more with a newer token (twice at most).
   * `signal` (a caller's) stops this caller's waits for the token, as it stops a send's.
   */
  async withToken<T>(call: (token: string) => Promise<T>, signal?: AbortSignal): Promise<T> {
    let token = await this.manager.get(signal);
    const recovery = { fetched: false };
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await call(token);
      } catch (error) {
        if (!isTokenRejection(error) || attempt >= 2) throw error;
        const next = await this.manager.recover(token, error.errcode, recovery, signal);
        if (next === undefined) throw error;
        token = next;
      }
    }
  }

  /**
   * One POST with a component token (a component API's call, or an authorizer's refresh: `tokenFetch`):
   * whether WeChat took the token is told to the component token's manager. A token that worked and is
   * rejected later was replaced, and its replacement is fetched at once; one that never did is spaced.
   */
  post(path: string, componentToken: string, json: Record<string, unknown>, tokenFetch: boolean): Promise<Record<string, unknown>> {
    return this.send(componentToken, { method: 'POST', path, query: { component_access_token: componentToken }, json, tokenFetch });
  }

  /** A request carrying `componentToken`, which tells the component token's manager whether WeChat took it. */
  send(componentToken: string, request: HttpRequest): Promise<Record<string, unknown>> {
    return this.manager.carrying(componentToken, () => this.#core.http.json(request));
  }
}

/** An answer without the fields WeChat documents. */
export class BadAnswer extends BadResponseError {
  constructor(path: string) {
    super(`WeChat answered ${path} without the fields it documents`, { path });
  }
}
