import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, TokenUnavailableError, type ClientEvent, type TokenCache } from '../src/index.js';
import { rejection } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

const until = async (condition: () => Promise<boolean> | boolean, timeoutMs = 5000) => {
  const started = Date.now();
  while (!(await condition())) {
    if (Date.now() - started > timeoutMs) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
};

describe('events', () => {
  it('token fetched and invalidated arrive with appId, key and timings, never the token or secret', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    const events: ClientEvent[] = [];
    const record = (event: ClientEvent) => events.push(event);
    app.on('access_token.fetched', record).on('access_token.invalidated', record);
    const token = await app.accessToken.getToken();
    mock.invalidateTokens(appId);
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    const fresh = await app.accessToken.getToken();
    expect(events.map((event) => event.event)).toEqual(['access_token.fetched', 'access_token.invalidated', 'access_token.fetched']);
    expect(events[0]).toMatchObject({ appId, key: `wechat:stable_access_token:${appId}`, level: 'info', ms: expect.any(Number), expiresIn: 7200 });
    expect(events[1]).toMatchObject({ appId, deleted: true, ms: expect.any(Number) });
    const text = JSON.stringify(events);
    for (const secretish of [token, fresh, secret]) expect(text).not.toContain(secretish);
    app.off('access_token.fetched', record);
    await app.accessToken.forceRefresh();
    expect(events).toHaveLength(3);
  });
});

/** `inner`, counting the watches its user arms: a client arms one when it starts waiting for another's write. */
const watchCounting = (inner: MemoryCache) => {
  const cache = {
    watches: 0,
    get: (key: string) => inner.get(key),
    set: (key: string, value: string, ttl: number) => inner.set(key, value, ttl),
    delete: (key: string) => inner.delete(key),
    add: (key: string, value: string, ttl: number) => inner.add(key, value, ttl),
    deleteIfEquals: (key: string, expected: string) => inner.deleteIfEquals(key, expected),
    compareAndSet: (key: string, expected: string, value: string, ttl: number) => inner.compareAndSet(key, expected, value, ttl),
    watch: (key: string, onChange: () => void) => {
      cache.watches += 1;
      return inner.watch(key, onChange);
    },
  } satisfies TokenCache & { watches: number };
  return cache;
};

describe("follower mode (refresh: 'never')", () => {
  it('reads what the owner writes, waits for it when absent, and never calls a token endpoint', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const followed = watchCounting(cache);
    const follower = new OfficialAccount({ appId, refresh: 'never', baseUrl: mock.url, cache: followed, logger: false, lockWaitMs: 5000 });
    const owner = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const waiting = follower.accessToken.getToken();
    // The follower found the store empty and watches it for the owner's write: it is waiting, not fetching.
    await until(() => followed.watches === 1);
    expect(mock.counters(appId).tokenRequests).toBe(0);
    const token = await owner.accessToken.getToken();
    expect(await waiting).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it('on 40001 it waits for the owner’s newer token instead of fetching or deleting', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const followed = watchCounting(cache);
    const follower = new OfficialAccount({ appId, refresh: 'never', baseUrl: mock.url, cache: followed, logger: false, lockWaitMs: 5000 });
    const owner = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    await owner.accessToken.getToken();
    mock.invalidateTokens(appId);
    const sending = follower.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    // The follower got the 40001, and watches the store for the owner's newer token: its handling of the
    // rejection (no delete, no fetch) is over.
    await until(() => followed.watches === 1);
    // The follower did not delete the owner's entry, and did not fetch.
    expect(await cache.get(owner.accessToken.cacheKey)).toBeDefined();
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await owner.templateMessage.send({ touser: 'o2', template_id: 'T', data: {} });
    expect((await sending).errcode).toBe(0);
    expect(mock.counters(appId).tokenRequests).toBe(2);
  });

  it('with nobody writing, ERR_WXKIT_NO_TOKEN after lockWaitMs; forceRefresh() is refused', async () => {
    const { appId } = mock.createApp();
    const follower = new OfficialAccount({ appId, refresh: 'never', baseUrl: mock.url, cache: new MemoryCache(), logger: false, lockWaitMs: 200 });
    const error = await rejection(follower.accessToken.getToken());
    expect(error).toBeInstanceOf(TokenUnavailableError);
    expect(error.code).toBe('ERR_WXKIT_NO_TOKEN');
    expect(String(error.message)).toContain(`wechat:stable_access_token:${appId}`);
    await expect(follower.accessToken.forceRefresh()).rejects.toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
    expect(mock.counters(appId).tokenRequests).toBe(0);
  });

  it('needs no secret, and refuses a token source next to it', () => {
    expect(() => new OfficialAccount({ appId: 'wx1', refresh: 'never' })).not.toThrow();
    expect(() => new OfficialAccount({ appId: 'wx1' })).toThrow(/options.secret must be a non-empty string/);
    expect(() => new OfficialAccount({ appId: 'wx1', secret: 's', refresh: 'sometimes' as never })).toThrow(/options.refresh/);
    const source = { fetch: async () => ({ value: 'x', expiresIn: 1 }), invalidate: async () => {} };
    expect(() => new OfficialAccount({ appId: 'wx1', refresh: 'never', tokenSource: source })).toThrow(/exclude each other/);
  });
});

