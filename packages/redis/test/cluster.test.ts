import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedisCluster, redisCli, type RedisClusterServers } from '@wxkit/testing';
import { describeTokenCache, describeTokenSharing } from '@wxkit/testing/suite';
import { RedisCache } from '../src/index.js';

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
});
