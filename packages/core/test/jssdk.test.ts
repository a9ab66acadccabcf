import { hostname } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onMockClock, rejection } from './helpers.js';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, nativeSchema, signJsapi, wxJava } from '../src/index.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

// WeChat's published example (JS-SDK documentation, appendix 1).
const VECTOR = {
  ticket: 'sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg',
  nonceStr: 'Wm3WZYTPz0wzccnW',
  timestamp: 1414587457,
  url: 'http://mp.weixin.qq.com?params=value',
  signature: '0f9de62fce790f9a083d5c99e95740ceb90c27ed',
};

describe('jssdk', () => {
  it("matches WeChat's published signature example", () => {
    expect(signJsapi(VECTOR.ticket, VECTOR.nonceStr, VECTOR.timestamp, VECTOR.url)).toBe(VECTOR.signature);
    expect(signJsapi(VECTOR.ticket, VECTOR.nonceStr, VECTOR.timestamp, `${VECTOR.url}#wechat_redirect`)).toBe(VECTOR.signature);
  });

  it('buildConfig() signs with the ticket WeChat issued, fetched once and cached like the token', async () => {
    const { appId, secret } = mock.createApp({ jsapiTicket: VECTOR.ticket });
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const config = await app.jssdk.buildConfig({
      url: `${VECTOR.url}#section`,
      jsApiList: ['chooseImage'],
      nonceStr: VECTOR.nonceStr,
      timestamp: VECTOR.timestamp,
    });
    expect(config).toEqual({
      debug: false,
      appId,
      timestamp: VECTOR.timestamp,
      nonceStr: VECTOR.nonceStr,
      signature: VECTOR.signature,
      jsApiList: ['chooseImage'],
    });
    const second = await app.jssdk.buildConfig({ url: 'https://shop.example/a', jsApiList: [], debug: true, openTagList: ['wx-open-launch-weapp'] });
    expect(second.nonceStr).toMatch(/^[A-Za-z0-9]{16}$/);
    expect(second.openTagList).toEqual(['wx-open-launch-weapp']);
    expect(second.signature).toBe(signJsapi(VECTOR.ticket, second.nonceStr, second.timestamp, 'https://shop.example/a'));
    expect(mock.counters(appId).ticketRequests).toBe(1);

    const key = nativeSchema().ticketKey({ kind: 'official_account', appId, endpoint: 'stable' }, 'jsapi');
    expect(key).toBe(`wechat:jsapi_ticket:${appId}`);
    const stored = JSON.parse((await cache.get(key)) ?? 'null') as Record<string, unknown>;
    expect(Object.keys(stored)).toEqual(['ticket', 'expires_at', 'fetched_at', 'fetched_by']);
    expect(stored.fetched_by).toBe(`${hostname()}:${process.pid}`);
    expect(stored.ticket).toBe(VECTOR.ticket);
  });

  it('a ticket fetch on a dead token recovers the token once', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    await app.accessToken.getToken();
    mock.invalidateTokens(appId);
    expect(await app.jssdk.getTicket()).toMatch(/\S+/);
    expect(mock.counters(appId).tokenRequests).toBe(2);
  });

  it('a ticket endpoint that refuses every token costs the token one fetch per step, not three per getTicket()', async () => {
    const { appId, secret } = mock.createApp();
    const clock = { now: Date.now() };
    const now = () => clock.now;
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache({ now }), logger: false, tokenEndpoint: 'classic', now });
    try {
      await app.accessToken.getToken();
      mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/ticket/getticket', times: Infinity });
      // The first rejection is answered with a fetch at once; WeChat's ticket endpoint rejects that token
      // too, and from then on the fetches wait for the pause's end (the clock stands still).
      for (let call = 0; call < 3; call += 1) await expect(app.jssdk.getTicket()).rejects.toThrow();
      expect(mock.counters(appId).tokenRequests).toBe(2);
      clock.now += 1_001;
      await expect(app.jssdk.getTicket()).rejects.toThrow();
      expect(mock.counters(appId).tokenRequests).toBe(3);
    } finally {
      mock.clearFaults();
      await app.close();
    }
  });

  it('a token a ticket fetch went through with, then replaced from outside, is refetched at once and starts no pause', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, tokenEndpoint: 'classic' });
    try {
      await app.jssdk.getTicket();
      mock.invalidateTokens(appId);
      expect(await app.jssdk.refreshTicket()).toMatch(/\S+/);
      expect(mock.counters(appId).tokenRequests).toBe(2);
      expect(await cache.get(`${app.accessToken.cacheKey}:refetch`)).toBeUndefined();
    } finally {
      await app.close();
    }
  });

  it('rejects bad input with a ConfigError naming the field', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, logger: false });
    await expect(app.jssdk.buildConfig({ url: 'mp.weixin.qq.com', jsApiList: [] })).rejects.toMatchObject({
      code: 'ERR_WXKIT_INVALID_OPTION',
      option: 'url',
    });
    await expect(app.jssdk.buildConfig({ url: 'https://a.example', jsApiList: 'chooseImage' as never })).rejects.toMatchObject({
      option: 'jsApiList',
    });
    expect(mock.counters(appId).requests).toBe(0);
  });

  it('a ticket type that every object has a property of (constructor, toString, __proto__) is a ConfigError, and WeChat is not asked', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    for (const type of ['constructor', 'toString', '__proto__', 'hasOwnProperty']) {
      await expect(app.jssdk.getTicket(type as never), type).rejects.toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'type' });
      await expect(app.jssdk.refreshTicket(type as never), type).rejects.toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'type' });
    }
    expect(mock.counters(appId).requests).toBe(0);
  });
});

