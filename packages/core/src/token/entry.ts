import { binaryToText, textToBinary } from '../bytes.js';
import { checkOptions, integer, rule, type OptionSchema } from '../validate.js';
import { isPlausibleToken } from './plausible.js';

/** Which WeChat credential an entry belongs to. */
export type KeySubject =
  | {
      /** `official_account` and `mini_program` share WeChat's token endpoints and so the same keys. */
      kind: 'official_account' | 'mini_program';
      appId: string;
      /** The token endpoint the entry came from: stable and classic tokens are different tokens. */
      endpoint: 'stable' | 'classic';
      /** Only for profiles whose peer SDK builds its key from the secret (EasyWeChat). Never logged. */
      secret?: string;
    }
  | {
      /** A WeCom (企业微信) app: one token per agent secret, so the agent is part of the key. */
      kind: 'work';
      corpId: string;
      agentId: string;
      /** Only for profiles whose peer SDK builds its key from the secret (EasyWeChat). Never logged. */
      secret?: string;
    };

/** The two kinds of value a schema stores: an access token, or a JS-SDK ticket. */
export type EntryField = 'access_token' | 'ticket';

/** A decoded cache entry. Times are unix seconds, as in the stored value. */
export interface StoredEntry {
  /** The token or ticket. */
  value: string;
  /** When WeChat stops accepting it; undefined when the format does not record it. */
  expiresAt?: number;
  /** When the writer asked WeChat for it; undefined when the format does not record it. */
  fetchedAt?: number;
  /** Who fetched it (`host:pid` or `host:pid:service`), when the format records it. */
  fetchedBy?: string;
}

/** What a schema may record next to a freshly fetched value. */
export interface EncodeExtra {
  /** WeChat's whole answer, for formats that store it (EasyWeChat 4 tickets). */
  response?: Record<string, unknown>;
  /** Who fetched it: `host:pid` or `host:pid:service`. */
  fetchedBy?: string;
  /** The key the value is stored under, for schemas that write in the format the key already holds. */
  key?: string;
}

/**
 * How entries are named and encoded in the store. The token protocol is the same for every schema; the
 * schema only decides the bytes. `nativeSchema()` is wxkit's own, documented in docs/key-schema.md; the
 * compatibility profiles (`easyWeChat4()`, `wechatpy()`…) write what another SDK writes.
 */
export interface KeySchema {
  /** Shown in logs and errors, e.g. `native-v1`. */
  readonly name: string;
  /** The token endpoint the peer SDK uses; a client without `tokenEndpoint` follows it. */
  readonly defaultEndpoint?: 'stable' | 'classic';
  /** Whether keys are built from the secret (so a client must have it, even in follower mode). */
  readonly keyNeedsSecret?: boolean;
  accessTokenKey(subject: KeySubject): string;
  ticketKey(subject: KeySubject, type: string): string;
  /** The refresh lock that guards an entry. */
  lockKey(entryKey: string): string;
  /**
   * The stored string for a freshly fetched value; `expiresIn` is WeChat's, in seconds, and `fetchedAt`
   * when the request for it was sent, in unix seconds. It is a binary string, one character per byte
   * (see TokenCache): text goes in as its UTF-8 bytes (`Buffer.from(text, 'utf8').toString('latin1')`).
   * A string with a character above U+00FF is taken as text and stored as its UTF-8 bytes.
   */
  encode(field: EntryField, value: string, expiresIn: number, fetchedAt: number, extra?: EncodeExtra): string;
  /**
   * The entry inside a stored value (a binary string: its characters are the bytes, see TokenCache), or
   * undefined when it is not a valid entry of this schema. Throws (a CacheError, say) for a value in an
   * encoding it cannot read (a PHP object, msgpack). Either way the read is a miss, logged; the entry is
   * replaced only where {@link replacesUndecodable} says so. `key` is the key it was read from.
   */
  decode(field: EntryField, raw: string, key?: string): StoredEntry | undefined;
  /**
   * Whether an entry this schema cannot decode may be replaced (under the refresh lock): only where every
   * program writing the key takes that same lock, in the same dialect (wxkit's own schema; WxJava's).
   * Otherwise such an entry is another program's, and is left as it is. @default false
   */
  readonly replacesUndecodable?: boolean;
  /**
   * Whether every program that writes the entry takes the refresh lock this schema names, in the same
   * dialect (WxJava's RedisTemplate and Jedis configs). Whoever fetched a newer token then writes it
   * before the lock's release, and a refresh that holds the lock after a 40001 does not wait for one
   * (docs/protocol.md, "Resends that survive lockless peers"). @default false
   */
  readonly writersLock?: boolean;
  /**
   * The refresh lock's value: `owner`, a unique string compared on release (wxkit, WxJava's RedisTemplate
   * lock); `expiry-ms`, the lease's end in unix milliseconds as decimal digits, which jedis-lock (WxJava's
   * Jedis config) parses with `Long.parseLong` and takes over once it has passed. @default 'owner'
   */
  readonly lockValue?: 'owner' | 'expiry-ms';
  /** Store TTL for a value WeChat gave `expiresIn` seconds of life, stored under `key`. Always >= 1. */
  ttlSeconds(expiresIn: number, field?: EntryField, key?: string): number;
  /** Entries the peer SDK keeps next to the main one (wechatpy's `…_expires_at`), written after it. */
  companions?(entryKey: string, field: EntryField, value: string, expiresIn: number, fetchedAt: number): { key: string; value: string; ttlSeconds: number }[];
  /**
   * Where the peer keeps the entry's expiry (unix seconds) beside a value that records none (wechatpy's
   * `…_expires_at`): read before the store's TTL, which such a peer may not set; an entry with neither is
   * taken as ended, as such a peer takes it. Undefined: nowhere.
   */
  expiryKey?(entryKey: string, field: EntryField): string | undefined;
  /** The key as logs, events and errors may show it: a key that holds the secret is masked. */
  redactKey?(key: string): string;
  /**
   * Keys of the open platform's entries (docs/key-schema.md): the verify ticket and the component token
   * per component app, the access and refresh token per authorizer, and the record of a spent
   * authorization code, whose third argument is the code's digest (never the code). A schema without it
   * cannot serve an OpenPlatform.
   */
  openPlatformKey?(entry: OpenPlatformEntry, componentAppId: string, authorizerAppId?: string): string;
  /**
   * How a durable entry (verify ticket, refresh token) stored under `key` is encoded when a peer SDK keeps
   * it in its own format (the bare string, a PHP-serialised string); undefined: wxkit's JSON record
   * (docs/key-schema.md), which also carries the write-ahead and the push time.
   */
  openPlatformRecord?(key: string): RecordCodec | undefined;
  /**
   * Where and how a peer SDK keeps its own copy of an authorizer's access token under a key made from the
   * refresh token its caller hands it (EasyWeChat 6): wxkit writes the token it keeps there too, after
   * every refresh and authorization, so the peer finds it instead of refreshing. Undefined: the peer
   * keeps no such copy.
   */
  openPlatformTokenCopy?(componentAppId: string, authorizerAppId: string, refreshToken: string): TokenCopy | undefined;
}

