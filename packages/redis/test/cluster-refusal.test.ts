import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { redisCli, startRedisCluster, type RedisClusterServers } from '@wxkit/testing';
import { RedisCache } from '../src/index.js';

// The user and password in the root node URLs are every node's, not the discovery's alone.
//
// A Cluster keeps a node client that stopped reconnecting, closed, for good: every command for that
// node's slots would fail ("The client is closed") while the cluster still reads as open. So a refusal a
// node's reconnect meets (a password rolled out node by node, put back after a mistake) is retried there,
// never taken as lasting.

const PASSWORD = 'pw-cluster-5c1e07';
const OTHER = 'pw-cluster-other';
let cluster: RedisClusterServers;
beforeAll(async () => {
  cluster = await startRedisCluster(3);
  for (const node of cluster.nodes) redisCli(node.port, 'CONFIG', 'SET', 'requirepass', PASSWORD);
}, 60_000);
afterAll(async () => {
  await cluster?.stop();
});

/** How many WRONGPASS `port` answered so far. */
function wrongPasses(port: number, password: string): number {
  return Number(/errorstat_WRONGPASS:count=(\d+)/.exec(redisCli(port, '-a', password, 'INFO', 'errorstats'))?.[1] ?? 0);
}

describe('RedisCache on Redis Cluster, a node refusing a reconnect for a while', () => {
  it('serves that node\'s keys again once its password is put right', async () => {
    const cache = new RedisCache({ cluster: cluster.urls, clientOptions: { password: PASSWORD } });
    try {
      const keys = Array.from({ length: 12 }, (_, i) => `wechat:cluster-refusal:${i}`);
      for (const key of keys) await cache.set(key, 'v', 600);
      // The password changes and the connections drop: each node client's reconnect meets WRONGPASS.
      for (const node of cluster.nodes) redisCli(node.port, '-a', PASSWORD, 'CONFIG', 'SET', 'requirepass', OTHER);
      for (const node of cluster.nodes) redisCli(node.port, '-a', OTHER, 'CLIENT', 'KILL', 'TYPE', 'normal');
      await vi.waitFor(() => expect(cluster.nodes.every((node) => wrongPasses(node.port, OTHER) > 0)).toBe(true), { timeout: 10_000, interval: 50 });
      // Put right: the node clients reconnect on their own, and every key answers again.
      for (const node of cluster.nodes) redisCli(node.port, '-a', OTHER, 'CONFIG', 'SET', 'requirepass', PASSWORD);
      await vi.waitFor(async () => expect(await Promise.all(keys.map((key) => cache.get(key)))).toEqual(keys.map(() => 'v')), { timeout: 15_000, interval: 250 });
    } finally {
      await cache.close();
    }
  }, 60_000);
});

describe('RedisCache on Redis Cluster, the credentials in the root node URLs', () => {
  it('a password in the URLs is used for every node the cluster discovers, not only for discovery', async () => {
    const cache = new RedisCache({ cluster: cluster.urls.map((url) => url.replace('redis://', `redis://:${PASSWORD}@`)) });
    try {
      // Keys on every master: each node's client authenticates with it.
      const keys = Array.from({ length: 12 }, (_, i) => `wechat:cluster-url-password:${i}`);
      for (const key of keys) await cache.set(key, 'v', 60);
      expect(await Promise.all(keys.map((key) => cache.get(key)))).toEqual(keys.map(() => 'v'));
      expect(cluster.nodes.map((node) => redisCli(node.port, '-a', PASSWORD, 'KEYS', 'wechat:cluster-url-password:*').length > 0)).toEqual([true, true, true]);
    } finally {
      await cache.close();
    }
  }, 60_000);

  it('so are an ACL user and its password', async () => {
    for (const node of cluster.nodes) redisCli(node.port, '-a', PASSWORD, 'ACL', 'SETUSER', 'wxkit', 'on', '>wxkit-pw', '~wechat:*', '&*', '+@all');
    const cache = new RedisCache({ cluster: cluster.urls.map((url) => url.replace('redis://', 'redis://wxkit:wxkit-pw@')) });
    try {
      const keys = Array.from({ length: 12 }, (_, i) => `wechat:cluster-url-acl:${i}`);
      for (const key of keys) await cache.set(key, 'v', 60);
      expect(await Promise.all(keys.map((key) => cache.get(key)))).toEqual(keys.map(() => 'v'));
    } finally {
      await cache.close();
    }
  }, 60_000);
});
