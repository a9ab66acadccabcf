/**
 * Every error wxkit throws on purpose is a {@link WxkitError} with a stable `code`.
 *
 * Match on `code` rather than on the class: an application that loads both the ESM and the CJS build
 * of `@wxkit/core` has two copies of each class. `instanceof` still works across the copies (each class
 * checks a `Symbol.for` brand), but `code` is the contract.
 */
export type WxkitErrorCode =
  | 'ERR_WXKIT_WECHAT_API'
  | 'ERR_WXKIT_HTTP'
  | 'ERR_WXKIT_TIMEOUT'
  | 'ERR_WXKIT_BAD_RESPONSE'
  | 'ERR_WXKIT_CACHE'
  | 'ERR_WXKIT_NO_TOKEN'
  | 'ERR_WXKIT_INVALID_OPTION'
  | 'ERR_WXKIT_MESSAGE_CRYPTO'
  | 'ERR_WXKIT_CREDENTIALS';

// The brand of each class, `Symbol.for('wxkit.error.<Class>')`: shared by every copy of this module in a
// process (ESM and CJS builds, two installed versions), so `instanceof` holds across the copies.
const BRANDS = new WeakMap<object, symbol>();

/** Gives `cls` its cross-copy brand; called once in each class's static block. */
function brand(cls: object, key: string): void {
  BRANDS.set(cls, Symbol.for(key));
}

/** Base class of the errors wxkit throws. `name` is the class name; `code` never changes meaning. */
export class WxkitError extends Error {
  readonly code: WxkitErrorCode;

  constructor(code: WxkitErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    // Mark the instance with the brand of every branded class it is made from.
    for (let cls: object | null = new.target; cls !== null && cls !== Error; cls = Object.getPrototypeOf(cls)) {
      const key = BRANDS.get(cls);
      if (key) Object.defineProperty(this, key, { value: true });
    }
  }

  static {
    brand(this, 'wxkit.error');
  }

  /** `instanceof` by brand for wxkit's classes; a user's subclass keeps the ordinary prototype check. */
  static override [Symbol.hasInstance](this: object, instance: unknown): boolean {
    const key = BRANDS.get(this);
    if (key === undefined) return Function.prototype[Symbol.hasInstance].call(this, instance);
    return typeof instance === 'object' && instance !== null && (instance as Record<symbol, unknown>)[key] === true;
  }
}

/** Fields of a WeChat error response, as WeChat spells them. */
export interface WeChatErrorBody {
  errcode: number;
  errmsg?: string;
}

/**
 * WeChat answered with a non-zero `errcode`.
 *
 * `path` is the API path without its query string, so no `access_token` ever appears in it.
 * `rid` is WeChat's request id (the `rid: …` suffix of `errmsg`), which WeChat support asks for.
 */
export class WeChatApiError extends WxkitError {
  readonly errcode: number;
  readonly errmsg: string;
  readonly rid: string | undefined;
  readonly path: string;

  constructor(
    body: WeChatErrorBody,
    path: string,
    options: { message?: string; cause?: unknown } = {},
  ) {
    const errmsg = typeof body.errmsg === 'string' ? body.errmsg : '';
    const hint = describeErrcode(body.errcode, path);
    super(
      'ERR_WXKIT_WECHAT_API',
      options.message ?? `WeChat rejected ${path}: errcode ${body.errcode}${hint ? ` (${hint})` : ''}`,
      { cause: options.cause },
    );
    this.errcode = body.errcode;
    this.errmsg = errmsg;
    this.rid = /rid:\s*([0-9a-f-]+)/i.exec(errmsg)?.[1];
    this.path = path;
  }

  static {
    brand(this, 'wxkit.error.WeChatApiError');
  }
}

/** The HTTP exchange failed: connection refused or reset, a non-2xx status, or a timeout. */
export class HttpError extends WxkitError {
  /** HTTP status when the server answered; undefined when no response arrived. */
  readonly status: number | undefined;
  readonly path: string;
  /**
   * Whether the request may have reached the server. `false`: it never left this process (no
   * connection, or no free connection within the queue window), so the server did nothing and a retry
   * cannot act twice. `true`: the server may have acted on it (a send may have gone out; a classic
   * token fetch may have replaced the token).
   */
  readonly sent: boolean;

