import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkerGroup, redisCli, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';

// A WorkerGroup configured again gives its processes new apps and keeps their store connections: the
// token-sharing scenarios run one after another on one group.
let mock: MockWeChat;
let redis: StoreServer;
beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat(), startRedis()]);
});
afterAll(async () => {
  await Promise.all([mock?.close(), redis?.stop()]);
});

const store = () => ({ module: new URL('../../redis/dist/index.js', import.meta.url).href, export: 'RedisCache', args: [redis.url] });
/** The ids of the command connections the Redis server holds (not subscribers, not redis-cli's own), sorted. */
const connections = () =>
  redisCli(redis.port, 'CLIENT', 'LIST')
    .split('\n')
    .filter((line) => line.includes('id=') && !line.includes('cmd=client|list') && !/ flags=\S*P/.test(line))
    .map((line) => /id=(\d+)/.exec(line)![1]!)
    .sort();

describe('WorkerGroup.configure()', () => {
  it('gives the same processes another app, over the connections they had; a killed worker is replaced; runs go to the first count', async () => {
    const first = mock.createApp();
    const group = await WorkerGroup.start(3, { baseUrl: mock.url, store: store(), ...first, tokenEndpoint: 'classic' });
    try {
      const tokens = (await group.run('getToken', 5)).flatMap((result) => result.values);
      expect(new Set(tokens).size).toBe(1);
      // One per worker: its RedisCache's command connection.
      const held = connections();
      expect(held).toHaveLength(3);

      const second = mock.createApp();
      await group.configure({ baseUrl: mock.url, store: store(), ...second, tokenEndpoint: 'classic' });
      const again = (await group.run('getToken', 5)).flatMap((result) => result.values);
      expect(again).toHaveLength(15);
      expect(new Set(again).size).toBe(1);
      expect(mock.isTokenValid(second.appId, again[0]!)).toBe(true);
      expect(mock.counters(second.appId).tokenRequests).toBe(1);
      // The store's clients were kept, not made again.
      expect(connections()).toEqual(held);

      await group.kill(0);
      const third = mock.createApp();
      await group.configure({ baseUrl: mock.url, store: store(), ...third, tokenEndpoint: 'classic' }, 2);
      expect(group.size).toBe(2);
      expect(group.all).toEqual([0, 1]);
      const two = await group.run('getToken', 4);
      expect(two).toHaveLength(2);
      expect(two.flatMap((result) => result.errors)).toEqual([]);
      expect(mock.counters(third.appId).tokenRequests).toBe(1);
    } finally {
      await group.stop();
    }
  });

  it('release() closes every app: a run then fails until the group is configured again; events start afresh', async () => {
    const app = mock.createApp();
    const group = await WorkerGroup.start(2, { baseUrl: mock.url, store: store(), ...app, tokenEndpoint: 'classic' });
    try {
      expect((await group.run('getToken', 1)).map((result) => result.events['access_token.fetched'] ?? 0).reduce((a, b) => a + b)).toBe(1);
      await group.release();
      const refused = await group.run('getToken', 1);
      expect(refused.flatMap((result) => result.errors)).toEqual(['UNKNOWN:the worker has no app: configure it first', 'UNKNOWN:the worker has no app: configure it first']);
      const other = mock.createApp();
      await group.configure({ baseUrl: mock.url, store: store(), ...other, tokenEndpoint: 'classic' });
      const results = await group.run('getToken', 1);
      expect(results.flatMap((result) => result.errors)).toEqual([]);
      expect(results.map((result) => result.events['access_token.fetched'] ?? 0).reduce((a, b) => a + b)).toBe(1);
    } finally {
      await group.stop();
    }
  });

  it('configure() with a config a worker cannot build rejects with its reason, and the group can be configured again', async () => {
    const group = await WorkerGroup.start(2, { baseUrl: mock.url, store: store(), ...mock.createApp(), tokenEndpoint: 'classic' });
    try {
      await expect(group.configure({ baseUrl: mock.url, store: store(), ...mock.createApp(), schema: { name: 'noSuchSchema' } })).rejects.toThrow(
        /^worker \d could not configure: @wxkit\/core has no schema noSuchSchema$/,
      );
      const app = mock.createApp();
      await group.configure({ baseUrl: mock.url, store: store(), ...app, tokenEndpoint: 'classic' });
      const results = await group.run('getToken', 2);
      expect(results.flatMap((result) => result.errors)).toEqual([]);
      expect(mock.counters(app.appId).tokenRequests).toBe(1);
    } finally {
      await group.stop();
    }
  });
});
