import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OfficialAccount } from '../src/index.js';
import { holdingLock, rejection } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

const message = { touser: 'o1', template_id: 'T', data: {} };

describe("a caller's signal while its process takes the refresh lock for other callers too", () => {
  it('the caller that started the refresh gives up: the 10 others get the token, one upstream request, the lock released, no unhandled rejection', async () => {
    const { appId, secret } = mock.createApp();
    const gate = holdingLock();
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: gate.cache, logger: false });
    const lockKey = `${app.accessToken.cacheKey}:lock`;
    gate.lock(lockKey);
    try {
      const first = new AbortController();
      const leaving = rejection(app.templateMessage.send(message, { signal: first.signal }));
      await gate.arrived;
      // Ten more callers join the refresh under way, half of them with a signal of their own.
      const staying = Array.from({ length: 10 }, (_, i) => app.templateMessage.send(message, i % 2 === 0 ? { signal: new AbortController().signal } : {}));
      const reason = new Error('the first caller went away');
      first.abort(reason);
      expect(await leaving).toBe(reason);
      gate.release();
      await Promise.all(staying);
      expect(await gate.cache.get(lockKey)).toBeUndefined();
      expect(mock.counters(appId)).toMatchObject({ tokenRequests: 1, templateSends: 10 });
      for (let turn = 0; turn < 2; turn += 1) await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      gate.release();
      process.off('unhandledRejection', onUnhandled);
      await app.close();
    }
  });

  it('a signal aborted before the call: nothing is asked of WeChat or the store, the caller gets the signal\'s reason', async () => {
    const { appId, secret } = mock.createApp();
    // Counts every read and write the client makes of the store.
    let storeCalls = 0;
    class Counting extends MemoryCache {
      override get(key: string) {
        storeCalls += 1;
        return super.get(key);
      }
      override add(key: string, value: string, ttlSeconds: number) {
        storeCalls += 1;
        return super.add(key, value, ttlSeconds);
      }
    }
    const cache = new Counting();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const reason = new Error('gone before it started');
    const signal = AbortSignal.abort(reason);
    expect(await rejection(app.templateMessage.send(message, { signal }))).toBe(reason);
    expect(await rejection(app.accessToken.getToken({ signal }))).toBe(reason);
    expect(await rejection(app.accessToken.forceRefresh({ signal }))).toBe(reason);
    expect(await rejection(app.jssdk.getTicket('jsapi', { signal }))).toBe(reason);
    expect(mock.counters(appId).requests).toBe(0);
    expect(storeCalls).toBe(0);
    expect(await cache.get(app.accessToken.cacheKey)).toBeUndefined();
    expect(await cache.get(`${app.accessToken.cacheKey}:lock`)).toBeUndefined();
    await app.close();
  });
});