  constructor(
    code: 'ERR_WXKIT_HTTP' | 'ERR_WXKIT_TIMEOUT',
    message: string,
    options: { path: string; status?: number; sent?: boolean; cause?: unknown },
  ) {
    super(code, message, { cause: options.cause });
    this.status = options.status;
    this.path = options.path;
    this.sent = options.sent ?? true;
  }

  static {
    brand(this, 'wxkit.error.HttpError');
  }
}

/** The server answered, but not with what WeChat sends: not JSON, truncated, too large, or the wrong shape. */
export class BadResponseError extends WxkitError {
  readonly status: number | undefined;
  readonly path: string;
  /**
   * Set by `OpenPlatform.handleAuthorization` once api_query_auth has answered: the account that
   * authorized the component (its authorization code is spent), which the rejection is about.
   */
  declare readonly authorizerAppId?: string;

  constructor(message: string, options: { path: string; status?: number; cause?: unknown; authorizerAppId?: string }) {
    super('ERR_WXKIT_BAD_RESPONSE', message, { cause: options.cause });
    this.status = options.status;
    this.path = options.path;
    if (options.authorizerAppId !== undefined) this.authorizerAppId = options.authorizerAppId;
  }

  static {
    brand(this, 'wxkit.error.BadResponseError');
  }
}

/**
 * Why a store failed, when its adapter can tell: `auth` (wrong or missing password or user), `refused`
 * (nothing listens there), `unreachable` (no such host, no route), `timeout` (no answer in time), `tls`
 * (the TLS handshake failed: certificate, or TLS against a plain server), `database` (no such database;
 * for FileCache, a path that is no directory), `readonly` (the store takes no writes: a replica, too few
 * replicas, a failed save, a Redis whose memory is full, a read-only or full file system), `permission`
 * (the user may not run that command or touch that key, or write to that directory), `disconnected` (the
 * connection dropped), `closed` (used after close()), `value` (the value is no binary string, a character
 * above U+00FF: a bug in the code that encoded it, such as a custom KeySchema; the store was not asked,
 * and is not taken for down),
 * `type` (the key holds another kind of value than the string a TokenCache stores: a Redis hash, list or
 * set, another program's data; the store answered, and is not taken for down: a token entry's key that
 * holds one is read as another program's entry, left as it is), `protocol` (the server at that address
 * speaks another protocol than the store's: an HTTP server, or another store, on the port given).
 */
export type CacheErrorReason =
  | 'auth'
  | 'refused'
  | 'unreachable'
  | 'timeout'
  | 'tls'
  | 'database'
  | 'readonly'
  | 'permission'
  | 'disconnected'
  | 'closed'
  | 'value'
  | 'type'
  | 'protocol';

/** The token store failed (down, timed out, closed, or it holds something unreadable). `cause` is the driver's error. */
export class CacheError extends WxkitError {
  /** Why, when the adapter can tell; undefined otherwise. */
  readonly reason: CacheErrorReason | undefined;
  /**
   * Set by `OpenPlatform.handleAuthorization` once api_query_auth has answered: the account that
   * authorized the component (its authorization code is spent), which the rejection is about.
   */
  declare readonly authorizerAppId?: string;

  constructor(message: string, options?: { cause?: unknown; reason?: CacheErrorReason; authorizerAppId?: string }) {
    super('ERR_WXKIT_CACHE', message, options);
    this.reason = options?.reason;
    if (options?.authorizerAppId !== undefined) this.authorizerAppId = options.authorizerAppId;
  }

  static {
    brand(this, 'wxkit.error.CacheError');
  }
}

/**
 * No token could be had without fetching one, and this client may not fetch: in follower mode
 * (`refresh: 'never'`) nobody wrote a valid entry within `lockWaitMs`.
 */
export class TokenUnavailableError extends WxkitError {
  constructor(message: string) {
    super('ERR_WXKIT_NO_TOKEN', message);
  }

  static {
    brand(this, 'wxkit.error.TokenUnavailableError');
  }
}

/** An option or argument is invalid. Thrown synchronously, before any I/O. */
export class ConfigError extends WxkitError {
  /** The option at fault, e.g. `appId` or `cache`. */
  readonly option: string;

