import { describe, expect, it } from 'vitest';
import { startMockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, Work, nativeSchema, silenceper, wxJava } from '../src/index.js';
import { onMockClock, rejection } from './helpers.js';

// The end a process knows for a value a fetch hands back again: WeChat's expiry, never the store's TTL
// of a format that records none, and kept only where the endpoint answers a value it hands back again
// with its full life (an official account's getticket).
describe('the end known for a value handed back again', () => {
  it('of a ticket read back from a format without an expiry is the end of its fetch, not the end of its TTL', async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const cache = new MemoryCache({ now: clock.now });
      // WxJava stores the ticket bare, for expires_in − 200 s: read back, its life is the TTL left.
      const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache, schema: wxJava(), memoMs: 0, logger: false, now: clock.now });
      const first = await app.jssdk.getTicket();
      clock.at(100_000);
      expect(await app.jssdk.getTicket()).toBe(first);
      // Its entry ends in 20 s (its TTL); WeChat's ticket in 220 s: it is asked for, handed back, and served.
      clock.at(6980_000);
      expect(await app.jssdk.getTicket()).toBe(first);
      expect(local.counters(appId).ticketRequests).toBe(2);
      clock.at(7260_000);
      const next = await app.jssdk.getTicket();
      expect(next).not.toBe(first);
      expect(local.isTicketValid(appId, next)).toBe(true);
      await app.close();
    });
  });

  it('of a stable token read back from a format without an expiry does not cut what WeChat says is left', async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const cache = new MemoryCache({ now: clock.now });
      // silenceper keeps the stable token bare, for expires_in − 300 s.
      const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache, schema: silenceper(), tokenEndpoint: 'stable', memoMs: 0, logger: false, now: clock.now });
      const first = await app.accessToken.getToken();
      clock.at(100_000);
      expect(await app.accessToken.getToken()).toBe(first);
      // Its entry ends in 20 s; WeChat hands the same token back with 320 s left (it rotates in its last 300 s).
      clock.at(6880_000);
      expect(await app.accessToken.getToken()).toBe(first);
      expect(local.counters(appId).tokensIssued).toBe(1);
      await app.close();
    });
  });

  it("of a WeCom token another host wrote with its clock behind does not cut what gettoken says is left", async () => {
    await onMockClock(async (local, clock) => {
      const corp = local.createWorkApp();
      const cache = new MemoryCache({ now: clock.now });
      // The other host's clock is 60 s behind: the entry it writes ends 60 s before WeCom's token does.
      const behind = new Work({ ...corp, baseUrl: local.url, cache, schema: nativeSchema(), logger: false, now: () => clock.now() - 60_000 });
      const first = await behind.accessToken.getToken();
      await behind.close();
      const work = new Work({ ...corp, baseUrl: local.url, cache, schema: nativeSchema(), memoMs: 0, logger: false, now: clock.now });
      expect(await work.accessToken.getToken()).toBe(first);
      // 20 s left by the entry; gettoken hands the same token back with 80 s left, and says so.
      clock.at(7120_000);
      expect(await work.accessToken.getToken()).toBe(first);
      await work.close();
    });
  });

  it('of a ticket WeChat ends a moment after the end known for it: the ticket handed back just after that end is not kept for 7200 s', async () => {
    // The first ticket is asked for at .800 and issued 300 ms later: it ends at 7201.1 s, its entry says 7200.
    const start = Date.UTC(2026, 10, 25, 4, 0, 0);
    let now = start + 800;
    let lag = 300;
    const local = await startMockWeChat({ now: () => now + lag });
    try {
      const { appId, secret } = local.createApp();
      const cache = new MemoryCache();
      const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache, logger: false, now: () => now });
      // Another process of the fleet, on the same store.
      const peer = new OfficialAccount({ appId, secret, baseUrl: local.url, cache, logger: false, now: () => now });
      const first = await app.jssdk.getTicket();
      lag = 0;
      now = start + 7180_000;
      // Handed back with 20 s left: the one the process holds is served; a peer holding none gets the
      // fleet's error, and asks nothing.
      expect(await app.jssdk.getTicket()).toBe(first);
      expect(await rejection(peer.jssdk.getTicket())).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE' });
      expect(local.counters(appId).ticketRequests).toBe(2);
      // The fleet asks again 1 s after the end it knew: WeChat still hands back the ticket, for 100 ms more.
      // It ends any moment: refused, and asked for once more in the step of the next attempt, not per call.
      now = start + 7201_000;
      for (const client of [app, app, peer]) {
        expect(await rejection(client.jssdk.getTicket())).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE', message: expect.stringMatching(/ends any moment/) });
      }
      expect(local.counters(appId).ticketRequests).toBe(3);
      now = start + 7260_000;
      expect(local.isTicketValid(appId, first)).toBe(false);
      const served = await app.jssdk.getTicket();
      expect(local.isTicketValid(appId, served)).toBe(true);
      expect(await peer.jssdk.getTicket()).toBe(served);
      expect(local.counters(appId).ticketRequests).toBe(4);
      await Promise.all([app.close(), peer.close()]);
    } finally {
      await local.close();
    }
  });
});
