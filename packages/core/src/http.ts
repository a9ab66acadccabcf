import type { Dispatcher, Pool as UndiciPool } from 'undici';
import { Pool } from './undici-pool.js';
import { flattened } from './bytes.js';
import { onAbort } from './abort.js';
import { BadResponseError, ConfigError, HttpError, WeChatApiError, closedRefusal } from './errors.js';
import { scrubError } from './redact.js';
import { withRetryAt } from './retry-at.js';
import { signalRefusal } from './validate.js';

export type QueryValue = string | number | boolean | undefined;
export type Query = Record<string, QueryValue>;

export interface HttpSettings {
  baseUrl: string;
  timeoutMs: number;
  maxResponseBytes: number;
  /**
   * A caller's dispatcher (a ProxyAgent, say), used as it is and never closed. When absent the client
   * uses the pool this process shares for the base URL's origin (see {@link sharedPool}).
   */
  dispatcher: Dispatcher | undefined;
  userAgent: string;
  /** Who answers, in messages. @default 'WeChat' */
  peer?: string;
  /**
   * The option that raises `maxResponseBytes`, named in the message of an answer over it; none when the
   * caller cannot raise it. @default 'options.maxResponseBytes'
   */
  maxResponseBytesOption?: string | null;
  /** The longest a request waits in the pool's queue for a socket, in ms. @default timeoutMs */
  queueTimeoutMs?: number;
}

export interface HttpRequest {
  method: 'GET' | 'POST';
  path: string;
  query?: Query;
  json?: unknown;
  signal?: AbortSignal;
  /** Extra request headers (an Authorization header for a token service). Never logged. */
  headers?: Record<string, string>;
  /**
   * A token or ticket fetch: sent through the origin's small token pool, so API calls queued in the
   * main pool cannot hold back the fetch they wait for (a caller's dispatcher carries both).
   */
  tokenFetch?: boolean;
  /**
   * The client the request is sent for, where clients share this HTTP client (a ClientPool's, an
   * OpenPlatform's): once that client is closed, the request is refused as one after close() is.
   */
  client?: { readonly closed: boolean };
}

/** A response body that is not JSON: an image from wxacode, say. */
export interface BinaryResponse {
  contentType: string;
  body: Buffer;
}

// Connections per origin in the shared pool of API calls. Sends beyond it queue inside the pool, so a
// platform of 10,000 accounts sending at once holds this many sockets, not one per account. 128 in
// flight at WeChat's ~20 ms is over 6,000 calls a second.
const POOL_CONNECTIONS = 128;
// Token and ticket fetches go through a pool of their own per origin: every send of an account waits for
// its token, and the fetch runs under a lock lease, so a queue of API calls in the main pool must not
// hold it back. 64, not fewer: a platform starting cold fetches one token per account, and 16 held a
// cold start of 10,000 accounts to 800 fetches a second at 20 ms (14 s, against 7 s for a pool each).
const TOKEN_POOL_CONNECTIONS = 64;
// Idle keep-alive connections are closed after this long; WeChat's servers keep them about as long.
const KEEP_ALIVE_MS = 10_000;

/** Releases one use of `used`; the last one closes the pool. Each client calls it once per pool it holds. */
async function leave(used: SharedPool): Promise<void> {
  used.users -= 1;
  if (used.users > 0) return;
  // The last client of the pool is gone: forgotten first, so a client made meanwhile opens a new one.
  if (pools.get(used.key) === used) pools.delete(used.key);
  await used.pool.close();
}

const HEADERS = new Map<string, { plain: Readonly<Record<string, string>>; json: Readonly<Record<string, string>> }>();

interface SharedPool {
  key: string;
  pool: UndiciPool;
  users: number;
}

// Origins as strings, one copy each, whatever number of clients name them.
const ORIGINS = new Map<string, string>();

// Pools per origin (and connect timeout, and lane) for the whole process: every client without a
// dispatcher of its own sends through them. Idle sockets are unref'd by undici and never hold the
// process open; a pool is closed when the last client using it closes.
const pools = new Map<string, SharedPool>();

/** The shared pool of `origin` for `lane`, counted as used by one more client until it leaves it. */
function sharedPool(origin: string, connectTimeoutMs: number, lane: 'api' | 'token'): SharedPool {
  const key = `${lane} ${origin} ${connectTimeoutMs}`;
  let shared = pools.get(key);
  if (!shared) {
    const connections = lane === 'token' ? TOKEN_POOL_CONNECTIONS : POOL_CONNECTIONS;
    shared = {
      key,
      pool: new Pool(origin, { connections, keepAliveTimeout: KEEP_ALIVE_MS, connect: { timeout: connectTimeoutMs } }),
      users: 0,
    };
    pools.set(key, shared);
  }
  shared.users += 1;
  return shared;
}

