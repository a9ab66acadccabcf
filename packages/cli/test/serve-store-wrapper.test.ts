import { describe, expect, it } from 'vitest';
import { CacheError, MemoryCache } from '@wxkit/core';
import { ServiceMetrics } from '../src/serve-metrics.js';

// `wxkit serve` hands its clients a counting wrapper of the store. It must keep the store's optional
// methods: without watch() the instances waiting on another's refresh poll instead of waking on its write.
describe('the store wrapper of wxkit serve', () => {
  it("passes the store's write notifications through", async () => {
    const cache = new MemoryCache();
    const counted = new ServiceMetrics().countingCache(cache, new Map([['k', 'app']]), new Map());
    const { watch } = counted;
    expect(typeof watch).toBe('function');
    let woken = 0;
    const stop = watch!('k', () => (woken += 1));
    await cache.set('k', 'v', 60);
    await counted.set('k', 'w', 60);
    await new Promise<void>((resolve) => queueMicrotask(resolve));
    expect(woken).toBe(2);
    stop();
    await cache.set('k', 'x', 60);
    await new Promise<void>((resolve) => queueMicrotask(resolve));
    expect(woken).toBe(2);
  });

  it('closes the store it wraps', async () => {
    const cache = new MemoryCache();
    const counted = new ServiceMetrics().countingCache(cache, new Map(), new Map());
    const { close } = counted;
    expect(typeof close).toBe('function');
    await close!();
    await expect(cache.get('k')).rejects.toBeInstanceOf(CacheError);
  });
});
