import { types } from 'node:util';
import type { ClientCore } from '../client-core.js';
import { MessageCryptoError } from '../errors.js';
import { typeName } from '../validate.js';
import { queryText, type MessageCrypto } from './crypto.js';
import { parseFlatXml } from './xml.js';

/** A callback push, decrypted: WeChat's fields by name (`InfoType`, `AuthorizerAppid`, `AuthorizationCode`…). */
export interface OpenPlatformPush {
  infoType: string;
  fields: Record<string, string>;
}

/**
 * The request WeChat sent to the callback URL: its query (a URLSearchParams, or the object a framework
 * parsed it into, such as Express's `req.query`) and raw body. Of a parsed query only text values count
 * (the first of a repeated one, a whole number as its digits); nested objects are ignored. The body is
 * what WeChat sent, as a string or its bytes: a Buffer, Uint8Array or ArrayBuffer (Express: `express.text()`
 * or `express.raw()` for every content type; a web Request: `await request.text()` or `arrayBuffer()`);
 * what a body parser made of it is refused (MessageCryptoError, reason `body`), as is a call without this
 * object (null, undefined, the body alone).
 */
export interface CallbackRequest {
  query: URLSearchParams | Readonly<Record<string, unknown>>;
  body: string | Uint8Array | ArrayBuffer;
}

/** A callback body larger than this is refused before it is parsed; WeChat's pushes are a few kilobytes. */
const MAX_CALLBACK_BYTES = 64 * 1024;
/** A push refused as sent too long ago is logged at most this often (a replayed capture may come in floods). */
const EXPIRED_LOG_EVERY_MS = 60_000;

/**
 * Reads a request to the component's callback URL: its size, signature and encryption, then the age of
 * its signed timestamp. What it returns came from WeChat, and was made within `maxAgeMs` of now.
 */
export class CallbackReader {
  readonly #crypto: MessageCrypto;
  readonly #maxAgeMs: number;
  readonly #now: () => number;
  readonly #log: ClientCore['log'];
  readonly #appId: string;
  /** When (performance.now()) a push refused as expired was last logged. */
  #expiredLoggedAt: number | undefined;

  constructor(crypto: MessageCrypto, maxAgeMs: number, now: () => number, log: ClientCore['log'], appId: string) {
    this.#crypto = crypto;
    this.#maxAgeMs = maxAgeMs;
    this.#now = now;
    this.#log = log;
    this.#appId = appId;
  }

  /**
   * The push `request` carries, decrypted; a MessageCryptoError for one not from WeChat, sent again later
   * (`expired`), or whose body a parser read before, or that is no `{ query, body }` at all (`body`).
   */
  open(request: CallbackRequest): OpenPlatformPush {
    if (typeof request !== 'object' || request === null) {
      // No request at all (null, undefined: the route passed what it did not have), or the body alone:
      // nothing WeChat sent can be checked, as for a body a parser made, and the route is what to fix.
      const alone = typeof request === 'string' ? ': the body alone? Its query carries the signature, so pass both' : '';
      throw new MessageCryptoError(
        'body',
        `handleCallback() takes one argument, the request as { query, body }: the callback's query string and its raw body as WeChat sent it (got ${typeName(request)}${alone})`,
      );
    }
    const query = request.query instanceof URLSearchParams ? request.query : new URLSearchParams(flattenQuery(request.query));
    const raw: unknown = request.body;
    // The bytes as they came: a Buffer, any other Uint8Array, or a web Request's arrayBuffer(), of this
    // realm or another (util.types asks the engine, not the prototype chain).
    const bytes = types.isUint8Array(raw) ? Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength) : types.isArrayBuffer(raw) ? Buffer.from(raw) : undefined;
    if (typeof raw !== 'string' && bytes === undefined) {
      // A framework's body parser read the body first (an object), or none ran (undefined; {} under
      // Express 4): the signature covers the bytes WeChat sent, so nothing else can be checked. The
      // body's content is not quoted: it is what anyone on the internet sends.
      throw new MessageCryptoError(
        'body',
        `the callback body is ${typeName(raw)}, not the raw body: handleCallback() needs it as WeChat sent it, a string or its bytes (a Buffer, Uint8Array or ArrayBuffer). Give the callback route a parser that keeps it raw and no JSON or form parser before it: in Express, express.text({ type: '*/*' }) or express.raw({ type: '*/*' }); in Fastify, a content-type parser for text/xml with parseAs: 'string'; with a web Request, await request.text()`,
      );
    }
    // The body is read before its signature can be checked: one far larger than any push is refused unread.
    const size = bytes === undefined ? Buffer.byteLength(raw as string) : bytes.length;
    if (size > MAX_CALLBACK_BYTES) {
      throw new MessageCryptoError('format', `the callback body is larger than ${MAX_CALLBACK_BYTES} bytes: WeChat's pushes are a few kilobytes`);
    }
    const body = bytes === undefined ? (raw as string) : bytes.toString('utf8');
    const timestamp = query.get('timestamp') ?? '';
    const xml = this.#crypto.decrypt({ msgSignature: query.get('msg_signature') ?? '', timestamp, nonce: query.get('nonce') ?? '', encrypt: parseFlatXml(body).Encrypt ?? '' });
    // The timestamp is under the signature: checked once the signature holds, so a forged request is named so.
    const offMs = Number(timestamp) * 1000 - this.#now();
    if (!(Math.abs(offMs) <= this.#maxAgeMs)) {
      this.#loggedExpired(offMs);
      throw new MessageCryptoError(
        'expired',
        `the push's timestamp (${timestamp}) is ${Number.isFinite(offMs) ? `${Math.round(Math.abs(offMs) / 1000)} s ${offMs < 0 ? 'behind' : 'ahead of'}` : 'not a time near'} this process's clock, beyond options.pushMaxAgeMs (${this.#maxAgeMs} ms): a push sent again after it was made, or this host's clock is off; nothing was stored`,
      );
    }
    const fields = parseFlatXml(xml);
    return { infoType: fields.InfoType ?? '', fields };
  }

  /**
   * A signed push refused for its age is logged (at most once a minute): where this host's clock is off,
   * every push is refused so, no verify ticket is stored, and the component token fails once the last
   * ticket runs out, 12 hours later. A caller's 403 alone would not say why.
   */
  #loggedExpired(offMs: number): void {
    const at = performance.now();
    if (this.#expiredLoggedAt !== undefined && at - this.#expiredLoggedAt < EXPIRED_LOG_EVERY_MS) return;
    this.#expiredLoggedAt = at;
    this.#log.warn(
      { event: 'component_callback.expired', appId: this.#appId, ...(Number.isFinite(offMs) ? { offSeconds: Math.round(offMs / 1000) } : {}) },
      "Refused a signed push whose timestamp lies beyond options.pushMaxAgeMs from this process's clock: a push sent again later, or this host's clock is off (then every push is refused, and no component_verify_ticket is stored)",
    );
  }
}

// A framework's parser may hand over arrays (`?nonce=1&nonce=2`), objects (`?nonce[a]=1`) or numbers (a
// parser that converts digits: WeChat's timestamp and nonce are digits, so the number is their text).
function flattenQuery(query: Readonly<Record<string, unknown>>): [string, string][] {
  const pairs: [string, string][] = [];
  for (const [name, value] of Object.entries(query ?? {})) {
    const first = queryText(Array.isArray(value) ? value[0] : value);
    if (first !== undefined) pairs.push([name, first]);
  }
  return pairs;
}