/**
 * The exchanges still waiting for a socket, in the order they were queued, by queue window: one timer
 * for all of them, armed for the oldest, so a send that finds a free socket (the common case) costs no
 * timer at all, and a queue of thousands costs one.
 *
 * Each window's exchanges form a list linked through the exchanges themselves, and one leaving it drops
 * both its links: nothing long-lived refers to an exchange once a socket took it. A long-lived `Set`
 * here, which every request passed through, kept requests alive through young collections after they
 * had left it, so whole requests were moved to the old generation (14 MB in 20,000 sends in its test,
 * against 0.1 MB now; a quarter more CPU a send at 0 ms in the throughput benchmark, in a process whose
 * young generation V8 had sized small).
 */
interface Waiting {
  head: Exchange | undefined;
  tail: Exchange | undefined;
}

class QueueWatch {
  readonly #waiting = new Map<number, Waiting>();
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Infinity;

  add(exchange: Exchange): void {
    let queue = this.#waiting.get(exchange.queueWindowMs);
    if (!queue) this.#waiting.set(exchange.queueWindowMs, (queue = { head: undefined, tail: undefined }));
    exchange.waitingPrev = queue.tail;
    if (queue.tail) queue.tail.waitingNext = exchange;
    else queue.head = exchange;
    queue.tail = exchange;
    exchange.waiting = true;
    if (exchange.queueDeadline < this.#timerAt) this.#arm(exchange.queueDeadline);
  }

  delete(exchange: Exchange): void {
    // The timer stays armed: it finds nothing due and re-arms for the oldest still waiting, if any.
    if (!exchange.waiting) return;
    const queue = this.#waiting.get(exchange.queueWindowMs)!;
    const { waitingPrev: prev, waitingNext: next } = exchange;
    if (prev) prev.waitingNext = next;
    else queue.head = next;
    if (next) next.waitingPrev = prev;
    else queue.tail = prev;
    exchange.waitingPrev = exchange.waitingNext = undefined;
    exchange.waiting = false;
  }

  #arm(at: number): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timerAt = at;
    // unref'd: a queued request is waiting for a socket of the pool, which holds the process open itself.
    this.#timer = setTimeout(() => this.#sweep(), Math.max(0, at - performance.now()) + 1).unref();
  }

  #sweep(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    for (const [window, queue] of this.#waiting) {
      // Same window, queued in order: the deadlines of one list only grow.
      for (let exchange = queue.head; exchange; exchange = queue.head) {
        if (exchange.queueDeadline > now) {
          next = Math.min(next, exchange.queueDeadline);
          break;
        }
        this.delete(exchange);
        exchange.expire();
      }
      if (!queue.head) this.#waiting.delete(window);
    }
    if (next !== Infinity) this.#arm(next);
  }
}

const queueWatch = new QueueWatch();

// Redirects are never followed, whatever the caller's dispatcher does with them (undici's redirect
// interceptor reads this per request): a classic fetch carries the secret in its query and a stable one
// in its body, which a 307 or 308 would send on to whatever host it names. A 3xx is an HttpError.
const NO_REDIRECTS = Object.freeze({ maxRedirections: 0 });

// Thrown from onConnect to drop a request that was given up while queued: undici then removes it
// without writing a byte and keeps the socket for the next request.
const GIVEN_UP = new Error('given up while queued');

/**
 * What an exchange's answer becomes: run as the answer completes, so that a call's result (the parsed
 * JSON, say) settles its promise directly, without a promise of the raw answer in between. One function
 * per kind of answer for every client (HttpClient's static ones), handed the client, not a closure per client.
 */
type Finish = (client: HttpClient, result: ExchangeResult, path: string) => unknown;

interface ExchangeResult {
  status: number;
  contentType: string;
  bytes: Buffer;
  /** The answer's `Retry-After`, as sent (a token service that backs off says when to ask again). */
  retryAfter: string | undefined;
}

/**
 * One request as undici's dispatcher sees it (its plain handler interface, as undici's own `request()`
 * uses): the body is gathered straight into an array, no stream in between. The deadline of the
 * exchange starts when undici hands the request to a socket (`onConnect`), not when it was queued;
 * the time in the queue is bounded by its own window, and a request given up there was never sent.
 */
class Exchange {
  readonly queueWindowMs: number;
  readonly queueDeadline: number;
  connected = false;
  /** On the queue watch's list, between these two (see {@link QueueWatch}). */
  waiting = false;
  waitingPrev: Exchange | undefined = undefined;
  waitingNext: Exchange | undefined = undefined;
  #settled = false;
  get settled(): boolean {
    return this.#settled;
  }
  #deadline = Infinity;
  #abort: ((error?: Error) => void) | undefined;
  #status = 0;
  #contentType = '';
  #retryAfter: string | undefined;
  #expectedLength = -1;
  readonly #chunks: Buffer[] = [];
  #size = 0;
  #lateCheck = false;
  /** Armed by the first informational (1xx) answer only: the exchange's deadline, while no real answer came. */
  #informational: NodeJS.Timeout | undefined;
  readonly #client: HttpClient;
  readonly #path: string;
  /** The request, for the credentials a failure's cause must not quote. */
  readonly #request: HttpRequest;
  readonly #signal: AbortSignal | undefined;
  readonly #finish: Finish;
  readonly #resolve: (value: unknown) => void;
  readonly #reject: (error: unknown) => void;
  #stopAbort: (() => void) | undefined;

