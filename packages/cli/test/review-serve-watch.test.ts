import { describe, expect, it } from 'vitest';
import { MemoryCache } from '@wxkit/core';
import { ServiceMetrics } from '../src/serve-metrics.js';

// Review: `wxkit serve` hands its clients a counting wrapper of the store. The wrapper copies get/set/delete,
// add, deleteIfEquals, compareAndSet and ttlMs, but not watch() (nor close): the token service, the very
// deployment with many instances waiting on one refresher, never gets write notifications and its waiters
// poll at the 20–500 ms pace instead of waking on the holder's PUBLISH.
describe('review: serve store wrapper', () => {
  it('keeps the store watch (FAILS: dropped)', () => {
    const cache = new MemoryCache();
    expect(typeof cache.watch).toBe('function');
    const counted = new ServiceMetrics().countingCache(cache, new Map(), new Map());
    expect(typeof counted.watch).toBe('function');
  });
});
