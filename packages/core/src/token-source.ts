import type { Dispatcher } from 'undici';
import { BadResponseError, HttpError, WeChatApiError } from './errors.js';
import { HttpClient, problemCodeOf } from './http.js';
import { retryAtOf, withRetryAt } from './retry-at.js';
import { isPlausibleToken } from './token/plausible.js';
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
  /**
   * The current value and its remaining life in seconds (under a day: a day or more is refused as another
   * unit). `options.signal` aborts once nobody waits for the answer any more (every caller gave up, or the
   * client closed): a source that holds a connection open for it should let it go then. `options.force`:
   * the program asked for it (forceRefresh(), refreshTicket()): a source that holds requests back on its
   * own account (remoteTokenSource after a request that never reached the service) lets it through, as
   * the program may just have brought the service back.
   */
  fetch(request: TokenSourceRequest, options?: { signal?: AbortSignal; force?: boolean }): Promise<{ value: string; expiresIn: number }>;
  /**
   * WeChat rejected `value` (40001, 40014, 42001): `errcode` says which, when the client knows it. The
   * source refreshes only if `value` is still its current one, so N clients reporting the same token
   * cause one refresh. It may resolve the current value and its remaining life, as `fetch()` would
   * (`wxkit serve` answers them): the client then uses it without calling `fetch()`. Resolving nothing,
   * the client calls `fetch()` next. `options.signal` aborts when the client closes: the report is let go
   * then (the source's own refresh, if it began one, goes on). `options.worked`: whether a call of the
   * client went through with `value` before WeChat rejected it; false when none did (a token WeChat
   * rejects moments after each fetch), whose replacements a source that fetches spaces, as clients that
   * fetch for themselves space theirs.
   *
   * A ticket (`request.field` `'ticket'`) is reported by refreshTicket(), with no errcode, to a source
   * that sets {@link TokenSource.takesTicketReports} only: the program says `wx.config` refused it
   * (another program got WeChat to hand out a new one). The client reports the ticket it holds (holding
   * none, the one `fetch()` answers) with `options.force` (the program asked for it, as fetch()'s
   * `force` says), then calls `fetch()` with `force` if the report resolved nothing. A source that cannot
   * replace a ticket resolves nothing; what such a report throws, refreshTicket() fails with.
   */
  invalidate(
    request: TokenSourceRequest,
    value: string,
    errcode?: number,
    options?: { signal?: AbortSignal; worked?: boolean; force?: boolean },
  ): Promise<{ value: string; expiresIn: number } | void>;
  /**
   * Whether `invalidate()` takes a ticket's report (`request.field` `'ticket'`) and resolves a ticket,
   * or nothing: `remoteTokenSource` does. Without it refreshTicket() calls `fetch()` with `force`, as it
   * did before tickets were reported: a source written for access tokens alone may answer a report with
   * its access token, which the client would sign `wx.config` with, or throw.
   */
  readonly takesTicketReports?: boolean;
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
   * A bearer key from the service's configuration: 8 characters or more, no spaces, control characters or
   * characters past U+00FF. `wxkit serve` takes only keys of 16 characters or more; 8 is the floor for
   * services of other makes. Sent as `Authorization: Bearer …`, never logged.
   */
  key: string;
  /**
   * Deadline of one request to the service, in ms (and as long again to wait for a connection). The
   * client waits this long for the source, even if its own `timeoutMs` is shorter. Longer than `wxkit
   * serve` takes to answer when WeChat is slow (a fetch of 10 s at most, after a check of a reported
   * token of 4 s at most), so that its answer, and the `Retry-After` it carries, reaches the client.
   * @default 20000
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

/**
 * The longest life a token source may give a value, in seconds: a day (WeChat's live 2 h; a day or more
 * is another unit). A token service's `expires_at` may lie no further ahead.
 */
export const MAX_SOURCE_EXPIRES_IN_S = 24 * 3600;

/**
 * The longest a `Retry-After` holds this source's requests of one path back. The service's own pauses
 * are a minute at most but for WeChat's daily quota (until midnight, Beijing time), which the service
 * answers from its store at no cost: asked once a minute then, and a proxy's `Retry-After: 86400` on a
 * maintenance page cannot stop a client for a day.
 */
