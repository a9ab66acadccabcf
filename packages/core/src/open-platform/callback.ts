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
 * (the first of a repeated one, a whole number as its digits); nested objects are ignored.
 */
export interface CallbackRequest {
  query: URLSearchParams | Readonly<Record<string, unknown>>;
  body: string | Buffer;
}

/** A callback body larger than this is refused before it is parsed; WeChat's pushes are a few kilobytes. */
const MAX_CALLBACK_BYTES = 64 * 1024;

/**
 * Reads a request to the component's callback URL: its size, signature and encryption, then the age of
 * its signed timestamp. What it returns came from WeChat, and was made within `maxAgeMs` of now.
 */
export class CallbackReader {
  readonly #crypto: MessageCrypto;
  readonly #maxAgeMs: number;
  readonly #now: () => number;

  constructor(crypto: MessageCrypto, maxAgeMs: number, now: () => number) {
    this.#crypto = crypto;
    this.#maxAgeMs = maxAgeMs;
    this.#now = now;
  }

  /** The push `request` carries, decrypted; a MessageCryptoError for one not from WeChat, or sent again later (`expired`). */
  open(request: CallbackRequest): OpenPlatformPush {
    if (typeof request !== 'object' || request === null) {
      throw new MessageCryptoError('format', `handleCallback() takes { query, body }: the callback's query string and its raw body (got ${typeName(request)})`);
    }
    const query = request.query instanceof URLSearchParams ? request.query : new URLSearchParams(flattenQuery(request.query));
    // The body is read before its signature can be checked: one far larger than any push is refused unread.
    const size = typeof request.body === 'string' ? Buffer.byteLength(request.body) : Buffer.isBuffer(request.body) ? request.body.length : undefined;
    if (size === undefined || size > MAX_CALLBACK_BYTES) {
      throw new MessageCryptoError('format', `the callback body is not a string or Buffer of at most ${MAX_CALLBACK_BYTES} bytes: WeChat's pushes are a few kilobytes`);
    }
    const body = typeof request.body === 'string' ? request.body : request.body.toString('utf8');
    const timestamp = query.get('timestamp') ?? '';
    const xml = this.#crypto.decrypt({ msgSignature: query.get('msg_signature') ?? '', timestamp, nonce: query.get('nonce') ?? '', encrypt: parseFlatXml(body).Encrypt ?? '' });
    // The timestamp is under the signature: checked once the signature holds, so a forged request is named so.
    const offMs = Number(timestamp) * 1000 - this.#now();
    if (!(Math.abs(offMs) <= this.#maxAgeMs)) {
      throw new MessageCryptoError(
        'expired',
        `the push's timestamp (${timestamp}) is ${Number.isFinite(offMs) ? `${Math.round(Math.abs(offMs) / 1000)} s ${offMs < 0 ? 'behind' : 'ahead of'}` : 'not a time near'} this process's clock, beyond options.pushMaxAgeMs (${this.#maxAgeMs} ms): a push sent again after it was made, or this host's clock is off; nothing was stored`,
      );
    }
    const fields = parseFlatXml(xml);
    return { infoType: fields.InfoType ?? '', fields };
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
