import { describe, expect, it } from 'vitest';
import { RedisCache } from '@wxkit/redis';
import { startLocklessPeer } from '@wxkit/testing';
import { errorsOf, faultEnvironment, okOf, redisSpec } from './helpers.js';

// Issue 11, item 5: programs that refresh without a lock (node-easywechat, wechatpy, EasyWeChat) and
// share the store, refreshing at the same moment as wxkit's processes send: wxkit loses no send.
// WeChat keeps a superseded token valid for up to 5 minutes, and only the one before the newest.

const env = faultEnvironment({ latencyMs: 5 });
const pool = env.workers;

describe('item 5: lockless peers refreshing while wxkit sends', () => {
  it('two peers, each fetching the classic token twice in a row and writing it every 400 ms, beside 3 wxkit processes × 100 sends: 0 lost', async () => {
    const app = env.mock.createApp();
    const group = await pool.start(3, { ...app, tokenEndpoint: 'classic', store: redisSpec(env.redis.url) });
    await group.run('getToken', 1);
    const caches = [new RedisCache(env.redis.url), new RedisCache(env.redis.url)];
    const peers = caches.map((cache) => startLocklessPeer({ baseUrl: env.mock.url, ...app, cache, intervalMs: 400 }));
    try {
      // The peers are under way before the sends start, and still going when they end.
      await Promise.all(peers.map((peer) => peer.roundsDone(2)));
      const before = peers.map((peer) => peer.rounds);
      env.mock.setLatency(20);
      const results = await group.run('send', 100, group.all, 4);
      // Each peer refreshed at least once while the sends ran.
      expect(peers.map((peer, i) => peer.rounds - before[i]! >= 1)).toEqual([true, true]);
      expect(errorsOf(results)).toEqual([]);
      expect(okOf(results)).toBe(300);
      // The peers did invalidate tokens wxkit was using: recovered, not lost.
      expect(env.mock.counters(app.appId).rejectedCalls).toBeGreaterThan(0);
    } finally {
      await Promise.all(peers.map((peer) => peer.stop()));
      await Promise.all(caches.map((cache) => cache.close()));
    }
  });
});
