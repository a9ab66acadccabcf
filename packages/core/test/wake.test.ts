import { getEventListeners } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { FileCache, MemoryCache, OfficialAccount, easyWeChat4, type TokenCache } from '../src/index.js';
import { pollWithBackoff } from '../src/token/refresher.js';
import { holdingDispatcher } from './helpers.js';

// Issue 14: a process waiting for another's refresh wakes when the store says the entry was written,
// instead of polling every 10–500 ms. These tests count attempts, reads and wake-ups, never time.

describe('pollWithBackoff with a watch', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('looks again as soon as the watch fires, with no pause timer run', async () => {
    vi.useFakeTimers();
    let notify: (() => void) | undefined;
    let unwatched = 0;
    let attempts = 0;
    const polling = pollWithBackoff(
      60_000,
      async () => {
        attempts += 1;
        return 'written';
      },
      (onChange) => {
        notify = onChange;
        return () => (unwatched += 1);
      },
    );
    // No timer is advanced: only the notification can end the pause.
    notify!();
    expect(await polling).toBe('written');
    expect(attempts).toBe(1);
    expect(unwatched).toBe(1);
  });

  it('a watch that fires without end gets a few quick looks, then one look per 5 ms, not a store round per notification', async () => {
    // The clock is the test's: looks take no time, and the budget passes only as the timers are run.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    let attempts = 0;
    let notify: (() => void) | undefined;
    const budgetMs = 100;
    const polling = pollWithBackoff(
      budgetMs,
      async () => {
        attempts += 1;
        // Every look makes the store report another write (a busy key, a faulty adapter).
        queueMicrotask(() => notify?.());
        return undefined;
      },
      (onChange) => {
        notify = onChange;
        return () => (notify = undefined);
      },
    );
    notify!();
    await vi.advanceTimersByTimeAsync(budgetMs + 5);
    expect(await polling).toBeUndefined();
    // Two quick looks, then one per 5 ms of the budget: not two per 5 ms, as when the count of quick
    // looks started again after each pause.
    expect(attempts).toBeGreaterThanOrEqual(budgetMs / 5);
    expect(attempts).toBeLessThanOrEqual(budgetMs / 5 + 2);
  });

  it('a write reported while an attempt runs starts the next attempt without a pause', async () => {
    vi.useFakeTimers();
    let notify: (() => void) | undefined;
    let attempts = 0;
    const polling = pollWithBackoff(
      60_000,
      async () => {
        attempts += 1;
        if (attempts === 1) {
          notify!(); // the holder wrote between our read and the end of this attempt
          return undefined;
        }
        return 'written';
      },
      (onChange) => {
        notify = onChange;
        return () => undefined;
      },
    );
    notify!();
    expect(await polling).toBe('written');
    expect(attempts).toBe(2);
  });

  it('without a watch, nothing happens until the pause timer runs', async () => {
    vi.useFakeTimers();
    let attempts = 0;
    const polling = pollWithBackoff(60_000, async () => {
      attempts += 1;
      return 'written';
    });
    await Promise.resolve();
    expect(attempts).toBe(0);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await polling).toBe('written');
    expect(attempts).toBe(1);
  });

  it.each([
    ['ends at once, with no pause timer run, when its end signal aborts (the client closed)', false],
    ['returns at once, with no look and no pause timer run, when its end signal was aborted before it began', true],
  ])('%s', async (_, abortedBefore) => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const controller = new AbortController();
    if (abortedBefore) controller.abort();
    let attempts = 0;
    const polling = pollWithBackoff(
      60_000,
      async () => {
        attempts += 1;
        return undefined;
      },
      undefined,
      controller.signal,
    );
    controller.abort();
    // setImmediate is not faked: it runs once the abort's consequences have settled, timers aside.
    const outcome = await Promise.race([polling.then(() => 'ended'), new Promise((resolve) => setImmediate(() => resolve('still waiting')))]);
    expect(outcome).toBe('ended');
    expect(attempts).toBe(0);
  });

  it('a write reported during a pause brings one look forward, not two', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const controller = new AbortController();
    let attempts = 0;
    let notify: (() => void) | undefined;
    const polling = pollWithBackoff(
      60_000,
      async () => {
        attempts += 1;
        return undefined;
      },
      (onChange) => {
        notify = onChange;
        return () => undefined;
      },
      controller.signal,
    );
    await Promise.resolve();
    notify!();
    await new Promise((resolve) => setImmediate(resolve));
    expect(attempts).toBe(1);
    controller.abort();
    expect(await polling).toBeUndefined();
    expect(attempts).toBe(1);
  });

  it('returns when its budget ends, not a pause later', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    let ended = false;
    const polling = pollWithBackoff(1_000, async () => undefined, () => () => undefined).then((value) => {
      ended = true;
      return value;
    });
    // Watched pace: 0.5 s, then 0.75 s, 1.1 s… each ± 25 %: the pause that crosses the budget is cut at it.
    await vi.advanceTimersByTimeAsync(1_000);
    expect(ended).toBe(true);
    expect(await polling).toBeUndefined();
  });

  it('leaves no listener on its end signal once it returns', async () => {
    const controller = new AbortController();
    for (let i = 0; i < 3; i += 1) {
      // The watch reports a write at once: no pause, a look, the value.
      const watch = (onChange: () => void) => (onChange(), () => undefined);
      expect(await pollWithBackoff(60_000, async () => 'written', watch, controller.signal)).toBe('written');
    }
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });

  it('without a watch, looks soon and often at first (a holder’s fetch takes tens of ms), then ever less often', async () => {
    vi.useFakeTimers();
    let attempts = 0;
    const polling = pollWithBackoff(60_000, async () => {
      attempts += 1;
      return undefined;
    });
    // The first pause is 10 ms ± 25 %: a waiter whose holder wrote after 13 ms has looked again by then.
    await vi.advanceTimersByTimeAsync(13);
    expect(attempts).toBe(1);
    // Growing by 30 % a look: 4–6 looks in the first 100 ms (it was 3 at 20 ms growing by half), so a
    // look comes at most about a quarter of the wait so far after the write.
    await vi.advanceTimersByTimeAsync(87);
    expect(attempts).toBeGreaterThanOrEqual(4);
    expect(attempts).toBeLessThanOrEqual(6);
    // Then slower: no more than 20 looks in the first 2 s, and the pause stops growing at 500 ms.
    await vi.advanceTimersByTimeAsync(1_900);
    expect(attempts).toBeLessThanOrEqual(20);
    const at2s = attempts;
    await vi.advanceTimersByTimeAsync(10_000);
    expect(attempts - at2s).toBeGreaterThanOrEqual(16);
    expect(attempts - at2s).toBeLessThanOrEqual(30);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(await polling).toBeUndefined();
  });
});

