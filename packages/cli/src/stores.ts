import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { ConfigError, type TokenCache } from '@wxkit/core';
import { maskUrl } from '@wxkit/core/internal';
import { FileCache } from '@wxkit/file';
import { MemcachedCache } from '@wxkit/memcached';
import { RedisCache } from '@wxkit/redis';
import { CliError } from './errors.js';

/**
 * Opens the store a URL names, the same way in every command:
 * `file:///var/lib/wechat`, `redis://[user:pass@]host:port[/db]`, `rediss://…`,
 * `memcached://[user:pass@]host:port[,host:port…]` (SASL credentials, percent-encoded like a URL's).
 */
export function openStore(url: string): TokenCache {
  // Several memcached servers are no URL's host (`h1:11211,h2:11211`): read before URL parsing.
  if (url.startsWith('memcached://')) return memcached(url.slice('memcached://'.length));
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(`--store must be a URL such as file:///var/lib/wechat, redis://127.0.0.1:6379 or memcached://127.0.0.1:11211`, 'store');
  }
  switch (parsed.protocol) {
    case 'file:':
      return new FileCache({ dir: fileURLToPath(parsed) });
    case 'redis:':
    case 'rediss:':
      return new RedisCache(url);
    default:
      throw new ConfigError(`--store ${parsed.protocol}// is not a store wxkit knows (file://, redis://, rediss://, memcached://)`, 'store');
  }
}

/** `[user:pass@]host:port[,host:port…]`: the servers, with SASL credentials when the URL names them. */
function memcached(rest: string): TokenCache {
  const at = rest.lastIndexOf('@');
  if (at < 0) return new MemcachedCache(rest);
  const [user = '', ...pass] = rest.slice(0, at).split(':');
  const decode = (part: string) => {
    try {
      return decodeURIComponent(part);
    } catch {
      throw new ConfigError('--store memcached:// has credentials that are not percent-encoded (write %40 for @, %3A for :)', 'store');
    }
  };
  const password = pass.join(':');
  return new MemcachedCache({
    servers: rest.slice(at + 1),
    ...(user ? { username: decode(user) } : {}),
    ...(password ? { password: decode(password) } : {}),
  });
}

/** The URL with any password masked, for output. */
export function describeStore(url: string): string {
  if (url.startsWith('memcached://')) return url.replace(/^(memcached:\/\/[^:@/]*:)[^@]*@/, '$1***@');
  return maskUrl(url);
}

/**
 * Writes and deletes `<key>:probe` (5 s TTL): a store that answers reads and refuses writes (a read-only
 * replica, too few replicas, an ACL user without write rights, a read-only directory) fails here, before
 * anything is fetched from WeChat, with exit code 8.
 */
export async function checkWritable(cache: TokenCache, key: string, where: string): Promise<void> {
  const probe = `${key}:probe`;
  try {
    await cache.set(probe, `wxkit-cli ${hostname()}:${process.pid}`, 5);
    await cache.delete(probe);
  } catch (error) {
    // It answered the read just before: a failed write is a refusal, whatever the store calls it.
    throw new CliError(
      'notStored',
      `${where} answers reads and refuses writes, so wxkit fetched nothing: a token it could not store would replace the one every other program holds. ` +
        `The store said: ${(error as Error).message}`,
      { cause: error },
    );
  }
}
