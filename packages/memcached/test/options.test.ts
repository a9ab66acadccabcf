import { describe, expect, it } from 'vitest';
import { describeOptions, type OptionCases } from '@wxkit/testing/suite';
import { MemcachedCache, phpMemcachedFlags, type MemcachedCacheOptions } from '../src/index.js';

// Every option of MemcachedCache, checked at construction before any I/O (no request is sent, so the
// closed port is never dialled). Typed against the interface and compared with the built index.d.ts.

const MAX_TIMER_MS = 2 ** 31 - 1;

describeOptions({
  owner: 'MemcachedCache',
  make: (options) => new MemcachedCache(options as unknown as MemcachedCacheOptions),
  close: (made) => (made as MemcachedCache).close(),
  base: { servers: '127.0.0.1:9' },
  cases: {
    servers: { valid: ['127.0.0.1:9,127.0.0.1:10', ['127.0.0.1:9'], 'memcached://127.0.0.1:9'], invalid: ['localhost', [], ['a:1', 'b'], '', 42, '[::1]:11211'] },
    username: { valid: ['app'], invalid: [42] },
    password: { valid: ['topsecret'], invalid: [12345678, {}] },
    timeoutMs: { valid: [1, 500, MAX_TIMER_MS], invalid: [0, -5, MAX_TIMER_MS + 1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '500'] },
    flags: { valid: [0, 4, 0xffffffff, () => 4], invalid: [-1, 1.5, 0x100000000, '4', Number.NaN] },
  } satisfies Record<keyof MemcachedCacheOptions, OptionCases>,
  secrets: ['password'],
  required: ['servers'],
  misspelt: { server: 'servers', timeout: 'timeoutMs', user: 'username', pass: 'password' },
  declarations: { file: new URL('../dist/index.d.ts', import.meta.url), interfaces: ['MemcachedCacheOptions'] },
});

describe('flags', () => {
  it('phpMemcachedFlags flags a PHP array as php-memcached serialized it (4), anything else as a string (0)', () => {
    expect(phpMemcachedFlags('k', 'a:2:{s:12:"access_token";s:3:"abc";s:10:"expires_in";i:7200;}')).toBe(4);
    for (const value of ['s:3:"abc";', 'abc', '{"access_token":"abc"}', 'a:2:{', '1']) expect(phpMemcachedFlags('k', value)).toBe(0);
  });

  it('a flags function that gives no flags fails the write with a RangeError, before anything is sent', async () => {
    const cache = new MemcachedCache({ servers: '127.0.0.1:9', flags: () => -1 });
    try {
      await expect(cache.set('k', 'v', 60)).rejects.toThrow(RangeError);
      await expect(cache.add('k', 'v', 60)).rejects.toThrow(/flags must be a whole number/);
    } finally {
      await cache.close();
    }
  });
});
