import { createHash } from 'node:crypto';
import { binaryToText, textToBinary } from './bytes.js';
import { CacheError, ConfigError } from './errors.js';
import { igbinarySerialize, igbinaryUnserialize, looksLikeIgbinary, type IgbinaryValue } from './igbinary.js';
import { PhpFormatError, phpArray, phpGet, phpSerialize, phpUnserialize, type PhpArray, type PhpValue } from './php-serialize.js';
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

/**
 * `key` with every stretch that any of `parts` covers (overlapping ones too) shown as `***`: masking the
 * parts one after another could cut a later one apart and leave the rest of it in the clear.
 */
function masked(key: string, parts: Iterable<string>): string {
  const covered = new Uint8Array(key.length);
  for (const part of parts) {
    if (part.length === 0) continue;
    for (let at = key.indexOf(part); at !== -1; at = key.indexOf(part, at + 1)) covered.fill(1, at, at + part.length);
  }
  let out = '';
  for (let i = 0; i < key.length; i += 1) {
    if (!covered[i]) out += key[i];
    else if (i === 0 || !covered[i - 1]) out += '***';
  }
  return out;
}

function needSecret(profile: string, subject: KeySubject): string {
  if (!subject.secret) {
    throw new ConfigError(`The ${profile} profile builds its keys from the secret, as that SDK does; give the client options.secret (even in follower mode)`, 'secret');
  }
  return subject.secret;
}

/** How a PHP cache store turns values into bytes. */
export type PhpMarshaller = 'php-serialize' | 'igbinary' | 'auto';
/** The PHP cache stores the EasyWeChat profiles know. */
export type PhpCacheStore = 'thinkphp' | 'laravel' | 'symfony';

/**
 * What each PHP cache store writes out of the box. ThinkPHP's and Laravel's Redis stores call
 * `serialize()`. Symfony Cache's DefaultMarshaller (symfony/cache 4.2–7.1, `Marshaller/DefaultMarshaller.php`)
 * calls `igbinary_serialize()` whenever the igbinary extension (≥ 3.1.6) is loaded, which Debian's
 * php-redis package brings in; Symfony reads both forms either way.
 */
const STOCK_MARSHALLER: Record<PhpCacheStore, 'php-serialize' | 'igbinary'> = { thinkphp: 'php-serialize', laravel: 'php-serialize', symfony: 'igbinary' };

/**
 * The PHP value codec of a profile: reads `serialize()` and igbinary alike (Symfony's item envelopes
 * unwrapped), and writes in the form `marshaller` says; `auto` writes the form the key held when last
 * read, else the store's stock form. A value in another encoding (msgpack, a PHP object) is a CacheError
 * naming the profile: a miss that wxkit leaves as it is.
 */
function phpCodec(profile: string, marshaller: PhpMarshaller, store: PhpCacheStore) {
  const seen = new Map<string, 'php-serialize' | 'igbinary'>();
  return {
    read(raw: string, key: string | undefined): PhpValue | undefined {
      const form = looksLikeIgbinary(raw) ? 'igbinary' : 'php-serialize';
      const value = form === 'igbinary' ? fromIgbinary(profile, raw) : phpValue(profile, raw);
      if (value !== undefined && key !== undefined) seen.set(key, form);
      return value;
    },
    write(value: PhpValue, key: string | undefined): string {
      const form = marshaller === 'auto' ? ((key === undefined ? undefined : seen.get(key)) ?? STOCK_MARSHALLER[store]) : marshaller;
      return form === 'igbinary' ? igbinarySerialize(toIgbinary(value)) : phpSerialize(value);
    },
  };
}

/**
 * Symfony Cache's item envelope (below, in fromIgbinary) in `serialize()` form, which symfony/cache 7.2+
 * writes by default and any PHP without igbinary: 5.x `a:1:{s:10:"\x9D…\x5F";VALUE}`, 6.x+
 * `O:1:"\xA9":N:{s:6:"…";VALUE…}` (an item's tags follow its value). Items carry one when written with
 * metadata, as the Contracts `get($key, $callback)` writes them.
 */