  constructor(message: string, option: string) {
    super('ERR_WXKIT_INVALID_OPTION', message);
    this.option = option;
  }

  static {
    brand(this, 'wxkit.error.ConfigError');
  }
}

/** Why an encrypted WeChat message was refused; see {@link MessageCryptoError}. */
export type MessageCryptoFailure =
  /** `msg_signature` does not match sha1(sorted token, timestamp, nonce, Encrypt): not from WeChat, or the wrong token. */
  | 'signature'
  /** The message or its envelope is not what WeChat sends: no Encrypt field, not base64, not whole AES blocks. */
  | 'format'
  /** The decrypted bytes do not end in a valid PKCS#7 pad (1 to 32 bytes): the wrong EncodingAESKey, or tampering. */
  | 'padding'
  /** The length field points past the end of the message. */
  | 'length'
  /** The app id at the end of the message is not this app's: a message meant for another app. */
  | 'appid'
  /** The signed timestamp lies too far from this process's clock (OpenPlatform's `pushMaxAgeMs`): a push sent again later, or a clock that is off. */
  | 'expired'
  /**
   * `handleCallback()` was handed no raw body (a string, or its bytes: a Buffer, Uint8Array or
   * ArrayBuffer) but what a body parser made of it (an object), or nothing (no parser ran): the callback
   * route needs a parser that keeps the body raw, such as Express's `express.text()` for every content
   * type. Also when it was handed no `{ query, body }` at all (null, undefined, the body alone): the
   * message says what it got. Every push fails so until the route is fixed.
   */
  | 'body';

/**
 * An encrypted WeChat message (a callback push in "safe mode") could not be verified or decrypted.
 * `reason` says which check failed. The message never carries the token, key or plaintext.
 */
export class MessageCryptoError extends WxkitError {
  readonly reason: MessageCryptoFailure;

  constructor(reason: MessageCryptoFailure, message: string) {
    super('ERR_WXKIT_MESSAGE_CRYPTO', message);
    this.reason = reason;
  }

  static {
    brand(this, 'wxkit.error.MessageCryptoError');
  }
}

/** Why a {@link ClientPool} could not make a client; see {@link CredentialsError}. */
export type CredentialsFailure =
  /** The resolver answered `undefined` or `null`: it knows no such account. */
  | 'unknown'
  /** The resolver threw or rejected, or reading a field of its answer threw; `cause` is its error. */
  | 'failed'
  /** The resolver did not answer within the pool's `credentialsTimeoutMs`. */
  | 'timeout'
  /** The resolver answered something that is not credentials (not an object, a secret that is no string…). */
  | 'invalid';

/**
 * A {@link ClientPool}'s credentials resolver gave no usable credentials for an account. `id` is the
 * account asked for; `reason` says what went wrong. The message names fields and types, never a value.
 * Nothing is remembered: the next `get()` of the account asks the resolver again.
 */
export class CredentialsError extends WxkitError {
  readonly reason: CredentialsFailure;
  /** The account asked for (an appId, or a WeCom pool's id). */
  readonly id: string;

  constructor(reason: CredentialsFailure, id: string, message: string, options?: { cause?: unknown }) {
    super('ERR_WXKIT_CREDENTIALS', message, options);
    this.reason = reason;
    this.id = id;
  }

  static {
    brand(this, 'wxkit.error.CredentialsError');
  }
}

