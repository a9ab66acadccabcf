import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount } from '../src/index.js';
import { recordingLogger, rejection } from './helpers.js';

// A refresh lock the store keeps without expiry (a key left by hand, a PERSIST, a store that drops TTLs)
// was waited for by every call, each failing after lockWaitMs: the fleet never refreshed again. A wait
// that runs out on one notes its value; one that runs out on the same value 10 minutes later (the
// client's clock), longer than any holder's lease, takes it over by compare-and-set and fetches once.
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

const TEN_MINUTES = 10 * 60_000;

async function lockedApp(lock: (cache: Persisting, key: string) => Promise<void>) {
  const { appId, secret } = mock.createApp();
  const cache = new Persisting();
  const logger = recordingLogger();
  const clock = { now: Date.now() };
  const client = (log: typeof logger | false) => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: log, lockWaitMs: 300, now: () => clock.now });
  const app = client(logger);
  const lockKey = `${app.accessToken.cacheKey}:lock`;
  await lock(cache, lockKey);
  return { appId, secret, app, cache, lockKey, logger, clock, client };
}

const events = (logger: ReturnType<typeof recordingLogger>) => logger.lines.map((line) => (line.fields as { event: string }).event);

describe('a refresh lock the store keeps without expiry', () => {
  it('is noted at the end of a wait, and taken over by one that ends on it 10 minutes later: one fetch for every caller, a warning, the lock released', async () => {
    const { appId, app, cache, lockKey, logger, clock } = await lockedApp((cache, key) => cache.persist(key, 'left-by-hand'));
    const first = await rejection(app.accessToken.getToken());
    expect(first).toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN', message: expect.stringContaining('which the store keeps without expiry (left-by-hand)') });
    expect(mock.counters(appId).tokenRequests).toBe(0);
    clock.now += TEN_MINUTES - 1_000;
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
    expect(mock.counters(appId).tokenRequests).toBe(0);
    clock.now += 1_000;
    const tokens = await Promise.all(Array.from({ length: 5 }, () => app.accessToken.getToken()));
    expect(new Set(tokens).size).toBe(1);
    expect(mock.isTokenValid(appId, tokens[0]!)).toBe(true);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(logger.lines.filter((line) => (line.fields as { event: string }).event === 'lock.taken_over')).toEqual([
      expect.objectContaining({ level: 'warn', fields: expect.objectContaining({ reason: 'no_expiry' }) }),
    ]);
    expect(await cache.get(lockKey)).toBeUndefined();
    await app.close();
  });

  it('one with an expiry, however far, is waited for as before, 10 minutes apart or not: WeChat is not asked', async () => {
    const { appId, app, cache, lockKey, logger, clock } = await lockedApp((cache, key) => cache.set(key, 'a-long-lease', 10 * 365 * 86_400));
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN', message: expect.stringContaining('raise lockWaitMs') });
    clock.now += TEN_MINUTES;
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
    expect(mock.counters(appId).tokenRequests).toBe(0);
    expect(await cache.get(lockKey)).toBe('a-long-lease');
    expect(events(logger)).not.toContain('lock.taken_over');
    await app.close();
  });

  it('two clients that each noted it: one takes it over, and WeChat is asked once', async () => {
    const { appId, app, cache, lockKey, clock, client } = await lockedApp((cache, key) => cache.persist(key, 'left-by-hand'));
    const other = client(false);
    for (const each of [app, other]) await expect(each.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
    clock.now += TEN_MINUTES;
    const outcomes = await Promise.all([app, other].map((each) => each.accessToken.getToken().then((token) => token, (error: { code: string }) => error.code)));
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
  });

  it("a live holder's lock on a store that drops every lock's TTL is not taken over by waits that run out on it within 10 minutes: WeChat is asked by the holder alone", async () => {
    // The holder's first try hangs until its timeout (3 s), its lease longer than the waiter's; the
    // waiter's waits of 300 ms run out on its lock again and again, on the waiter's clock 4 minutes apart:
    // a live lock never holds one value 10 minutes (its lease is far shorter), and it is not taken before.
    const { appId, secret, cache, clock, client } = await lockedApp(async () => undefined);
    cache.dropsTtlOfAdd = true;
    const holder = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, timeoutMs: 3_000 });
    const waiter = client(false);
    mock.injectFault({ kind: 'hang', path: 'cgi-bin/stable_token', times: 1 });
    const first = holder.accessToken.getToken().then((token) => token, (error: { code: string }) => error.code);
    await vi.waitFor(() => expect(mock.counters(appId).tokenRequests).toBe(1));
    for (let i = 0; i < 3; i += 1) {
      await expect(waiter.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
      clock.now += 4 * 60_000;
    }
    // The holder's one try, which timed out (it is not sent again: WeChat may have acted on it); the
    // waiter asked nothing.
    expect(await first).toBe('ERR_WXKIT_TIMEOUT');
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await Promise.all([holder.close(), waiter.close()]);
  });
});
