import { afterEach, describe, expect, it, vi } from 'vitest';
import { MemoryCache, type TokenCache } from '../src/index.js';
import { Log } from '../src/logger.js';
import { GuardedStore } from '../src/store.js';
import { RefreshLock, type LockHandle } from '../src/token/refresh-lock.js';

// A refresh lock held with a short lease that its holder renews, up to the whole lease: a holder that
// works is never overtaken before the lease's end, one that died holds up the others for the short
// lease only. The clock is the test's (MemoryCache's TTLs, the renewals' timers, the lease's clock).

const LEASE_MS = 35_000;
const KEEP_ALIVE_MS = 7_000;
const KEY = 'wechat:access_token:wxlock:lock';

/** `cache` with its compareAndSet calls counted, or without one. */
function counted(memory: MemoryCache, withCompareAndSet = true): { cache: TokenCache; renewals: () => number } {
  let renewals = 0;
  const cache: TokenCache = {
    get: memory.get.bind(memory),
    set: memory.set.bind(memory),
    delete: memory.delete.bind(memory),
    add: memory.add.bind(memory),
    deleteIfEquals: memory.deleteIfEquals.bind(memory),
    ttlMs: memory.ttlMs.bind(memory),
    ...(withCompareAndSet
      ? {
          compareAndSet: (key: string, expected: string, value: string, ttlSeconds: number) => {
            renewals += 1;
            return memory.compareAndSet(key, expected, value, ttlSeconds);
          },
        }
      : {}),
  };
  return { cache, renewals: () => renewals };
}

function setUp(options: { withCompareAndSet?: boolean; value?: 'owner' | 'expiry-ms' } = {}) {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date', 'performance'] });
  const memory = new MemoryCache();
  const { cache, renewals } = counted(memory, options.withCompareAndSet);
  const log = new Log(false);
  const store = new GuardedStore(cache, 2_000, log, 'wxlock');
  // Two processes: each its own lock object, one store.
  const holder = new RefreshLock(KEY, KEY, log, 'wxlock', options.value);
  const other = new RefreshLock(KEY, KEY, log, 'wxlock', options.value);
  const acquire = async (lock: RefreshLock) => {
    const attempt = await lock.tryAcquire(store, LEASE_MS, KEEP_ALIVE_MS);
    return attempt;
  };
  return { memory, store, holder, other, acquire, renewals };
}

async function held(attempt: Awaited<ReturnType<RefreshLock['tryAcquire']>>): Promise<LockHandle> {
  if (typeof attempt === 'string') throw new Error(`expected the lock, got ${attempt}`);
  return attempt;
}

describe('a refresh lock kept alive', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('a holder still working is not overtaken past the short lease, and the lock ends with the whole lease', async () => {
    const { holder, other, acquire, renewals } = setUp();
    const handle = await held(await acquire(holder));
    // Far past the short lease, still inside the whole one: renewed, so still held.
    await vi.advanceTimersByTimeAsync(30_000);
    expect(await acquire(other)).toBe('held');
    expect(renewals()).toBeGreaterThanOrEqual(4);
    expect(handle.remainingMs()).toBeGreaterThan(0);
    expect(handle.maxRemainingMs()).toBeLessThanOrEqual(LEASE_MS - 30_000);
    // A holder that never lets go (hung) holds no longer than the whole lease.
    await vi.advanceTimersByTimeAsync(LEASE_MS - 30_000 + 1);
    expect(handle.remainingMs()).toBe(0);
    const next = await held(await acquire(other));
    await next.release();
    await handle.release();
  });

  it('a holder that died (its timers gone with its process) holds up the others for the short lease, not the whole one', async () => {
    const { holder, other, acquire } = setUp();
    await held(await acquire(holder));
    // The process is gone: nothing of it runs any more, its renewals included.
    vi.clearAllTimers();
    await vi.advanceTimersByTimeAsync(KEEP_ALIVE_MS - 100);
    expect(await acquire(other)).toBe('held');
    await vi.advanceTimersByTimeAsync(200);
    const next = await held(await acquire(other));
    await next.release();
  });

  it('release stops the renewals: a released lock is never written again', async () => {
    const { holder, other, acquire, renewals, memory } = setUp();
    const handle = await held(await acquire(holder));
    await vi.advanceTimersByTimeAsync(KEEP_ALIVE_MS);
    const before = renewals();
    expect(before).toBeGreaterThan(0);
    await handle.release();
    expect(await memory.get(KEY)).toBeUndefined();
    await vi.advanceTimersByTimeAsync(LEASE_MS);
    expect(renewals()).toBe(before);
    await (await held(await acquire(other))).release();
  });

  it('a lock another took after the short lease ran out (a stalled holder) is left to it: no renewal wins it back', async () => {
    const { holder, other, acquire, memory } = setUp();
    const handle = await held(await acquire(holder));
    // The holder's process is stalled: its renewal timer does not run while the lease runs out.
    memory.delete(KEY);
    const taken = await held(await acquire(other));
    // Its next renewal finds another owner: the holder knows at once that the lock is no longer its own.
    await vi.advanceTimersByTimeAsync(KEEP_ALIVE_MS / 3 + 1);
    expect(handle.remainingMs()).toBe(0);
    expect(handle.maxRemainingMs()).toBe(0);
    expect(await memory.get(KEY)).toBe(taken.owner);
    await handle.release();
    expect(await memory.get(KEY)).toBe(taken.owner);
    await taken.release();
  });

  it.each([
    ['a store without compareAndSet', { withCompareAndSet: false }],
    ["jedis-lock's value (its expiry, which a Java peer reads)", { value: 'expiry-ms' as const }],
  ])('%s: the whole lease at once, never renewed', async (_, options) => {
    const { holder, other, acquire, renewals } = setUp(options);
    const handle = await held(await acquire(holder));
    vi.clearAllTimers();
    await vi.advanceTimersByTimeAsync(LEASE_MS - 1_000);
    expect(await acquire(other)).toBe('held');
    expect(renewals()).toBe(0);
    expect(handle.maxRemainingMs()).toBe(handle.remainingMs());
    await handle.release();
  });
});