/** A peer's own copy of an authorizer's access token: see {@link KeySchema.openPlatformTokenCopy}. */
export interface TokenCopy {
  key: string;
  /** The bytes the peer reads as `token`. */
  encode(token: string): string;
  /** The token in bytes the peer wrote there; undefined when they hold none. */
  decode(raw: string): string | undefined;
  /** The store TTL of the copy of a token with `expiresIn` seconds of life left. Always >= 1. */
  ttlSeconds(expiresIn: number): number;
  /** How much shorter than the token's life the peer's TTL of the copy is, in seconds. */
  marginSeconds: number;
}

/** A peer's encoding of a durable open-platform entry: the value alone, nothing beside it. */
export interface RecordCodec {
  encode(value: string): string;
  /** The value, or undefined when `raw` holds none. */
  decode(raw: string): string | undefined;
}

/** The open platform's entries: see {@link KeySchema.openPlatformKey}. */
export type OpenPlatformEntry = 'component_verify_ticket' | 'component_access_token' | 'authorizer_access_token' | 'authorizer_refresh_token' | 'authorization_code';

/** Options of {@link nativeSchema}. */
export interface NativeSchemaOptions {
  /**
   * Prepended to every key. Keep the trailing separator.
   * @default 'wechat:'
   */
  prefix?: string;
  /**
   * Seconds taken off WeChat's `expires_in` for the store TTL, so no reader is handed a token in its last
   * minutes. It never takes more than a quarter of a short-lived token's life (see {@link storeTtlSeconds}).
   * Larger margins refresh earlier (more fetches a day); smaller ones risk clock skew.
   * @default 300
   */
  marginSeconds?: number;
}

const NATIVE_DEFAULTS = Object.freeze({ prefix: 'wechat:', marginSeconds: 300 });

/**
 * A margin never takes more than this share of the token's life. The stable endpoint hands out the
 * current token with its remaining life (as little as 300 s, sometimes a little more): a token with 345 s
 * left keeps 259 s in the store instead of 45 s, and is used rather than fetched again and again.
 */
const MAX_MARGIN_SHARE = 0.25;

/**
 * The store TTL rule every schema shares: `expires_in` minus a safety margin that never exceeds a quarter
 * of `expires_in`, and never less than 1 second. `marginSeconds` is the schema's own (native: 300 s;
 * profiles: what their peer SDK subtracts).
 */
export function storeTtlSeconds(expiresIn: number, marginSeconds: number): number {
  const margin = Math.min(marginSeconds, Math.floor(expiresIn * MAX_MARGIN_SHARE));
  return Math.max(1, Math.floor(expiresIn - margin));
}

