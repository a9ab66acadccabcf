import { fileURLToPath } from 'node:url';
import { ConfigError, type TokenCache } from '@wxkit/core';
import { maskUrl } from '@wxkit/core/internal';
import { FileCache } from '@wxkit/file';
import { MemcachedCache } from '@wxkit/memcached';
import { RedisCache } from '@wxkit/redis';

/**
 * Opens the store a URL names, the same way in every command:
 * `file:///var/lib/wechat`, `redis://[user:pass@]host:port[/db]`, `rediss://…`,
 * `memcached://host:port[,host:port…]`.
 */
export function openStore(url: string): TokenCache {
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
    case 'memcached:':
      return new MemcachedCache(url.slice('memcached://'.length));
    default:
      throw new ConfigError(`--store ${parsed.protocol}// is not a store wxkit knows (file://, redis://, rediss://, memcached://)`, 'store');
  }
}

/** The URL with any password masked, for output. */
export function describeStore(url: string): string {
  return maskUrl(url);
}
