import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CacheError } from '@wxkit/core';
import { redisCli, startRedisCluster, type RedisClusterServers, type StoreServer } from '@wxkit/testing';
import { RedisCache } from '../src/index.js';

// A Cluster node that hangs (SIGSTOP: its connections stay open, nothing is answered) sets off none of
// node-redis's discovery: a call for its slots would wait on the socket as long as the kernel does,
// minutes, and one still waiting when close() came ended with no reason. Each call has a deadline
// (stallTimeoutMs) instead, and the cluster client is left open for when the node answers again.

const STALL_MS = 1000;
let cluster: RedisClusterServers;
beforeAll(async () => {
  cluster = await startRedisCluster(3);
}, 60_000);
afterAll(async () => {
  await cluster?.stop();
});

/** The node that holds `key` (the others answer MOVED). */
function ownerOf(key: string): StoreServer {
  const owner = cluster.nodes.find((node) => redisCli(node.port, 'EXISTS', key) === '1');
  if (!owner) throw new Error(`no node holds ${key}`);
  return owner;
}

/** Connections `node` has accepted so far, the one asking included. */
function connectionsTo(node: StoreServer): number {
  return Number(/total_connections_received:(\d+)/.exec(redisCli(node.port, 'INFO', 'stats'))?.[1]);
}

/** The rejection of `promise`, or undefined if it resolves. */
function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (error: unknown) => error,
  );
}

describe('RedisCache on Redis Cluster, a node that hangs', () => {
  it('a call for its keys rejects with reason timeout after stallTimeoutMs, and the same client answers once the node goes on', async () => {
    const cache = new RedisCache({ cluster: cluster.urls, stallTimeoutMs: STALL_MS });
    const key = 'wechat:cluster-hung:get';
    let node: StoreServer | undefined;
    try {
      await cache.set(key, 'v', 600);
      const owner = ownerOf(key);
      node = owner;
      const before = connectionsTo(owner);
      await node.pause();
      const error = await rejection(cache.get(key));
      expect(error).toBeInstanceOf(CacheError);
      expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout', message: expect.stringContaining(`within ${STALL_MS} ms`) });
      await node.resume();
      node = undefined;
      expect(await cache.get(key)).toBe('v');
      // Answered on the connection it had: the client was not ended and made anew (the one new
      // connection is redis-cli's, for this count).
      expect(connectionsTo(owner) - before).toBe(1);
    } finally {
      await node?.resume();
      await cache.close();
    }
  }, 5 * STALL_MS);

  it('a call still waiting on it when close() comes rejects with reason closed', async () => {
    const cache = new RedisCache({ cluster: cluster.urls, stallTimeoutMs: 60_000 });
    const key = 'wechat:cluster-hung:close';
    let node: StoreServer | undefined;
    try {
      await cache.set(key, 'v', 600);
      node = ownerOf(key);
      await node.pause();
      const reading = rejection(cache.get(key));
      await cache.close();
      expect(await reading).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'closed' });
    } finally {
      await node?.resume();
      await cache.close();
    }
  }, 5 * STALL_MS);
});
