import { createClient } from '@keyv/redis';
import { expect, it } from 'vitest';
import { describeOptions, type OptionCases } from '@wxkit/testing/suite';
import { RedisCache, type RedisCacheOptions, type RedisCacheSentinelOptions } from '../src/index.js';

// Every option of RedisCache, checked at construction before any I/O: nothing here connects (the port
// is closed and no command is sent). Typed against the option interfaces, and compared with the
// built index.d.ts, so an option without cases fails.

const MAX_TIMER_MS = 2 ** 31 - 1;
const declarations = (...interfaces: string[]) => ({ file: new URL('../dist/index.d.ts', import.meta.url), interfaces });
const close = (made: unknown) => (made as RedisCache).close();
const url = 'redis://127.0.0.1:9/0';
const sentinel = { sentinels: ['redis://127.0.0.1:9'], masterName: 'primary' };

describeOptions({
  owner: 'RedisCache',
  // url, cluster, sentinel and client exclude each other: a case of one of the others replaces the base's url.
  make: ({ url: given, ...others }) =>
    new RedisCache(((others.cluster ?? others.sentinel ?? others.client) === undefined ? { url: given, ...others } : others) as RedisCacheOptions),
  close,
  base: { url },
  cases: {
    url: {
      valid: ['rediss://user:pw@redis.example:6380/1', 'redis://127.0.0.1:9', 'redis://127.0.0.1:9/2147483646'],
      // A database number SELECT cannot parse (above a C int) is refused here, not retried at every call.
      invalid: ['http://127.0.0.1:6379', 'redis://:topsecret@host:6379/notadb', 'redis:6379', 42, 'redis://:topsecret@host:6379/2147483647', 'redis://:topsecret@host:6379/99999999999999999999', 'redis://127.0.0.1:9?db=3'],
    },
    connectTimeoutMs: { valid: [1, 1000, MAX_TIMER_MS], invalid: [0, -1, MAX_TIMER_MS + 1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '1000'] },
    stallTimeoutMs: { valid: [1, 10_000, MAX_TIMER_MS], invalid: [0, -1, MAX_TIMER_MS + 1, 1.5, Number.NaN, '10000'] },
    // socket.tls must agree with the URL's scheme: node-redis refuses anything else at every connect.
    clientOptions: { valid: [{ pingInterval: 1000 }, { socket: { tls: false } }], invalid: ['tls', [], null, { socket: { tls: true } }, { socket: { tls: 'yes' } }] },
    cluster: {
      valid: [['redis://127.0.0.1:9', 'redis://127.0.0.1:10'], ['redis://user:pw@127.0.0.1:9', 'redis://user:pw@127.0.0.1:10']],
      // Every node is connected with one user, password and scheme: the URLs must agree on them.
      invalid: [[], ['http://a:1'], ['redis://:topsecret@a:7000/x'], ['redis://a:7000/99999999999999999999'], ['redis://:one@a:7000', 'redis://:two@b:7000'], ['rediss://a:7000', 'redis://b:7000'], 'redis://a:7000'],
    },
    sentinel: { valid: [sentinel], invalid: [[], 'redis://a:26379'] },
    client: { valid: [createClient({ url })], invalid: [{}, 'client'] },
  } satisfies Record<keyof RedisCacheOptions, OptionCases>,
  secrets: ['url', 'cluster'],
  misspelt: { connectTimeout: 'connectTimeoutMs', URL: 'url', clusters: 'cluster' },
  declarations: declarations('RedisCacheOptions'),
});

describeOptions({
  owner: 'RedisCache',
  make: (options) => new RedisCache({ sentinel: options } as unknown as RedisCacheOptions),
  close,
  path: 'sentinel',
  base: sentinel,
  cases: {
    sentinels: {
      valid: [['redis://127.0.0.1:9', 'redis://127.0.0.1:10'], ['redis://:pw@127.0.0.1:9']],
      invalid: [[], ['rediss://127.0.0.1:9'], ['redis://:topsecret@127.0.0.1:26379/2'], ['redis://:one@a:26379', 'redis://:two@b:26379'], 'redis://a:26379'],
    },
    masterName: { valid: ['mymaster'], invalid: ['', 42] },
    username: { valid: ['app'], invalid: [42] },
    password: { valid: ['topsecret'], invalid: [42] },
    database: { valid: [0, 15], invalid: [-1, 1.5, Number.NaN, '1'] },
  } satisfies Record<keyof RedisCacheSentinelOptions, OptionCases>,
  secrets: ['password', 'sentinels'],
  required: ['sentinels', 'masterName'],
  misspelt: { master: 'masterName', databse: 'database' },
  declarations: declarations('RedisCacheSentinelOptions'),
});

it('stallTimeoutMs is taken with cluster, sentinel or a client of yours too: every call has a deadline', async () => {
  for (const source of [{ cluster: ['redis://127.0.0.1:9'] }, { sentinel }, { client: createClient({ url }) }]) {
    await new RedisCache({ ...source, stallTimeoutMs: 5000 } as RedisCacheOptions).close();
  }
});

it('a Sentinel URL refused for its form (a scheme left out or mistyped) is shown without its password', () => {
  for (const odd of ['app:topsecret@127.0.0.1:26379', 'redis:/:topsecret@127.0.0.1:26379', 'redis:///:topsecret@127.0.0.1:26379']) {
    let message = '';
    try {
      new RedisCache({ sentinel: { sentinels: [odd], masterName: 'primary' } });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain('options.sentinel.sentinels must be');
    expect(message).not.toContain('topsecret');
  }
});

it('a cluster given as one URL is told to list its nodes, in words that read as a URL', () => {
  const error = (() => {
    try {
      new RedisCache({ cluster: 'redis://:topsecret@a:7000' } as never);
    } catch (caught) {
      return caught as Error & { option?: string };
    }
    throw new Error('expected a ConfigError');
  })();
  expect(error.option).toBe('cluster');
  expect(error.message).toContain("cluster: ['redis://host:7000', 'redis://host2:7000']");
  expect(error.message).not.toContain('topsecret');
  expect(error.message).not.toMatch(/6379\/0s\b/);
});
