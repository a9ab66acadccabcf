import type { ClientCore } from './client-base.js';
import { WeChatApiError } from './errors.js';
import { cleanPath, type BinaryResponse, type Query } from './http.js';
import type { TokenManager } from './token-manager.js';

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

// The errcodes that mean "this access token is no good", after which a fresh token may succeed.
// 40001: superseded by a newer token; 40014: malformed or unknown; 42001: expired.
const TOKEN_ERRCODES = new Set([40001, 40014, 42001]);

/**
 * Calls any WeChat API with the access token in its query string. When WeChat rejects the token
 * (40001, 40014, 42001) the client invalidates exactly that token, gets the current one (one fetch
 * across all processes) and resends once; a second rejection is thrown, never retried again.
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
    return this.#send<T>('POST', path, options.query ?? {}, body ?? {}, options);
  }

  /**
   * POST `body` as JSON to an API that answers with bytes on success (wxacode images); resolves the
   * bytes and their content type. Errors come back as JSON and are thrown as usual.
   */
  postForBuffer(path: string, body: unknown, options: RequestOptions & { query?: Query } = {}): Promise<BinaryResponse> {
    return this.#send<BinaryResponse>('POST', path, options.query ?? {}, body ?? {}, options, true);
  }

  async #send<T>(method: 'GET' | 'POST', path: string, query: Query, json: unknown, options: RequestOptions, binary = false): Promise<T> {
    const send = (token: string) => {
      const req = { method, path, query: { ...query, access_token: token }, json, signal: options.signal };
      return binary ? this.#core.http.binary(req) : this.#core.http.json(req);
    };
    const token = await this.#token.get(options.signal);
    const sentAt = performance.now();
    try {
      return (await send(token)) as T;
    } catch (error) {
      if (!(error instanceof WeChatApiError) || !TOKEN_ERRCODES.has(error.errcode)) throw error;
    }
    const fresh = await this.#token.replacementFor(token, sentAt, options.signal);
    try {
      return (await send(fresh)) as T;
    } catch (error) {
      if (!(error instanceof WeChatApiError) || !TOKEN_ERRCODES.has(error.errcode)) throw error;
      // Leave the second token to the next caller's own recovery: invalidating it here too could turn
      // one broken account into a fetch per call.
      throw new WeChatApiError({ errcode: error.errcode, errmsg: error.errmsg }, cleanPath(path), {
        message: `${error.message}; the token was refreshed once and the retry failed too`,
        cause: error,
      });
    }
  }
}
