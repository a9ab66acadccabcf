import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createClient } from '@keyv/redis';
import { startMockWeChat, startRedisSentinel, redisCli, WorkerGroup, type MockWeChat, type RedisSentinelServers, type WorkerResult } from '@wxkit/testing';
import { describeTokenCache } from '@wxkit/testing/suite';
import { RedisCache, WRITTEN_CHANNEL, writtenMessage, type RedisCacheOptions } from '../src/index.js';

// A primary, its replica and three Sentinels, with passwords on both: the data nodes' goes in
// `sentinel.password`, the Sentinels' in their URLs. A connection through Sentinel asks a Sentinel for
// the primary before it connects there; five clients doing so at once on a loaded machine may take longer
// than the one-second default, which these tests are not about.
const password = 'data-s3cret';
const sentinelPassword = 'sentinel-s3cret';
const built = new URL('../dist/index.js', import.meta.url).href;
const optionsFor = (servers: RedisSentinelServers): RedisCacheOptions => ({
  sentinel: {
    sentinels: servers.urls.map((url) => url.replace('redis://', `redis://:${sentinelPassword}@`)),
    masterName: servers.masterName,
    password,
  },
  connectTimeoutMs: 5000,
});

let servers: RedisSentinelServers;
let mock: MockWeChat;
beforeAll(async () => {
  [servers, mock] = await Promise.all([startRedisSentinel({ password, sentinelPassword }), startMockWeChat({ latencyMs: 5 })]);
});
afterAll(async () => {
  await Promise.all([servers?.stop(), mock?.close()]);
});

describeTokenCache('RedisCache on Redis Sentinel', {
  create: () => new RedisCache(optionsFor(servers)),
  shared: () => ({ module: built, export: 'RedisCache', args: [optionsFor(servers)] }),
  supports: { ttlMs: true, compareAndSet: true, watch: true },
});

describe('Redis Sentinel', () => {
  it('stores raw bytes on the primary the Sentinels name, in the database it is given', async () => {
    const options = optionsFor(servers);
    const cache = new RedisCache({ ...options, sentinel: { ...options.sentinel!, database: 2 } });
    try {
      const key = `wechat:sentinel-write:${Date.now()}`;
      await cache.set(key, '{"access_token":"on the primary"}', 60);
      expect(redisCli(servers.primary.port, '-a', password, '-n', '2', 'GET', key)).toBe('{"access_token":"on the primary"}');
      expect(redisCli(servers.primary.port, '-a', password, '-n', '0', 'EXISTS', key)).toBe('0');
    } finally {
      await cache.close();
    }
  });

  it('a wrong data-node password fails with ERR_WXKIT_CACHE, and no password shows in the message', async () => {
    const options = optionsFor(servers);
    const cache = new RedisCache({ ...options, sentinel: { ...options.sentinel!, password: 'not-the-data-pass' }, connectTimeoutMs: 500 });
    try {
      const error = await cache.get('wechat:x').then(
        () => undefined,
        (e: unknown) => e as Error & { code: string },
      );
      expect(error?.code).toBe('ERR_WXKIT_CACHE');
      expect(error?.message).toContain(`Redis Sentinel master ${servers.masterName} via redis://:***@127.0.0.1:${servers.sentinels[0]!.port}`);
      const shown = JSON.stringify({ message: error?.message, stack: error?.stack });
      for (const secret of ['not-the-data-pass', sentinelPassword]) expect(shown).not.toContain(secret);
    } finally {
      await cache.close();
    }
  });

  it('checks its sentinel options before connecting, and never echoes a password', () => {
    const error = (options: unknown) => {
      try {
        new RedisCache({ sentinel: options } as RedisCacheOptions);
      } catch (e) {
        return e as Error & { code: string; option: string };
      }
      throw new Error('expected an error');
    };
    expect(error([])).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'sentinel' });
    expect(error({ sentinels: [], masterName: 'm' }).option).toBe('sentinel.sentinels');
    expect(error({ sentinels: ['redis://127.0.0.1:26379'], masterName: '' }).option).toBe('sentinel.masterName');
    expect(error({ sentinels: ['redis://127.0.0.1:26379'], masterName: 'm', database: -1 }).option).toBe('sentinel.database');
    expect(error({ sentinels: ['redis://127.0.0.1:26379'], masterName: 'm', password: 42 }).option).toBe('sentinel.password');
    const withDb = error({ sentinels: ['redis://:topsecret@127.0.0.1:26379/2'], masterName: 'm' });
    expect(withDb.option).toBe('sentinel.sentinels');
    expect(withDb.message).not.toContain('topsecret');
    const mixed = error({ sentinels: ['redis://:one@a:26379', 'redis://:two@b:26379'], masterName: 'm' });
    expect(mixed.message).toContain('one user and password');
    expect(mixed.message).not.toMatch(/one@|two@/);
    expect(() => new RedisCache({ url: 'redis://a:1', sentinel: { sentinels: ['redis://b:2'], masterName: 'm' } })).toThrow(/exactly one of url, cluster, sentinel or client/);
  });
});

