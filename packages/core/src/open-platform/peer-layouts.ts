import { createHash } from 'node:crypto';
import { ConfigError } from '../errors.js';
import { phpSerialize, phpUnserialize } from '../php-serialize.js';
import { nativeSchema, storeTtlSeconds, type KeySchema, type OpenPlatformEntry, type RecordCodec, type TokenCopy } from '../token/entry.js';

// Where the peer SDKs keep the open platform's entries in the cache they share, so an OpenPlatform on a
// compatibility profile reads and writes them there: the same key, the same bytes, the same lock where
// the peer takes one. An entry a peer does not keep in the shared cache (it asks its caller for it, or
// keys it by a value only its caller knows) stays under wxkit's own key, `wechat:…` as in
// docs/key-schema.md. Each layout names the peer version and file it was read from.

/** One peer's open-platform layout: keys of the entries it keeps, and how it stores them. */
interface PeerLayout {
  /** The peer's key for `entry`, or undefined when the peer keeps no such entry in the shared cache. */
  key(entry: OpenPlatformEntry, componentAppId: string, authorizerAppId?: string): string | undefined;
  /** The peer's lock for one of its token keys, when it takes one. */
  lock?(entryKey: string): string | undefined;
  /** The peer's store TTL for one of its token keys, when it differs from the profile's. */
  ttl?(expiresIn: number, entryKey: string): number | undefined;
  /** The peer's encoding of one of its durable keys (verify ticket, refresh token). */
  record?(entryKey: string): RecordCodec | undefined;
  /** The peer's own copy of an authorizer's access token, keyed by the refresh token its caller passes. */
  tokenCopy?(componentAppId: string, authorizerAppId: string, refreshToken: string): TokenCopy | undefined;
}

const native = nativeSchema();

/** `schema` with the open-platform keys of `layout`; wxkit's native keys for the entries the peer does not keep. */
export function withOpenPlatform(schema: KeySchema, layout: PeerLayout): KeySchema {
  return {
    ...schema,
    openPlatformKey: (entry, componentAppId, authorizerAppId) =>
      layout.key(entry, componentAppId, authorizerAppId) ?? native.openPlatformKey!(entry, componentAppId, authorizerAppId),
    lockKey: (entryKey) => layout.lock?.(entryKey) ?? schema.lockKey(entryKey),
    ttlSeconds: (expiresIn, field, key) => (key === undefined ? undefined : layout.ttl?.(expiresIn, key)) ?? schema.ttlSeconds(expiresIn, field, key),
    openPlatformRecord: (key) => layout.record?.(key),
    ...(layout.tokenCopy ? { openPlatformTokenCopy: layout.tokenCopy } : {}),
  };
}

/** The value stored as is (Redis strings through Jedis or RedisTemplate, Go's Redis cache). */
const bare: RecordCodec = { encode: (value) => value, decode: (raw) => (raw === '' ? undefined : raw) };

/** A string as a PSR-16 store on ThinkPHP or Laravel writes it: PHP `serialize()`. */
const phpString: RecordCodec = {
  encode: (value) => phpSerialize(value),
  decode(raw) {
    try {
      const value = phpUnserialize(raw);
      return typeof value === 'string' && value !== '' ? value : undefined;
    } catch {
      return undefined;
    }
  },
};

/**
 * EasyWeChat 6.15.1, `src/OpenPlatform/VerifyTicket.php` and `ComponentAccessToken.php` (`getKey`):
 * `open_platform.verify_ticket.{component}` (TTL 6000 s there) and `open_platform.component_access_token.{component}`
 * (TTL `expires_in − 100`), each the string as the PSR-16 store serialises it. `Application::getAuthorizerAccessToken()`
 * keys an authorizer's access token `open-platform.authorizer_access_token.{authorizer}.{md5(refresh token)}`
 * (TTL `expires_in − 500`), from the refresh token its caller passes in: wxkit keeps the token under its own
 * key (with its lock and dates, and the same TTL, so that wxkit refreshes as the copy runs out, not 500 s
 * after the peer has) and writes a copy there, from the refresh token it holds, so an EasyWeChat process
 * given the same refresh token finds it, and takes the token an EasyWeChat process fetched on its own from
 * there instead of fetching another. `copyCodec` writes the copy in a form every PHP reads. Refresh tokens are the
 * caller's to keep: they stay under wxkit's keys. EasyWeChat takes no lock.
 */
export function easyWeChat6OpenPlatform(prefix: string, copyCodec: Pick<TokenCopy, 'encode' | 'decode'>): PeerLayout {
  const ticket = (component: string) => `${prefix}open_platform.verify_ticket.${component}`;
  const token = (component: string) => `${prefix}open_platform.component_access_token.${component}`;
  const tokenKey = new RegExp(`^${escape(prefix)}open_platform\\.component_access_token\\.`);
  const ticketKey = new RegExp(`^${escape(prefix)}open_platform\\.verify_ticket\\.`);
  // wxkit's own key for an authorizer's token on this profile: the native one (see withOpenPlatform).
  const authorizerKey = native.openPlatformKey!('authorizer_access_token', '', '').slice(0, -1);
  return {
    key: (entry, component) => (entry === 'component_verify_ticket' ? ticket(component) : entry === 'component_access_token' ? token(component) : undefined),
    ttl: (expiresIn, key) => (tokenKey.test(key) ? storeTtlSeconds(expiresIn, 100) : key.startsWith(authorizerKey) ? storeTtlSeconds(expiresIn, 500) : undefined),
    record: (key) => (ticketKey.test(key) ? phpString : undefined),
    tokenCopy: (_component, authorizer, refreshToken) => ({
      key: `${prefix}open-platform.authorizer_access_token.${authorizer}.${createHash('md5').update(refreshToken, 'utf8').digest('hex')}`,
      encode: copyCodec.encode,
      decode: copyCodec.decode,
      ttlSeconds: (expiresIn) => storeTtlSeconds(expiresIn, 500),
      marginSeconds: 500,
    }),
  };
}