describe('jssdk input', () => {
  it('refuses a timestamp of 0 and a nonceStr longer than 32 characters, before any ticket is fetched', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    const base = { url: 'https://shop.example/', jsApiList: ['chooseImage'] };
    await expect(app.jssdk.buildConfig({ ...base, timestamp: 0 })).rejects.toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION' });
    await expect(app.jssdk.buildConfig({ ...base, nonceStr: 'a'.repeat(33) })).rejects.toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION' });
    expect(mock.counters(appId).requests).toBe(0);
    await app.close();
  });
});

describe('jssdk page URL', () => {
  it('a URL with non-ASCII characters or spaces before its fragment (what location.href never reads) is a ConfigError, before any ticket is fetched', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    for (const url of ['https://shop.example/商品?id=1', 'https://shop.example/?q=a b', 'https://shop.example/\n', 'https://商店.example/']) {
      await expect(app.jssdk.buildConfig({ url, jsApiList: [] }), url).rejects.toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'url' });
    }
    expect(mock.counters(appId).requests).toBe(0);
    // Percent-encoded, as location.href reads it, and anything in the fragment (never signed): signed.
    const config = await app.jssdk.buildConfig({ url: 'https://shop.example/%E5%95%86%E5%93%81?id=1#/页', jsApiList: [] });
    expect(config.signature).toMatch(/^[0-9a-f]{40}$/);
    await app.close();
  });
});

describe('a follower (refresh: never)', () => {
  it('still fetches its tickets: they invalidate nobody', async () => {
    const { appId, secret } = mock.createApp({ jsapiTicket: VECTOR.ticket });
    const cache = new MemoryCache();
    // The owner of the refresh wrote the access token; the follower reads it.
    const owner = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    await owner.accessToken.getToken();
    const follower = new OfficialAccount({ appId, baseUrl: mock.url, cache, refresh: 'never', lockWaitMs: 1_000, logger: false });
    expect(await follower.jssdk.getTicket()).toBe(VECTOR.ticket);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await Promise.all([owner.close(), follower.close()]);
  });
});

