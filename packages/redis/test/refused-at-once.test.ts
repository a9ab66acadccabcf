import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { CacheError } from '@wxkit/core';
import { redisCli, startRedis, startRedisSentinel, type RedisSentinelServers, type StoreServer } from '@wxkit/testing';
import { childThatExitsByItself } from '@wxkit/testing/suite';
import { RedisCache, type RedisCacheOptions } from '../src/index.js';

// A server that refuses the handshake for good (a wrong password or user, a database it lacks, a
// certificate nobody said to trust) fails the first call at once, with the reason the server gave. The
// connect timeout here is ten minutes: a call that waited for it would time the test out, so only the
// refusal can end these calls, and an error naming the timeout is a failure too.
const PASSWORD = 'pw-8e2f61c3d0';
const SENTINEL_PASSWORD = 'spw-51b7a9e4c2';
const FOREVER = 10 * 60_000;
const built = new URL('../dist/index.js', import.meta.url).href;

let withPassword: StoreServer;
let twoDatabases: StoreServer;
let tls: StoreServer;
let sentinel: RedisSentinelServers;
beforeAll(async () => {
  [withPassword, twoDatabases, tls, sentinel] = await Promise.all([
    startRedis({ args: ['--requirepass', PASSWORD, '--user', 'app', 'on', `>${PASSWORD}`, '~*', '+@all'] }),
    startRedis({ args: ['--databases', '2'] }),
    startRedis({ tls: true }),
    startRedisSentinel({ password: PASSWORD, sentinelPassword: SENTINEL_PASSWORD }),
  ]);
});
afterAll(async () => {
  await Promise.all([withPassword, twoDatabases, tls, sentinel].map((server) => server?.stop()));
});

/** The URL of the password server with `user` and `password`. */
function login(user: string, password: string): string {
  const url = new URL(withPassword.url);
  url.username = user;
  url.password = password;
  return url.href;
}

/** Sentinel options: the Sentinels' password in their URLs, the primary's in `password`. */
function throughSentinel(sentinelPassword: string, password: string): RedisCacheOptions {
  return {
    sentinel: { sentinels: sentinel.urls.map((url) => url.replace('redis://', `redis://:${sentinelPassword}@`)), masterName: sentinel.masterName, password },
    connectTimeoutMs: FOREVER,
  };
}

/** How many times the password server answered WRONGPASS so far: one per handshake refused. */
function wrongPasses(): number {
  const stats = redisCli(withPassword.port, '-a', PASSWORD, 'INFO', 'errorstats');
  return Number(/errorstat_WRONGPASS:count=(\d+)/.exec(stats)?.[1] ?? 0);
}

