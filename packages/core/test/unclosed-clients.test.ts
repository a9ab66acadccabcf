import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { MemoryCache, OfficialAccount, type TokenCache } from '../src/index.js';
import { collect, recordingLogger } from './helpers.js';

// A client made per request and never closed (the way many use an SDK) must cost nothing once the
// program drops it: nothing the store outlives may hold it.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/**
 * Makes `count` clients on `cache`, each used once and never closed. Returns weak references to each
 * client and to its logger, which every part of the client holds (its store handle, its token manager):
 * a part kept by something outside the client keeps its logger too.
 */
async function unclosedClients(cache: TokenCache, count: number, appId: string, secret: string): Promise<WeakRef<object>[]> {
  const refs: WeakRef<object>[] = [];
  for (let i = 0; i < count; i += 1) {
    const logger = recordingLogger();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger });
    await app.accessToken.getToken();
    refs.push(new WeakRef(app), new WeakRef(logger));
  }
  return refs;
}

describe('clients that are never closed', () => {
  it('are collected once the program drops them, while the store lives on', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const refs = await unclosedClients(cache, 50, appId, secret);
    await collect();
    expect(refs.filter((ref) => ref.deref() !== undefined)).toHaveLength(0);
    expect(mock.counters(appId).stableTokenRequests + mock.counters(appId).classicTokenRequests).toBe(1);
    // The store still serves the clients made after them.
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(mock.counters(appId).templateSends).toBe(1);
    await app.close();
  });

  it('an outage seen only by clients that were then collected is still probed: a later client finds the store back', async () => {
    const { appId, secret } = mock.createApp();
    // A store that fails every call while `failing` is set (a restart, a reset connection).
    class Flaky extends MemoryCache {
      failing = false;
      calls = 0;
      override get(key: string): Promise<string | undefined> {
        this.calls += 1;
        return this.failing ? Promise.reject(new Error('ECONNRESET')) : super.get(key);
      }
    }
    const cache = new Flaky();
    const options = { appId, secret, baseUrl: mock.url, cache, memoMs: 0, fallbackDir: false as const };
    // The clients that see the outage begin: used once, never closed, dropped.
    const refs = await (async () => {
      const refs: WeakRef<object>[] = [];
      const logger = recordingLogger();
      const app = new OfficialAccount({ ...options, logger });
      await app.accessToken.getToken();
      // The outage, on timers the test runs itself: the probe it schedules is due when the test says.
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
      cache.failing = true;
      await app.accessToken.getToken();
      expect(logger.lines.map((line) => (line.fields as { event?: string }).event)).toContain('cache.unavailable');
      refs.push(new WeakRef(app), new WeakRef(logger));
      return refs;
    })();
    try {
      await collect();
      expect(refs.filter((ref) => ref.deref() !== undefined)).toHaveLength(0);
      // The probe comes due with none of the clients that saw the outage left to send it.
      vi.runOnlyPendingTimers();
    } finally {
      vi.useRealTimers();
    }
    cache.failing = false;
    // A client made after them: its first call is refused (the store is taken for down), and that starts
    // a probe, which finds the store back; its calls then go to the store again.
    const app = new OfficialAccount({ ...options, logger: false });
    const deadline = Date.now() + 10_000;
    for (;;) {
      const before = cache.calls;
      await app.accessToken.getToken();
      if (cache.calls > before) break;
      if (Date.now() > deadline) throw new Error('the store was never probed: every call is still refused');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await app.close();
  });
});