const SYMFONY_ENVELOPE = /^(?:a:1:\{s:10:"\x9d[\s\S]{4}\x00[\s\S]{3}\x5f"|O:1:"\xa9":(\d{1,9}):\{s:6:"[\s\S]{6}");/;

/** Reads a value a PHP cache store wrote with `serialize()`, envelope taken off; undefined when it is no such value. */
function phpValue(profile: string, raw: string): PhpValue | undefined {
  try {
    const envelope = SYMFONY_ENVELOPE.exec(raw);
    if (!envelope) return phpUnserialize(raw);
    // The metadata's binary key put aside, the rest reads as an array whose first entry is the value.
    const wrapper = phpUnserialize(`a:${envelope[1] ?? 1}:{s:0:"";${raw.slice(envelope[0].length)}`) as PhpArray;
    return wrapper.entries[0]![1];
  } catch (error) {
    const looksPhp = /^[aNbidsOC]:/.test(raw) && error instanceof PhpFormatError;
    if (looksPhp && /^[OC]:/.test(raw)) {
      throw new CacheError(`The ${profile} profile found a PHP object where it expects an array or a string; the PHP side stores something else under this key`);
    }
    // Symfony's tag-aware pools (RedisTagAwareAdapter, TagAwareAdapter over Redis) write an item's
    // value, tags and metadata in TagAwareMarshaller's compact form: 0x9D, 8 bytes of metadata (the
    // fifth 0x00), then the tags' length with 0x5F over its first byte. The PHP side takes a plain value
    // there for a miss and fetches its own token: no layout wxkit could share.
    if (raw.length > 13 && raw.charCodeAt(0) === 0x9d && raw.charCodeAt(5) === 0 && raw.charCodeAt(9) === 0x5f) {
      throw new CacheError(
        `The ${profile} profile found a value written by a tag-aware Symfony pool (RedisTagAwareAdapter, or TagAwareAdapter over a Redis one), which takes any other value for a miss and fetches its own token. Give the PHP side a plain RedisAdapter (wrapped in Psr16Cache) for the access_token, or share through wxkit's native schema`,
      );
    }
    // msgpack starts with a map or array marker; igbinary of another format version with its header.
    if (/^\u0000\u0000\u0000[\u0001\u0003-\u00ff]/.test(raw) || /^[\u0080-\u009f\u00de\u00df]/.test(raw)) {
      throw new CacheError(
        `The ${profile} profile reads values written with PHP's serialize() or igbinary; this one was written with another serializer (msgpack?). Set the PHP cache store's serializer back to one of those, or share through wxkit's native schema`,
      );
    }
    return undefined;
  }
}

/** The most text an igbinary entry may spell out, back-references counted each time: 1 MiB. */
const MAX_IGBINARY_TEXT = 1024 * 1024;

/** An igbinary value as a PhpValue, Symfony Cache's item envelope taken off. */
function fromIgbinary(profile: string, raw: string): PhpValue {
  let value: IgbinaryValue;
  try {
    value = igbinaryUnserialize(raw);
  } catch (error) {
    throw new CacheError(`The ${profile} profile could not read this igbinary value (${(error as Error).message})`);
  }
  // Symfony Cache keeps an item's metadata beside its value: 5.x as a one-entry array whose 10-byte key
  // is "\x9D", expiry, ctime, "\x5F" (Adapter/AbstractAdapter.php); 6.x+ as an object of the class "\xA9"
  // whose __serialize() is [packed metadata => value] (Traits/ValueWrapper.php).
  if (value !== null && typeof value === 'object' && value.entries.length >= 1) {
    const [key, inner] = value.entries[0]!;
    const envelope =
      value.__php === 'object'
        ? value.className === '\u00a9'
        : value.entries.length === 1 && typeof key === 'string' && key.length === 10 && key[0] === '\u009d' && key[5] === '\u0000' && key[9] === '\u005f';
    if (envelope) value = inner;
  }
  // A back-reference is two bytes that stand for a whole string: a value of a few kilobytes could name
  // one long string a thousand times over, and each was turned into text on its own (hours of work and
  // gigabytes, from a megabyte). An entry that spells out more text than this is no token of a peer.
  let text = 0;
  const toText = (binary: string): string => {
    text += binary.length;
    if (text > MAX_IGBINARY_TEXT) {
      throw new CacheError(`The ${profile} profile found an igbinary value spelling out more than 1 MiB of text (a string named again counted each time); the PHP side stores something else under this key`);
    }
    return binaryToText(binary);
  };
  const convert = (v: IgbinaryValue, depth: number): PhpValue => {
    if (v === null || typeof v !== 'object') return typeof v === 'string' ? toText(v) : v;
    if (v.__php === 'object' || depth > 8) {
      throw new CacheError(`The ${profile} profile found a PHP object where it expects an array or a string; the PHP side stores something else under this key`);
    }
    return { __php: 'array', entries: v.entries.map(([k, item]) => [typeof k === 'string' ? toText(k) : k, convert(item, depth + 1)]) };
  };
  return convert(value, 0);
}

/** A PhpValue with its strings as the UTF-8 bytes igbinary writes. */
function toIgbinary(value: PhpValue): IgbinaryValue {
  if (value === null || typeof value !== 'object') return typeof value === 'string' ? textToBinary(value) : value;
  return { __php: 'array', entries: (value as PhpArray).entries.map(([k, item]) => [typeof k === 'string' ? textToBinary(k) : k, toIgbinary(item)]) };
}

/** Options of {@link easyWeChat4}. */
export interface EasyWeChat4Options {
  /**
   * Everything the PHP cache store puts in front of EasyWeChat's key, exactly as it appears in Redis.
   * ThinkPHP: the store's `prefix` option, joined with no separator. Laravel 5.8–10:
   * `{REDIS_PREFIX}{CACHE_PREFIX}:`, by default `laravel_database_laravel_cache_:` from 9.0.1
   * (`laravel_database_laravel_cache:` before); Laravel 11 and later: `{REDIS_PREFIX}{CACHE_PREFIX}`, by
   * default `laravel_database_` on 11, `laravel_database_laravel_cache_` on 12.0 and
   * `laravel-database-laravel-cache-` from 12.1 (docs/key-schema.md).
   * @default ''
   */
  prefix?: string;
  /**
   * Which PHP cache store holds the entries: ThinkPHP's and Laravel's write `serialize()`, Symfony
   * Cache's RedisAdapter writes igbinary where the extension is loaded. It decides the form `auto` writes
   * into an empty key. @default 'thinkphp'
   */
  store?: PhpCacheStore;
  /**
   * How values are turned into bytes. Every form is read whatever this says; `auto` writes the form the
   * key already holds, else the store's stock form (`serialize()`; igbinary for `symfony`).
   * @default 'auto'
   */
  marshaller?: PhpMarshaller;
  /**
   * EasyWeChat 4.0–4.2.11 stored tokens for `expires_in − 500` s (WeCom's for `expires_in`: its
   * AccessToken sets safeSeconds to 0); 4.2.12 and 5.x for `expires_in`. @default false
   */
  legacyTtl?: boolean;
}

/**
 * EasyWeChat 4.x/5.x (PHP), on a ThinkPHP or Laravel cache: key
 * `easywechat.kernel.access_token.` + md5 of PHP's `json_encode()` of the credentials, value the array
 * `['access_token' => …, 'expires_in' => …]` as the PHP cache store marshals it (`serialize()`, or
 * igbinary on Symfony Cache: see `marshaller`), TTL `expires_in`. EasyWeChat 4 fetches
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
  assertOptionsObject(name, options, ['prefix', 'store', 'marshaller', 'legacyTtl'] satisfies Array<keyof EasyWeChat4Options>);
  const prefix = options.prefix ?? '';
  if (typeof prefix !== 'string') throw invalidOption(name, 'prefix', 'a string', prefix);
  const php = phpCodec(name, marshallerOption(name, options), storeOption(name, options));
  const safeSeconds = options.legacyTtl ? 500 : 0;
  // 4.0–4.2.11's WeCom token (src/Work/Auth/AccessToken.php: $safeSeconds = 0) kept expires_in.
  const workKeys = new Set<string>();
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
      const key = `${prefix}easywechat.kernel.access_token.${md5(phpJsonEncode(credentials))}`;
      if (subject.kind === 'work') workKeys.add(key);
      return key;
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
        return php.write(phpArray(Object.fromEntries(Object.entries(answer).filter(([, v]) => isPhp(v))) as Record<string, PhpValue>), extra?.key);
      }
      return php.write(phpArray({ access_token: value, expires_in: expiresIn }), extra?.key);
    },
    decode(field, raw, key) {
      const parsed = php.read(raw, key);
      return parsed === undefined ? undefined : bareEntry(phpGet(parsed, field));
    },
    ttlSeconds: (expiresIn, field, key) =>
      storeTtlSeconds(expiresIn, field === 'ticket' ? 500 : key !== undefined && workKeys.has(key) ? 0 : safeSeconds),
  }, easyWeChat4OpenPlatform(prefix));
}

function marshallerOption(name: string, options: { marshaller?: unknown }): PhpMarshaller {
  return optionalChoice(name, options, 'marshaller', ['php-serialize', 'igbinary', 'auto'], 'auto') as PhpMarshaller;
}

function storeOption(name: string, options: { store?: unknown }): PhpCacheStore {
  return optionalChoice(name, options, 'store', ['thinkphp', 'laravel', 'symfony'], 'thinkphp') as PhpCacheStore;
}

function isPhp(value: unknown): value is PhpValue {
  return value === null || ['string', 'number', 'boolean'].includes(typeof value);
}

/** Options of {@link easyWeChat6}. */
export interface EasyWeChat6Options {
  /** As for easyWeChat4: what the PHP cache store puts in front of the key. @default '' */
  prefix?: string;
  /**
   * The PHP cache store: ThinkPHP and Laravel store a string `serialize()`d (`s:8:"TOKEN123";`), Symfony
   * Cache's RedisAdapter igbinary-serialized where the extension is loaded. @default 'thinkphp'
   */
  store?: PhpCacheStore;
  /** As for easyWeChat4: every form is read; `auto` writes what the key holds, else the store's stock form. @default 'auto' */
  marshaller?: PhpMarshaller;
}

/**
 * EasyWeChat 6.15.1+ (PHP): key `official_account.access_token.{appId}.{secret}.{0|1}` (`mini_app.` for
 * mini programs, `work.access_token.{corpId}.{secret}` for WeCom; the last digit is 1 on the stable
 * endpoint, which is EasyWeChat's default), value the token as the PSR-16 store encodes a string
 * (ThinkPHP and Laravel: `s:8:"TOKEN123";`; Symfony Cache with igbinary loaded: igbinary), TTL `expires_in`.
 *
 * The key holds the plain AppSecret, as EasyWeChat 6 builds it: anyone who can list the store's keys
 * can read the secret. wxkit masks it in every log line, event and error; prefer the native schema when
 * EasyWeChat 6 is not in the deployment.
 */
export function easyWeChat6(options: EasyWeChat6Options = {}): KeySchema {
  const name = 'easyWeChat6';
  assertOptionsObject(name, options, ['prefix', 'store', 'marshaller'] satisfies Array<keyof EasyWeChat6Options>);
  const marshaller = marshallerOption(name, options);
  const php = phpCodec(name, marshaller, storeOption(name, options));
  const schema = easyWeChat6Like(name, options, (token, key) => php.write(token, key), (raw, key) => {
    const parsed = php.read(raw, key);
    return parsed === undefined ? undefined : bareEntry(parsed);
  });
  // The copy of an authorizer's token has no form of its own to learn (`auto`): serialize(), which every
  // PHP reads (Symfony's marshaller too, with igbinary loaded or not), unless igbinary is asked for. Read
  // in either form.
  const copyCodec = {
    encode: (token: string) => (marshaller === 'igbinary' ? igbinarySerialize(toIgbinary(token)) : phpSerialize(token)),
    decode(raw: string): string | undefined {
      try {
        const value = php.read(raw, undefined);
        return typeof value === 'string' && value !== '' ? value : undefined;
      } catch {
        return undefined;
      }
    },
  };
  return withOpenPlatform(schema, easyWeChat6OpenPlatform(typeof options.prefix === 'string' ? options.prefix : '', copyCodec));
}

/**
 * node-easywechat 3.6.2+ (hpyer/node-easywechat): EasyWeChat 6's key with the token stored raw. Lets a
 * project move from it to wxkit without a token gap. The key holds the plain AppSecret (see easyWeChat6).
 */
export function nodeEasyWeChat(options: { prefix?: string } = {}): KeySchema {
  assertOptionsObject('nodeEasyWeChat', options, ['prefix']);
  return easyWeChat6Like('nodeEasyWeChat', options, (token) => token, (raw) => bareEntry(raw));
}

function easyWeChat6Like(
  name: string,
  options: { prefix?: string },
  encode: (token: string, key: string | undefined) => string,
  decode: (raw: string, key: string | undefined) => StoredEntry | undefined,
): KeySchema {
  const prefix = options.prefix ?? '';
  if (typeof prefix !== 'string') throw invalidOption(name, 'prefix', 'a string', prefix);
  const secrets = new Set<string>();
  return {
    name,
    // Both fetch on the classic endpoint unless configured with use_stable_access_token: EasyWeChat
    // 6.19.1 src/OfficialAccount/Application.php:138, node-easywechat 3.6.2 dist/OfficialAccount/Application.js:97.
    defaultEndpoint: 'classic',
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
    encode: (_field, value, _expiresIn, _fetchedAt, extra) => encode(value, extra?.key),
    decode: (_field, raw, key) => decode(raw, key),
    ttlSeconds: (expiresIn) => storeTtlSeconds(expiresIn, 0),
    redactKey: (key) => masked(key, secrets),
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
 * (an integer) that wechatpy 2 writes and 1.8 does not. Tickets `{prefix}:{appid}_jsapi_ticket` and
 * `{prefix}:{appid}_jsapi_card_ticket`, each with its `_expires_at`, which both versions write (and read:
 * without it wechatpy fetches a ticket on every call). wechatpy fetches on the classic endpoint.
 */
export function wechatpy(options: WechatpyOptions = {}): KeySchema {
  const name = 'wechatpy';
  assertOptionsObject(name, options, ['prefix'] satisfies Array<keyof WechatpyOptions>);
  const prefix = options.prefix ?? 'wechatpy';
  if (typeof prefix !== 'string' || prefix.length === 0) throw invalidOption(name, 'prefix', 'a non-empty string', prefix);
  const id = (subject: KeySubject) => (subject.kind === 'work' ? subject.corpId : subject.appId);
  /** The parts of WeCom secrets in this schema's keys, masked wherever a key is logged. */
  const secretParts = new Set<string>();
  /** A WeCom token key's companion base: wechatpy's client names it by the corp alone (base.py). */
  const companionBase = new Map<string, string>();
  /** The `…_expires_at` wechatpy keeps beside an entry. */
  const companionOf = (entryKey: string) => `${companionBase.get(entryKey) ?? entryKey}_expires_at`;
  return {
    name,
    defaultEndpoint: 'classic',
    // wechatpy/session/redisstorage.py::key_name(), wechatpy/client/base.py::access_token_key; a WeCom
    // token per agent secret: wechatpy/work/client/__init__.py::access_token_key
    // (f"{corp_id}_{secret[:10]}_access_token", ten code points, as Python slices).
    accessTokenKey(subject) {
      if (subject.kind !== 'work') return `${prefix}:${subject.appId}_access_token`;
      const part = Array.from(needSecret(name, subject)).slice(0, 10).join('');
      secretParts.add(part);
      const key = `${prefix}:${subject.corpId}_${part}_access_token`;
      companionBase.set(key, `${prefix}:${subject.corpId}_access_token`);
      return key;
    },
    ticketKey(subject, type) {
      // wechatpy/work/client/api/jsapi.py keys both WeCom tickets by the corp alone: the corp's jsapi
      // ticket is the corp's, but an agent's ticket would be shared by every agent of the corp.
      if (subject.kind === 'work' && type !== 'jsapi') {
        throw new ConfigError(`The ${name} profile covers a WeCom corp's jsapi ticket only: wechatpy keys an agent's ticket by its corp alone, so two agents of one corp would share it`, 'schema');
      }
      // wechatpy/client/api/jsapi.py: `{appid}_jsapi_ticket`, and the card ticket `{appid}_jsapi_card_ticket`.
      return `${prefix}:${id(subject)}_${type === 'wx_card' ? 'jsapi_card' : type}_ticket`;
    },
    redactKey: (key) => masked(key, secretParts),
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
    // wechatpy reads a token or ticket only beside its `_expires_at`, and refetches without one; it writes
    // the companion with no TTL (and its tickets too), wxkit gives it the value's TTL, so it never outlives
    // the value.
    companions: (entryKey, _field, _value, expiresIn, fetchedAt) => [
      { key: companionOf(entryKey), value: JSON.stringify(fetchedAt + expiresIn), ttlSeconds: Math.max(1, expiresIn) },
    ],
    // A ticket's life is its companion's: wechatpy stores tickets with no TTL. A token's is its TTL, which
    // wechatpy sets: 1.8 keeps the token's expiry in memory only, so its companion may be an older token's
    // (and a WeCom token's companion is the corp's, shared by its agents).
    expiryKey: (entryKey, field) => (field === 'ticket' ? companionOf(entryKey) : undefined),
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
 * TTL `expires_in − 1500` (stable: `− 300`); the jsapi ticket `gowechat_officialaccount__jsapi_ticket_{appid}`,
 * WeCom's `gowechat_work__corp_jsapi_ticket_{corpid}` and `gowechat_work__agent_jsapi_ticket_{corpid}_{agentid}`,
 * TTL `expires_in − 1500`. It fetches on the classic endpoint by default.
 */
export function silenceper(options: SilenceperOptions = {}): KeySchema {
  const name = 'silenceper';
  assertOptionsObject(name, options, ['store'] satisfies Array<keyof SilenceperOptions>);
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
    // credential/default_js_ticket.go: fmt.Sprintf("%s_jsapi_ticket_%s", prefix, appID), the official
    // account's prefix; credential/work_js_ticket.go: "%s_corp_jsapi_ticket_%s" (corp) and
    // "%s_agent_jsapi_ticket_%s_%s" (corp, agent), WeCom's prefix. silenceper keeps no card ticket: wxkit's
    // own key, as before.
    ticketKey(subject, type) {
      if (subject.kind === 'work') {
        return type === 'agent_jsapi' ? `gowechat_work__agent_jsapi_ticket_${subject.corpId}_${subject.agentId}` : `gowechat_work__corp_jsapi_ticket_${subject.corpId}`;
      }
      return type === 'jsapi' ? `gowechat_officialaccount__jsapi_ticket_${subject.appId}` : `gowechat_${type}_ticket_${subject.appId}`;
    },
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
  /**
   * The WxRedisOps the Java side runs on, which decides its lock:
   * - `redisTemplate` (RedisTemplateWxRedisOps): `SET NX PX` with a UUID, released by a Lua
   *   compare-and-delete; wxkit takes that lock with its own owner string, as another Java instance would.
   * - `jedis` (JedisWxRedisOps, jedis-lock 1.0.0): the lock's value is its expiry in unix ms, which Java
   *   reads with `Long.parseLong`; wxkit writes such a timestamp, and releases the lock only while it
   *   still holds the exact value it wrote.
   * - `redisson` (RedissonWxRedisOps): Redisson's lock is a hash with its own protocol, which wxkit does
   *   not write; wxkit leaves it alone and takes `{key}:lock` among its own processes. Redisson's values
   *   are raw only with `StringCodec`.
   * @default 'redisTemplate'
   */
  redisOps?: 'redisTemplate' | 'jedis' | 'redisson';
  /** The keyPrefix given to WxJava's open-platform Redis storage (WxOpenInRedisTemplateConfigStorage). @default '' */
  openKeyPrefix?: string;
  /**
   * The keyPrefix given to WxJava's WeCom (cp) Redis config; blank for none, as WxJava writes none then.
   * @default 'wx:cp' (the cp Spring Boot starter's)
   */
  cpKeyPrefix?: string;
}

/**
 * WxJava (binarywang/WxJava, weixin-java-mp) with its RedisTemplate config: key
 * `{keyPrefix}:access_token:{appId}`, the token raw, TTL `expires_in`. WxJava's own lock
 * `{keyPrefix}:lock:{appId}:accessTokenLock` (SET NX PX, 60 s lease, Lua compare-and-delete release) is the
 * lock wxkit takes too, so a Node process and a Java process never refresh at the same time.
 */
export function wxJava(options: WxJavaOptions = {}): KeySchema {
  const name = 'wxJava';
  assertOptionsObject(name, options, ['keyPrefix', 'redisOps', 'openKeyPrefix', 'cpKeyPrefix'] satisfies Array<keyof WxJavaOptions>);
  const redisOps = optionalChoice(name, options as Record<string, unknown>, 'redisOps', ['redisTemplate', 'jedis', 'redisson'], 'redisTemplate');
  const keyPrefix = options.keyPrefix ?? 'wx';
  if (typeof keyPrefix !== 'string' || keyPrefix.length === 0) throw invalidOption(name, 'keyPrefix', 'a non-empty string', keyPrefix);
  const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const tokenKey = new RegExp(`^${escape(keyPrefix)}:access_token:(.+)$`);
  const ticketKey = new RegExp(`^${escape(keyPrefix)}:ticket:key:(.+):([^:]+)$`);
  // WeCom: weixin-java-cp/…/config/impl/AbstractWxCpInRedisConfigImpl.java::setAgentId(), one entry per
  // corp and agent (its Integer agentId as Java prints it), under the cp config's keyPrefix with a ':'
  // after it, as WxJava adds one, or none when it is blank (StringUtils.isBlank).
  const cpKeyPrefix = options.cpKeyPrefix ?? 'wx:cp';
  if (typeof cpKeyPrefix !== 'string') throw invalidOption(name, 'cpKeyPrefix', 'a string', cpKeyPrefix);
  const cpPrefix = cpKeyPrefix.trim() === '' ? '' : cpKeyPrefix.endsWith(':') ? cpKeyPrefix : `${cpKeyPrefix}:`;
  const cpId = (subject: Extract<KeySubject, { kind: 'work' }>) => `${subject.corpId}:${/^\d+$/.test(String(subject.agentId)) ? String(Number(subject.agentId)) : subject.agentId}`;
  const cpKey = new RegExp(`^${escape(cpPrefix)}wechat_cp_(access_token|jsapi_ticket|agent_jsapi_ticket)_key:(.+)$`);
  const cpLocks: Record<string, string> = { access_token: 'accessToken', jsapi_ticket: 'jsapiTicket', agent_jsapi_ticket: 'agentJsapiTicket' };
  const cpTickets: Record<string, string> = { jsapi: 'jsapi_ticket', agent_jsapi: 'agent_jsapi_ticket' };
  return withOpenPlatform({
    name,
    defaultEndpoint: 'classic',
    // WxJava's RedisTemplate and Jedis locks are the lock every Java writer takes, so wxkit holding it
    // may replace an entry it cannot read; under Redisson wxkit's lock is its own, and it may not.
    replacesUndecodable: redisOps !== 'redisson',
    writersLock: redisOps !== 'redisson',
    lockValue: redisOps === 'jedis' ? 'expiry-ms' : 'owner',
    // weixin-java-mp/…/config/impl/WxMpRedisConfigImpl.java: ACCESS_TOKEN_KEY_TPL, TICKET_KEY_TPL, LOCK_KEY_TPL
    accessTokenKey: (subject) =>
      subject.kind === 'work' ? `${cpPrefix}wechat_cp_access_token_key:${cpId(subject)}` : `${keyPrefix}:access_token:${subject.appId}`,
    ticketKey(subject, type) {
      if (subject.kind !== 'work') return `${keyPrefix}:ticket:key:${subject.appId}:${type}`;
      const which = Object.hasOwn(cpTickets, type) ? cpTickets[type] : undefined;
      if (!which) throw new ConfigError(`The ${name} profile has no WeCom ticket of type ${type}`, 'schema');
      return `${cpPrefix}wechat_cp_${which}_key:${cpId(subject)}`;
    },
    lockKey(entryKey) {
      if (redisOps === 'redisson') return `${entryKey}:lock`;
      // AbstractWxCpInRedisConfigImpl: getAccessTokenLock(), getJsapiTicketLock(), getAgentJsapiTicketLock().
      const cp = cpKey.exec(entryKey);
      if (cp) return `${cpPrefix}wechat_cp_lock:${cp[2]}:${cpLocks[cp[1]!]}`;
      const token = tokenKey.exec(entryKey);
      if (token) return `${keyPrefix}:lock:${token[1]}:accessTokenLock`;
      const ticket = ticketKey.exec(entryKey);
      if (ticket) return `${keyPrefix}:lock:${ticket[1]}:${ticket[2] === 'wx_card' ? 'cardApiTicketLock' : 'jsapiTicketLock'}`;
      return `${entryKey}:lock`;
    },
    encode: (_field, value) => value,
    decode: (_field, raw) => bareEntry(raw),
    // WxMpRedisConfigImpl: tokens for expires_in, tickets for expires_in − 200; the cp configs store
    // WeCom's tickets for expires_in (WxCpServiceImpl hands updateJsapiTicket() WeChat's own).
    ttlSeconds: (expiresIn, field, key) => storeTtlSeconds(expiresIn, field === 'ticket' && !(key !== undefined && cpKey.test(key)) ? 200 : 0),
  }, wxJavaOpenPlatform(openKeyPrefixOption(options as Record<string, unknown>)));
}
