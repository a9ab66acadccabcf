import { Pool, type Dispatcher } from 'undici';
import { BadResponseError, HttpError, WeChatApiError } from './errors.js';

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
}

export interface HttpRequest {
  method: 'GET' | 'POST';
  path: string;
  query?: Query;
  json?: unknown;
  signal?: AbortSignal;
  /** Extra request headers (an Authorization header for a token service). Never logged. */
  headers?: Record<string, string>;
}

/** A response body that is not JSON: an image from wxacode, say. */
export interface BinaryResponse {
  contentType: string;
  body: Buffer;
}

// Connections per origin in the shared pool. Sends beyond it queue inside the pool (undici's timeouts
// start once a request is on a socket), so a platform of 10,000 accounts sending at once holds this many
// sockets, not one per account. 128 in flight at WeChat's ~20 ms is over 6,000 calls a second.
const POOL_CONNECTIONS = 128;
// Idle keep-alive connections are closed after this long; WeChat's servers keep them about as long.
const KEEP_ALIVE_MS = 10_000;

/** Releases one use of `used`, once; the last one closes the pool. */
function leave(used: SharedPool): () => Promise<void> {
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    used.users -= 1;
    if (used.users > 0) return;
    // The last client of the pool is gone: forgotten first, so a client made meanwhile opens a new one.
    if (pools.get(used.key) === used) pools.delete(used.key);
    await used.pool.close();
  };
}

const HEADERS = new Map<string, { plain: Readonly<Record<string, string>>; json: Readonly<Record<string, string>> }>();

interface SharedPool {
  key: string;
  pool: Pool;
  users: number;
}

// Origins as strings, one copy each, whatever number of clients name them.
const ORIGINS = new Map<string, string>();

// One pool per origin (and connect timeout) for the whole process: every client without a dispatcher
// of its own sends through it. Idle sockets are unref'd by undici and never hold the process open; the
// pool is closed when the last client using it closes.
const pools = new Map<string, SharedPool>();

/** The shared pool of `origin`, counted as used by one more client until `release()`. */
function sharedPool(origin: string, connectTimeoutMs: number): { dispatcher: Dispatcher; release: () => Promise<void> } {
  const key = `${origin} ${connectTimeoutMs}`;
  let shared = pools.get(key);
  if (!shared) {
    shared = {
      key,
      pool: new Pool(origin, { connections: POOL_CONNECTIONS, keepAliveTimeout: KEEP_ALIVE_MS, connect: { timeout: connectTimeoutMs } }),
      users: 0,
    };
    pools.set(key, shared);
  }
  shared.users += 1;
  return { dispatcher: shared.pool, release: leave(shared) };
}

/**
 * JSON over HTTP with the guarantees the token protocol needs: a deadline on every exchange (connect,
 * headers, and the whole body: a body that trickles forever still ends), a size cap, and errors that
 * name the path but never the query string, where the access_token and the secret live.
 *
 * The deadlines are undici's own (connect timeout, headersTimeout, bodyTimeout, on its shared timer
 * wheel) plus a check of the body's total time as each chunk arrives: a send sets no timer and makes no
 * AbortController of its own. A caller's signal is handed to undici as it is.
 */
export class HttpClient {
  readonly #settings: HttpSettings;
  readonly #dispatcher: Dispatcher;
  readonly #release: (() => Promise<void>) | undefined;
  readonly #origin: string;
  /** The base URL's path, without a trailing slash (`''` for https://api.weixin.qq.com). */
  readonly #basePath: string;
  readonly #headers: Readonly<Record<string, string>>;
  readonly #jsonHeaders: Readonly<Record<string, string>>;
  readonly #peer: string;

  constructor(settings: HttpSettings) {
    this.#settings = settings;
    this.#peer = settings.peer ?? 'WeChat';
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
      this.#dispatcher = settings.dispatcher;
    } else {
      const shared = sharedPool(this.#origin, settings.timeoutMs);
      this.#dispatcher = shared.dispatcher;
      this.#release = shared.release;
    }
  }

