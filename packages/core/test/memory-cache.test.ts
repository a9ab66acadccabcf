import { describe, expect, it } from 'vitest';
import { describeTokenCache } from '@wxkit/testing/suite';
import { CacheError, MemoryCache, type TokenCache } from '../src/index.js';

// The suite wants several clients of one store, each closed on its own. A MemoryCache *is* its store,
// so each client here is a thin handle on one shared instance; MemoryCache's own close() is tested below.
const store = new MemoryCache();
class Handle implements TokenCache {
  #closed = false;
  #use(): MemoryCache {
    if (this.#closed) throw new CacheError('handle closed');
    return store;
  }
  get = async (key: string) => this.#use().get(key);
  set = async (key: string, value: string, ttl: number) => this.#use().set(key, value, ttl);
  delete = async (key: string) => this.#use().delete(key);
  add = async (key: string, value: string, ttl: number) => this.#use().add(key, value, ttl);
  deleteIfEquals = async (key: string, expected: string) => this.#use().deleteIfEquals(key, expected);
  compareAndSet = async (key: string, expected: string, value: string, ttl: number) => this.#use().compareAndSet(key, expected, value, ttl);
  ttlMs = async (key: string) => this.#use().ttlMs(key);
  watch = (key: string, onChange: () => void) => this.#use().watch(key, onChange);
  close = async () => {
    this.#closed = true;
  };
}

describeTokenCache('MemoryCache', { create: () => new Handle(), supports: { compareAndSet: true, ttlMs: true, watch: true } });

describe('MemoryCache', () => {
  it('expires entries by its clock', async () => {
    let now = 1_000_000;
    const cache = new MemoryCache({ now: () => now });
    await cache.set('k', 'v', 10);
    now += 9_999;
    expect(await cache.get('k')).toBe('v');
    now += 1;
    expect(await cache.get('k')).toBeUndefined();
    expect(await cache.add('k', 'again', 10)).toBe(true);
  });

  it('drops expired entries it is never asked for again, so it holds about the accounts used lately', async () => {
    let now = 1_000_000;
    const cache = new MemoryCache({ now: () => now });
    for (let round = 0; round < 10; round += 1) {
      // 3,000 accounts a round, each written once and never read again, the last round's expired.
      for (let account = 0; account < 3_000; account += 1) await cache.set(`wechat:access_token:r${round}a${account}`, 'v', 10);
      now += 11_000;
    }
    // Without the sweep it would hold all 30,000.
    expect(cache.size).toBeLessThanOrEqual(2 * 3_000 + 1);
    // What is live stays.
    await cache.set('live', 'v', 60);
    for (let account = 0; account < 5_000; account += 1) await cache.add(`wechat:jsapi_ticket:a${account}`, 'v', 10);
    expect(await cache.get('live')).toBe('v');
    expect(await cache.get('wechat:jsapi_ticket:a0')).toBe('v');
  });

  it('rejects a TTL no store can honour', async () => {
    const cache = new MemoryCache();
    await expect(cache.set('k', 'v', 0)).rejects.toThrow(RangeError);
    await expect(cache.add('k', 'v', Number.NaN)).rejects.toThrow(/ttlSeconds/);
  });

  it('after close(), every method rejects with ERR_WXKIT_CACHE', async () => {
    const cache = new MemoryCache();
    await cache.set('k', 'v', 60);
    await cache.close();
    for (const call of [cache.get('k'), cache.set('k', 'v', 1), cache.delete('k'), cache.add('k', 'v', 1), cache.deleteIfEquals('k', 'v')]) {
      await expect(call).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    }
    await expect(cache.close()).resolves.toBeUndefined();
  });
});
