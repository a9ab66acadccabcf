import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount } from '../src/index.js';
import { recordingLogger } from './helpers.js';

// A refresh lock the store keeps without expiry (a key left by hand, a PERSIST, a store that drops TTLs)
// was waited for by every call, each failing after lockWaitMs: the fleet never refreshed again. Once a
// wait for it runs out, it is taken over by compare-and-set, and the token fetched once, if it held the
// same value a whole lease before (no live holder's lock does). Short deadlines make a short lease:
// 2 × 100 ms + 7 × 100 ms + 1 s; the waits last 4.5 s.
let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

/** A MemoryCache that can hold a key without expiry, as Redis does after PERSIST; any write gives it one again. */
class Persisting extends MemoryCache {
  readonly #endless = new Set<string>();
  /** Every key written by `add` (how locks are taken) is kept without expiry: a store that drops TTLs. */
  dropsTtlOfAdd = false;

  override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    const added = await super.add(key, value, ttlSeconds);
    if (added && this.dropsTtlOfAdd) this.#endless.add(key);
    return added;
  }

  async persist(key: string, value: string): Promise<void> {
    await super.set(key, value, 10 * 365 * 86_400);
    this.#endless.add(key);
  }

  override async ttlMs(key: string): Promise<number | undefined> {
    const ttl = await super.ttlMs(key);
    return ttl !== undefined && this.#endless.has(key) ? Number.POSITIVE_INFINITY : ttl;
  }

  override async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    this.#endless.delete(key);
    return super.set(key, value, ttlSeconds);
  }

  override async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    const written = await super.compareAndSet(key, expected, value, ttlSeconds);
    if (written) this.#endless.delete(key);
    return written;
  }

  override async delete(key: string): Promise<void> {
    this.#endless.delete(key);
    return super.delete(key);
  }

  override async deleteIfEquals(key: string, expected: string): Promise<boolean> {
    const deleted = await super.deleteIfEquals(key, expected);
    if (deleted) this.#endless.delete(key);
    return deleted;
  }
}

const QUICK = { timeoutMs: 100, cacheTimeoutMs: 100, lockWaitMs: 4_500 };

async function lockedApp(lock: (cache: Persisting, key: string) => Promise<void>) {
  const { appId, secret } = mock.createApp();
  const cache = new Persisting();
  const logger = recordingLogger();
  const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, ...QUICK });
  const lockKey = `${app.accessToken.cacheKey}:lock`;
  await lock(cache, lockKey);
  return { appId, secret, app, cache, lockKey, logger };
}

describe('a refresh lock the store keeps without expiry', () => {
  it('is taken over once a wait for it runs out: one fetch for every caller, a warning, the lock released', async () => {
    const { appId, app, cache, lockKey, logger } = await lockedApp((cache, key) => cache.persist(key, 'left-by-hand'));
    const tokens = await Promise.all(Array.from({ length: 5 }, () => app.accessToken.getToken()));
    expect(new Set(tokens).size).toBe(1);
    expect(mock.isTokenValid(appId, tokens[0]!)).toBe(true);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(logger.lines.filter((line) => (line.fields as { event: string }).event === 'lock.taken_over')).toEqual([
      expect.objectContaining({ level: 'warn', fields: expect.objectContaining({ reason: 'no_expiry' }) }),
    ]);
    expect(await cache.get(lockKey)).toBeUndefined();
    await app.close();
  }, 20_000);

  it('one with an expiry, however far, is waited for as before: the wait runs out, WeChat is not asked', async () => {
    const { appId, app, cache, lockKey, logger } = await lockedApp((cache, key) => cache.set(key, 'a-long-lease', 10 * 365 * 86_400));
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
    expect(mock.counters(appId).tokenRequests).toBe(0);
    expect(await cache.get(lockKey)).toBe('a-long-lease');
    expect(logger.lines.map((line) => (line.fields as { event: string }).event)).not.toContain('lock.taken_over');
    await app.close();
  }, 20_000);

  it('two clients that wait for it: one takes it over, and WeChat is asked once', async () => {
    const { appId, secret, app, cache, lockKey } = await lockedApp((cache, key) => cache.persist(key, 'left-by-hand'));
    const other = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, ...QUICK });
    const outcomes = await Promise.all([app, other].map((client) => client.accessToken.getToken().then((token) => token, (error: { code: string }) => error.code)));
    // The one whose compare-and-set lost fails as any wait that ran out does; its next call finds the token.
    const token = outcomes.find((outcome) => outcome !== 'ERR_WXKIT_NO_TOKEN');
    expect(mock.isTokenValid(appId, token!)).toBe(true);
    expect(outcomes.every((outcome) => outcome === token || outcome === 'ERR_WXKIT_NO_TOKEN')).toBe(true);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(await other.accessToken.getToken()).toBe(token);
    expect(await app.accessToken.getToken()).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(await cache.get(lockKey)).toBeUndefined();
    await Promise.all([app.close(), other.close()]);
  }, 20_000);


  it("a live holder's lock on a store that drops every lock's TTL is not taken over by a wait shorter than a lease: the waiter fails as any wait that ran out", async () => {
    // The holder's fetch hangs until its timeout, twice (200 ms each try); the waiter gives up after 300 ms.
    const { appId, secret } = mock.createApp();
    const cache = new Persisting();
    cache.dropsTtlOfAdd = true;
    const logger = recordingLogger();
    const holder = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, timeoutMs: 200 });
    const waiter = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, timeoutMs: 200, lockWaitMs: 300 });
    mock.injectFault({ kind: 'hang', path: 'cgi-bin/stable_token', times: 2 });
    const first = holder.accessToken.getToken().then((token) => token, (error: { code: string }) => error.code);
    await vi.waitFor(() => expect(mock.counters(appId).tokenRequests).toBe(1));
    await expect(waiter.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
    expect(logger.lines.map((line) => (line.fields as { event: string }).event)).not.toContain('lock.taken_over');
    await first;
    await Promise.all([holder.close(), waiter.close()]);
  });
});
