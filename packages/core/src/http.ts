import { Agent, type Dispatcher } from 'undici';
import { BadResponseError, HttpError, WeChatApiError } from './errors.js';

export type QueryValue = string | number | boolean | undefined;
export type Query = Record<string, QueryValue>;

export interface HttpSettings {
  baseUrl: string;
  timeoutMs: number;
  maxResponseBytes: number;
  /** A caller's dispatcher (a ProxyAgent, say). When absent the client opens and owns an Agent. */
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

/**
 * JSON over HTTP with the guarantees the token protocol needs: a total deadline on every exchange
 * (connect, headers and the whole body: a body that trickles forever still ends), a size cap, and
 * errors that name the path but never the query string, where the access_token and the secret live.
 */
export class HttpClient {
  readonly #settings: HttpSettings;
  readonly #dispatcher: Dispatcher;
  readonly #ownsDispatcher: boolean;
  readonly #origin: string;
  /** The base URL's path, without a trailing slash (`''` for https://api.weixin.qq.com). */
  readonly #basePath: string;
  readonly #headers: Record<string, string>;
  readonly #jsonHeaders: Record<string, string>;
  readonly #peer: string;

  constructor(settings: HttpSettings) {
    this.#settings = settings;
    this.#peer = settings.peer ?? 'WeChat';
    const base = new URL(settings.baseUrl);
    this.#origin = base.origin;
    this.#basePath = base.pathname.replace(/\/+$/, '');
    this.#headers = { 'user-agent': settings.userAgent, accept: 'application/json' };
    this.#jsonHeaders = { ...this.#headers, 'content-type': 'application/json' };
    this.#ownsDispatcher = settings.dispatcher === undefined;
    this.#dispatcher =
      settings.dispatcher ??
      new Agent({
        keepAliveTimeout: 10_000,
        connect: { timeout: settings.timeoutMs },
        headersTimeout: settings.timeoutMs,
        bodyTimeout: settings.timeoutMs,
      });
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

  async close(): Promise<void> {
    if (this.#ownsDispatcher) await this.#dispatcher.close();
  }

  async #exchange(req: HttpRequest): Promise<{ status: number; contentType: string; bytes: Buffer }> {
    const path = cleanPath(req.path);
    // One controller and one timer per exchange: the total deadline, and the caller's signal if any.
    const controller = new AbortController();
    let deadlineHit = false;
    const timer = setTimeout(() => {
      deadlineHit = true;
      controller.abort();
    }, this.#settings.timeoutMs);
    const onCallerAbort = () => controller.abort();
    req.signal?.addEventListener('abort', onCallerAbort, { once: true });
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
        signal: controller.signal,
        headersTimeout: this.#settings.timeoutMs,
        bodyTimeout: this.#settings.timeoutMs,
      });
      const bytes = await readCapped(res.body, this.#settings.maxResponseBytes, path, res.statusCode, this.#peer);
      const contentType = res.headers['content-type'];
      return { status: res.statusCode, contentType: (Array.isArray(contentType) ? contentType[0] : contentType) ?? '', bytes };
    } catch (error) {
      if (error instanceof HttpError || error instanceof BadResponseError) throw error;
      if (req.signal?.aborted) throw req.signal.reason;
      throw this.#transportError(error, path, deadlineHit);
    } finally {
      clearTimeout(timer);
      req.signal?.removeEventListener('abort', onCallerAbort);
    }
  }

  #transportError(error: unknown, path: string, deadlineHit: boolean): HttpError {
    const code = (error as { code?: unknown } | null)?.code;
    if (deadlineHit || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      return new HttpError(
        'ERR_WXKIT_TIMEOUT',
        `${this.#peer} did not answer ${path} within ${this.#settings.timeoutMs} ms; raise options.timeoutMs if the network is slow`,
        { path, cause: error },
      );
    }
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

function readCapped(body: Dispatcher.ResponseData['body'], max: number, path: string, status: number, peer: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    body.on('data', (chunk: Buffer) => {
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
