import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RedisCache } from '@wxkit/redis';
import { startLocklessPeer, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { errorsOf, okOf, redisSpec, workerPool } from './helpers.js';

// Issue 11, item 5: programs that refresh without a lock (node-easywechat, wechatpy, EasyWeChat) and
// share the store, refreshing at the same moment as wxkit's processes send: wxkit loses no send.
// WeChat keeps a superseded token valid for up to 5 minutes, and only the one before the newest.

let mock: MockWeChat;
let redis: StoreServer;
const pool = workerPool(() => ({ baseUrl: mock.url }));

beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat({ latencyMs: 5 }), startRedis()]);
});
afterEach(async () => {
  await pool.stop();
});
afterAll(async () => {
  await Promise.all([mock?.close(), redis?.stop()]);
});

describe('item 5: lockless peers refreshing while wxkit sends', () => {
  it('two peers, each fetching the classic token twice in a row and writing it every 150 ms, beside 3 wxkit processes × 100 sends: 0 lost', async () => {
    const app = mock.createApp();
    const group = await pool.start(3, { ...app, tokenEndpoint: 'classic', store: redisSpec(redis.url) });
    await group.run('getToken', 1);
    const caches = [new RedisCache(redis.url), new RedisCache(redis.url)];
    const peers = caches.map((cache) => startLocklessPeer({ baseUrl: mock.url, ...app, cache, intervalMs: 150 }));
    try {
      // The peers are under way before the sends start, and still going when they end.
      await Promise.all(peers.map((peer) => peer.roundsDone(2)));
      const results = await group.run('send', 100, group.all, 4);
      const during = Math.min(...peers.map((peer) => peer.rounds));
      expect(during).toBeGreaterThan(2);
      expect(errorsOf(results)).toEqual([]);
      expect(okOf(results)).toBe(300);
      // The peers did invalidate tokens wxkit was using: recovered, not lost.
      expect(mock.counters(app.appId).rejectedCalls).toBeGreaterThan(0);
    } finally {
      await Promise.all(peers.map((peer) => peer.stop()));
      await Promise.all(caches.map((cache) => cache.close()));
    }
  });
});
