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

/** What a test does to the store's calls: hold a renewal's answer, fail it, fail a read of a key. */
interface Faults {
  /** Each renewal waits for this before it reaches the store. */
  renewalGate?: Promise<void>;
  /** Renewals reject (a store that did not take them). */
  renewalsFail?: boolean;
  /** Reads of this key reject (another key's failure). */
  failingKey?: string;
}

/** `cache` with its compareAndSet and deleteIfEquals calls counted, or without compareAndSet. */
function counted(memory: MemoryCache, withCompareAndSet: boolean, faults: Faults) {
  let renewals = 0;
  let deletes = 0;
  const cache: TokenCache = {
    get: (key) => (key === faults.failingKey ? Promise.reject(new Error('ECONNRESET')) : memory.get(key)),
    set: memory.set.bind(memory),
    delete: memory.delete.bind(memory),
    add: memory.add.bind(memory),
    deleteIfEquals: (key, expected) => {
      deletes += 1;
      return memory.deleteIfEquals(key, expected);
    },
    ttlMs: memory.ttlMs.bind(memory),
    ...(withCompareAndSet
      ? {
          compareAndSet: async (key: string, expected: string, value: string, ttlSeconds: number) => {
            renewals += 1;
            await faults.renewalGate;
            if (faults.renewalsFail) throw new Error('ETIMEDOUT');
            return memory.compareAndSet(key, expected, value, ttlSeconds);
          },
        }
      : {}),
  };
  return { cache, renewals: () => renewals, deletes: () => deletes };
}

function setUp(options: { withCompareAndSet?: boolean; value?: 'owner' | 'expiry-ms' } = {}) {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date', 'performance'] });
  const memory = new MemoryCache();
  const faults: Faults = {};
  const { cache, renewals, deletes } = counted(memory, options.withCompareAndSet ?? true, faults);
  const log = new Log(false);
  const store = new GuardedStore(cache, 2_000, log, 'wxlock');
  // Two processes: each its own lock object, one store.
  const holder = new RefreshLock(KEY, KEY, log, 'wxlock', options.value);
  const other = new RefreshLock(KEY, KEY, log, 'wxlock', options.value);
  const acquire = async (lock: RefreshLock) => {
    const attempt = await lock.tryAcquire(store, LEASE_MS, KEEP_ALIVE_MS);
    return attempt;
  };
  return { memory, store, holder, other, acquire, renewals, deletes, faults };
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

  it('release waits for a renewal under way: its delete comes after it, and the lock is gone', async () => {
    const { holder, acquire, renewals, deletes, faults, memory } = setUp();
    const handle = await held(await acquire(holder));
    let answer!: () => void;
    faults.renewalGate = new Promise<void>((resolve) => (answer = resolve));
    await vi.advanceTimersByTimeAsync(KEEP_ALIVE_MS / 4 + 1);
    expect(renewals()).toBe(1);
    const releasing = handle.release();
    await vi.advanceTimersByTimeAsync(0);
    // A compare-and-delete sent now could meet the renewal's write (Memcached's CAS: refused).
    expect(deletes()).toBe(0);
    answer();
    await releasing;
    expect(deletes()).toBe(1);
    expect(await memory.get(KEY)).toBeUndefined();
  });

  it("renewals are sent while another key's failure has the store taken for down, and their own failures take it down for nobody", async () => {
    const { holder, acquire, renewals, faults, memory, store } = setUp();
    const handle = await held(await acquire(holder));
    faults.failingKey = 'wechat:access_token:another';
    await expect(store.get('wechat:access_token:another')).rejects.toThrow();
    expect(store.down).toBe(true);
    // Past the short lease: renewed though the process takes the store for down.
    await vi.advanceTimersByTimeAsync(2 * KEEP_ALIVE_MS);
    expect(await memory.get(KEY)).toBe(handle.owner);
    // The key answers again: the breaker's probe finds the store back.
    faults.failingKey = undefined;
    await vi.advanceTimersByTimeAsync(2_000);
    expect(store.down).toBe(false);
    // Renewals the store does not take: the holder's business, not an outage for the process.
    faults.renewalsFail = true;
    const before = renewals();
    await vi.advanceTimersByTimeAsync(KEEP_ALIVE_MS / 4 + 1);
    expect(renewals()).toBe(before + 1);
    expect(store.down).toBe(false);
    // And a holder whose renewal did not land no longer counts on the whole lease.
    expect(handle.maxRemainingMs()).toBe(handle.remainingMs());
    expect(handle.remainingMs()).toBeLessThan(KEEP_ALIVE_MS);
    await handle.release();
  });

  it('a lock outlives one renewal the store did not take', async () => {
    const { holder, other, acquire, faults } = setUp();
    const handle = await held(await acquire(holder));
    faults.renewalsFail = true;
    await vi.advanceTimersByTimeAsync(KEEP_ALIVE_MS / 4 + 1);
    faults.renewalsFail = false;
    await vi.advanceTimersByTimeAsync(2 * KEEP_ALIVE_MS);
    expect(await acquire(other)).toBe('held');
    expect(handle.maxRemainingMs()).toBeGreaterThan(KEEP_ALIVE_MS);
    await handle.release();
  });

  it("renewals wake nobody: MemoryCache reports no write for a value set onto itself, and one for another value", async () => {
    const { holder, acquire, memory } = setUp();
    let woken = 0;
    const stop = memory.watch(KEY, () => (woken += 1));
    const handle = await held(await acquire(holder));
    expect(woken).toBe(1);
    await vi.advanceTimersByTimeAsync(2 * KEEP_ALIVE_MS);
    expect(woken).toBe(1);
    expect(await memory.compareAndSet(KEY, handle.owner, 'another owner', 10)).toBe(true);
    expect(woken).toBe(2);
    stop();
    await handle.release();
  });
});