const MAX_HOLD_MS = 60_000;

/**
 * Where remoteTokenSource says how long one of its calls may take at most, in ms (the wait for a
 * connection, then the exchange): the client waits that long for it, not its own `timeoutMs` only, so a
 * source given a longer `timeoutMs` than its client is not cut short by the client.
 */
export const SOURCE_BUDGET_MS = Symbol.for('wxkit.tokenSource.budgetMs');
/** How many paths a source holds back (ended holds included until they are swept). */
export const SOURCE_HELD_PATHS = Symbol.for('wxkit.tokenSource.heldPaths');

/**
 * How long a request that never reached the token service (refused, no route, no such name, no
 * connection within its connect timeout) holds the next requests of every path back (EVERY_PATH), and one
 * the service refused for its key (401) those of its path: a process without a token asks a service that
 * is down, or that does not know its key, once a second, not once per call; its callers fail at once
 * meanwhile, with the error it met. Short: a service back (restarted, the key added) is asked again
 * within a second.
 */
const UNREACHED_HOLD_MS = 1_000;

/**
 * The key under which a request that never reached the service holds back every path of the source
 * (no path is `*`): the service's host is as far for every account, and a source behind which 10,000
 * accounts call a service that is down tries to connect once a second, not once per account.
 */
const EVERY_PATH = '*';

/**
 * How long a service that answered a ticket's report 404 or 405 (no route for it) is sent none, in ms:
 * a minute of refreshTicket() fetching as before, then one report to see whether the route is there.
 */
const TICKET_REPORT_RETRY_MS = 60_000;

/**
 * Whether `error` is a request that never reached the token service: a transport failure before any
 * socket was connected (ECONNREFUSED, ENOTFOUND, a connect timeout), not one cut by the caller's abort or
 * by the source's own close(), nor one that waited for a free connection of this process.
 */
