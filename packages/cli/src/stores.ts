import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { ConfigError, type TokenCache } from '@wxkit/core';
import { maskUrl } from '@wxkit/core/internal';
import type { MemcachedCacheOptions } from '@wxkit/memcached';
import { CliError } from './errors.js';

/**
 * Opens the store a URL names, the same way in every command:
 * `file:///var/lib/wechat`, `redis://[user:pass@]host:port[/db]`, `rediss://…`,
 * `memcached://[user:pass@]host:port[,host:port…]` (SASL credentials, percent-encoded like a URL's).
 * Only the adapter the URL names is loaded (node-redis alone is 400 files); a URL wxkit cannot read is
 * refused before any is. `from` names where the URL came from in errors (`WXKIT_STORE`).
 */
export async function openStore(url: string, from = '--store'): Promise<TokenCache> {
  try {
    return await open(url);
  } catch (error) {
    // A URL taken from the environment is named as the user set it: WXKIT_STORE, not a flag never given.
    if (from !== '--store' && error instanceof ConfigError && error.message.startsWith('--store')) {
      throw new ConfigError(`${from}${error.message.slice('--store'.length)}`, 'store');
    }
    throw error;
  }
}

async function open(url: string): Promise<TokenCache> {
  // Several memcached servers are no URL's host (`h1:11211,h2:11211`): read before URL parsing.
  if (/^memcached:\/\//i.test(url)) {
    const options = memcachedOptions(url);
    const { MemcachedCache } = await import('@wxkit/memcached');
    return new MemcachedCache(options);
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(`--store must be a URL such as file:///var/lib/wechat, redis://127.0.0.1:6379 or memcached://127.0.0.1:11211`, 'store');
  }
  switch (parsed.protocol) {
    case 'file:': {
      // A URL parser reads `file:./tokens` as /tokens and `file://` as /: a directory nobody else uses.
      if (!/^file:\//i.test(url) || /^file:\/\/$/i.test(url)) {
        throw new ConfigError(`--store file: must name a directory by its absolute path, such as file:///var/lib/wechat (got ${JSON.stringify(url)})`, 'store');
      }
      let dir: string;
      try {
        dir = fileURLToPath(parsed);
      } catch (error) {
        // Another host's name (file://server/dir), or an encoded / in the path: Node's words, no stack.
        throw new ConfigError(`--store file:// must name a directory of this host, such as file:///var/lib/wechat (${(error as Error).message})`, 'store');
      }
      const { FileCache } = await import('@wxkit/file');
      return new FileCache({ dir });
    }
    case 'redis:':
    case 'rediss:':
      // The client decodes them as it connects, where a bad escape is a failed connection without a reason.
      for (const part of [parsed.username, parsed.password]) {
        try {
          decodeURIComponent(part);
        } catch {
          throw new ConfigError(`--store ${parsed.protocol}// has credentials that are not percent-encoded (write %40 for @, %3A for :, %25 for %)`, 'store');
        }
      }
      const { RedisCache } = await import('@wxkit/redis');
      return new RedisCache(url);
    default:
      throw new ConfigError(`--store ${parsed.protocol}// is not a store wxkit knows (file://, redis://, rediss://, memcached://)`, 'store');
  }
}

/**
 * `memcached://[user:pass@]host:port[,host:port…]` as MemcachedCache options: the servers, with the SASL
 * credentials when the URL names them (one pair for every server, percent-encoded like a URL's).
 * @internal
 */
export function memcachedOptions(url: string): MemcachedCacheOptions {
  const rest = url.replace(/^memcached:\/\//i, '');
  const at = rest.lastIndexOf('@');
  if (at < 0) return { servers: rest };
  const login = rest.slice(0, at);
  // Never echoed: it holds the password.
  if (login.includes('@') || login.includes(',')) {
    throw new ConfigError('--store memcached:// takes one user:password for every server, before the first one (memcached://user:pass@h1:11211,h2:11211), with @ written %40', 'store');
  }
  const [user = '', ...pass] = login.split(':');
  const decode = (part: string) => {
    try {
      return decodeURIComponent(part);
    } catch {
      throw new ConfigError('--store memcached:// has credentials that are not percent-encoded (write %40 for @, %3A for :)', 'store');
    }
  };
  const password = pass.join(':');
  return {
    servers: rest.slice(at + 1),
    ...(user ? { username: decode(user) } : {}),
    ...(password ? { password: decode(password) } : {}),
  };
}

/** The URL with any password masked, for output. */
export function describeStore(url: string): string {
  if (/^memcached:\/\//i.test(url)) {
    // Everything between the user's colon and the last @ is the password, whatever it holds.
    const at = url.lastIndexOf('@');
    const colon = url.indexOf(':', 'memcached://'.length);
    return at < 0 || colon < 0 || colon > at ? url : `${url.slice(0, colon + 1)}***${url.slice(at)}`;
  }
  return maskUrl(url);
}

/**
 * The directory a `file:` store URL names, when it does not exist: a command that only reads would
 * report every entry absent there (a typo in the path), where the programs share another directory.
 */
export function missingDirectory(url: string): string | undefined {
  if (!/^file:/i.test(url)) return undefined;
  const dir = fileURLToPath(url);
  return existsSync(dir) ? undefined : dir;
}

/** Reasons of a store failure that say the store is down or out of reach, not that it refused. */
const GONE = new Set(['refused', 'unreachable', 'timeout', 'disconnected', 'closed', 'tls']);

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
    // It answered the read just before: a failed write is a refusal, unless the store went away or
    // stopped answering meanwhile (a store that is down is exit 3, as for a read).
    if (GONE.has((error as { reason?: string }).reason ?? '')) throw error;
    throw new CliError(
      'notStored',
      `${where} answers reads and refuses writes, so wxkit fetched nothing: a token it could not store would replace the one every other program holds. ` +
        `The store said: ${(error as Error).message}`,
      { cause: error },
    );
  }
}
