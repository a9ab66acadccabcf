import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, OpenPlatform, Work } from '../src/index.js';
import { componentOptions, storeVerifyTicket } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

describe('a ticket refresh whose access token WeChat rejects, in many processes at once', () => {
  for (const n of [8, 32, 100]) {
    it(`${n} clients sharing a store: one getticket with the dead token, one token fetch, one ticket`, async () => {
      const { appId, secret } = mock.createApp();
      const cache = new MemoryCache();
      const apps = Array.from({ length: n }, () => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, memoMs: 0, fallbackDir: false, logger: false }));
      try {
        await apps[0]!.accessToken.getToken();
        mock.resetCounters();
        mock.invalidateTokens(appId);
        const results = await Promise.allSettled(apps.map((app) => app.jssdk.getTicket()));
        const counters = mock.counters(appId);
        expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
        expect(new Set(results.map((r) => (r as PromiseFulfilledResult<string>).value)).size).toBe(1);
        expect({ tickets: counters.ticketRequests, tokens: counters.tokenRequests, rejected: counters.rejectedCalls }).toEqual({ tickets: 1, tokens: 1, rejected: 1 });
      } finally {
        await Promise.all(apps.map((app) => app.close()));
      }
    });
  }

  it('a store slow to delete the rejected token: the holder of the ticket lock has deleted it before the next one takes the lock', async () => {
    const { appId, secret } = mock.createApp();
    // The compare-and-delete of the access token's entry answers 50 ms late (a loaded store): reported
    // after the lock is let go, the rejected token is still there when the next process takes the lock.
    let tokenKey = '';
    class SlowDelete extends MemoryCache {
      override async deleteIfEquals(key: string, expected: string): Promise<boolean> {
        if (key === tokenKey) await new Promise((resolve) => setTimeout(resolve, 50));
        return super.deleteIfEquals(key, expected);
      }
    }
    const cache = new SlowDelete();
    const apps = Array.from({ length: 8 }, () => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, memoMs: 0, fallbackDir: false, logger: false }));
    tokenKey = apps[0]!.accessToken.cacheKey;
    try {
      await apps[0]!.accessToken.getToken();
      mock.resetCounters();
      mock.invalidateTokens(appId);
      const results = await Promise.allSettled(apps.map((app) => app.jssdk.getTicket()));
      expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
      const counters = mock.counters(appId);
      expect({ tickets: counters.ticketRequests, tokens: counters.tokenRequests, rejected: counters.rejectedCalls }).toEqual({ tickets: 1, tokens: 1, rejected: 1 });
    } finally {
      await Promise.all(apps.map((app) => app.close()));
    }
  });

  it('WeCom: 8 clients, both ticket types at once, one gettoken and one rejected call per ticket type', async () => {
    const app = mock.createWorkApp();
    const id = `${app.corpId}:${app.agentId}`;
    const cache = new MemoryCache();
    const works = Array.from({ length: 8 }, () => new Work({ ...app, baseUrl: mock.url, cache, memoMs: 0, fallbackDir: false, logger: false }));
    try {
      await works[0]!.accessToken.getToken();
      mock.resetCounters();
      mock.invalidateTokens(id);
      const results = await Promise.allSettled(works.flatMap((work) => [work.jssdk.getTicket('jsapi'), work.jssdk.getTicket('agent_jsapi')]));
      expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
      const counters = mock.counters(id);
      // Each ticket type has its own lock: the two holders may each send the dead token once.
      expect(counters.tokenRequests).toBe(1);
      expect(counters.rejectedCalls).toBeLessThanOrEqual(2);
    } finally {
      await Promise.all(works.map((work) => work.close()));
    }
  });

  it("an open platform's authorizer refresh on a component token WeChat rejects, in 8 platforms at once: one rejected refresh", async () => {
    const component = mock.createComponent();
    const [cache, durable] = [new MemoryCache(), new MemoryCache()];
    await storeVerifyTicket(mock, component, durable);
    const opens = Array.from({ length: 8 }, () => new OpenPlatform({ ...componentOptions(mock, component), cache, durableStore: durable, memoMs: 0, fallbackDir: false, logger: false }));
    try {
      const { preAuthCode } = await opens[0]!.createPreAuthCode();
      const grant = mock.authorize(component.appId, { preAuthCode });
      const { authorizerAppId } = await opens[0]!.handleAuthorization(grant.authorizationCode);
      // The authorizer's token is gone (its refresh is due), and another program replaced the component token.
      await cache.delete(`wechat:authorizer_access_token:${component.appId}:${authorizerAppId}`);
      mock.resetCounters();
      mock.invalidateTokens(component.appId);
      const results = await Promise.allSettled(opens.map((open) => open.officialAccount(authorizerAppId).accessToken.getToken()));
      expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
      expect(mock.counters(component.appId).componentTokenRequests).toBe(1);
      expect(mock.counters(authorizerAppId)).toMatchObject({ authorizerTokenRequests: 2, errcodes: { '40001': 1 } });
    } finally {
      await Promise.all(opens.map((open) => open.close()));
    }
  });
});
