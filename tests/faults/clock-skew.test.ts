import { afterEach, describe, expect, it } from 'vitest';
import { OfficialAccount } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';
import { errorsOf, faultEnvironment, redisSpec } from './helpers.js';

// Clocks that disagree between the hosts of one fleet (an NTP-less VM, a container whose host drifted):
// the protocol's promises do not depend on them. A failure costs WeChat one request per back-off step
// for the whole fleet, forced refreshes stay 30 s apart, and a forced refresh hands out the token it fetched.

const env = faultEnvironment();
const pool = env.workers;
const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((client) => client.close()));
});

/** A client on its own Redis connection whose clock is the real one plus `skewMs`. */
function client(app: { appId: string; secret: string }, skewMs: number, options: Record<string, unknown> = {}) {
  const cache = new RedisCache(env.redis.url);
  const wechat = new OfficialAccount({ ...app, baseUrl: env.mock.url, cache, logger: false, now: () => Date.now() + skewMs, ...options });
  open.push(wechat, cache);
  return wechat;
}

describe('clock skew between hosts', () => {
  it('errcode 40164 on every fetch, two hosts whose clocks are 5 minutes apart (2 processes each): 1 request for the fleet within its minute', async () => {
    const app = env.mock.createApp();
    // An IP off the whitelist: the fleet asks WeChat once a minute, a pause no round of this test outlasts.
    env.mock.injectFault({ kind: 'errcode', errcode: 40164, path: 'cgi-bin/token', times: Infinity });
    // Frozen clocks the test never moves: no back-off step can pass, however long the rounds take.
    const base = Date.now();
    const config = { ...app, tokenEndpoint: 'classic' as const, store: redisSpec(env.redis.url), clockControl: 'frozen' as const };
    const [right, behind] = await Promise.all([pool.start(2, { ...config, clockBase: base }), pool.start(2, { ...config, clockBase: base - 5 * 60_000 })]);
    const errors: string[] = [];
    for (let round = 0; round < 3; round += 1) {
      errors.push(...errorsOf(await right.run('getToken', 5)), ...errorsOf(await behind.run('getToken', 5)));
    }
    expect(new Set(errors)).toEqual(new Set(['ERR_WXKIT_WECHAT_API:40164']));
    // Each host's marker reads as long past (written by the clock behind) or as dated too far ahead (by the
    // clock that is right) on the other host: without a clock-free reading, every round fetches again.
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(1);
  });

  it('a forced refresh on a host whose clock is 2 minutes behind hands out the token it fetched, and the store holds it', async () => {
    const app = env.mock.createApp();
    const [a, b] = [client(app, 0), client(app, -2 * 60_000)];
    const before = await a.accessToken.getToken();
    const forced = await b.accessToken.forceRefresh();
    expect(env.mock.counters(app.appId).forceRefreshes).toBe(1);
    // The token before it was superseded by the forced fetch: WeChat ends it after the grace window.
    expect(forced).not.toBe(before);
    const cache = new RedisCache(env.redis.url);
    open.push(cache);
    expect(await cache.get(`wechat:stable_access_token:${app.appId}`)).toContain(forced);
  });

  it('two hosts force a refresh within 30 s, the second one\'s clock 2 minutes ahead: one force_refresh is sent', async () => {
    const app = env.mock.createApp();
    const [a, b] = [client(app, 0), client(app, 2 * 60_000)];
    await a.accessToken.getToken();
    const forced = await a.accessToken.forceRefresh();
    expect(await b.accessToken.forceRefresh()).toBe(forced);
    expect(env.mock.counters(app.appId).forceRefreshes).toBe(1);
  });
});

describe('forced refreshes at the same moment', () => {
  it('two processes force a refresh at once: one force_refresh is sent, and both get its token, not the one it replaced', async () => {
    const app = env.mock.createApp();
    const [a, b] = [client(app, 0), client(app, 0)];
    const before = await a.accessToken.getToken();
    expect(await b.accessToken.getToken()).toBe(before);
    // WeChat takes a moment to answer: the second forced refresh starts while the first one's is on its way.
    env.mock.setLatency(100);
    const [first, second] = await Promise.all([a.accessToken.forceRefresh(), b.accessToken.forceRefresh()]);
    expect(env.mock.counters(app.appId).forceRefreshes).toBe(1);
    // Neither hands out the token the force_refresh replaced (the one a caller forces a refresh to be rid of).
    expect([first === before, second === before]).toEqual([false, false]);
    expect(second).toBe(first);
  });
});