function unreached(error: unknown): boolean {
  if (!(error instanceof HttpError) || error.sent !== false) return false;
  const code = (error.cause as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && code !== 'UND_ERR_DESTROYED' && code !== 'UND_ERR_CLOSED' && code !== 'UND_ERR_ABORTED';
}

/** The shortest key `wxkit serve` takes: a shorter one, refused by it, is named so in the message. */
const SERVE_KEY_MIN = 16;

/** `value` and its remaining life from a token service's answer (`expires_at` in unix seconds), or why not. */
function entryOf(body: Record<string, unknown>, field: TokenSourceRequest['field']): { value: string; expiresIn: number } | string {
  const value = body[field];
  const expiresAt = body.expires_at;
  if (!isPlausibleToken(value) || typeof expiresAt !== 'number') return `without a usable ${field}`;
  const expiresIn = Math.floor(expiresAt - Date.now() / 1000);
  if (!(expiresIn > 0)) return `with an expired ${field}`;
  // WeChat's tokens and tickets live 2 h: a day or more ahead is another unit (milliseconds, say).
  if (expiresIn >= MAX_SOURCE_EXPIRES_IN_S) return 'with an expires_at more than a day ahead (it takes unix seconds)';
  return { value, expiresIn };
}

/**
 * What a request held back fails with: the class, code and errcode of the failure that held it, that
 * failure as its `cause` (where a refused connection's code, ECONNREFUSED say, is read from), and when
 * the hold ends (`said`: the service's own `Retry-After`, else UNREACHED_HOLD_MS).
 */
function heldError(error: unknown, until: number, path: string, said: boolean): Error {
  const at = new Date(until).toISOString();
  const note = said ? `; the token service said to ask again after ${at}, and this process waits until then` : `; this process asks the token service again after ${at}`;
  let held: Error;
  if (error instanceof WeChatApiError) held = new WeChatApiError({ errcode: error.errcode, errmsg: error.errmsg }, error.path, { message: `${error.message}${note}`, cause: error });
  else if (error instanceof BadResponseError) held = new BadResponseError(`${error.message}${note}`, { path, ...(error.status === undefined ? {} : { status: error.status }), cause: error });
  else {
    const http = error instanceof HttpError ? error : undefined;
    held = new HttpError(http?.code === 'ERR_WXKIT_TIMEOUT' ? 'ERR_WXKIT_TIMEOUT' : 'ERR_WXKIT_HTTP', `${http?.message ?? `The token service failed ${path}`}${note}`, {
      path,
      ...(http?.status === undefined ? {} : { status: http.status }),
      sent: false,
      cause: error,
    });
  }
  return withRetryAt(held, until);
}

/**
 * An answer of the service that holds its path back a second where it names no Retry-After. Not
 * `shutting_down`: an instance that stops answers it on a connection kept alive from before and closes
 * that connection, so the next request opens another, which reaches an instance that runs (a rolling
 * restart) or is refused (none runs, and EVERY_PATH is held then): a second's hold would only keep the
 * clients from the instance that runs, a report of a rejected token included.
 */
function heldStatus(error: HttpError): boolean {
  const status = error.status;
  if (problemCodeOf(error) === 'shutting_down') return false;
  return status === 401 || status === 404 || status === 429 || (status !== undefined && status >= 500);
}

/**
 * A TokenSource backed by a `wxkit serve` service: `GET /v1/token/{kind}/{id}`,
 * `GET /v1/ticket/{kind}/{id}/{type}`, `POST /v1/token/{kind}/{id}/invalidate` and
 * `POST /v1/ticket/{kind}/{id}/{type}/invalidate`. A service that has no route for a ticket's report
 * (404 or 405: another make, or an earlier wxkit serve) is sent none for a minute, then one again; the
 * client fetches its ticket as before meanwhile. One source may be given to many clients: closing one of them releases
 * the source's connections, and the others' next requests open new ones.
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
  const { url, key, timeoutMs = 20_000, dispatcher } = checkOptions<RemoteTokenSourceOptions>(owner, REMOTE_OPTIONS, options);
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
  // The requests under way on each HttpClient the source opened, which close() does not wait for.
  const underWay = new Map<HttpClient, number>();
  // Runs `run` on the current HttpClient (opened anew after a close()), counted under way on it.
  const counted = async (run: (http: HttpClient) => Promise<Record<string, unknown>>): Promise<Record<string, unknown>> => {
    const http = (opened ??= open());
    underWay.set(http, (underWay.get(http) ?? 0) + 1);
    try {
      return await run(http);
    } finally {
      const left = underWay.get(http)! - 1;
      if (left > 0) underWay.set(http, left);
      else underWay.delete(http);
    }
  };
  const headers = { authorization: `Bearer ${key}` };
  const segment = (request: TokenSourceRequest) => `${request.kind}/${encodeURIComponent(request.id)}`;
  const ticketPath = (request: TokenSourceRequest) => `v1/ticket/${segment(request)}/${encodeURIComponent(request.ticketType ?? 'jsapi')}`;
  // A failure answered with Retry-After holds the next requests of its path back until then (a minute at
  // most): each of the service's back-off steps costs one request per process, not one per call.
  // Its end is counted on the monotonic clock: a wall clock stepped back (NTP, a VM resumed) does not
  // stretch it.
  // Ended holds are swept once per MAX_HOLD_MS as new ones are set: a source behind which 10,000 accounts
  // each met a back-off keeps the holds of the last two windows at most, not one entry per account.
  // A request that never reached the service holds every path back for UNREACHED_HOLD_MS, the same way
  // (under EVERY_PATH), and one refused for its key its path. A forced fetch (the program's
  // forceRefresh()) passes such a hold of this process's own, as the library's back-off of unsent fetches
  // lets it pass: the service may just have been started, or the key added. Not one the service asked
  // for, nor one a forced fetch's own failure set (`forced`): a program that forces a refresh on every
  // failed call asks a service still down once a second, not once per call.
  const holds = new Map<string, { until: number; error: unknown; said: boolean; forced: boolean }>();
  let sweepAt = 0;
  const hold = (path: string, until: number, error: unknown, said: boolean, forced = false) => {
    const now = performance.now();
    if (now >= sweepAt) {
      for (const [held, { until: end }] of holds) if (end <= now) holds.delete(held);
      sweepAt = now + MAX_HOLD_MS;
    }
    // A hold of this process's own (UNREACHED_HOLD_MS) never cuts short a longer one the service asked
    // for: a request that met a restarting instance, under way beside one told to wait, ends no wait
    // (and one that never reached the service holds EVERY_PATH, which the path's own hold outlasts).
    const current = holds.get(path);
    if (!said && current !== undefined && current.until > until) return;
    holds.set(path, { until, error, said, forced });
  };
  // The service refused a report that carried WeChat's errcode (or whether a call went through with the
  // token), and took it without: a service of another make.
  let extrasRefused = false;
  // Until when (monotonic clock) the service is sent no ticket report: it answered one 404 or 405, as an
  // instance without the route does (see ticketReport).
  let ticketReportsRefusedUntil = -Infinity;
  // Throws what a request of `path` held back under `key` (the path, or EVERY_PATH) fails with, if it is.
  const heldBack = (key: string, path: string, force: boolean) => {
    const held = holds.get(key);
    if (!held) return;
    const left = held.until - performance.now();
    if (left <= 0) holds.delete(key);
    else if (!(force && !held.said && !held.forced)) throw heldError(held.error, Date.now() + left, path, held.said);
  };
  // The service answered (whatever it said): a hold of every path for want of a connection ends, as
  // the service is reachable again (or another of its instances behind the name answered).
  const reached = () => {
    if (holds.get(EVERY_PATH)?.said === false) holds.delete(EVERY_PATH);
  };
  const send = async (path: string, exchange: () => Promise<Record<string, unknown>>, force = false): Promise<Record<string, unknown>> => {
    heldBack(path, path, force);
    heldBack(EVERY_PATH, path, force);
    try {
      const answered = await exchange();
      reached();
      return answered;
    } catch (error) {
      if (error instanceof WeChatApiError || error instanceof BadResponseError || (error instanceof HttpError && error.status !== undefined)) reached();
      let failure = error;
      // A key too short for wxkit serve, refused: say so, as a wrong key is hard to tell from a typo.
      if (error instanceof HttpError && error.status === 401 && key.length < SERVE_KEY_MIN) {
        failure = new HttpError('ERR_WXKIT_HTTP', `${error.message}; the key has fewer than ${SERVE_KEY_MIN} characters, and wxkit serve takes none that short`, {
          path: error.path,
          status: 401,
          cause: error,
        });
      }
      const at = retryAtOf(error);
      const now = Date.now();
      if (at !== undefined && at > now) hold(path, performance.now() + Math.min(at - now, MAX_HOLD_MS), failure, true);
      else if (unreached(error)) hold(EVERY_PATH, performance.now() + UNREACHED_HOLD_MS, failure, false, force);
      // A refusal that says nothing of when to ask again holds its path a second: a 401 (a service of
      // another make may take the key for some accounts only), a 404, a 429 or a 5xx (a service without
      // its store, or whose own fetch never left its host, says no Retry-After, so that its clients may
      // reach another instance). A process without a token then asks once a second, not once per call.
      // An instance shutting down holds nothing back (see heldStatus).
      else if (error instanceof HttpError && heldStatus(error)) hold(path, performance.now() + UNREACHED_HOLD_MS, failure, false, force);
      throw failure;
    }
  };

  /**
   * Reports a ticket `wx.config` refused: `POST …/{type}/invalidate` with `{"ticket"}`. wxkit serve
   * replaces it if it still holds it and answers the current ticket, used as it is. A service without the
   * route answers 404 (another make) or 405 (a wxkit serve that takes only GET there): the report is
   * dropped, the client fetches as before, and this source sends no ticket report for a minute
   * (TICKET_REPORT_RETRY_MS). Not for ever: in a rolling upgrade the instance that answered may be the
   * last of the old release, and the route is there once it is replaced. Not a 404 of wxkit serve's that
   * names the app or the ticket type unknown: its fetch fails the same way.
   */
  const ticketReport = async (request: TokenSourceRequest, value: string, signal: AbortSignal | undefined, force: boolean) => {
    if (performance.now() < ticketReportsRefusedUntil) return undefined;
    const path = `${ticketPath(request)}/invalidate`;
    let body: Record<string, unknown>;
    try {
      body = await send(path, () => counted((http) => http.json({ method: 'POST', path, json: { ticket: value }, headers, ...(signal ? { signal } : {}) })), force);
    } catch (error) {
      if (error instanceof BadResponseError && error.status !== undefined && error.status >= 200 && error.status < 300) return undefined;
      // sent false: a request held back by an earlier failure, not the service's answer to this one.
      const missing =
        error instanceof HttpError &&
        error.sent &&
        (error.status === 405 || (error.status === 404 && !['unknown_app', 'unknown_ticket_type'].includes(problemCodeOf(error) ?? '')));
      if (!missing) throw error;
      ticketReportsRefusedUntil = performance.now() + TICKET_REPORT_RETRY_MS;
      return undefined;
    }
    const entry = entryOf(body, 'ticket');
    return typeof entry === 'string' ? undefined : entry;
  };

  const source: TokenSource & { [SOURCE_BUDGET_MS]: number; readonly [SOURCE_HELD_PATHS]: number } = {
    // Its own deadlines end a call first, with the more precise error; a second spares a race with them.
    [SOURCE_BUDGET_MS]: 2 * timeoutMs + 1_000,
    takesTicketReports: true,
    get [SOURCE_HELD_PATHS]() {
      return holds.size;
    },
    async fetch(request, options) {
      const path = request.field === 'ticket' ? ticketPath(request) : `v1/token/${segment(request)}`;
      const signal = options?.signal;
      const body = await send(path, () => counted((http) => http.json({ method: 'GET', path, headers, ...(signal ? { signal } : {}) })), options?.force === true);
      const entry = entryOf(body, request.field);
      if (typeof entry === 'string') throw new BadResponseError(`The token service answered ${path} ${entry}`, { path });
      return entry;
    },
    async invalidate(request, value, errcode, options) {
      // A ticket goes to its own route: the access token's would compare it with the token, match
      // nothing, and replace nothing.
      if (request.field === 'ticket') return ticketReport(request, value, options?.signal, options?.force === true);
      const path = `v1/token/${segment(request)}/invalidate`;
      const signal = options?.signal;
      const worked = options?.worked;
      // A service of another make may answer the report with no body (204) or no JSON: taken, with no
      // token in it (undefined), and the client asks fetch() for one.
      const report = async (json: Record<string, unknown>): Promise<Record<string, unknown> | undefined> => {
        try {
          return await send(path, () => counted((http) => http.json({ method: 'POST', path, json, headers, ...(signal ? { signal } : {}) })));
        } catch (error) {
          if (error instanceof BadResponseError && error.status !== undefined && error.status >= 200 && error.status < 300) return undefined;
          throw error;
        }
      };
      // WeChat's errcode goes with the token: the service tells a token superseded by a program outside
      // the fleet (40001 on the token it holds) from one that merely expired. So does whether a call went
      // through with it: the service spaces the replacements of tokens none did.
      const extras = {
        ...(Number.isSafeInteger(errcode) ? { errcode } : {}),
        ...(typeof worked === 'boolean' ? { worked } : {}),
      };
      const withExtras = !extrasRefused && Object.keys(extras).length > 0;
      let body: Record<string, unknown> | undefined;
      try {
        body = await report(withExtras ? { token: value, ...extras } : { token: value });
      } catch (error) {
        // A service of another make that takes {"token"} and nothing else refuses the other fields (400,
        // 422): asked once more without them, and never with them again once that was taken.
        if (!(withExtras && error instanceof HttpError && (error.status === 400 || error.status === 422))) throw error;
        body = await report({ token: value });
        extrasRefused = true;
      }
      if (body === undefined) return undefined;
      // wxkit serve answers the current token: used as it is, which spares the client's next request.
      // Without a usable one (a service that answers {"ok":true}), the client asks fetch().
      const entry = entryOf(body, 'access_token');
      return typeof entry === 'string' ? undefined : entry;
    },
    async close() {
      const closing = opened;
      opened = undefined;
      if (!closing) return;
      const closed = closing.close();
      // A client lets its own requests go before it closes its source: those still under way are other
      // clients' of the same source. They finish on their own, and their connections close as they end;
      // close() does not wait for them, as their service may hold them for its lock up to timeoutMs.
      if (underWay.has(closing)) closed.catch(() => undefined);
      else await closed;
    },
  };
  return source;
}