describe('Redis Sentinel write notifications', () => {
  it('a write made while the subscriber connection was away has every watcher look once it is subscribed again', async () => {
    const watcher = new RedisCache(optionsFor(servers));
    const admin = createClient({ url: servers.primary.url, password });
    const key = `wechat:sentinel-wake:${Date.now()}`;
    // The primary's pub/sub connections that are not a Sentinel's own (those name themselves sentinel-…).
    const ours = async () =>
      String(await admin.sendCommand(['CLIENT', 'LIST', 'TYPE', 'pubsub']))
        .split('\n')
        .filter((line) => line.includes('id=') && !/ name=sentinel-/.test(line))
        .map((line) => /id=(\d+)/.exec(line)![1]!);
    let told = 0;
    try {
      await admin.connect();
      watcher.watch(key, () => (told += 1));
      // Subscribed: the watcher is told to look once.
      await vi.waitFor(() => expect(told).toBe(1), { timeout: 10_000, interval: 5 });
      // One: the cache's subscriber.
      await vi.waitFor(async () => expect(await ours()).toHaveLength(1), { timeout: 10_000, interval: 10 });
      const [id] = await ours();
      // In one transaction: the subscriber's connection dropped, then the write and its notification,
      // which the subscriber cannot hear whatever its reconnect timing.
      const [killed] = await admin
        .multi()
        .addCommand(['CLIENT', 'KILL', 'ID', id!])
        .set(key, 'v', { expiration: { type: 'PX', value: 60_000 } })
        .publish(WRITTEN_CHANNEL, writtenMessage(key))
        .exec();
      expect(killed).toBe(1);
      // Subscribed again on its own; no poll runs here: only the cache's own wake counts.
      await vi.waitFor(async () => expect((await ours()).filter((other) => other !== id)).toHaveLength(1), { timeout: 10_000, interval: 10 });
      await vi.waitFor(() => expect(told).toBe(2), { timeout: 10_000, interval: 5 });
    } finally {
      await Promise.all([watcher.close(), admin.destroy()]);
    }
  });
});

describe('Redis Sentinel failover', () => {
  it('the primary is SIGKILLed while 3 processes send: the replica is promoted, 0 sends lost, at most 2 token fetches', async () => {
    // Servers of its own: this test kills a primary.
    const failing = await startRedisSentinel({ password, sentinelPassword });
    const { appId, secret } = mock.createApp();
    // memoMs 0: every send reads the store, so the failover is met by every process, not hidden by the memo.
    const clientOptions = { memoMs: 0, cacheTimeoutMs: 1500, timeoutMs: 3000 };
    const group = await WorkerGroup.start(3, {
      baseUrl: mock.url,
      appId,
      secret,
      store: { module: built, export: 'RedisCache', args: [optionsFor(failing)] },
      clientOptions,
    });
    try {
      const results: WorkerResult[] = [];
      const round = async () => results.push(...(await group.run('send', 6, group.all, 2)));
      await round();
      let promoted = false;
      const failover = failing.failover().then((outcome) => {
        promoted = true;
        return outcome;
      });
      // Keep sending until a Sentinel has announced the promotion, then some more on the new primary.
      while (!promoted) await round();
      const { killed, promoted: primary } = await failover;
      expect([killed.port, primary.port]).toEqual([failing.primary.port, failing.replica.port]);
      for (let i = 0; i < 3; i += 1) await round();
      // A process that met the failover as an outage shares through the store again once its probe in
      // the background gets an answer from the new primary: wait for every such process to say so.
      const count = (event: string) => group.all.map((index) => results.filter((_, i) => i % group.size === index).reduce((sum, result) => sum + (result.events[event] ?? 0), 0));
      while (count('cache.unavailable').some((down, index) => down > count('cache.recovered')[index]!)) await round();

      expect(results.flatMap((result) => result.errors)).toEqual([]);
      expect(results.reduce((sum, result) => sum + result.ok, 0)).toBe(results.length * 6);
      expect(mock.counters(appId).templateSends).toBe(results.length * 6);
      const fetches = mock.counters(appId).tokenRequests;
      expect(fetches).toBeLessThanOrEqual(2);

      // The fleet shares the store on the new primary: when WeChat invalidates the token, one process
      // fetches under the lock and the others take its token from the store. Processes cut off from
      // the store would fetch one each.
      mock.invalidateTokens(appId);
      const after: WorkerResult[] = [...(await group.run('send', 6, group.all, 2)), ...(await group.run('send', 6, group.all, 2))];
      expect(after.flatMap((result) => result.errors)).toEqual([]);
      expect(mock.counters(appId).tokenRequests).toBe(fetches + 1);
      const tokens = new Set((await group.run('getToken', 2)).flatMap((result) => result.values));
      expect(tokens.size).toBe(1);
      const stored = redisCli(primary.port, '-a', password, 'GET', `wechat:stable_access_token:${appId}`);
      expect(JSON.parse(stored).access_token).toBe([...tokens][0]);
    } finally {
      await group.stop();
      await failing.stop();
    }
  });
});
