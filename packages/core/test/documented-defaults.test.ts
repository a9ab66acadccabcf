import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, nativeSchema } from '../src/index.js';

// The defaults the READMEs promise, each with no option set: a client that answers from memory for
// 30 s, waits 40 s (the 35 s lease and 5 s) for another process's refresh (a follower 20 s), and leaves its store open
// on close(). A holder keeps the lock with a short lease (7 s).

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});
afterEach(() => {
  vi.useRealTimers();
});

/** A MemoryCache that counts its close() calls. */
class CountingCache extends MemoryCache {
  closes = 0;

  override async close(): Promise<void> {
    this.closes += 1;
    await super.close();
  }
}

const schema = nativeSchema();
const stableKey = (appId: string) => schema.accessTokenKey({ kind: 'official_account', appId, endpoint: 'stable' });

describe('the documented defaults', () => {
  it('memoMs: a process answers from memory for 30 s, then reads the store again', async () => {
    const { appId, secret } = mock.createApp();
    let clock = Date.now();
    const now = () => clock;
    const cache = new MemoryCache({ now });
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, now, logger: false });
    const seconds = Math.floor(clock / 1000);
    const entry = (token: string) => `{"access_token":"${token}","expires_at":${seconds + 7200},"fetched_at":${seconds}}`;
    await cache.set(stableKey(appId), entry('FIRST'), 6900);
    expect(await app.accessToken.getToken()).toBe('FIRST');
    await cache.set(stableKey(appId), entry('SECOND'), 6900);
    clock += 29_999;
    expect(await app.accessToken.getToken()).toBe('FIRST');
    clock += 2;
    expect(await app.accessToken.getToken()).toBe('SECOND');
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await app.close();
  });

  it('lockWaitMs: a call waits 40 s for another process that holds the refresh lock, then fails without fetching, and says so once (lock.wait_timeout)', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date', 'performance'] });
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    // Another process holds the lock, for longer than the wait, and writes nothing.
    await cache.add(`${stableKey(appId)}:lock`, 'other-host:1:holder', 600);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, fallbackDir: false, logger: false });
    const timeouts: { holder?: string }[] = [];
    app.on('lock.wait_timeout', (event) => timeouts.push(event));
    let settled: unknown;
    const call = app.accessToken.getToken().then(
      (token) => (settled = token),
      (error: unknown) => (settled = error),
    );
    await vi.advanceTimersByTimeAsync(39_000);
    expect(timeouts).toHaveLength(0);
    expect(settled).toBeUndefined();
    await vi.advanceTimersByTimeAsync(2_000);
    expect(timeouts).toMatchObject([{ holder: 'other-host:1:holder' }]);
    expect(settled).toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN', message: expect.stringContaining('Waited 40000 ms') });
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await app.close();
    await call;
  });

  it("lockWaitMs of a follower (refresh: 'never'): it waits 20 s for the owner's entry, then fails", async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date', 'performance'] });
    const { appId } = mock.createApp();
    const follower = new OfficialAccount({ appId, refresh: 'never', baseUrl: mock.url, cache: new MemoryCache(), fallbackDir: false, logger: false });
    let settled: unknown;
    const call = follower.accessToken.getToken().then(
      (token) => (settled = token),
      (error: unknown) => (settled = error),
    );
    await vi.advanceTimersByTimeAsync(19_000);
    expect(settled).toBeUndefined();
    await vi.advanceTimersByTimeAsync(2_000);
    expect(settled).toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN', message: expect.stringContaining('within 20000 ms') });
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await follower.close();
    await call;
  });

  it('the lease: a holder at work keeps the lock with a short lease of 7 s, not the whole 35 s', async () => {
    const own = await startMockWeChat();
    const { appId, secret } = own.createApp();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: own.url, cache, fallbackDir: false, logger: false });
    own.injectFault({ kind: 'hang', path: 'cgi-bin/stable_token' });
    const call = app.accessToken.getToken().catch((error: unknown) => error);
    await vi.waitFor(() => expect(own.counters(appId).tokenRequests).toBe(1));
    const leftMs = await cache.ttlMs(`${stableKey(appId)}:lock`);
    expect(leftMs).toBeGreaterThan(5_000);
    expect(leftMs).toBeLessThanOrEqual(7_000);
    await own.close();
    expect(await call).toMatchObject({ code: 'ERR_WXKIT_HTTP' });
    await app.close();
  });

  it('close() leaves the store open: another client of it goes on reading the token', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new CountingCache();
    const first = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const token = await first.accessToken.getToken();
    await first.close();
    expect(cache.closes).toBe(0);
    const second = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    expect(await second.accessToken.getToken()).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await second.close();
    await cache.close();
    expect(cache.closes).toBe(1);
  });
});
