import { describe, expect, it } from 'vitest';
import { createClient } from '@keyv/redis';
import { MemoryCache, OfficialAccount } from '@wxkit/core';
import { errorsOf, faultEnvironment, redisSpec } from './helpers.js';

// Issue 11, items 2 and 3: a failed fetch is backed off by errcode and shared with the whole fleet
// through the {key}:failed marker; processes waiting on the holder return its error, never fetch again.

const env = faultEnvironment();
const pool = env.workers;

describe('item 2: no back-off after a failed fetch', () => {
  it('errcode -1 on every fetch: 200 calls in one process cost 1 request, then one per exponential step (1 s, 2 s, 4 s)', async () => {
    const { appId, secret } = env.mock.createApp();
    env.mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token', times: Infinity });
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: env.mock.url, cache: new MemoryCache(), tokenEndpoint: 'classic', logger: false, now: () => now });
    const burst = async (calls: number) => {
      const settled = await Promise.allSettled(Array.from({ length: calls }, () => app.accessToken.getToken()));
      return settled.map((outcome) => (outcome.status === 'rejected' ? (outcome.reason as { errcode?: number }).errcode : 'ok'));
    };
    expect(new Set(await burst(100))).toEqual(new Set([-1]));
    for (let i = 0; i < 100; i += 1) await burst(1);
    expect(env.mock.counters(appId).classicTokenRequests).toBe(1);
    // Steps of 1 s, 2 s and 4 s (±20 %): just short of a step nothing is sent, just past it one request.
    for (const [step, requests] of [[1000, 2], [2000, 3], [4000, 4]] as const) {
      now += step * 0.75;
      await burst(20);
      expect(env.mock.counters(appId).classicTokenRequests).toBe(requests - 1);
      now += step * 0.5;
      await burst(20);
      expect(env.mock.counters(appId).classicTokenRequests).toBe(requests);
    }
    await app.close();
  });

  it.each([
    [45011, 'the minute quota: the next minute', 60_000],
    [40125, 'a wrong secret: once a minute for the fleet', 60_000],
    [40164, 'an IP not in the whitelist: once a minute for the fleet', 60_000],
  ])('errcode %i (%s) is not fetched again before %i ms', async (errcode, _what, pauseMs) => {
    const { appId, secret } = env.mock.createApp();
    env.mock.injectFault({ kind: 'errcode', errcode, path: 'cgi-bin/token', times: Infinity });
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: env.mock.url, cache: new MemoryCache(), tokenEndpoint: 'classic', logger: false, now: () => now });
    for (let i = 0; i < 50; i += 1) await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode });
    now += pauseMs - 1000;
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode });
    expect(env.mock.counters(appId).classicTokenRequests).toBe(1);
    now += 2000;
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode });
    expect(env.mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });

  it('45009 (daily quota) is surfaced without a retry until the quota day rolls over at midnight, Beijing time', async () => {
    const { appId, secret } = env.mock.createApp();
    env.mock.injectFault({ kind: 'errcode', errcode: 45009, path: 'cgi-bin/token', times: Infinity });
    // 2025-11-25 10:00 in Beijing: the quota day ends 14 h later.
    let now = Date.UTC(2025, 10, 25, 2, 0, 0);
    const app = new OfficialAccount({ appId, secret, baseUrl: env.mock.url, cache: new MemoryCache(), tokenEndpoint: 'classic', logger: false, now: () => now });
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode: 45009 });
    now += 14 * 3_600_000 - 1000;
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode: 45009 });
    await expect(app.accessToken.forceRefresh()).rejects.toMatchObject({ errcode: 45009 });
    expect(env.mock.counters(appId).classicTokenRequests).toBe(1);
    now += 2000;
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode: 45009 });
    expect(env.mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });

  it('4 processes on one Redis back off together: 1 request per step for the fleet, not per process', async () => {
    const app = env.mock.createApp();
    env.mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token', times: Infinity });
    // A clock that only the test moves: 750 ms is short of the first step (1 s, −20 % at most) however
    // long the rounds themselves take on a busy machine.
    const group = await pool.start(4, { ...app, tokenEndpoint: 'classic', store: redisSpec(env.redis.url), clockControl: 'frozen' });
    const round = async () => errorsOf(await group.run('getToken', 10));
    expect(new Set(await round())).toEqual(new Set(['ERR_WXKIT_WECHAT_API:-1']));
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(1);
    await group.advance(750);
    await round();
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(1);
    await group.advance(500);
    await round();
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(2);
    // The second failure in a row doubles the step for everyone.
    await group.advance(1500);
    await round();
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(2);
    await group.advance(1000);
    await round();
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(3);
  });
});