  /** Deadline of one exchange, connect to last body byte, in ms. */
  get timeoutMs(): number {
    return this.#settings.timeoutMs;
  }

  /** Sends the request and returns the parsed JSON body. Throws WeChatApiError when `errcode` is set and not 0. */
  async json(req: HttpRequest): Promise<Record<string, unknown>> {
    const { status, bytes } = await this.#exchange(req);
    return this.#decode(cleanPath(req.path), status, bytes.toString('utf8'));
  }

  /**
   * For APIs that answer with bytes on success (wxacode images) and JSON on failure: the bytes and their
   * content type, or the WeChatApiError the JSON carries.
   */
  async binary(req: HttpRequest): Promise<BinaryResponse> {
    const { status, contentType, bytes } = await this.#exchange(req);
    const path = cleanPath(req.path);
    if (status >= 200 && status < 300 && !/json|text\/plain/i.test(contentType) && bytes.length > 0 && bytes[0] !== 0x7b) {
      return { contentType, body: bytes };
    }
    const record = this.#decode(path, status, bytes.toString('utf8'));
    throw new BadResponseError(`${this.#peer} answered ${path} with JSON (${Object.keys(record).join(', ') || 'empty'}) where bytes were expected`, {
      path,
      status,
    });
  }

  #decode(path: string, status: number, text: string): Record<string, unknown> {
    const ok = status >= 200 && status < 300;
    let body: unknown;
    try {
      body = parseJson(text);
    } catch (error) {
      if (!ok) throw new HttpError('ERR_WXKIT_HTTP', `${this.#peer} answered ${path} with HTTP ${status}`, { path, status });
      throw new BadResponseError(
        `${this.#peer} answered ${path} with a body that is not JSON (HTTP ${status}, ${text.length} bytes${/^\s*</.test(text) ? ', HTML' : ''})`,
        { path, status, cause: error },
      );
    }
    const record = body !== null && typeof body === 'object' && !Array.isArray(body) ? (body as Record<string, unknown>) : undefined;
    if (record && typeof record.errcode === 'number' && record.errcode !== 0) {
      // WeChat reports errors with HTTP 200, but a proxy in between may not; the errcode is what counts.
      throw new WeChatApiError({ errcode: record.errcode, errmsg: stringOr(record.errmsg) }, path);
    }
    if (!ok) throw new HttpError('ERR_WXKIT_HTTP', `${this.#peer} answered ${path} with HTTP ${status}`, { path, status });
    if (!record) {
      throw new BadResponseError(`${this.#peer} answered ${path} with JSON that is not an object`, { path, status });
    }
    if (record.errcode !== undefined && record.errcode !== 0) {
      throw new BadResponseError(`${this.#peer} answered ${path} with an errcode that is not a number`, { path, status });
    }
    return record;
  }

  /** Leaves the shared pool (closed with its last client); a caller's dispatcher stays open. */
  async close(): Promise<void> {
    await this.#release?.();
  }

  async #exchange(req: HttpRequest): Promise<{ status: number; contentType: string; bytes: Buffer }> {
    const path = cleanPath(req.path);
    const { timeoutMs } = this.#settings;
    const deadline = performance.now() + timeoutMs;
    try {
      const res = await this.#dispatcher.request({
        origin: this.#origin,
        path: this.#path(path, req.query),
        method: req.method,
        headers: req.headers
          ? { ...(req.json === undefined ? this.#headers : this.#jsonHeaders), ...req.headers }
          : req.json === undefined
            ? this.#headers
            : this.#jsonHeaders,
        body: req.json === undefined ? undefined : JSON.stringify(req.json),
        signal: req.signal,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      const bytes = await readCapped(res.body, this.#settings.maxResponseBytes, deadline, () => this.#timeoutError(path), path, res.statusCode, this.#peer);
      const contentType = res.headers['content-type'];
      return { status: res.statusCode, contentType: (Array.isArray(contentType) ? contentType[0] : contentType) ?? '', bytes };
    } catch (error) {
      if (error instanceof HttpError || error instanceof BadResponseError) throw error;
      if (req.signal?.aborted) throw req.signal.reason;
      throw this.#transportError(error, path);
    }
  }

  #timeoutError(path: string, cause?: unknown): HttpError {
    return new HttpError(
      'ERR_WXKIT_TIMEOUT',
      `${this.#peer} did not answer ${path} within ${this.#settings.timeoutMs} ms; raise options.timeoutMs if the network is slow`,
      { path, ...(cause === undefined ? {} : { cause }) },
    );
  }

  #transportError(error: unknown, path: string): HttpError {
    const code = (error as { code?: unknown } | null)?.code;
    if (code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return this.#timeoutError(path, error);
    return new HttpError(
      'ERR_WXKIT_HTTP',
      `The request to ${path} failed before ${this.#peer} answered${typeof code === 'string' ? ` (${code})` : ''}`,
      { path, cause: error },
    );
  }

  #path(path: string, query: Query | undefined): string {
    let full = `${this.#basePath}/${path}`;
    if (query) {
      let qs = '';
      for (const name in query) {
        const value = query[name];
        if (value !== undefined) qs += `${qs ? '&' : ''}${encodeURIComponent(name)}=${encodeURIComponent(String(value))}`;
      }
      if (qs) full += `?${qs}`;
    }
    return full;
  }
}