// Short descriptions of the errcodes an integrator meets first. Wording follows WeChat's global
// return-code page; anything else is shown by number only.
const ERRCODE_HINTS: Record<number, string> = {
  [-1]: 'WeChat system busy',
  40001: 'access_token invalid or not the latest',
  40002: 'invalid grant_type',
  40003: 'invalid openid',
  40013: 'invalid appid',
  40014: 'invalid access_token',
  40037: 'invalid template_id',
  40091: 'invalid secret (WeCom)',
  40125: 'invalid appsecret',
  40164: 'caller IP not in the whitelist',
  40243: 'appsecret frozen',
  41001: 'access_token missing',
  41002: 'appid missing',
  41004: 'appsecret missing',
  42001: 'access_token expired',
  43004: 'user has not subscribed',
  45009: 'API quota reached (WeChat: for the day; WeCom: for the hour on tokens and tickets, for the day on messages)',
  45011: 'API minute quota reached',
  47001: 'data format error',
  47003: 'argument invalid',
  60020: 'caller IP not among the app\'s trusted IPs (WeCom)',
  61003: 'component is not authorized by this account',
  61004: 'access clientip is not registered (component IP whitelist)',
  61005: 'component_verify_ticket is expired',
  61006: 'component_verify_ticket is invalid',
  61007: 'api is unauthorized to component',
  // An authorization code is single use: the `authorized` push and the redirect carry the same one.
  61009: 'authorization code is invalid: used already, or not issued to this component',
  61010: 'authorization code is expired',
  61023: 'authorizer_refresh_token is invalid: the account must authorize again',
  89501: 'caller IP awaits the administrator\'s confirmation',
  89503: 'caller IP needs the administrator\'s confirmation',
  89506: 'caller IP refused twice by the administrator: blocked for 24 hours',
  89507: 'caller IP refused by the administrator: blocked for 1 hour',
};

// The token endpoints themselves, where 40001 ("invalid credential") means the secret is wrong: WeCom's
// answer to a wrong corpsecret, and WeChat's documented one to a wrong appsecret. No token is involved.
const TOKEN_ENDPOINTS = new Set(['cgi-bin/token', 'cgi-bin/stable_token', 'cgi-bin/gettoken', 'cgi-bin/component/api_component_token']);

/** Whether WeChat's 40001 came from a token endpoint (`path`): the secret is wrong, not a token. */
export function isSecretRejection(errcode: number, path: string | undefined): boolean {
  return errcode === 40001 && path !== undefined && TOKEN_ENDPOINTS.has(path);
}

/** A short English description of a WeChat errcode (answered at `path`), or undefined when wxkit has none. */
export function describeErrcode(errcode: number, path?: string): string | undefined {
  if (isSecretRejection(errcode, path)) return 'invalid credential: the secret is wrong';
  // WeCom's gettoken takes a corp id, not an appid: its 40013 says that one is wrong.
  if (errcode === 40013 && path === 'cgi-bin/gettoken') return 'invalid corpid';
  return ERRCODE_HINTS[errcode];
}

// The errcodes that mean "this access token is no good", after which a fresh token may succeed.
// 40001: superseded by a newer token; 40014: malformed or unknown; 42001: expired.
const TOKEN_ERRCODES = new Set([40001, 40014, 42001]);

/**
 * Whether WeChat refused the call for its access token (40001, 40014, 42001): a fresh token may succeed.
 * Not a token endpoint's own 40001, which refuses the secret.
 */
export function isTokenRejection(error: unknown): error is WeChatApiError {
  return error instanceof WeChatApiError && TOKEN_ERRCODES.has(error.errcode) && !isSecretRejection(error.errcode, error.path);
}

/**
 * Errcodes WeChat may answer before it reads the token, or that say nothing of it: system busy (-1), no
 * token (41001), IP whitelist (40164, 61004, WeCom's trusted IPs 60020), quotas (45009, 45011), no
 * permission for the API (48001).
 */
const SAYS_NOTHING_OF_TOKEN: ReadonlySet<number> = new Set([-1, 41001, 40164, 60020, 61004, 45009, 45011, 48001]);

/**
 * Whether WeChat took the token a call carried and refused the call for another reason (40003 no such
 * user, 43101 a user who refused messages): the token works.
 */
export function tookToken(error: unknown): boolean {
  return error instanceof WeChatApiError && !SAYS_NOTHING_OF_TOKEN.has(error.errcode) && !isTokenRejection(error);
}

/** Wraps anything a store threw into a CacheError, keeping the original as `cause`. */
export function toCacheError(error: unknown, message: string): CacheError {
  return error instanceof CacheError ? error : new CacheError(message, { cause: error });
}

/** What a request made after its client's close() is refused with: it was not sent. */
export function closedRefusal(path: string): HttpError {
  return new HttpError('ERR_WXKIT_HTTP', `The request to ${path} was not sent: the client was closed (close()); make a new one to send again`, { path, sent: false });
}