describe('a ticket fetched again before its end', () => {
  // getticket answers the ticket it already issued with expires_in 7200, however little of it is left.
  it('is not served past the end of the ticket it is', async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache: new MemoryCache(), logger: false, now: clock.now });
      const first = await app.jssdk.getTicket();
      // Its last 30 s: no longer served from the store, so it is asked for again, and getticket hands the
      // same one back, which ends in 20 s. Callers meanwhile are served the one held (it still lives) up to
      // 5 s before its end, then get a typed error; the fleet asks no more until the ticket ends.
      clock.at(7180_000);
      for (let i = 0; i < 3; i += 1) expect(await app.jssdk.getTicket()).toBe(first);
      expect(local.counters(appId).ticketRequests).toBe(2);
      clock.at(7196_000);
      expect(await rejection(app.jssdk.getTicket())).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE', message: expect.stringMatching(/handed out before, which ends in 20 s/) });
      expect(local.counters(appId).ticketRequests).toBe(2);
      // A minute after its end WeChat refuses signatures made with it.
      clock.at(7260_000);
      expect(local.isTicketValid(appId, first)).toBe(false);
      const served = await app.jssdk.getTicket();
      expect(served).not.toBe(first);
      expect(local.isTicketValid(appId, served)).toBe(true);
      expect(local.counters(appId).ticketRequests).toBe(3);
      await app.close();
    });
  });

  it('by a process that never read its entry keeps its end, as the store records it', async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const cache = new MemoryCache({ now: clock.now });
      const options = { appId, secret, baseUrl: local.url, cache, logger: false as const, now: clock.now };
      const first = new OfficialAccount(options);
      const ticket = await first.jssdk.getTicket();
      await first.close();
      // The entry leaves the store 300 s before the ticket ends (its TTL); a process started then asks
      // for it, and getticket hands the same one back with expires_in 7200.
      clock.at(7000_000);
      const late = new OfficialAccount(options);
      expect(await late.jssdk.getTicket()).toBe(ticket);
      expect(local.counters(appId).ticketRequests).toBe(2);
      // Kept for what is left of it, not 7200 s more: once it has ended, the next one is fetched and served.
      clock.at(7260_000);
      expect(local.isTicketValid(appId, ticket)).toBe(false);
      const next = await late.jssdk.getTicket();
      expect(next).not.toBe(ticket);
      expect(local.isTicketValid(appId, next)).toBe(true);
      expect(local.counters(appId).ticketRequests).toBe(3);
      await late.close();
    });
  });

  it('by a process that read it only from a format that records no end (WxJava) keeps its end, as the store records it', async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const cache = new MemoryCache({ now: clock.now });
      // WxJava keeps a ticket bare, for expires_in − 200 s: a reader takes its life from the TTL.
      const options = { appId, secret, baseUrl: local.url, cache, schema: wxJava(), memoMs: 0, logger: false as const, now: clock.now };
      const writer = new OfficialAccount(options);
      const ticket = await writer.jssdk.getTicket();
      await writer.close();
      const reader = new OfficialAccount(options);
      clock.at(6900_000);
      expect(await reader.jssdk.getTicket()).toBe(ticket);
      expect(local.counters(appId).ticketRequests).toBe(1);
      // Its entry has left the store; the same ticket is handed back with expires_in 7200.
      clock.at(7050_000);
      expect(await reader.jssdk.getTicket()).toBe(ticket);
      expect(local.counters(appId).ticketRequests).toBe(2);
      clock.at(7260_000);
      const next = await reader.jssdk.getTicket();
      expect(next).not.toBe(ticket);
      expect(local.isTicketValid(appId, next)).toBe(true);
      await reader.close();
    });
  });

  it("whose entry left the store early (a profile's shorter TTL) keeps its end: served until then, asked for again after it", async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const cache = new MemoryCache({ now: clock.now });
      // WxJava's tickets live expires_in − 200 s in the store.
      const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache, schema: wxJava(), memoMs: 0, logger: false, now: clock.now });
      const first = await app.jssdk.getTicket();
      clock.at(7050_000);
      expect(await app.jssdk.getTicket()).toBe(first);
      expect(local.counters(appId).ticketRequests).toBe(2);
      // Kept with what is left of it (150 s), not 7200 s more: in its last 5 s no longer served.
      clock.at(7196_000);
      expect(await rejection(app.jssdk.getTicket())).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE' });
      clock.at(7260_000);
      const next = await app.jssdk.getTicket();
      expect(next).not.toBe(first);
      expect(local.isTicketValid(appId, next)).toBe(true);
      await app.close();
    });
  });
});