/**
 * EasyWeChat 4.2.12–5.x, `src/OpenPlatform/Auth/VerifyTicket.php` (`getCacheKey`): the verify ticket under
 * `easywechat.open_platform.verify_ticket.{component}`, the serialised string (TTL 3600 s there). Its
 * component and authorizer tokens are keyed by md5 of credentials that include the current verify ticket
 * (`Auth/AccessToken.php`) or the caller's refresh token (`Authorizer/Auth/AccessToken.php`), so a new key
 * with every ticket: those stay under wxkit's keys.
 */
export function easyWeChat4OpenPlatform(prefix: string): PeerLayout {
  const ticketKey = new RegExp(`^${escape(prefix)}easywechat\\.open_platform\\.verify_ticket\\.`);
  return {
    key: (entry, component) => (entry === 'component_verify_ticket' ? `${prefix}easywechat.open_platform.verify_ticket.${component}` : undefined),
    record: (key) => (ticketKey.test(key) ? phpString : undefined),
  };
}

/**
 * WxJava 4.7.0 `weixin-java-open`, `AbstractWxOpenInRedisConfigStorage.java` and
 * `WxOpenInRedisTemplateConfigStorage.java` (the Jedis and Redisson storages use the same keys):
 * `{prefix:}wechat_component_verify_ticket:{component}`, `…wechat_component_access_token:{component}`,
 * `…wechat_authorizer_refresh_token:{component}:{authorizer}`, `…wechat_authorizer_access_token:{component}:{authorizer}`,
 * every value bare; tokens for `expires_in − 200` s, the ticket and refresh tokens without expiry there.
 * Locks (`WxOpenComponentServiceImpl`, `WxOpenInMemoryConfigStorage`): `componentAccessTokenLock` and
 * `{authorizer}:accessTokenLock`, taken as RedisTemplateSimpleDistributedLock takes them (SET NX PX, Lua
 * compare-and-delete), which is how wxkit takes its own: a Java and a Node process never refresh at once.
 * `openKeyPrefix` is the storage's `keyPrefix` (empty by default; a `:` is added as WxJava adds it).
 */
export function wxJavaOpenPlatform(openKeyPrefix: string): PeerLayout {
  const p = openKeyPrefix === '' || openKeyPrefix.endsWith(':') ? openKeyPrefix : `${openKeyPrefix}:`;
  // WxJava keeps no record of spent authorization codes: that one stays under wxkit's key.
  const keys: Record<Exclude<OpenPlatformEntry, 'authorization_code'>, string> = {
    component_verify_ticket: `${p}wechat_component_verify_ticket:`,
    component_access_token: `${p}wechat_component_access_token:`,
    authorizer_refresh_token: `${p}wechat_authorizer_refresh_token:`,
    authorizer_access_token: `${p}wechat_authorizer_access_token:`,
  };
  const authorizerOf = (key: string) => (key.startsWith(keys.authorizer_access_token) ? key.slice(keys.authorizer_access_token.length).split(':')[1] : undefined);
  const isToken = (key: string) => key.startsWith(keys.component_access_token) || key.startsWith(keys.authorizer_access_token);
  return {
    key: (entry, component, authorizer) =>
      entry === 'authorization_code'
        ? undefined
        : entry === 'authorizer_access_token' || entry === 'authorizer_refresh_token'
          ? `${keys[entry]}${component}:${authorizer}`
          : `${keys[entry]}${component}`,
    lock(key) {
      if (key.startsWith(keys.component_access_token)) return 'componentAccessTokenLock';
      const authorizer = authorizerOf(key);
      return authorizer === undefined ? undefined : `${authorizer}:accessTokenLock`;
    },
    ttl: (expiresIn, key) => (isToken(key) ? storeTtlSeconds(expiresIn, 200) : undefined),
    record: (key) => (key.startsWith(keys.component_verify_ticket) || key.startsWith(keys.authorizer_refresh_token) ? bare : undefined),
  };
}

/**
 * silenceper/wechat v2.1.6, `openplatform/context/accessToken.go`: `component_access_token_{component}`
 * (TTL `expires_in − 1500`) and `authorizer_access_token_{authorizer}` (TTL `expires_in − 30`), stored as
 * the profile stores any token (bare in Redis, a JSON string in Memcached). The verify ticket and refresh
 * tokens are the caller's to keep (`SetComponentAccessToken(ticket)`, `RefreshAuthrToken(appid, refreshToken)`):
 * they stay under wxkit's keys. silenceper takes no lock.
 */
export function silenceperOpenPlatform(): PeerLayout {
  return {
    key: (entry, component, authorizer) =>
      entry === 'component_access_token' ? `component_access_token_${component}` : entry === 'authorizer_access_token' ? `authorizer_access_token_${authorizer}` : undefined,
    ttl: (expiresIn, key) =>
      key.startsWith('component_access_token_') ? storeTtlSeconds(expiresIn, 1500) : key.startsWith('authorizer_access_token_') ? storeTtlSeconds(expiresIn, 30) : undefined,
  };
}

/** Checks the wxJava profile's `openKeyPrefix` option. */
export function openKeyPrefixOption(options: Record<string, unknown>): string {
  const value = options.openKeyPrefix ?? '';
  if (typeof value !== 'string') throw new ConfigError(`wxJava options.openKeyPrefix must be a string (got ${typeof value})`, 'openKeyPrefix');
  return value;
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