/**
 * A store seen through one client: its calls on `entryKey` and its marker and lock, and how often a
 * watch told it of a write. `afterLockAdd` runs once the store answered a lock `add`, before the client
 * sees the answer; `beforeLockRelease` runs before a release of the lock reaches the store.
 */
function counting(
  cache: TokenCache,
  withWatch = true,
  afterLockAdd?: (won: boolean) => Promise<void>,
  beforeLockRelease?: () => Promise<void>,
) {
  const counts = { entryReads: 0, entryAdds: 0, markerReads: 0, markerDeletes: 0, lockAdds: 0, lockReleases: 0, woken: 0, watches: 0 };
  let entryKey = '';
  const wrapped: TokenCache = {
    get: (key) => {
      if (key === entryKey) counts.entryReads += 1;
      if (key === `${entryKey}:failed`) counts.markerReads += 1;
      return cache.get(key);
    },
    set: (key, value, ttl) => cache.set(key, value, ttl),
    delete: (key) => {
      if (key === `${entryKey}:failed`) counts.markerDeletes += 1;
      return cache.delete(key);
    },
    add: async (key, value, ttl) => {
      if (key === entryKey) counts.entryAdds += 1;
      if (key !== `${entryKey}:lock`) return cache.add!(key, value, ttl);
      counts.lockAdds += 1;
      const won = await cache.add!(key, value, ttl);
      await afterLockAdd?.(won);
      return won;
    },
    deleteIfEquals: async (key, expected) => {
      if (key === `${entryKey}:lock`) {
        counts.lockReleases += 1;
        await beforeLockRelease?.();
      }
      return cache.deleteIfEquals!(key, expected);
    },
    compareAndSet: (key, expected, value, ttl) => cache.compareAndSet!(key, expected, value, ttl),
    ...(withWatch && cache.watch
      ? {
          watch: (key: string, onChange: () => void) => {
            counts.watches += 1;
            return cache.watch!(key, () => {
              counts.woken += 1;
              onChange();
            });
          },
        }
      : {}),
  };
  return { cache: wrapped, counts, watchKey: (key: string) => (entryKey = key) };
}

