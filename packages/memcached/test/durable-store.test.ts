import { MemoryCache, OpenPlatform, type Logger, type TokenCache } from '@wxkit/core';
import { startMemcached, startMockWeChat, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemcachedCache } from '../src/index.js';

// Memcached evicts under memory pressure and forgets everything on restart: as an open platform's
// durable store it can lose the only copy of an authorizer's refresh token. wxkit says so at start.
let memcached: StoreServer;
let mock: MockWeChat;
beforeAll(async () => {
  [memcached, mock] = await Promise.all([startMemcached(), startMockWeChat()]);
});
afterAll(async () => {
  await Promise.all([memcached.stop(), mock.close()]);
});

/** The `event` field of every warning an OpenPlatform on these stores logs at start. */
async function warningsAtStart(cache: TokenCache, durableStore: TokenCache): Promise<unknown[]> {
  const warned: unknown[] = [];
  const logger: Logger = { warn: (fields) => void warned.push((fields as { event?: string }).event), info: () => undefined, error: () => undefined, debug: () => undefined };
  const component = mock.createComponent();
  const open = new OpenPlatform({ ...component, baseUrl: mock.url, cache, durableStore, logger });
  await open.close();
  return warned;
}

describe('OpenPlatform durableStore', () => {
  it('warns at start when the durable store is a memcached, and not when only the cache is', async () => {
    const cache = new MemcachedCache(memcached.url);
    const durable = new MemcachedCache(memcached.url);
    try {
      expect(await warningsAtStart(cache, durable)).toEqual(['durable_store.evictable']);
      expect(await warningsAtStart(cache, new MemoryCache())).toEqual([]);
    } finally {
      await Promise.all([cache.close(), durable.close()]);
    }
  });

  it('warns for a memcached store of a class of its own too (a subclass that counts or logs its calls)', async () => {
    class InstrumentedCache extends MemcachedCache {}
    const cache = new MemcachedCache(memcached.url);
    const durable = new InstrumentedCache(memcached.url);
    try {
      expect(await warningsAtStart(cache, durable)).toEqual(['durable_store.evictable']);
    } finally {
      await Promise.all([cache.close(), durable.close()]);
    }
  });
});
