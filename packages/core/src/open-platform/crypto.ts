import { createCipheriv, createDecipheriv, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { MessageCryptoError } from '../errors.js';
import { checkOptions, matching, nonEmptyString, required, typeName, type OptionSchema } from '../validate.js';

/** Options of {@link MessageCrypto}: the values set on WeChat's console for the callback URL. */
export interface MessageCryptoOptions {
  /** The callback Token (3 to 32 characters on WeChat's console), used only in signatures. */
  token: string;
  /** The 43-character EncodingAESKey: base64 of the 32-byte AES key, without its trailing `=`. */
  encodingAESKey: string;
  /** The app id the messages are for and that ends each plaintext; for an open platform, the component app id. */
  appId: string;
}

/** The fields WeChat sends with an encrypted message: query `msg_signature`, `timestamp`, `nonce`, and the body's `Encrypt`. */
export interface EncryptedMessage {
  msgSignature: string;
  timestamp: string;
  nonce: string;
  encrypt: string;
}

// WeChat pads to a 32-byte block (its own spec), not AES's 16: a PKCS#7 pad byte runs from 1 to 32.
const PAD_BLOCK = 32;

/** The callback Token: used only in signatures, never shown in messages. */
export const CALLBACK_TOKEN_RULE = required(nonEmptyString());
/** The EncodingAESKey: base64 of 32 bytes without its `=`; a secret, never shown in messages. */
export const ENCODING_AES_KEY_RULE = required(matching(/^[A-Za-z0-9]{43}$/, 'a 43-character EncodingAESKey of letters and digits'));

const MESSAGE_CRYPTO_OPTIONS = {
  token: CALLBACK_TOKEN_RULE,
  encodingAESKey: ENCODING_AES_KEY_RULE,
  appId: required(nonEmptyString()),
} as const satisfies OptionSchema<keyof MessageCryptoOptions>;

/**
 * WeChat's message encryption ("safe mode", WXBizMsgCrypt), as used by official-account callbacks and
 * every open-platform push: AES-256-CBC with the key from the EncodingAESKey and the key's first
 * 16 bytes as IV; plaintext = 16 random bytes + 4-byte big-endian length + message + app id, padded
 * PKCS#7 to 32 bytes; `msg_signature` = sha1 of the sorted [token, timestamp, nonce, Encrypt].
 *
 * Decryption checks, in order, the signature, the block structure, the pad, the length field and the
 * app id; each failure is a {@link MessageCryptoError} whose `reason` names the check. It does not judge
 * the timestamp: a message recorded and sent again decrypts as the first time did. `OpenPlatform`'s
 * `handleCallback()` refuses one further off than its `pushMaxAgeMs` (5 minutes; reason `expired`); a
 * callback on this class alone must compare `timestamp` with its clock itself, and drop nonces it has seen.
 *
 * @example
 * ```ts
 * const crypto = new MessageCrypto({ token, encodingAESKey, appId: componentAppId });
 * const xml = crypto.decrypt({ msgSignature, timestamp, nonce, encrypt });
 * ```
 */
export class MessageCrypto {
  readonly #token: string;
  readonly #key: Buffer;
  readonly #appId: string;

  constructor(options: MessageCryptoOptions) {
    checkOptions<MessageCryptoOptions>('MessageCrypto', MESSAGE_CRYPTO_OPTIONS, options);
    this.#token = options.token;
    this.#key = Buffer.from(`${options.encodingAESKey}=`, 'base64');
    this.#appId = options.appId;
  }

  /** sha1 hex of the sorted [token, timestamp, nonce, encrypt], as WeChat computes `msg_signature`. */
  signature(timestamp: string, nonce: string, encrypt: string): string {
    const parts = [this.#token, timestamp, nonce, encrypt].sort();
    return createHash('sha1').update(parts.join('')).digest('hex');
  }

  /** Whether `msgSignature` is the signature of the other three (compared in constant time). */
  verify(message: EncryptedMessage): boolean {
    const text = asText(message);
    if (!text) return false;
    const expected = Buffer.from(this.signature(text.timestamp, text.nonce, text.encrypt));
    const given = Buffer.from(text.msgSignature.toLowerCase());
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  /**
   * Encrypts `message` for this app: the base64 `Encrypt` text. `random` (16 bytes) is for test
   * vectors only; by default it is fresh random bytes, as it must be.
   */
  encrypt(message: string, random: Buffer = randomBytes(16)): string {
    if (random.length !== 16) throw new TypeError('MessageCrypto.encrypt: random must be 16 bytes');
    const body = Buffer.from(message, 'utf8');
    const length = Buffer.alloc(4);
    length.writeUInt32BE(body.length);
    const plain = Buffer.concat([random, length, body, Buffer.from(this.#appId, 'utf8')]);
    const pad = PAD_BLOCK - (plain.length % PAD_BLOCK);
    const cipher = createCipheriv('aes-256-cbc', this.#key, this.#key.subarray(0, 16)).setAutoPadding(false);
    return Buffer.concat([cipher.update(Buffer.concat([plain, Buffer.alloc(pad, pad)])), cipher.final()]).toString('base64');
  }

  /** Verifies the signature, then decrypts: the message text (for a push, WeChat's XML). */
  decrypt(message: EncryptedMessage): string {
    if (typeof message?.encrypt !== 'string' || message.encrypt === '') {
      throw new MessageCryptoError('format', 'the encrypted message has no Encrypt text');
    }
    if (!asText(message)) {
      const got = (['msgSignature', 'timestamp', 'nonce'] as const).map((field) => `${field} ${typeName(message[field])}`).join(', ');
      throw new MessageCryptoError('format', `msg_signature, timestamp and nonce must be strings, as in WeChat's query (timestamp and nonce may be whole numbers; got ${got})`);
    }
    if (!this.verify(message)) {
      throw new MessageCryptoError('signature', 'msg_signature does not match: the message is not from WeChat, or the callback token differs');
    }
    return this.decryptText(message.encrypt);
  }

  /** Decrypts an `Encrypt` text without a signature check: only for text whose signature was checked already. */
  decryptText(encrypt: string): string {
    const data = Buffer.from(encrypt, 'base64');
    // Buffer.from ignores what is not base64; re-encoding shows whether anything was dropped.
    if (data.length === 0 || data.length % 16 !== 0 || data.toString('base64') !== encrypt.replace(/\s+/g, '')) {
      throw new MessageCryptoError('format', 'the Encrypt text is not base64 of whole AES blocks');
    }
    const decipher = createDecipheriv('aes-256-cbc', this.#key, this.#key.subarray(0, 16)).setAutoPadding(false);
    const padded = Buffer.concat([decipher.update(data), decipher.final()]);
    const pad = padded[padded.length - 1]!;
    if (pad < 1 || pad > PAD_BLOCK || pad > padded.length || !padded.subarray(padded.length - pad).every((byte) => byte === pad)) {
      throw new MessageCryptoError('padding', 'the decrypted message has no valid padding: the EncodingAESKey differs, or the message was altered');
    }
    const plain = padded.subarray(0, padded.length - pad);
    if (plain.length < 20) throw new MessageCryptoError('length', 'the decrypted message is shorter than its header');
    const length = plain.readUInt32BE(16);
    if (20 + length > plain.length) throw new MessageCryptoError('length', 'the decrypted message is shorter than its length field says');
    const appId = plain.subarray(20 + length).toString('utf8');
    if (appId !== this.#appId) {
      throw new MessageCryptoError('appid', `the message is for another app id than ${this.#appId}`);
    }
    return plain.subarray(20, 20 + length).toString('utf8');
  }
}

/**
 * The message with its fields as text, or undefined when one is neither text nor a whole number: a
 * framework's query parser hands over arrays and objects for `?nonce=1&nonce=2` or `?nonce[a]=1` (an
 * object's String() may throw), and one that converts query values to numbers, a number for the
 * timestamp or the nonce (WeChat's are digits; that number is their text).
 */
function asText(message: EncryptedMessage | null | undefined): EncryptedMessage | undefined {
  if (typeof message?.msgSignature !== 'string' || typeof message.encrypt !== 'string') return undefined;
  const timestamp = queryText(message.timestamp);
  const nonce = queryText(message.nonce);
  return timestamp === undefined || nonce === undefined ? undefined : { msgSignature: message.msgSignature, timestamp, nonce, encrypt: message.encrypt };
}

/**
 * A query value as text: a string as it is, a whole number (what a parser that converts digits makes of
 * WeChat's timestamp or nonce) as its digits; anything else (an array, an object) undefined.
 */
export function queryText(value: unknown): string | undefined {
  return typeof value === 'string' ? value : Number.isSafeInteger(value) && (value as number) >= 0 ? String(value) : undefined;
}
