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