/** `/cgi-bin/token?x=1` → `cgi-bin/token`: the form used in URLs we build and in every message. */
export function cleanPath(path: string): string {
  return path.replace(/[?#].*$/s, '').replace(/^\/+/, '');
}

function stringOr(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

/**
 * The whole body, at most `max` bytes. A body still arriving after `deadline` (performance.now() ms)
 * fails with `late()`: bodyTimeout bounds the pause between two chunks, this bounds their sum.
 */
function readCapped(
  body: Dispatcher.ResponseData['body'],
  max: number,
  deadline: number,
  late: () => HttpError,
  path: string,
  status: number,
  peer: string,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    body.on('data', (chunk: Buffer) => {
      if (performance.now() > deadline) {
        body.destroy();
        reject(late());
        return;
      }
      size += chunk.length;
      if (size > max) {
        body.destroy();
        reject(
          new BadResponseError(
            `${peer} answered ${path} with a body over ${max} bytes; raise options.maxResponseBytes if that is expected`,
            { path, status },
          ),
        );
        return;
      }
      chunks.push(chunk);
    });
    body.once('end', () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size)));
    body.once('error', reject);
  });
}

/**
 * JSON.parse, except that integers beyond Number.MAX_SAFE_INTEGER become strings instead of losing
 * digits. WeChat's template `msgid` is a 64-bit id and often that large.
 */
export function parseJson(text: string): unknown {
  return JSON.parse(quoteUnsafeIntegers(text));
}

const NUMBER_TOKEN = /-?\d+(\.\d+)?([eE][+-]?\d+)?/y;

function quoteUnsafeIntegers(text: string): string {
  // Fast path: no run of 16+ digits, nothing to do.
  if (!/\d{16}/.test(text)) return text;
  let out = '';
  let i = 0;
  let last = 0;
  while (i < text.length) {
    const ch = text.charCodeAt(i);
    if (ch === 0x22 /* " */) {
      // Skip the string, honouring escapes.
      i++;
      while (i < text.length && text.charCodeAt(i) !== 0x22) i += text.charCodeAt(i) === 0x5c ? 2 : 1;
      i++;
      continue;
    }
    if ((ch >= 0x30 && ch <= 0x39) || ch === 0x2d /* - */) {
      // A whole number token: -?digits(.digits)?([eE][+-]?digits)?
      NUMBER_TOKEN.lastIndex = i;
      const match = NUMBER_TOKEN.exec(text);
      const literal = match ? match[0] : text[i]!;
      const isInteger = match !== null && match[1] === undefined && match[2] === undefined;
      if (isInteger && literal.length >= 16 && !Number.isSafeInteger(Number(literal))) {
        out += `${text.slice(last, i)}"${literal}"`;
        last = i + literal.length;
      }
      i += literal.length;
      continue;
    }
    i++;
  }
  return out + text.slice(last);
}
