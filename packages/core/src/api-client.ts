import type { ClientCore } from './client-core.js';
import { ConfigError, WeChatApiError, isTokenRejection } from './errors.js';
import { cleanPath, type BinaryResponse, type Query } from './http.js';
import type { TokenManager } from './token/manager.js';
import { typeName } from './validate.js';

/** What WeChat answers: `errcode` 0 or absent on success, plus the API's own fields. */
export interface WeChatResponse {
  errcode?: number;
  errmsg?: string;
  [field: string]: unknown;
}

/** Per-call options of {@link ApiClient} methods. */
export interface RequestOptions {
  /** Cancels the call. */
  signal?: AbortSignal;
}

// Resends after WeChat rejected the token: a lockless peer (an SDK that refreshes without a lock) can
// supersede the token a resend carries, once or twice in a row. Each resend uses a token newer than the
// one rejected, and all of them happen within WeChat's 5-minute grace window, or not at all.
const MAX_RESENDS = 3;
const GRACE_MS = 300_000;

/**
 * Calls any WeChat API with the access token in its query string. When WeChat rejects the token
 * (40001, 40014, 42001) the client invalidates exactly that token and resends with a newer one: one the
 * store already holds (another program refreshed), or else one refresh shared by every process. A
 * rejected resend is tried again only with yet another token from the store (one that program writes
 * moments after its fetch is waited for, briefly), at most three resends in all; a call never fetches
 * twice and never loops.
 *
 * Parameters written in the path (`cgi-bin/user/info?openid=OPENID&lang=zh_CN`) are sent with the
 * call's `query`; a name both give takes `query`'s value, and an access_token written in the path is
 * never sent (the client's own is). Errors and logs name the path without its query string.
 *
 * @example
 * ```ts
 * const { ip_list } = await app.client.get('cgi-bin/get_api_domain_ip');
 * await app.client.postJson('cgi-bin/menu/create', { button: [] });
 * ```
 */
export class ApiClient {
  readonly #core: ClientCore;
  readonly #token: TokenManager;

  /** @internal Created by the client. */
  constructor(core: ClientCore, token: TokenManager) {
    this.#core = core;
    this.#token = token;
  }

  /** GET `path` (e.g. `cgi-bin/user/info`) with `query`; resolves the JSON body. */
  get<T extends object = WeChatResponse>(path: string, query: Query = {}, options: RequestOptions = {}): Promise<T> {
    return this.#send<T>('GET', path, query, undefined, options);
  }

  /** POST `body` as JSON to `path`; resolves the JSON body. */
  postJson<T extends object = WeChatResponse>(path: string, body: unknown, options: RequestOptions & { query?: Query } = {}): Promise<T> {
    // `?.`: a JavaScript caller may pass null, which the default does not replace (the call rejects, never throws).
    return this.#send<T>('POST', path, options?.query ?? {}, body ?? {}, options);
  }

  /**
   * POST `body` as JSON to an API that answers with bytes on success (wxacode images); resolves the
   * bytes and their content type. Errors come back as JSON and are thrown as usual.
   */
  postForBuffer(path: string, body: unknown, options: RequestOptions & { query?: Query } = {}): Promise<BinaryResponse> {
    return this.#send<BinaryResponse>('POST', path, options?.query ?? {}, body ?? {}, options, true);
  }

  async #send<T>(method: 'GET' | 'POST', path: string, query: Query, json: unknown, options: RequestOptions | null, binary = false): Promise<T> {
    // A whole URL pasted as the path would be sent under the client's origin and come back a 404: say so
    // before anything is read or sent. The origin is the client's (baseUrl), the path WeChat's API's.
    if (typeof path !== 'string' || path.length === 0) throw new ConfigError(`The path must be an API path such as cgi-bin/user/info (got ${typeName(path)})`, 'path');
    if ((path.includes(':') && /^[a-z][a-z0-9+.-]*:/i.test(path)) || path.startsWith('//')) {
      throw new ConfigError('The path must be an API path such as cgi-bin/user/info, not a URL: the client sends it to its own origin (baseUrl)', 'path');
    }
    const signal = options?.signal;
    const send = (token: string) => {
      const req = { method, path, query: { ...query, access_token: token }, json, signal, client: this.#core };
      return binary ? this.#core.http.binary(req) : this.#core.http.json(req);
    };
    let token = await this.#token.get(signal);
    // Made at the first rejection: a call WeChat answers (nearly every one) needs none.
    let recovery: { fetched: boolean } | undefined;
    let firstRejection: number | undefined;
    let rejection: WeChatApiError;
    for (let resends = 0; ; resends += 1) {
      try {
        // WeChat read the token if it answered, or refused the call for another reason: the token works.
        return (await this.#token.carrying<unknown>(token, () => send(token))) as T;
      } catch (error) {
        if (!isTokenRejection(error)) throw error;
        rejection = error;
      }
      firstRejection ??= performance.now();
      if (resends === MAX_RESENDS || performance.now() - firstRejection > GRACE_MS) break;
      const next = await this.#token.recover(token, rejection.errcode, (recovery ??= { fetched: false }), signal);
      if (next === undefined) break;
      token = next;
    }
    // Leave the last token to the next caller's own recovery: invalidating it here too could turn one
    // broken account into a fetch per call.
    throw new WeChatApiError({ errcode: rejection.errcode, errmsg: rejection.errmsg }, cleanPath(path), {
      message: `${rejection.message}; the token was replaced and the call resent, and WeChat rejected the newer token too`,
      cause: rejection,
    });
  }
}
