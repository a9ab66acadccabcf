import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OfficialAccount, type TokenCache } from '@wxkit/core';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { eventually } from './helpers.js';

// Issue 11, item 6: a lock write whose answer was lost is cleaned up once the store answers again, and
// a store that hangs costs a caller one store timeout, not one per step of the protocol.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock?.close();
});

/**
 * A MemoryCache behind calls that can be made to hang; `calls` counts what reached it, probes aside.
 * `compareAndSet: false` leaves that method out: a lock is then held for its whole lease (about 35 s), not
 * kept alive with a short one, so only its owner's clean-up removes a lost lock write within seconds.
 */
function hangable(inner = new MemoryCache(), { compareAndSet = true } = {}) {
  const state = { hangAll: false, hangNextAddAfterWriting: false, calls: 0, lostAdd: undefined as string | undefined };
  const never = new Promise<never>(() => undefined);
  const wrap =
    <A extends [string, ...unknown[]], R>(fn: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      if (args[0] !== 'wxkit:probe') state.calls += 1;
      if (state.hangAll) return never;
      return fn(...args);
    };
  const cache: TokenCache = {
    get: wrap((key: string) => inner.get(key)),
    set: wrap((key: string, value: string, ttl: number) => inner.set(key, value, ttl)),
    delete: wrap((key: string) => inner.delete(key)),
    add: wrap(async (key: string, value: string, ttl: number) => {
      const added = await inner.add(key, value, ttl);
      if (state.hangNextAddAfterWriting) {
        // The write reached the store; its answer never comes back.
        state.hangNextAddAfterWriting = false;
        if (added) state.lostAdd = value;
        return never;
      }
      return added;
    }),
    deleteIfEquals: wrap((key: string, expected: string) => inner.deleteIfEquals(key, expected)),
    ...(compareAndSet ? { compareAndSet: wrap((key: string, expected: string, value: string, ttl: number) => inner.compareAndSet(key, expected, value, ttl)) } : {}),
  };
  return { cache, inner, state };
}

describe('item 6: lost lock writes and a hung store', () => {
  it('a SET NX that timed out but reached the store is deleted by its owner once the store answers', async () => {
    const { appId, secret } = mock.createApp();
    const { cache, inner, state } = hangable(new MemoryCache(), { compareAndSet: false });
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, cacheTimeoutMs: 200, logger: false });
    const lockKey = `${app.accessToken.cacheKey}:lock`;
    state.hangNextAddAfterWriting = true;
    const recovered = new Promise((resolve) => app.on('cache.recovered', resolve));
    // The add times out: the store counts as down, and this process fetches through its fallback.
    const token = await app.accessToken.getToken();
    expect(mock.isTokenValid(appId, token)).toBe(true);
    // The lock write that reached the store was this process's own (its owner: host:pid:random).
    expect(state.lostAdd).toMatch(/:\d+:[0-9a-f]{12}$/);
    await recovered;
    // Without the clean-up the lock would stay for its whole lease (about 35 s).
    await eventually(async () => (await inner.get(lockKey)) === undefined, 'the lost lock to be deleted', 5_000);
    // Another process finds no lock, and takes the token this one published once the store was back.
    const other = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: inner, logger: false });
    await eventually(async () => (await other.accessToken.getToken().catch(() => undefined)) !== undefined, 'a token');
    expect(mock.counters(appId).tokenRequests).toBeLessThanOrEqual(2);
    await Promise.all([app.close(), other.close()]);
  });

  it('a hung store: the first call waits one store timeout, later calls none; 1 fetch for 30 calls and sends', async () => {
    const { appId, secret } = mock.createApp();
    const { cache, state } = hangable();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, cacheTimeoutMs: 200, memoMs: 0, logger: false });
    state.hangAll = true;
    const token = await app.accessToken.getToken();
    // One read hung and timed out; the lock, the second read and the write never went to the store (they
    // would make 4 calls at least). The breaker's probe reads the entry's key too, one at a time, a
    // quarter of a second after the failure and less often after each one that hangs: on a loaded machine
    // one may come before the fetch ends, and is no caller's.
    expect(state.calls).toBeLessThan(4);
    const afterFirst = state.calls;
    // Served from memory, without a store call: no timer runs between these calls, so no probe either.
    for (let i = 0; i < 20; i += 1) expect(await app.accessToken.getToken()).toBe(token);
    expect(state.calls).toBe(afterFirst);
    // Sends wait for the network, and the breaker's probes may come meanwhile: fewer store calls than
    // sends says the sends made none (each would make one at least).
    for (let i = 0; i < 10; i += 1) await app.templateMessage.send({ touser: `o${i}`, template_id: 'T', data: {} });
    expect(state.calls - afterFirst).toBeLessThan(10);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(mock.counters(appId).templateSends).toBe(10);
    await app.close();
  });
});