describe('a token WeChat rejects moments after every fetch', () => {
  it('4 processes on one Redis: one request per step for the fleet (the pause {key}:refetch), however many rounds of sends', async () => {
    const app = env.mock.createApp();
    const key = `wechat:access_token:${app.appId}:refetch`;
    // A clock only the test moves: the rounds within a step stay within it however long they take.
    const group = await pool.start(4, { ...app, tokenEndpoint: 'classic', store: redisSpec(env.redis.url), clockControl: 'frozen' });
    expect(errorsOf(await group.run('send', 1))).toEqual([]);
    const requests = () => env.mock.counters(app.appId).classicTokenRequests;
    const warm = requests();
    env.mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
    const round = () => group.run('send', 5).then(errorsOf);
    // One connection of the test's own, looked through every millisecond: the pause's TTL (two steps)
    // runs on real time, and a redis-cli process per look could miss it on a busy machine.
    const watcher = createClient({ url: env.redis.url });
    await watcher.connect();
    /** Waits for the pause of `step` ms to be written, and keeps it (PERSIST): see below. */
    const keep = async (step: number) => {
      for (const deadline = Date.now() + 10_000; !((await watcher.get(key))?.includes(`"step":${step}`) && (await watcher.persist(key)) === 1); ) {
        if (Date.now() > deadline) throw new Error(`no pause of ${step} ms was written to ${key} in 10 s`);
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    };
    try {
      // The token the warm sends went through with is refetched at once; WeChat rejects that one too, and
      // the next fetch starts the fleet's first pause (1 s). The workers' clocks stand still while the
      // store lets the pause go two steps of real time after its write: the test keeps it, as a store
      // whose clock stood still too would.
      //
      // One more fetch can come at the start of the streak: a process whose report of the token that
      // worked was still waiting for the lock finds the store empty (another process deleted the
      // replacement it saw rejected) and refetches at once, as after any external refresh, before the
      // pause is written (docs/protocol.md, "Fetches after a rejection are spaced"). From then on, one
      // request per step.
      const first = round();
      await keep(1_000);
      await first;
      const started = requests();
      expect([warm + 2, warm + 3]).toContain(started);
      const paused = await round();
      await round();
      expect(requests()).toBe(started);
      expect(paused.some((error) => error.startsWith('ERR_WXKIT_NO_TOKEN'))).toBe(true);
      // A step later: one fetch for the fleet, and the next pause is twice as long.
      await group.advance(1_001);
      const next = round();
      await keep(2_000);
      await next;
      await round();
      expect(requests()).toBe(started + 1);
    } finally {
      await watcher.close();
    }
  });
});

describe('item 3: a failed fetch is shared', () => {
  it('6 processes waiting on a holder whose fetch fails (-1) return its error: 1 request in all', async () => {
    const app = env.mock.createApp();
    // The holder's request takes 400 ms, so the others find the lock held and wait on it.
    env.mock.setLatency(400);
    env.mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token', times: 1 });
    const group = await pool.start(6, { ...app, tokenEndpoint: 'classic', store: redisSpec(env.redis.url) });
    const results = await group.run('getToken', 5);
    expect(errorsOf(results)).toEqual(Array.from({ length: 30 }, () => 'ERR_WXKIT_WECHAT_API:-1'));
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(1);
  });

  it('a hanging token endpoint: the waiters get the holder\'s timeout, and nobody fetches beside it', async () => {
    const app = env.mock.createApp();
    env.mock.injectFault({ kind: 'hang', path: 'cgi-bin/token', times: 1 });
    const group = await pool.start(6, { ...app, tokenEndpoint: 'classic', store: redisSpec(env.redis.url), clientOptions: { timeoutMs: 1500 } });
    const results = await group.run('getToken', 3);
    expect(errorsOf(results).map((error) => error.split(':')[0])).toEqual(Array.from({ length: 18 }, () => 'ERR_WXKIT_TIMEOUT'));
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(1);
  });
});