/** The CacheError of a get, checked to hold no secret and not to be the connect timeout's. */
async function refusal(cache: RedisCache): Promise<CacheError> {
  const error = await cache.get('wechat:refused-at-once').then(
    () => {
      throw new Error('get succeeded');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(CacheError);
  const shown = JSON.stringify({ message: (error as Error).message, stack: (error as Error).stack, cause: String((error as Error).cause) });
  for (const secret of [PASSWORD, SENTINEL_PASSWORD]) expect(shown).not.toContain(secret);
  expect(shown).not.toContain('not-the-password');
  expect(shown).not.toMatch(/no connection within/);
  return error as CacheError;
}

describe('RedisCache fails at once when the server refuses the handshake for good', () => {
  it.each([
    ['a wrong password', () => login('', 'not-the-password'), 'auth', /authentication failed/],
    ['a wrong password of an ACL user', () => login('app', 'not-the-password'), 'auth', /authentication failed/],
    ['an unknown ACL user', () => login('nobody', PASSWORD), 'auth', /authentication failed/],
    ['a database beyond the server’s', () => `${twoDatabases.url}/5`, 'database', /no such database/],
    ['a certificate nobody said to trust', () => tls.url, 'tls', /TLS handshake failed/],
  ])('%s: the first call fails with that reason, not the timeout', async (_, url, reason, hint) => {
    const cache = new RedisCache({ url: url(), connectTimeoutMs: FOREVER });
    try {
      const error = await refusal(cache);
      expect(error.reason).toBe(reason);
      expect(error.message).toMatch(hint);
    } finally {
      await cache.close();
    }
  });

  it('calls together share one handshake; calls within a second of a refusal make none, the next one makes one, and a password set meanwhile is taken', async () => {
    // The refusal's hold is measured on performance.now(), the test's to move; sockets and timers are real.
    vi.useFakeTimers({ toFake: ['performance'] });
    const cache = new RedisCache({ url: login('', 'not-the-password'), connectTimeoutMs: FOREVER });
    try {
      const before = wrongPasses();
      const errors = await Promise.all(Array.from({ length: 5 }, () => refusal(cache)));
      expect(errors.map((error) => error.reason)).toEqual(['auth', 'auth', 'auth', 'auth', 'auth']);
      // One WRONGPASS for the five calls: node-redis did not try the same password again.
      expect(wrongPasses()).toBe(before + 1);
      // Within the hold: the same refusal, without a handshake (a loop of calls is no storm of them).
      for (let i = 0; i < 20; i += 1) expect((await refusal(cache)).reason).toBe('auth');
      expect(wrongPasses()).toBe(before + 1);
      vi.advanceTimersByTime(1_001);
      expect((await refusal(cache)).reason).toBe('auth');
      expect(wrongPasses()).toBe(before + 2);
      // The server is given the password the URL holds: the first call after the hold connects.
      redisCli(withPassword.port, '-a', PASSWORD, 'ACL', 'SETUSER', 'default', '>not-the-password');
      vi.advanceTimersByTime(1_001);
      await expect(cache.get('wechat:refused-at-once')).resolves.toBeUndefined();
      expect(wrongPasses()).toBe(before + 2);
    } finally {
      vi.useRealTimers();
      redisCli(withPassword.port, '-a', PASSWORD, 'ACL', 'SETUSER', 'default', '<not-the-password');
      await cache.close();
    }
  });

  // The Sentinels' own password: not at once, as node-redis asks the next Sentinel, which may take what
  // one refused, and only gives up after its rounds of discovery (16, a second apart). Its own error then
  // says only that no Sentinel was available; the call names the reason node-redis reported on the way.
  it.each([
    ['a wrong password of the primary fails the first call with reason auth', SENTINEL_PASSWORD, 'not-the-password'],
    ['a wrong password of the Sentinels themselves fails with reason auth once node-redis gives up', 'not-the-password', PASSWORD],
  ])('Sentinel: %s', async (_, sentinelPassword, primaryPassword) => {
    const cache = new RedisCache(throughSentinel(sentinelPassword, primaryPassword));
    try {
      const error = await refusal(cache);
      expect(error.reason).toBe('auth');
      expect(error.message).toMatch(/authentication failed/);
    } finally {
      await cache.close();
    }
  });

  it("Sentinel with a reconnectStrategy of the caller's: a refusal still ends the attempt, and close() ends the client", async () => {
    const options = throughSentinel(SENTINEL_PASSWORD, 'not-the-password');
    // A strategy that never gives up: the client given up must stop reconnecting all the same, or the
    // Sentinel's destroy() waits for its discovery for ever.
    const cache = new RedisCache({ ...options, clientOptions: { socket: { reconnectStrategy: () => 50 } } });
    expect((await refusal(cache)).reason).toBe('auth');
    await cache.close();
  }, 15_000);

  it('the process exits on its own after close(), every call having failed (standalone, Sentinel)', async () => {
    const specs: RedisCacheOptions[] = [
      { url: login('', 'not-the-password'), connectTimeoutMs: FOREVER },
      throughSentinel(SENTINEL_PASSWORD, 'not-the-password'),
    ];
    for (const options of specs) {
      const spec = { module: built, export: 'RedisCache', args: [options] };
      const ops = [
        { op: 'get', key: 'wxkit-exit:k' },
        { op: 'set', key: 'wxkit-exit:k', value: 'v', ttlSeconds: 60 },
      ] as const;
      const { code, results, resources } = await childThatExitsByItself(spec, [...ops]);
      expect(results.map((result) => result.error)).toEqual(['ERR_WXKIT_CACHE', 'ERR_WXKIT_CACHE']);
      expect({ options, code, resources: code === 0 ? [] : resources }).toEqual({ options, code: 0, resources: [] });
    }
  });
});