let mock: MockWeChat;
const dir = mkdtempSync(join(tmpdir(), 'wxkit-wake-'));
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
  rmSync(dir, { recursive: true, force: true });
});

const stores: Record<string, () => [TokenCache, TokenCache]> = {
  MemoryCache: () => {
    const shared = new MemoryCache();
    return [shared, shared];
  },
  'FileCache (two instances on one directory)': () => {
    const sub = mkdtempSync(join(dir, 'd'));
    return [new FileCache({ dir: sub }), new FileCache({ dir: sub })];
  },
};

describe('a waiter of a cold fleet wakes on the holder’s write', () => {
  it.each(Object.keys(stores))('%s', async (name) => {
    const [holderStore, waiterStore] = stores[name]!();
    const { appId, secret } = mock.createApp();
    const gate = holdingDispatcher('/cgi-bin/token');
    const waiterView = counting(waiterStore);
    const holderView = counting(holderStore);
    const options = { appId, secret, baseUrl: mock.url, logger: false as const, tokenEndpoint: 'classic' as const, fallbackDir: false as const };
    const holder = new OfficialAccount({ ...options, cache: holderView.cache, dispatcher: gate.agent });
    const waiter = new OfficialAccount({ ...options, cache: waiterView.cache });
    waiterView.watchKey(waiter.accessToken.cacheKey);
    holderView.watchKey(holder.accessToken.cacheKey);

    // The holder takes the lock, and its token request waits at the gate.
    const held = holder.accessToken.getToken();
    await vi.waitFor(() => expect(gate.arrived()).toBe(1));
    // The waiter finds the lock taken and waits for the holder.
    const waited = waiter.accessToken.getToken();
    await vi.waitFor(() => expect(waiterView.counts.lockAdds).toBe(1));
    gate.release();

    const [token, seen] = await Promise.all([held, waited]);
    expect(seen).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    // Woken by the write, the waiter read the entry once more: its first read (a miss) and the read after
    // the wake-up. Its watch was armed before its lock attempt, so it took the marker it read before that
    // attempt as its view, and read neither the marker nor the entry again before it waited.
    expect(waiterView.counts.woken).toBeGreaterThanOrEqual(1);
    expect(waiterView.counts.entryReads).toBe(2);
    expect(waiterView.counts.markerReads).toBe(1);
    expect(waiterView.counts.lockAdds).toBe(1);
    // The holder read the entry twice (before and under the lock), wrote it with one add and no read
    // in between (it saw it absent under the lock), and deleted no failure marker (it saw none).
    expect(holderView.counts.entryReads).toBe(2);
    expect(holderView.counts.entryAdds).toBe(1);
    expect(holderView.counts.markerReads).toBe(2);
    expect(holderView.counts.markerDeletes).toBe(0);
    await Promise.all([holder.close(), waiter.close(), gate.agent.close(), holderStore.close?.(), waiterStore === holderStore ? undefined : waiterStore.close?.()]);
  });

  it.each(Object.keys(stores))('%s: a holder that writes and releases between the waiter’s lock attempt and its wait still wakes it', async (name) => {
    const [holderStore, waiterStore] = stores[name]!();
    const { appId, secret } = mock.createApp();
    const gate = holdingDispatcher('/cgi-bin/token');
    const options = { appId, secret, baseUrl: mock.url, logger: false as const, tokenEndpoint: 'classic' as const, fallbackDir: false as const };
    const holder = new OfficialAccount({ ...options, cache: holderStore, dispatcher: gate.agent });
    const held = holder.accessToken.getToken();
    // The waiter's lock `add` is answered "held", and the client hears of it only once the holder has
    // fetched, written its token and released the lock: every write of the holder falls in that gap.
    const waiterView = counting(waiterStore, true, async (won) => {
      if (won) return;
      gate.release();
      await held;
    });
    const waiter = new OfficialAccount({ ...options, cache: waiterView.cache });
    waiterView.watchKey(waiter.accessToken.cacheKey);
    await vi.waitFor(() => expect(gate.arrived()).toBe(1));

    const [token, seen] = await Promise.all([held, waiter.accessToken.getToken()]);
    expect(seen).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    // The writes in the gap were reported (the watch was armed before the attempt), so the waiter
    // looked at once: its first read and one more, and not a poll's pause later, unwoken.
    expect(waiterView.counts.woken).toBeGreaterThanOrEqual(1);
    expect(waiterView.counts.entryReads).toBe(2);
    expect(waiterView.counts.lockAdds).toBe(1);
    await Promise.all([holder.close(), waiter.close(), gate.agent.close(), holderStore.close?.(), waiterStore === holderStore ? undefined : waiterStore.close?.()]);
  });

  it.each(Object.keys(stores))("%s: a follower of a key that holds another program's value wakes on the fleet's write beside it ({key}:wxkit)", async (name) => {
    const [ownerStore, followerStore] = stores[name]!();
    const { appId, secret } = mock.createApp();
    const schema = easyWeChat4();
    const options = { appId, baseUrl: mock.url, logger: false as const, tokenEndpoint: 'classic' as const, fallbackDir: false as const, schema };
    // The PHP side keeps a value there that wxkit cannot read: the fleet's token goes beside it.
    const key = schema.accessTokenKey({ kind: 'official_account', appId, endpoint: 'classic', secret });
    await ownerStore.set(key, 'O:8:"stdClass":0:{}', 600);
    const followerView = counting(followerStore);
    const follower = new OfficialAccount({ ...options, secret, cache: followerView.cache, refresh: 'never' });
    const owner = new OfficialAccount({ ...options, secret, cache: ownerStore });
    const followed = follower.accessToken.getToken();
    // The follower found nothing beside the other program's value, and waits with its watch armed.
    await vi.waitFor(() => expect(followerView.counts.watches).toBeGreaterThan(0));
    const token = await owner.accessToken.getToken();
    expect(await followed).toBe(token);
    // Told of the write beside the key: not a poll's pause later, unwoken.
    expect(followerView.counts.woken).toBeGreaterThanOrEqual(1);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(await ownerStore.get(key)).toBe('O:8:"stdClass":0:{}');
    await Promise.all([owner.close(), follower.close(), ownerStore.close?.(), followerStore === ownerStore ? undefined : followerStore.close?.()]);
  });

  it('a store without watch still hands the waiter the holder’s token, by polling', async () => {
    const shared = new MemoryCache();
    const { appId, secret } = mock.createApp();
    const gate = holdingDispatcher('/cgi-bin/token');
    const waiterView = counting(shared, false);
    const options = { appId, secret, baseUrl: mock.url, logger: false as const, tokenEndpoint: 'classic' as const, fallbackDir: false as const };
    const holder = new OfficialAccount({ ...options, cache: shared, dispatcher: gate.agent });
    const waiter = new OfficialAccount({ ...options, cache: waiterView.cache });
    waiterView.watchKey(waiter.accessToken.cacheKey);
    const held = holder.accessToken.getToken();
    await vi.waitFor(() => expect(gate.arrived()).toBe(1));
    const waited = waiter.accessToken.getToken();
    await vi.waitFor(() => expect(waiterView.counts.lockAdds).toBeGreaterThanOrEqual(1));
    gate.release();
    const [token, seen] = await Promise.all([held, waited]);
    expect(seen).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(waiterView.counts.woken).toBe(0);
    await Promise.all([holder.close(), waiter.close(), gate.agent.close()]);
  });
});

describe('the holder of the lock releases it before it hands out the token', () => {
  it('getToken() resolves only once the release has ended: a process that exits right after leaves no lock behind', async () => {
    const shared = new MemoryCache();
    const { appId, secret } = mock.createApp();
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const view = counting(shared, true, undefined, () => gate);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: view.cache, logger: false, tokenEndpoint: 'classic', fallbackDir: false });
    view.watchKey(app.accessToken.cacheKey);
    const lockKey = `${app.accessToken.cacheKey}:lock`;
    let resolved = false;
    const pending = app.accessToken.getToken().then((token) => {
      resolved = true;
      return token;
    });
    // The entry is written and the release has started: waiters elsewhere already have the token.
    await vi.waitFor(() => expect(view.counts.lockReleases).toBe(1));
    expect(await shared.get(app.accessToken.cacheKey)).toBeDefined();
    // Every microtask and this turn's callbacks have run: a holder that did not wait would have resolved.
    await new Promise((resolve) => setImmediate(resolve));
    expect(resolved).toBe(false);
    open();
    await pending;
    expect(await shared.get(lockKey)).toBeUndefined();
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await app.close();
  });
});
