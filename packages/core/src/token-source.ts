import type { Dispatcher } from 'undici';
import { BadResponseError } from './errors.js';
import { HttpClient } from './http.js';
import { isPlausibleToken } from './token/entry.js';
import { NOT_IN_BEARER_KEY, checkOptions, durationMs, hasMethods, required, rule, type OptionSchema } from './validate.js';
import { VERSION } from './version.js';

/** What a client asks a token source for. */
export interface TokenSourceRequest {
  kind: 'official_account' | 'mini_program' | 'work';
  /** The AppID, or `{corpId}:{agentId}` for WeCom. */
  id: string;
  field: 'access_token' | 'ticket';
  /** For tickets: `jsapi`, `wx_card`, `agent_jsapi`. */
  ticketType?: string;
}

/**
 * Where a client gets its token when something else owns the refresh, such as `wxkit serve`, the
 * central token service WeChat recommends (中控服务器). The client then needs no AppSecret and never
 * calls WeChat's token endpoints.
 */
export interface TokenSource {
  /** The current value and its remaining life in seconds. */
  fetch(request: TokenSourceRequest): Promise<{ value: string; expiresIn: number }>;
  /**
   * WeChat rejected `value` (40001, 40014, 42001). The source refreshes only if `value` is still its
   * current one, so N clients reporting the same token cause one refresh.
   */
  invalidate(request: TokenSourceRequest, value: string): Promise<void>;
  /**
   * Releases connections the source opened. Each client closes its source with itself, so a source that
   * several clients share must still answer the others afterwards (remoteTokenSource opens new
   * connections on its next request).
   */
  close?(): Promise<void>;
}

/** Options of {@link remoteTokenSource}. */
export interface RemoteTokenSourceOptions {
  /** The service's base URL, e.g. `http://127.0.0.1:7400`. */
  url: string;
  /**
   * A bearer key from the service's configuration: 8 characters or more, no spaces, control characters or characters past U+00FF.
   * Sent as `Authorization: Bearer …`, never logged.
   */
  key: string;
  /**
   * Deadline of one request to the service, in ms.
   * @default 5000
   */
  timeoutMs?: number;
  /** An undici dispatcher to reach the service through. */
  dispatcher?: Dispatcher;
}

const REMOTE_OPTIONS = {
  url: required(rule('an http:// or https:// URL', (value) => isHttpUrl(value))),
  // The key is never shown, not even its length. A space or a control character (the line break at the
  // end of a key read from a file) cannot travel in an Authorization header: every request would fail.
  key: required(
    rule('a string of at least 8 characters, without spaces, control characters or characters past U+00FF (a key read from a file keeps its line break)', (value) =>
      typeof value === 'string' && value.length >= 8 && !NOT_IN_BEARER_KEY.test(value),
    ),
  ),
  timeoutMs: durationMs(),
  dispatcher: rule('an undici Dispatcher (Agent, Pool, ProxyAgent…)', (value) => hasMethods(value, 'dispatch')),
} as const satisfies OptionSchema<keyof RemoteTokenSourceOptions>;

function isHttpUrl(value: unknown): boolean {
  try {
    const { protocol } = new URL(value as string);
    return typeof value === 'string' && (protocol === 'http:' || protocol === 'https:');
  } catch {
    return false;
  }
}

/** The furthest ahead a token service's `expires_at` may be, in seconds: a day. */
const MAX_EXPIRES_IN_S = 24 * 3600;

/**
 * A TokenSource backed by a `wxkit serve` service: `GET /v1/token/{kind}/{id}`,
 * `GET /v1/ticket/{kind}/{id}/{type}` and `POST /v1/token/{kind}/{id}/invalidate`. One source may be
 * given to many clients: closing one of them releases the source's connections, and the others' next
 * requests open new ones.
 *
 * @example
 * ```ts
 * const app = new OfficialAccount({
 *   appId: 'wx1234abcd5678ef90',
 *   tokenSource: remoteTokenSource({ url: 'http://tokens.internal:7400', key: process.env.WXKIT_SERVE_KEY! }),
 * });
 * ```
 */
export function remoteTokenSource(options: RemoteTokenSourceOptions): TokenSource {
  const owner = 'remoteTokenSource';
  const { url, key, timeoutMs = 5000, dispatcher } = checkOptions<RemoteTokenSourceOptions>(owner, REMOTE_OPTIONS, options);
  const open = () =>
    new HttpClient({
      baseUrl: url,
      timeoutMs,
      maxResponseBytes: 64 * 1024,
      dispatcher,
      userAgent: `wxkit/${VERSION}`,
      peer: 'The token service',
      // A token service's answer is a few hundred bytes; there is no option to raise.
      maxResponseBytesOption: null,
    });
  // One source may serve many clients, and each client closes it with itself: close() lets go of the
  // connections (requests under way finish), and the next request of another client opens new ones,
  // rather than being refused as if that client had been closed.
  let opened: HttpClient | undefined = open();
  const http = () => (opened ??= open());
  const headers = { authorization: `Bearer ${key}` };
  const segment = (request: TokenSourceRequest) => `${request.kind}/${encodeURIComponent(request.id)}`;

  return {
    async fetch(request) {
      const path =
        request.field === 'ticket'
          ? `v1/ticket/${segment(request)}/${encodeURIComponent(request.ticketType ?? 'jsapi')}`
          : `v1/token/${segment(request)}`;
      const body = await http().json({ method: 'GET', path, headers });
      const value = body[request.field];
      const expiresAt = body.expires_at;
      if (!isPlausibleToken(value) || typeof expiresAt !== 'number') {
        throw new BadResponseError(`The token service answered ${path} without a usable ${request.field}`, { path });
      }
      const expiresIn = Math.floor(expiresAt - Date.now() / 1000);
      if (expiresIn <= 0) throw new BadResponseError(`The token service answered ${path} with an expired ${request.field}`, { path });
      // WeChat's tokens and tickets live 2 h: a day or more ahead is another unit (milliseconds, say).
      if (expiresIn >= MAX_EXPIRES_IN_S) {
        throw new BadResponseError(`The token service answered ${path} with an expires_at more than a day ahead (it takes unix seconds)`, { path });
      }
      return { value, expiresIn };
    },
    async invalidate(request, value) {
      await http().json({ method: 'POST', path: `v1/token/${segment(request)}/invalidate`, json: { token: value }, headers });
    },
    async close() {
      const closing = opened;
      opened = undefined;
      await closing?.close();
    },
  };
}
