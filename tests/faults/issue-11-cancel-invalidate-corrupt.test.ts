import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OfficialAccount, type LogFields, type TokenCache } from '@wxkit/core';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { eventually } from './helpers.js';

// Issue 11, items 7, 8 and 9: cancellation leaves nothing unhandled, invalidate() keeps the read in
// flight, and what comes out of the store is validated before it is used.

let mock: MockWeChat;
let unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
beforeAll(async () => {
  mock = await startMockWeChat();
  process.on('unhandledRejection', onUnhandled);
});
afterEach(() => {
  mock.clearFaults();
  mock.setLatency(0);
});
afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await mock?.close();
});

/** Lets every pending promise reaction run, so an unhandled rejection would have been reported. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0)).then(() => new Promise((resolve) => setImmediate(resolve)));

describe('item 7: cancellation', () => {
  it.each(['forceRefresh', 'refreshTicket'] as const)('%s() aborted mid-way, with a fetch that then fails: the caller gets the abort, nothing is unhandled', async (method) => {
    unhandled = [];
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    if (method === 'refreshTicket') await app.accessToken.getToken();
    const path = method === 'forceRefresh' ? 'cgi-bin/stable_token' : 'cgi-bin/ticket/getticket';
    mock.setLatency(200);
    mock.injectFault({ kind: 'errcode', errcode: -1, path, times: 1 });
    const controller = new AbortController();
    const call = method === 'forceRefresh' ? app.accessToken.forceRefresh({ signal: controller.signal }) : app.jssdk.refreshTicket('jsapi', { signal: controller.signal });
    const failedKey = method === 'forceRefresh' ? `${app.accessToken.cacheKey}:failed` : `wechat:jsapi_ticket:${appId}:failed`;
    await eventually(() => mock.counters(appId).errcodes['-1'] === undefined && mock.counters(appId).requests > (method === 'forceRefresh' ? 0 : 1), 'the fetch to be sent');
    controller.abort();
    await expect(call).rejects.toMatchObject({ name: 'AbortError' });
    // The shared refresh goes on without the caller and fails: its marker is written, and nobody is left
    // with an unhandled rejection.
    await eventually(async () => (await cache.get(failedKey)) !== undefined, 'the failed fetch to end');
    await settle();
    expect(unhandled).toEqual([]);
    await app.close();
  });

  it('an already-aborted signal makes every public call reject, never throw', async () => {
    unhandled = [];
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    const signal = AbortSignal.abort();
    const calls: (() => Promise<unknown>)[] = [
      () => app.accessToken.getToken({ signal }),
      () => app.accessToken.getEntry({ signal }),
      () => app.accessToken.forceRefresh({ signal }),
      () => app.jssdk.getTicket('jsapi', { signal }),
      () => app.jssdk.refreshTicket('jsapi', { signal }),
      () => app.jssdk.buildConfig({ url: 'https://shop.example/', jsApiList: [] }, { signal }),
      () => app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }, { signal }),
      () => app.client.get('cgi-bin/get_api_domain_ip', {}, { signal }),
      () => app.client.postJson('cgi-bin/menu/create', { button: [] }, { signal }),
    ];
    for (const call of calls) {
      let pending: Promise<unknown> | undefined;
      expect(() => (pending = call())).not.toThrow();
      await expect(pending).rejects.toBe(signal.reason);
    }
    expect(mock.counters(appId).requests).toBe(0);
    await settle();
    expect(unhandled).toEqual([]);
    await app.close();
  });
});

describe('item 8: invalidate() keeps the read in flight', () => {
  it('a call made after invalidate() joins the refresh under way: one lock, one fetch', async () => {
    const { appId, secret } = mock.createApp();
    const inner = new MemoryCache();
    let locks = 0;
    const cache: TokenCache = {
      get: (key) => inner.get(key),
      set: (key, value, ttl) => inner.set(key, value, ttl),
      delete: (key) => inner.delete(key),
      add: (key, value, ttl) => {
        if (key.endsWith(':lock')) locks += 1;
        return inner.add(key, value, ttl);
      },
      deleteIfEquals: (key, expected) => inner.deleteIfEquals(key, expected),
      compareAndSet: (key, expected, value, ttl) => inner.compareAndSet(key, expected, value, ttl),
    };
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    mock.setLatency(300);
    const first = app.accessToken.getToken();
    await eventually(() => mock.counters(appId).tokenRequests === 1, 'the fetch to be sent');
    await app.accessToken.invalidate('AN_OLDER_TOKEN_SOMEBODY_REJECTED');
    const second = app.accessToken.getToken();
    expect(await second).toBe(await first);
    expect(locks).toBe(1);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await app.close();
  });
});

describe('item 9: what comes out of the store is validated', () => {
  it.each([
    ['1 MB long', 'A'.repeat(1024 * 1024)],
    ['with control characters', 'TOKEN\r\nX-Injected: 1'],
    ['with spaces', 'TOKEN 123'],
    ['513 characters long', 'B'.repeat(513)],
  ])('a stored "token" %s is a miss, logged once, and replaced under the lock; sends go through', async (_what, bad) => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const corrupt: LogFields[] = [];
    const logger = { warn: (fields: LogFields) => fields.event === 'cache.corrupt_entry' && corrupt.push(fields) };
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, memoMs: 0 });
    const now = Math.floor(Date.now() / 1000);
    await cache.set(app.accessToken.cacheKey, JSON.stringify({ access_token: bad, expires_at: now + 7000, fetched_at: now }), 6700);
    const token = await app.accessToken.getToken();
    expect(token).not.toBe(bad);
    expect(mock.isTokenValid(appId, token)).toBe(true);
    expect(JSON.parse((await cache.get(app.accessToken.cacheKey))!).access_token).toBe(token);
    for (let i = 0; i < 3; i += 1) await app.templateMessage.send({ touser: `o${i}`, template_id: 'T', data: {} });
    expect(mock.counters(appId).templateSends).toBe(3);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(corrupt).toHaveLength(1);
    await app.close();
  });
});