describe('refresh-ahead', () => {
  it('one background fetch when the entry nears its end; callers get the current token without waiting', async () => {
    const { appId, secret } = mock.createApp();
    let clock = Date.now();
    const now = () => clock;
    const cache = new MemoryCache({ now });
    const app = new OfficialAccount({
      appId,
      secret,
      baseUrl: mock.url,
      cache,
      now,
      logger: false,
      tokenEndpoint: 'classic',
      refreshAheadSeconds: 600,
      refreshAheadJitterMs: 0,
    });
    const first = await app.accessToken.getToken();
    clock += (6900 - 500) * 1000; // 500 s left in the store: inside the 600 s window
    const during = await Promise.all(Array.from({ length: 10 }, () => app.accessToken.getToken()));
    expect(new Set(during)).toEqual(new Set([first]));
    await until(() => mock.counters(appId).tokenRequests === 2);
    await until(async () => !(await cache.get(app.accessToken.cacheKey))?.includes(first));
    clock += 31_000; // past the memo
    const after = await app.accessToken.getToken();
    expect(after).not.toBe(first);
    expect(mock.isTokenValid(appId, after)).toBe(true);
    expect(mock.counters(appId).tokenRequests).toBe(2);
  });

  it('an endpoint that hands back the same token is tried once, not on every call', async () => {
    // A mock of its own, whose clock moves with the client's: WeChat then hands back the same token
    // with as little life left as the store says, and the entry stays inside the window after the fetch.
    const wechat = await startMockWeChat();
    try {
      const { appId, secret } = wechat.createApp();
      let clock = Date.now();
      const now = () => clock;
      const app = new OfficialAccount({
        appId,
        secret,
        baseUrl: wechat.url,
        cache: new MemoryCache({ now }),
        now,
        logger: false,
        refreshAheadSeconds: 600,
        refreshAheadJitterMs: 0,
      });
      let aheadFetches = 0;
      app.on('access_token.fetched', (event) => (aheadFetches += event.ahead ? 1 : 0));
      const token = await app.accessToken.getToken();
      clock += (6900 - 500) * 1000;
      wechat.advanceClock(6900 - 500);
      // This call starts the background fetch, which brings back the same token; it ends with its event.
      expect(await app.accessToken.getToken()).toBe(token);
      await until(() => aheadFetches === 1);
      // Past half of what is left after that fetch: still inside the window, on every call below.
      clock += 300_000;
      wechat.advanceClock(300);
      for (let i = 0; i < 5; i += 1) {
        expect(await app.accessToken.getToken()).toBe(token);
        // With no jitter, a background refresh this call started is on a 0 ms timer set before this
        // one: when this one fires, that refresh is under way.
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
      await app.close(); // waits for the refreshes under way
      expect(aheadFetches).toBe(1);
      expect(wechat.counters(appId).tokenRequests).toBe(2);
    } finally {
      await wechat.close();
    }
  });
});
