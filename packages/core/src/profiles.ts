import { createHash } from 'node:crypto';
import { CacheError, ConfigError } from './errors.js';
import { PhpFormatError, phpArray, phpGet, phpSerialize, phpUnserialize, type PhpValue } from './php-serialize.js';
import { bareEntry, storeTtlSeconds, type KeySchema, type KeySubject, type StoredEntry } from './token/entry.js';
import { assertOptionsObject, invalidOption, optionalChoice } from './validate.js';
import {
  easyWeChat4OpenPlatform,
  easyWeChat6OpenPlatform,
  openKeyPrefixOption,
  silenceperOpenPlatform,
  withOpenPlatform,
  wxJavaOpenPlatform,
} from './open-platform/peer-layouts.js';

// Compatibility profiles: the same token protocol, reading and writing the entries another SDK keeps,
// so a Node service joins a PHP, Python, Go or Java deployment without a migration. Every detail is
// checked against the peer's published source; docs/key-schema.md names the version and file.

/** The lock of an entry, for peers that take none: wxkit's own `{key}:lock`. */
const defaultLock = (entryKey: string) => `${entryKey}:lock`;


/** PHP's `json_encode()` with default flags, for keys: `/` as `\/`, non-ASCII as lowercase `\uXXXX`. */
export function phpJsonEncode(record: Record<string, string>): string {
  return JSON.stringify(record)
    .replace(/\//g, '\\/')
    .replace(/[\u0080-\uffff]/g, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

const md5 = (text: string) => createHash('md5').update(text, 'utf8').digest('hex');

function needSecret(profile: string, subject: KeySubject): string {
  if (!subject.secret) {
    throw new ConfigError(`The ${profile} profile builds its keys from the secret, as that SDK does; give the client options.secret (even in follower mode)`, 'secret');
  }
  return subject.secret;
}

/**
 * Reads a value a PHP cache store wrote with `serialize()`. A value in another PHP encoding (igbinary,
 * msgpack, a framework's own prefix) is a CacheError naming the profile: wxkit must not overwrite what
 * the PHP side would then fail to read.
 */
function phpValue(profile: string, raw: string): PhpValue | undefined {
  try {
    return phpUnserialize(raw);
  } catch (error) {
    const looksPhp = /^[aNbidsOC]:/.test(raw) && error instanceof PhpFormatError;
    if (looksPhp && /^[OC]:/.test(raw)) {
      throw new CacheError(`The ${profile} profile found a PHP object where it expects an array or a string; the PHP side stores something else under this key`);
    }
    // igbinary values start with a 4-byte version header (0x00000002), msgpack with a map/array marker.
    if (/^\u0000\u0000\u0000[\u0001\u0002]/.test(raw) || /^[\u0080-\u009f\u00de\u00df]/.test(raw)) {
      throw new CacheError(
        `The ${profile} profile reads values written with PHP's serialize(); this one was written with another serializer (igbinary or msgpack?). Set the PHP cache store's serializer back to serialize, or share through wxkit's native schema`,
      );
    }
    return undefined;
  }
}

/** Options of {@link easyWeChat4}. */
export interface EasyWeChat4Options {
  /**
   * Everything the PHP cache store puts in front of EasyWeChat's key, exactly as it appears in Redis.
   * ThinkPHP: the store's `prefix` option, joined with no separator. Laravel 5.8–10:
   * `{REDIS_PREFIX}{CACHE_PREFIX}:`, by default `laravel_database_laravel_cache:`; Laravel 11 and later:
   * `{REDIS_PREFIX}{CACHE_PREFIX}`, by default `laravel_database_laravel_cache_`.
   * @default ''
   */
  prefix?: string;
  /** Which PHP cache store holds the entries; both serialize() arrays the same way. @default 'thinkphp' */
  store?: 'thinkphp' | 'laravel';
  /** EasyWeChat 4.0–4.2.11 stored tokens for `expires_in − 500` s; 4.2.12 and 5.x for `expires_in`. @default false */
  legacyTtl?: boolean;
}

/**
 * EasyWeChat 4.x/5.x (PHP), on a ThinkPHP or Laravel cache: key
 * `easywechat.kernel.access_token.` + md5 of PHP's `json_encode()` of the credentials, value the
 * `serialize()`d array `['access_token' => …, 'expires_in' => …]`, TTL `expires_in`. EasyWeChat 4 fetches
 * on the classic endpoint, so clients with this profile do too unless told otherwise. EasyWeChat takes no
 * lock: wxkit's `{key}:lock` keeps wxkit's processes to one fetch, and its token-scoped recovery covers a
 * PHP process that refreshes behind its back.
 *
 * @example
 * ```ts
 * new OfficialAccount({ appId, secret, schema: easyWeChat4({ prefix: 'think:' }), cache: new RedisCache(url) });
 * ```
 */
export function easyWeChat4(options: EasyWeChat4Options = {}): KeySchema {
  const name = 'easyWeChat4';
  assertOptionsObject(name, options);
  const prefix = options.prefix ?? '';
  if (typeof prefix !== 'string') throw invalidOption(name, 'prefix', 'a string', prefix);
  optionalChoice(name, options, 'store', ['thinkphp', 'laravel'], undefined);
  const safeSeconds = options.legacyTtl ? 500 : 0;
  return withOpenPlatform({
    name,
    defaultEndpoint: 'classic',
    keyNeedsSecret: true,
    accessTokenKey(subject) {
      const secret = needSecret(name, subject);
      // src/OfficialAccount/Auth/AccessToken.php, MiniProgram/…, Work/Auth/AccessToken.php::getCredentials()
      const credentials: Record<string, string> =
        subject.kind === 'work'
          ? { corpid: subject.corpId, corpsecret: secret }
          : { grant_type: 'client_credential', appid: subject.appId, secret };
      return `${prefix}easywechat.kernel.access_token.${md5(phpJsonEncode(credentials))}`;
    },
    ticketKey(subject, type) {
      if (subject.kind === 'work') throw new ConfigError(`The ${name} profile covers official account tickets only`, 'schema');
      return `${prefix}easywechat.basic_service.jssdk.ticket.${type}.${subject.appId}`;
    },
    lockKey: defaultLock,
    encode(field, value, expiresIn, _fetchedAt, extra) {
      if (field === 'ticket') {
        // BasicService/Jssdk/Client.php caches WeChat's whole answer.
        const answer = extra?.response ?? { errcode: 0, errmsg: 'ok', ticket: value, expires_in: expiresIn };
        return phpSerialize(phpArray(Object.fromEntries(Object.entries(answer).filter(([, v]) => isPhp(v))) as Record<string, PhpValue>));
      }
      return phpSerialize(phpArray({ access_token: value, expires_in: expiresIn }));
    },
    decode(field, raw) {
      const parsed = phpValue(name, raw);
      return parsed === undefined ? undefined : bareEntry(phpGet(parsed, field));
    },
    ttlSeconds: (expiresIn, field) => storeTtlSeconds(expiresIn, field === 'ticket' ? 500 : safeSeconds),
  }, easyWeChat4OpenPlatform(prefix));
}

function isPhp(value: unknown): value is PhpValue {
  return value === null || ['string', 'number', 'boolean'].includes(typeof value);
}

/** Options of {@link easyWeChat6}. */
export interface EasyWeChat6Options {
  /** As for easyWeChat4: what the PHP cache store puts in front of the key. @default '' */
  prefix?: string;
  /** ThinkPHP and Laravel store a string `serialize()`d (`s:8:"TOKEN123";`). @default 'thinkphp' */
  store?: 'thinkphp' | 'laravel';
}

/**
 * EasyWeChat 6.15.1+ (PHP): key `official_account.access_token.{appId}.{secret}.{0|1}` (`mini_app.` for
 * mini programs, `work.access_token.{corpId}.{secret}` for WeCom; the last digit is 1 on the stable
 * endpoint), value the token as the PSR-16 store encodes a string (ThinkPHP and Laravel:
 * `s:8:"TOKEN123";`), TTL `expires_in`.
 *
 * The key holds the plain AppSecret, as EasyWeChat 6 builds it: anyone who can list the store's keys
 * can read the secret. wxkit masks it in every log line, event and error; prefer the native schema when
 * EasyWeChat 6 is not in the deployment.
 */
export function easyWeChat6(options: EasyWeChat6Options = {}): KeySchema {
  const schema = easyWeChat6Like('easyWeChat6', options, (token) => phpSerialize(token), (raw) => {
    const parsed = phpValue('easyWeChat6', raw);
    return parsed === undefined ? undefined : bareEntry(parsed);
  });
  return withOpenPlatform(schema, easyWeChat6OpenPlatform(options.prefix ?? ''));
}

/**
 * node-easywechat 3.6.2+ (hpyer/node-easywechat): EasyWeChat 6's key with the token stored raw. Lets a
 * project move from it to wxkit without a token gap. The key holds the plain AppSecret (see easyWeChat6).
 */
export function nodeEasyWeChat(options: { prefix?: string } = {}): KeySchema {
  return easyWeChat6Like('nodeEasyWeChat', options, (token) => token, bareEntry);
}

function easyWeChat6Like(
  name: string,
  options: { prefix?: string; store?: string },
  encode: (token: string) => string,
  decode: (raw: string) => StoredEntry | undefined,
): KeySchema {
  assertOptionsObject(name, options);
  const prefix = options.prefix ?? '';
  if (typeof prefix !== 'string') throw invalidOption(name, 'prefix', 'a string', prefix);
  optionalChoice(name, options, 'store', ['thinkphp', 'laravel'], undefined);
  const secrets = new Set<string>();
  return {
    name,
    keyNeedsSecret: true,
    accessTokenKey(subject) {
      const secret = needSecret(name, subject);
      secrets.add(secret);
      // src/OfficialAccount/AccessToken.php::getKey() (6.15.1), src/Work/AccessToken.php::getKey()
      if (subject.kind === 'work') return `${prefix}work.access_token.${subject.corpId}.${secret}`;
      const kind = subject.kind === 'mini_program' ? 'mini_app' : 'official_account';
      return `${prefix}${kind}.access_token.${subject.appId}.${secret}.${subject.endpoint === 'stable' ? 1 : 0}`;
    },
    ticketKey(subject, type) {
      // src/OfficialAccount/JsApiTicket.php::getKey(): the jsapi ticket, stored like the token.
      if (subject.kind !== 'official_account' || type !== 'jsapi') {
        throw new ConfigError(`The ${name} profile covers the official account's jsapi ticket only`, 'schema');
      }
      return `${prefix}official_account.jsapi_ticket.${subject.appId}`;
    },
    lockKey: (entryKey) => `${entryKey}:lock`,
    encode: (_field, value) => encode(value),
    decode: (_field, raw) => decode(raw),
    ttlSeconds: (expiresIn) => storeTtlSeconds(expiresIn, 0),
    redactKey(key) {
      let redacted = key;
      for (const secret of secrets) redacted = redacted.split(secret).join('***');
      return redacted;
    },
  };
}

/** Options of {@link wechatpy}. */
export interface WechatpyOptions {
  /** RedisStorage's prefix. @default 'wechatpy' */
  prefix?: string;
}

/**
 * wechatpy (Python) with its RedisStorage: key `{prefix}:{appid}_access_token` holding the token as a
 * JSON string (`"TOKEN123"`), TTL `expires_in`, and the companion `{prefix}:{appid}_access_token_expires_at`
 * (an integer) that wechatpy 2 writes and 1.8 does not. wechatpy fetches on the classic endpoint.
 */
export function wechatpy(options: WechatpyOptions = {}): KeySchema {
  const name = 'wechatpy';
  assertOptionsObject(name, options);
  const prefix = options.prefix ?? 'wechatpy';
  if (typeof prefix !== 'string' || prefix.length === 0) throw invalidOption(name, 'prefix', 'a non-empty string', prefix);
  const id = (subject: KeySubject) => (subject.kind === 'work' ? subject.corpId : subject.appId);
  return {
    name,
    defaultEndpoint: 'classic',
    // wechatpy/session/redisstorage.py::key_name(), wechatpy/client/base.py::access_token_key
    accessTokenKey: (subject) => `${prefix}:${id(subject)}_access_token`,
    ticketKey: (subject, type) => `${prefix}:${id(subject)}_${type}_ticket`,
    lockKey: defaultLock,
    encode: (_field, value) => JSON.stringify(value),
    decode: (_field, raw) => {
      try {
        return bareEntry(JSON.parse(raw));
      } catch {
        return undefined;
      }
    },
    ttlSeconds: (expiresIn) => storeTtlSeconds(expiresIn, 0),
    companions: (entryKey, field, _value, expiresIn, fetchedAt) =>
      field === 'access_token'
        ? // wechatpy writes it without a TTL; wxkit gives it the token's, so it never outlives the token.
          [{ key: `${entryKey}_expires_at`, value: JSON.stringify(fetchedAt + expiresIn), ttlSeconds: Math.max(1, expiresIn) }]
        : [],
  };
}

/** Options of {@link silenceper}. */
export interface SilenceperOptions {
  /** The cache silenceper/wechat was given: its Redis cache stores the token raw, its Memcache cache as JSON. @default 'redis' */
  store?: 'redis' | 'memcached';
}

/**
 * silenceper/wechat v2 (Go): key `gowechat_officialaccount__access_token_{appid}` (double underscore;
 * `gowechat_miniprogram_…`, `gowechat_work_…`), or `…__stable_access_token_{appid}` on the stable endpoint,
 * TTL `expires_in − 1500` (stable: `− 300`). It fetches on the classic endpoint by default.
 */
export function silenceper(options: SilenceperOptions = {}): KeySchema {
  const name = 'silenceper';
  assertOptionsObject(name, options);
  const store = optionalChoice(name, options, 'store', ['redis', 'memcached'], 'redis');
  const stableKeys = new Set<string>();
  return withOpenPlatform({
    name,
    defaultEndpoint: 'classic',
    // credential/default_access_token.go: fmt.Sprintf("%s_access_token_%s", prefix, appID)
    accessTokenKey(subject) {
      const base = subject.kind === 'work' ? 'gowechat_work_' : subject.kind === 'mini_program' ? 'gowechat_miniprogram_' : 'gowechat_officialaccount_';
      const id = subject.kind === 'work' ? subject.corpId : subject.appId;
      const stable = subject.kind !== 'work' && subject.endpoint === 'stable';
      const key = `${base}_${stable ? 'stable_' : ''}access_token_${id}`;
      if (stable) stableKeys.add(key);
      return key;
    },
    ticketKey: (subject, type) => `gowechat_${type}_ticket_${subject.kind === 'work' ? subject.corpId : subject.appId}`,
    lockKey: defaultLock,
    encode: (_field, value) => (store === 'memcached' ? JSON.stringify(value) : value),
    decode: (_field, raw) => {
      if (store === 'redis') return bareEntry(raw);
      try {
        return bareEntry(JSON.parse(raw));
      } catch {
        return undefined;
      }
    },
    // The classic token lives expires_in − 1500 s, the stable one expires_in − 300 s.
    ttlSeconds: (expiresIn, _field, key) => storeTtlSeconds(expiresIn, key !== undefined && stableKeys.has(key) ? 300 : 1500),
  }, silenceperOpenPlatform());
}

/** Options of {@link wxJava}. */
export interface WxJavaOptions {
  /** The keyPrefix given to WxMpRedisConfigImpl. @default 'wx' */
  keyPrefix?: string;
  /** The keyPrefix given to WxJava's open-platform Redis storage (WxOpenInRedisTemplateConfigStorage). @default '' */
  openKeyPrefix?: string;
}

/**
 * WxJava (binarywang/WxJava, weixin-java-mp) with its RedisTemplate config: key
 * `{keyPrefix}:access_token:{appId}`, the token raw, TTL `expires_in`. WxJava's own lock
 * `{keyPrefix}:lock:{appId}:accessTokenLock` (SET NX PX, 60 s lease, Lua compare-and-delete release) is the
 * lock wxkit takes too, so a Node process and a Java process never refresh at the same time.
 */
export function wxJava(options: WxJavaOptions = {}): KeySchema {
  const name = 'wxJava';
  assertOptionsObject(name, options);
  const keyPrefix = options.keyPrefix ?? 'wx';
  if (typeof keyPrefix !== 'string' || keyPrefix.length === 0) throw invalidOption(name, 'keyPrefix', 'a non-empty string', keyPrefix);
  const id = (subject: KeySubject) => (subject.kind === 'work' ? subject.corpId : subject.appId);
  const escaped = keyPrefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const tokenKey = new RegExp(`^${escaped}:access_token:(.+)$`);
  const ticketKey = new RegExp(`^${escaped}:ticket:key:(.+):([^:]+)$`);
  return withOpenPlatform({
    name,
    defaultEndpoint: 'classic',
    // weixin-java-mp/…/config/impl/WxMpRedisConfigImpl.java: ACCESS_TOKEN_KEY_TPL, TICKET_KEY_TPL, LOCK_KEY_TPL
    accessTokenKey: (subject) => `${keyPrefix}:access_token:${id(subject)}`,
    ticketKey: (subject, type) => `${keyPrefix}:ticket:key:${id(subject)}:${type}`,
    lockKey(entryKey) {
      const token = tokenKey.exec(entryKey);
      if (token) return `${keyPrefix}:lock:${token[1]}:accessTokenLock`;
      const ticket = ticketKey.exec(entryKey);
      if (ticket) return `${keyPrefix}:lock:${ticket[1]}:${ticket[2] === 'wx_card' ? 'cardApiTicketLock' : 'jsapiTicketLock'}`;
      return `${entryKey}:lock`;
    },
    encode: (_field, value) => value,
    decode: (_field, raw) => bareEntry(raw),
    // WxMpRedisConfigImpl: tokens for expires_in, tickets for expires_in − 200.
    ttlSeconds: (expiresIn, field) => storeTtlSeconds(expiresIn, field === 'ticket' ? 200 : 0),
  }, wxJavaOpenPlatform(openKeyPrefixOption(options as Record<string, unknown>)));
}