/**
 * The entry's field, when the value is a plausible token: what every bare-value format returns. A value
 * with the marks of an encoding (`"TOKEN"`, `s:5:"TOKEN";`, `{"data":"TOKEN",…}`) is another program's
 * encoded value, not a token (see isPlausibleToken): taken for one, it would be sent to WeChat, refused,
 * and deleted.
 */
export function bareEntry(value: unknown): StoredEntry | undefined {
  return isPlausibleToken(value) ? { value } : undefined;
}

const NATIVE_SCHEMA_OPTIONS = {
  // A key is one token of a Redis or memcached command line: no whitespace, no control characters.
  prefix: rule('a string free of whitespace and control characters', (value) => typeof value === 'string' && !/[\s\u0000-\u001f\u007f]/.test(value)),
  // A day is far past any token's life (7200 s): a larger margin is a typo.
  marginSeconds: integer(0, 86_400, 's'),
} as const satisfies OptionSchema<keyof NativeSchemaOptions>;

/**
 * wxkit's own key schema, version 1: keys `wechat:stable_access_token:{appid}` and friends, values
 * `{"access_token":"…","expires_at":…,"fetched_at":…,"fetched_by":"…"}`. docs/key-schema.md is the
 * contract that other languages implement.
 *
 * @example
 * ```ts
 * new OfficialAccount({ appId, secret, schema: nativeSchema({ prefix: 'shop:wechat:' }) });
 * ```
 */
export function nativeSchema(options: NativeSchemaOptions = {}): KeySchema {
  const checked = checkOptions<NativeSchemaOptions>('nativeSchema', NATIVE_SCHEMA_OPTIONS, options);
  const prefix = checked.prefix ?? NATIVE_DEFAULTS.prefix;
  const marginSeconds = checked.marginSeconds ?? NATIVE_DEFAULTS.marginSeconds;

  return {
    name: 'native-v1',
    // Every writer of the native schema takes its lock (docs/key-schema.md): a corrupt entry is replaced.
    replacesUndecodable: true,
    accessTokenKey: (subject) =>
      subject.kind === 'work'
        ? `${prefix}work:access_token:${subject.corpId}:${subject.agentId}`
        : `${prefix}${subject.endpoint === 'stable' ? 'stable_access_token' : 'access_token'}:${subject.appId}`,
    ticketKey: (subject, type) =>
      subject.kind === 'work'
        ? `${prefix}work:${type}_ticket:${subject.corpId}:${subject.agentId}`
        : `${prefix}${type}_ticket:${subject.appId}`,
    lockKey: (entryKey) => `${entryKey}:lock`,
    encode: (field, value, expiresIn, fetchedAt, extra) =>
      // Field order is part of the format: WeChat's own field name first. JSON.stringify keeps
      // insertion order, writes integers without exponent, and does not escape `/` or non-ASCII; the
      // store gets the JSON's UTF-8 bytes (a `fetched_by` of `订单` is e8 ae a2 e5 8d 95, as elsewhere).
      textToBinary(JSON.stringify({
        [field]: value,
        expires_at: fetchedAt + Math.floor(expiresIn),
        fetched_at: fetchedAt,
        ...(extra?.fetchedBy === undefined ? {} : { fetched_by: extra.fetchedBy }),
      })),
    decode: (field, raw) => decodeNative(field, raw),
    ttlSeconds: (expiresIn) => storeTtlSeconds(expiresIn, marginSeconds),
    openPlatformKey: (entry, componentAppId, authorizerAppId) =>
      entry === 'authorizer_access_token' || entry === 'authorizer_refresh_token' || entry === 'authorization_code'
        ? `${prefix}${entry}:${componentAppId}:${authorizerAppId}`
        : `${prefix}${entry}:${componentAppId}`,
  };
}

function decodeNative(field: EntryField, raw: string): StoredEntry | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(binaryToText(raw));
  } catch {
    return undefined;
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return undefined;
  const record = parsed as Record<string, unknown>;
  const value = record[field];
  const expiresAt = record.expires_at;
  const fetchedAt = record.fetched_at;
  const fetchedBy = record.fetched_by;
  if (typeof value !== 'string' || value.length === 0) return undefined;
  if (typeof expiresAt !== 'number' || !Number.isFinite(expiresAt)) return undefined;
  // Readers ignore unknown fields; fetched_at and fetched_by are informative, so a hand-written entry may
  // leave them out.
  if (fetchedAt !== undefined && (typeof fetchedAt !== 'number' || !Number.isFinite(fetchedAt))) return undefined;
  const entry: StoredEntry = { value, expiresAt };
  if (fetchedAt !== undefined) entry.fetchedAt = fetchedAt;
  if (typeof fetchedBy === 'string' && fetchedBy.length <= 256) entry.fetchedBy = fetchedBy;
  return entry;
}