  constructor(client: HttpClient, request: HttpRequest, path: string, queueWindowMs: number, finish: Finish, resolve: (value: unknown) => void, reject: (error: unknown) => void) {
    const signal = request.signal;
    this.#client = client;
    this.#request = request;
    this.#path = path;
    this.queueWindowMs = queueWindowMs;
    this.queueDeadline = performance.now() + queueWindowMs;
    this.#signal = signal;
    this.#finish = finish;
    this.#resolve = resolve;
    this.#reject = reject;
    if (signal) {
      this.#stopAbort = onAbort(signal, () => {
        if (this.#settled) return;
        // On a socket: undici stops the exchange (and closes that socket). Still queued: the request is
        // dropped when its turn comes, unsent.
        if (!this.connected) return this.#fail(signal.reason);
        try {
          this.#abort?.(signal.reason as Error);
        } catch {
          // A caller's dispatcher whose abort throws: the call ends all the same.
          this.#fail(signal.reason);
        }
      });
    }
  }

  /** The queue window has passed and no socket took the request: it fails, and was never sent. */
  expire(): void {
    if (this.connected || this.#settled) return;
    this.#fail(this.#client.notSentError(this.#path));
  }

  onConnect(abort: (error?: Error) => void): void {
    if (!this.connected) {
      queueWatch.delete(this);
      if (!this.#settled && performance.now() > this.queueDeadline) this.expire();
      if (this.#settled) throw GIVEN_UP;
      this.connected = true;
      this.#deadline = performance.now() + this.#client.timeoutMs;
    }
    this.#abort = abort;
  }

  onHeaders(status: number, headers: (Buffer | string)[] | string[] | null): boolean {
    if (status < 200) {
      this.#onInformational();
      return true;
    }
    if (this.#informational) {
      // The answer has come: its body runs under the same checks as any other (onData, bodyTimeout).
      clearTimeout(this.#informational);
      this.#informational = undefined;
    }
    this.#status = status;
    if (headers) {
      for (let i = 0; i + 1 < headers.length; i += 2) {
        const name = headers[i]!;
        // Only three names matter; compare lengths before making a string of the name.
        if (name.length !== 12 && name.length !== 14 && name.length !== 11) continue;
        const lower = name.toString().toLowerCase();
        if (lower === 'content-type') this.#contentType = headers[i + 1]!.toString();
        else if (lower === 'content-length') this.#expectedLength = Number(headers[i + 1]!.toString());
        else if (lower === 'retry-after' && status >= 400) this.#retryAfter = headers[i + 1]!.toString();
      }
    }
    return true;
  }

  /**
   * An informational answer (102 Processing, 103 Early Hints) is not the answer, and undici restarts its
   * headers timer on each one: an upstream sending them without end would hold the exchange, and every
   * caller waiting on it, for ever. The deadline holds whatever comes: one past it fails the exchange
   * here, and the first one arms a timer for the time left (a send answered at once never arms one).
   */
  #onInformational(): void {
    if (this.#settled || this.#deadline === Infinity) return;
    const left = this.#deadline - performance.now();
    if (left <= 0) {
      this.#abort?.(this.#client.timeoutError(this.#path, true));
      return;
    }
    // unref'd: the socket the exchange is on holds the process open itself.
    this.#informational ??= setTimeout(() => {
      this.#informational = undefined;
      if (!this.#settled) this.#abort?.(this.#client.timeoutError(this.#path, true));
    }, left + 1).unref();
  }

  onData(chunk: Buffer): boolean {
    if (this.#settled) return true;
    this.#size += chunk.length;
    const max = this.#client.maxResponseBytes;
    if (this.#size > max) {
      this.#abort?.(
        new BadResponseError(`${this.#client.peer} answered ${this.#path} with a body over ${max} bytes${this.#client.oversizeHint}`, {
          path: this.#path,
          status: this.#status,
        }),
      );
      return false;
    }
    this.#chunks.push(chunk);
    // bodyTimeout bounds the pause between two chunks; this bounds their sum. A chunk that completes the
    // body is never thrown away: by its length when the answer declares one, else by the end of the
    // message, which undici reports in the same parse as the last chunk when they arrived together.
    if (!this.#lateCheck && !(this.#expectedLength >= 0 && this.#size >= this.#expectedLength) && performance.now() > this.#deadline) {
      this.#lateCheck = true;
      queueMicrotask(() => {
        if (!this.#settled) this.#abort?.(this.#client.timeoutError(this.#path, true));
      });
    }
    return true;
  }

  onComplete(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#cleanUp();
    const chunks = this.#chunks;
    const result: ExchangeResult = {
      status: this.#status,
      contentType: this.#contentType,
      bytes: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, this.#size),
      retryAfter: this.#retryAfter,
    };
    let value: unknown;
    try {
      value = this.#finish(this.#client, result, this.#path);
    } catch (error) {
      this.#reject(error);
      return;
    }
    this.#resolve(value);
  }

  onError(error: Error): void {
    if (this.#settled) return;
    if (this.#signal?.aborted) return this.#fail(this.#signal.reason);
    if (error instanceof HttpError || error instanceof BadResponseError) return this.#fail(error);
    this.#fail(this.#client.transportError(withoutCredentials(error, this.#request), this.#path, this.connected));
  }

  onUpgrade(): void {
    // Never asked for; undici calls it only for upgrade or CONNECT requests.
  }

  #fail(error: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    if (!this.connected) queueWatch.delete(this);
    this.#cleanUp();
    this.#reject(error);
  }

  #cleanUp(): void {
    if (this.#informational) {
      clearTimeout(this.#informational);
      this.#informational = undefined;
    }
    this.#stopAbort?.();
  }
}

/**
 * JSON over HTTP with the guarantees the token protocol needs: a deadline on every exchange (headers,
 * and the whole body: a body that trickles forever still ends), a bounded wait for a socket, a size cap,
 * and errors that name the path but never the query string, where the access_token and the secret live.
 *
 * Two windows, one after the other, each `timeoutMs` long: a request waits at most that long in the
 * pool's queue for a socket (connecting one included), and failing there it was never sent
 * (`HttpError.sent` false, safe to retry); once on a socket, the exchange has `timeoutMs` to answer. A
 * request is never failed for the time it queued, so an answer WeChat gave is never thrown away as a
 * timeout after WeChat acted on it. The deadlines are undici's own (connect timeout, headersTimeout,
 * bodyTimeout, on its shared timer wheel), a check of the body's total time as each chunk arrives, and
 * one timer shared by every queued request: a send sets no timer and makes no AbortController of its
 * own, but for an exchange answered with informational (1xx) answers, on each of which undici restarts
 * its headers timer: that one gets a timer for its deadline. A caller's signal is honoured.
 */
/** The end of an oversize answer's message, per option that raises the limit: one string per process, not per client. */
const OVERSIZE_HINTS = new Map<string, string>();

export class HttpClient {
  readonly #settings: HttpSettings;
  readonly #dispatcher: Dispatcher;
  /** Token and ticket fetches: the origin's token pool (held from construction), or the caller's dispatcher. */
  readonly #tokenDispatcher: Dispatcher;
  /**
   * The shared pools this client holds a use of (API calls, token fetches), until close(): none with a
   * caller's dispatcher. Two fields, not an array of them: 10,000 clients need not hold 10,000 arrays.
   */
  #heldApi: SharedPool | undefined;
  #heldTokens: SharedPool | undefined;
  #closed = false;
  readonly #origin: string;
  /** The base URL's path, without a trailing slash (`''` for https://api.weixin.qq.com). */
  readonly #basePath: string;
  readonly #headers: Readonly<Record<string, string>>;
  readonly #jsonHeaders: Readonly<Record<string, string>>;
  /** Who answers, in messages. */
  readonly peer: string;
  readonly maxResponseBytes: number;
  /** What a message of an answer over `maxResponseBytes` ends with: the option that raises it, if any. */
  readonly oversizeHint: string;
  readonly #queueTimeoutMs: number;
  /** The access_token last sent, and its query-string form. */
  #token: QueryValue;
  #encodedToken = '';

  constructor(settings: HttpSettings) {
    this.#settings = settings;
    this.#queueTimeoutMs = settings.queueTimeoutMs ?? settings.timeoutMs;
    this.peer = settings.peer ?? 'WeChat';
    this.maxResponseBytes = settings.maxResponseBytes;
    const option = settings.maxResponseBytesOption === undefined ? 'options.maxResponseBytes' : settings.maxResponseBytesOption;
    let hint = option === null ? '' : OVERSIZE_HINTS.get(option);
    if (hint === undefined) OVERSIZE_HINTS.set(option!, (hint = flattened(`; raise ${option} if that is expected`)));
    this.oversizeHint = hint;
    const base = new URL(settings.baseUrl);
    let origin = ORIGINS.get(base.origin);
    if (origin === undefined) ORIGINS.set(base.origin, (origin = base.origin));
    this.#origin = origin;
    this.#basePath = base.pathname.replace(/\/+$/, '');
    // One pair of header objects per user agent, shared by every client of the process (undici copies them).
    let headers = HEADERS.get(settings.userAgent);
    if (!headers) {
      const plain = Object.freeze({ 'user-agent': settings.userAgent, accept: 'application/json' });
      HEADERS.set(settings.userAgent, (headers = { plain, json: Object.freeze({ ...plain, 'content-type': 'application/json' }) }));
    }
    this.#headers = headers.plain;
    this.#jsonHeaders = headers.json;
    if (settings.dispatcher) {
      this.#dispatcher = this.#tokenDispatcher = settings.dispatcher;
    } else {
      const api = sharedPool(this.#origin, settings.timeoutMs, 'api');
      // The token pool too, though this client may not fetch for a while: a process that replaces one
      // client with the next keeps its connection for the next cold fetch, which every send waits for.
      const tokens = sharedPool(this.#origin, settings.timeoutMs, 'token');
      this.#dispatcher = api.pool;
      this.#tokenDispatcher = tokens.pool;
      this.#heldApi = api;
      this.#heldTokens = tokens;
    }
  }

  /** Deadline of one exchange once it is on a socket, first byte written to last byte read, in ms. */
  get timeoutMs(): number {
    return this.#settings.timeoutMs;
  }

  /**
   * The longest one call takes before it answers or fails, in ms: the wait for a socket, then the
   * exchange. What a lock lease that guards an HTTP call counts for it.
   */
  get callBudgetMs(): number {
    return this.#queueTimeoutMs + this.#settings.timeoutMs;
  }

  /** Sends the request and returns the parsed JSON body. Throws WeChatApiError when `errcode` is set and not 0. */
  json(req: HttpRequest): Promise<Record<string, unknown>> {
    return this.#exchange(req, HttpClient.#json) as Promise<Record<string, unknown>>;
  }

  static readonly #json: Finish = (client, { status, bytes, retryAfter }, path) => {
    try {
      return client.#decode(path, status, bytes.toString('utf8'));
    } catch (error) {
      // A failure that said when to ask again (a token service backing off): see retryAtOf().
      const at = retryAfter === undefined ? undefined : retryAfterAt(retryAfter, Date.now());
      throw at === undefined ? error : withRetryAt(error, at);
    }
  };

  /**
   * For APIs that answer with bytes on success (wxacode images) and JSON on failure: the bytes and their
   * content type, or the WeChatApiError the JSON carries.
   */
  binary(req: HttpRequest): Promise<BinaryResponse> {
    return this.#exchange(req, HttpClient.#binary) as Promise<BinaryResponse>;
  }

  static readonly #binary: Finish = (client, { status, contentType, bytes }, path) => {
    // Text of any kind (JSON, an HTML page from a proxy or captive portal, plain text) is never the bytes
    // asked for: WeChat answers images as image/*, and errors as JSON, sometimes labelled text/plain.
    if (status >= 200 && status < 300 && !/json|^\s*text\//i.test(contentType) && bytes.length > 0 && bytes[0] !== 0x7b) {
      return { contentType, body: bytes };
    }
    const record = client.#decode(path, status, bytes.toString('utf8'));
    throw new BadResponseError(`${client.peer} answered ${path} with JSON (${Object.keys(record).join(', ') || 'empty'}) where bytes were expected`, {
      path,
      status,
    });
  };

  /**
   * Where a request answered 404 went, base path included: a base URL with a path too many (`…/cgi-bin`,
   * which makes `/cgi-bin/cgi-bin/…`) or too few shows there. The origin carries no credentials.
   */
  #notFoundAt(path: string, status: number): string {
    return status === 404 ? ` (it went to ${this.#origin}${this.#basePath}/${path})` : '';
  }

  #decode(path: string, status: number, text: string): Record<string, unknown> {
    const ok = status >= 200 && status < 300;
    let body: unknown;
    try {
      body = parseJson(text);
    } catch (error) {
      if (!ok) throw new HttpError('ERR_WXKIT_HTTP', `${this.peer} answered ${path} with HTTP ${status}${this.#notFoundAt(path, status)}`, { path, status });
      throw new BadResponseError(
        `${this.peer} answered ${path} with a body that is not JSON (HTTP ${status}, ${text.length} bytes${/^\s*</.test(text) ? ', HTML' : ''})`,
        { path, status, cause: syntaxCause(error) },
      );
    }
    const record = body !== null && typeof body === 'object' && !Array.isArray(body) ? (body as Record<string, unknown>) : undefined;
    if (record && typeof record.errcode === 'number' && record.errcode !== 0) {
      // WeChat reports errors with HTTP 200, but a proxy in between may not; the errcode is what counts.
      throw new WeChatApiError({ errcode: record.errcode, errmsg: stringOr(record.errmsg) }, path);
    }
    if (!ok) throw withProblemCode(new HttpError('ERR_WXKIT_HTTP', `${this.peer} answered ${path} with HTTP ${status}${problemOf(record)}${this.#notFoundAt(path, status)}`, { path, status }), record);
    if (!record) {
      throw new BadResponseError(`${this.peer} answered ${path} with JSON that is not an object`, { path, status });
    }
    if (record.errcode !== undefined && record.errcode !== 0) {
      throw new BadResponseError(`${this.peer} answered ${path} with an errcode that is not a number`, { path, status });
    }
    return record;
  }

  /** Leaves the shared pools (each closed with its last client); a caller's dispatcher stays open. */
  async close(): Promise<void> {
    this.#closed = true;
    const [api, tokens] = [this.#heldApi, this.#heldTokens];
    this.#heldApi = this.#heldTokens = undefined;
    await Promise.all([api && leave(api), tokens && leave(tokens)]);
  }

  #exchange(req: HttpRequest, finish: Finish): Promise<unknown> {
    const path = cleanPath(req.path);
    const { timeoutMs } = this.#settings;
    // Checked before the exchange is made: one whose signal cannot be listened to would fail half set up.
    const refused = signalRefusal(req.signal);
    if (refused) return refused;
    // Requests under way at close() finish; one made after it is refused here, by name, rather than by
    // the closed pool's own error. So is one of a client closed while others still share this one.
    if (this.#closed || req.client?.closed === true) return Promise.reject(closedRefusal(path));
    // A body that is no JSON (a BigInt, a cycle) is the caller's error, found before anything is sent: not
    // a transport failure, which says the request is safe to send again as it is.
    let body: string | undefined;
    if (req.json !== undefined) {
      try {
        body = JSON.stringify(req.json);
      } catch (error) {
        return Promise.reject(new ConfigError(`The body of the request to ${path} cannot be written as JSON (${(error as Error).name}); nothing was sent`, 'body'));
      }
    }
    return new Promise((resolve, reject) => {
      const exchange = new Exchange(this, req, path, this.#queueTimeoutMs, finish, resolve, reject);
      try {
        this.#dispatcherFor(req).dispatch(
          {
            origin: this.#origin,
            path: this.#path(req.path, path, req.query),
            method: req.method,
            headers: req.headers
              ? { ...(req.json === undefined ? this.#headers : this.#jsonHeaders), ...req.headers }
              : req.json === undefined
                ? this.#headers
                : this.#jsonHeaders,
            body,
            headersTimeout: timeoutMs,
            bodyTimeout: timeoutMs,
            ...NO_REDIRECTS,
          },
          exchange,
        );
      } catch (error) {
        // undici reports through onError; a caller's dispatcher might throw instead.
        exchange.onError(error as Error);
      }
      // Only a request left waiting is watched: one a dispatcher put on a socket inside dispatch() (a
      // caller's may) is not. undici's Pool hands even a request for a free socket over a moment later,
      // so its requests are watched until then: a place in a list, no timer of their own.
      if (!exchange.connected && !exchange.settled) queueWatch.add(exchange);
    });
  }

  #dispatcherFor(req: HttpRequest): Dispatcher {
    return req.tokenFetch ? this.#tokenDispatcher : this.#dispatcher;
  }

  /** @internal The exchange did not answer in time once sent (`sent`), or never left the queue. */
  timeoutError(path: string, sent: boolean, cause?: unknown): HttpError {
    return new HttpError(
      'ERR_WXKIT_TIMEOUT',
      `${this.peer} did not answer ${path} within ${this.#settings.timeoutMs} ms (at ${this.#origin}); raise options.timeoutMs if the network is slow`,
      { path, sent, ...(cause === undefined ? {} : { cause }) },
    );
  }

  /** @internal The request waited its whole window for a socket and was never sent. */
  notSentError(path: string): HttpError {
    return new HttpError(
      'ERR_WXKIT_TIMEOUT',
      `The request to ${path} was not sent: no connection to ${midSentence(this.peer)} was free within ${this.#queueTimeoutMs} ms (too many requests in flight); it is safe to retry`,
      { path, sent: false },
    );
  }

  /** @internal A transport failure; `sent` false when the request never reached a socket. */
  transportError(error: unknown, path: string, sent: boolean): HttpError {
    const code = (error as { code?: unknown } | null)?.code;
    if (code === 'UND_ERR_CONNECT_TIMEOUT') return this.timeoutError(path, false, error);
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return this.timeoutError(path, sent, error);
    return new HttpError(
      'ERR_WXKIT_HTTP',
      // The origin says where the request went (a wrong baseUrl, proxy or service URL); an origin never
      // holds credentials.
      `The request to ${path} failed before ${midSentence(this.peer)} answered (${typeof code === 'string' ? `${code}; ` : ''}it went to ${this.#origin})`,
      { path, sent, cause: error },
    );
  }

  /**
   * The path and query string sent for `raw` (`path` being its clean form): the parameters written in
   * the path (`cgi-bin/user/info?openid=…`), then `query`'s. A name `query` gives wins over the path's,
   * and an access_token is only ever `query`'s, the client's own: one written in the path is dropped.
   */
  #path(raw: string, path: string, query: Query | undefined): string {
    let qs = '';
    // A path without a query string (nearly every send) costs one scan for '?'.
    const written = raw.includes('?') ? /^[^?#]*\?([^#]*)/.exec(raw)?.[1] : undefined;
    if (written) {
      for (const [name, value] of new URLSearchParams(written)) {
        if (name === 'access_token' || (query !== undefined && Object.hasOwn(query, name) && query[name] !== undefined)) continue;
        qs += `${qs ? '&' : ''}${encodeURIComponent(name)}=${encodeURIComponent(value)}`;
      }
    }
    if (query) {
      for (const name in query) {
        const value = query[name];
        if (value === undefined) continue;
        let encoded: string;
        if (name === 'access_token') {
          // The token is the same on call after call: encoded once, not on every send.
          if (value !== this.#token) {
            this.#token = value;
            const text = String(value);
            const encoded = encodeURIComponent(text);
            // WeChat's tokens are letters, digits, `_` and `-`, which need no escaping: the token itself
            // is kept then, not an equal copy (encodeURIComponent always makes a new string), which would
            // cost each of 10,000 accounts another 150 bytes.
            this.#encodedToken = encoded === text ? text : encoded;
          }
          encoded = this.#encodedToken;
        } else {
          encoded = encodeURIComponent(String(value));
        }
        qs += `${qs ? '&' : ''}${encodeURIComponent(name)}=${encoded}`;
      }
    }
    const full = `${this.#basePath}/${path}`;
    return qs ? `${full}?${qs}` : full;
  }
}

// Names of the parameters whose values are credentials: secrets, tokens, tickets, login and
// authorization codes, keys (secret, corpsecret, component_appsecret, access_token, js_code…).
const CREDENTIAL_NAME = /secret|token|ticket|code|key/i;

/**
 * The credentials `req` carries: the values of its query's and its JSON body's parameters named like
 * one, and of its extra headers.
 */
function credentialsOf(req: HttpRequest): string[] {
  const found = new Set<string>();
  const visit = (name: string, value: unknown, depth: number): void => {
    if (typeof value === 'string' || typeof value === 'number') {
      if (CREDENTIAL_NAME.test(name)) found.add(String(value));
    } else if (value !== null && typeof value === 'object' && depth < 4) {
      for (const [inner, item] of Object.entries(value)) visit(inner, item, depth + 1);
    }
  };
  const written = req.path.includes('?') ? /^[^?#]*\?([^#]*)/.exec(req.path)?.[1] : undefined;
  if (written) for (const [name, value] of new URLSearchParams(written)) visit(name, value, 0);
  visit('', req.query, 0);
  visit('', req.json, 0);
  // Extra headers are an Authorization header: its value, and the key after its scheme.
  for (const value of Object.values(req.headers ?? {})) {
    found.add(value);
    const credential = /^\S+\s+(\S+)$/.exec(value)?.[1];
    if (credential) found.add(credential);
  }
  // Too short to be one, and masking it would mangle the message rather than hide anything.
  return [...found].filter((value) => value.length >= 4);
}

/**
 * The transport failure of `req` as a cause may keep it. A caller's dispatcher may name the request it
 * failed in its own words (undici's MockAgent quotes the path and query, or the body, it has no answer
 * for; a proxy or policy layer, what it blocked): where the failure quotes a credential the request
 * carried, it is replaced by a copy (name, code, message, stack, cause, an AggregateError's errors) with each one written `***`.
 * Anything else, undici's own ECONNREFUSED and the like, is kept as it is.
 */
function withoutCredentials(error: unknown, req: HttpRequest): unknown {
  const values = credentialsOf(req);
  if (values.length === 0) return error;
  // As sent: raw in a JSON body or a message, percent-encoded in a query string, escaped inside JSON.
  const forms = [...new Set(values.flatMap((value) => [value, encodeURIComponent(value), JSON.stringify(value).slice(1, -1)]))];
  return scrubError(error, (text) => forms.reduce((masked, form) => masked.split(form).join('***'), text));
}

/** A code or reason of the token service's error shape: a short snake_case word, never free text. */
const PROBLEM_WORD = /^[a-z][a-z0-9_]{0,39}$/;

/** The `error.code` of the failures answered in the token service's shape, by the HttpError each became. */
const PROBLEM_CODES = new WeakMap<HttpError, string>();

/** Records the `error.code` a failure answered in the token service's shape (`record`) names; returns `error`. */
function withProblemCode(error: HttpError, record: Record<string, unknown> | undefined): HttpError {
  const code = problemCode(record);
  if (code !== undefined) PROBLEM_CODES.set(error, code);
  return error;
}

/** The `error.code` of the token service's answer `error` stands for (`shutting_down`…), if it named one. */
export function problemCodeOf(error: unknown): string | undefined {
  return error instanceof HttpError ? PROBLEM_CODES.get(error) : undefined;
}

/**
 * What a failure answered in the token service's shape (`{"error":{"code","reason"}}`) says, for the
 * message: ` unauthorized (unknown_key)` tells a wrong key from a service that is not ready. Only words
 * of that form are quoted, so a peer cannot write its own text into a message or a log line.
 */
function problemOf(record: Record<string, unknown> | undefined): string {
  const code = problemCode(record);
  if (code === undefined) return '';
  const { reason } = record!.error as { reason?: unknown };
  return ` ${code}${typeof reason === 'string' && PROBLEM_WORD.test(reason) ? ` (${reason})` : ''}`;
}

/** The `error.code` of an answer in the token service's shape, where it is one of its words. */
function problemCode(record: Record<string, unknown> | undefined): string | undefined {
  const error = record?.error;
  if (error === null || typeof error !== 'object') return undefined;
  const { code } = error as { code?: unknown };
  return typeof code === 'string' && PROBLEM_WORD.test(code) ? code : undefined;
}

/** A peer named at a sentence's start ("The token service") as it reads inside one. */
function midSentence(peer: string): string {
  return peer.startsWith('The ') ? `the ${peer.slice(4)}` : peer;
}

/**
 * When a `Retry-After` value (delay-seconds, or an HTTP-date) says to ask again, in unix ms; undefined
 * when it is neither.
 */
export function retryAfterAt(value: string, now: number): number | undefined {
  const text = value.trim();
  if (/^\d{1,10}$/.test(text)) return now + Number(text) * 1000;
  const date = /[a-z]/i.test(text) ? Date.parse(text) : NaN;
  return Number.isFinite(date) ? date : undefined;
}

/** `/cgi-bin/token?x=1` → `cgi-bin/token`: the form used in URLs we build and in every message. */
export function cleanPath(path: string): string {
  // Nearly every path is clean already (no query, no fragment, no leading slash): no regex for those.
  if (path.charCodeAt(0) !== 0x2f && !path.includes('?') && !path.includes('#')) return path;
  return path.replace(/[?#].*$/s, '').replace(/^\/+/, '');
}

function stringOr(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

/**
 * JSON.parse's error, as the cause of a body that is not JSON, without the body's own characters: V8
 * quotes the first ten or so (`Unexpected token 'A', "ACCESS_TOK"... is not valid JSON`), which on a
 * token endpoint behind a proxy that answers the bare token are a token's. Its position, where it
 * gives one, is kept.
 */
function syntaxCause(error: unknown): unknown {
  if (!(error instanceof SyntaxError) || !/["']/.test(error.message)) return error;
  // Messages that quote only JSON's own syntax (`Expected ',' or '}' after … at position 9`) give a
  // position and no character of the body beyond one of those.
  if (/ at position \d+/.test(error.message) && !error.message.includes('"')) return error;
  const cause = new SyntaxError('Unexpected character: the body is not valid JSON');
  cause.stack = `${cause.name}: ${cause.message}`;
  return cause;
}

/**
 * JSON.parse, except that integers beyond Number.MAX_SAFE_INTEGER become strings instead of losing
 * digits. WeChat's template `msgid` is a 64-bit id and often that large.
 */
export function parseJson(text: string): unknown {
  return JSON.parse(quoteUnsafeIntegers(text));
}

// A run of 16 digits or more: the only place an integer beyond Number.MAX_SAFE_INTEGER can be.
const LONG_DIGITS = /\d{16,}/g;

function quoteUnsafeIntegers(text: string): string {
  LONG_DIGITS.lastIndex = 0;
  let run = LONG_DIGITS.exec(text);
  // Nearly every answer has no such run: nothing to do.
  if (run === null) return text;
  let out = '';
  let last = 0;
  // The next quote not yet looked at, and whether the text before it is inside a string: found by the
  // quotes before each run (indexOf, not a loop over every character), an escaped one skipped. A quote
  // found past a run is kept for the next run, so that no stretch of the text is searched twice.
  let quote = text.indexOf('"');
  let inString = false;
  while (run !== null) {
    const end = run.index + run[0].length;
    while (quote !== -1 && quote < run.index) {
      let escaped = false;
      if (inString) {
        let backslashes = 0;
        while (text.charCodeAt(quote - 1 - backslashes) === 0x5c /* \ */) backslashes += 1;
        escaped = backslashes % 2 === 1;
      }
      if (!escaped) inString = !inString;
      quote = text.indexOf('"', quote + 1);
    }
    if (!inString) {
      const start = text.charCodeAt(run.index - 1) === 0x2d /* - */ ? run.index - 1 : run.index;
      const before = text.charCodeAt(start - 1);
      const after = text.charCodeAt(end);
      // A whole integer: not the fraction or the exponent of another number (., e, E, + or - before it;
      // never a digit, the run being all of them), and without a fraction or an exponent of its own
      // (., e or E after it).
      const partOfAnother = before === 0x2e || before === 0x65 || before === 0x45 || before === 0x2b || before === 0x2d;
      const notInteger = after === 0x2e || after === 0x65 || after === 0x45;
      if (!partOfAnother && !notInteger) {
        const literal = text.slice(start, end);
        if (!Number.isSafeInteger(Number(literal))) {
          out += `${text.slice(last, start)}"${literal}"`;
          last = end;
        }
      }
    }
    run = LONG_DIGITS.exec(text);
  }
  return last === 0 ? text : out + text.slice(last);
}
