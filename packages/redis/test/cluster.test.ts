import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createClient } from '@keyv/redis';
import { startRedisCluster, redisCli, type RedisClusterServers } from '@wxkit/testing';
import { describeTokenCache, describeTokenSharing } from '@wxkit/testing/suite';
import { RedisCache, WRITTEN_CHANNEL, writtenMessage } from '../src/index.js';

// A 3-master Redis Cluster: the conformance suite and the multi-process scenarios, with keys spread
// over every master. Each command wxkit sends touches one key, so slots never get in the way.
let cluster: RedisClusterServers;
beforeAll(async () => {
  cluster = await startRedisCluster(3);
});
afterAll(async () => {
  await cluster?.stop();
});

const built = new URL('../dist/index.js', import.meta.url).href;
const options = () => ({ cluster: cluster.urls });

describeTokenCache('RedisCache on Redis Cluster', {
  create: () => new RedisCache(options()),
  shared: () => ({ module: built, export: 'RedisCache', args: [options()] }),
  supports: { ttlMs: true, compareAndSet: true, watch: true },
});
describeTokenSharing('RedisCache on Redis Cluster', { store: () => ({ module: built, export: 'RedisCache', args: [options()] }) });

describe('Redis Cluster', () => {
  it('spreads entries over the masters; each one is readable with redis-cli -c and replaced by compareAndSet on its own node', async () => {
    const cache = new RedisCache(options());
    const keys = Array.from({ length: 30 }, (_, i) => `wechat:stable_access_token:wx${String(i).padStart(16, '0')}`);
    for (const key of keys) await cache.set(key, `value-of-${key}`, 60);
    for (const key of keys) expect(redisCli(cluster.nodes[0]!.port, '-c', 'GET', key)).toBe(`value-of-${key}`);
    const perNode = cluster.nodes.map((node) => Number(redisCli(node.port, 'DBSIZE')));
    expect(perNode.every((count) => count > 0)).toBe(true);
    for (const key of keys) expect(await cache.compareAndSet(key, `value-of-${key}`, `next-${key}`, 60)).toBe(true);
    for (const key of keys) expect(redisCli(cluster.nodes[0]!.port, '-c', 'GET', key)).toBe(`next-${key}`);
    for (const key of keys) expect(await cache.deleteIfEquals(key, `next-${key}`)).toBe(true);
    await cache.close();
  });

  it('a write made while the subscriber connection was away has every watcher look once it is subscribed again', async () => {
    const watcher = new RedisCache(options());
    const admins = cluster.nodes.map((node) => createClient({ url: node.url }));
    const key = `wechat:cluster-wake:${Date.now()}`;
    const subscribers = async (admin: (typeof admins)[number]) =>
      String(await admin.sendCommand(['CLIENT', 'LIST', 'TYPE', 'pubsub']))
        .split('\n')
        .filter((line) => line.includes('id='))
        .map((line) => /id=(\d+)/.exec(line)![1]!);
    let told = 0;
    try {
      await Promise.all(admins.map((admin) => admin.connect()));
      watcher.watch(key, () => (told += 1));
      await vi.waitFor(() => expect(told).toBe(1), { timeout: 10_000, interval: 5 });
      // The node the cluster subscribed on: the one node with a pub/sub connection.
      await vi.waitFor(async () => expect((await Promise.all(admins.map(subscribers))).flat()).toHaveLength(1), { timeout: 10_000, interval: 10 });
      const held = await Promise.all(admins.map(subscribers));
      const admin = admins[held.findIndex((ids) => ids.length === 1)]!;
      const [id] = held.flat();
      // In one transaction on that node: the subscriber's connection dropped, then the notification,
      // which the subscriber cannot hear whatever its reconnect timing.
      const [killed] = await admin.multi().addCommand(['CLIENT', 'KILL', 'ID', id!]).publish(WRITTEN_CHANNEL, writtenMessage(key)).exec();
      expect(killed).toBe(1);
      // Subscribed again on its own (on that node); no poll runs here: only the cache's own wake counts.
      await vi.waitFor(async () => expect((await subscribers(admin)).filter((other) => other !== id)).toHaveLength(1), { timeout: 10_000, interval: 10 });
      await vi.waitFor(() => expect(told).toBe(2), { timeout: 10_000, interval: 5 });
    } finally {
      await Promise.all([watcher.close(), ...admins.map((admin) => admin.destroy())]);
    }
  });
});
