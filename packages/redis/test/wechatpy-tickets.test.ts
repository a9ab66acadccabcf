import { createClient } from '@keyv/redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfficialAccount, wechatpy } from '@wxkit/core';
import { startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { RedisCache } from '../src/index.js';

// wechatpy (wechatpy/client/api/jsapi.py, 1.8 and 2.x) keeps a ticket in its RedisStorage as a JSON string
// with no TTL, and its life in `{appid}_jsapi_ticket_expires_at` (also with no TTL): it refetches whenever
// that companion is absent or past, and wxkit can learn a ticket's life only from it.
let redis: StoreServer;
let mock: MockWeChat;
let raw: ReturnType<typeof createClient>;
beforeAll(async () => {
  [redis, mock] = await Promise.all([startRedis(), startMockWeChat()]);
  raw = createClient({ url: redis.url });
  await raw.connect();
});
afterAll(async () => {
  await raw?.quit();
  await Promise.all([redis?.stop(), mock?.close()]);
});

const now = () => Math.floor(Date.now() / 1000);

function account() {
  const { appId, secret } = mock.createApp();
  const cache = new RedisCache(redis.url);
  const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: wechatpy(), logger: false });
  return { appId, secret, app, close: async () => (await app.close(), await cache.close()) };
}

/** What wechatpy's get_jsapi_ticket() writes: `session.set(key, ticket)` and `session.set(key_expires_at, expires_at)`. */
async function writeAsWechatpy(key: string, ticket: string, expiresAt: number): Promise<void> {
  await raw.set(key, JSON.stringify(ticket));
  await raw.set(`${key}_expires_at`, JSON.stringify(expiresAt));
}

describe('wechatpy tickets on a real Redis', () => {
  it('wxkit writes each ticket with the expires_at wechatpy reads, under the keys wechatpy reads', async () => {
    const { appId, app, close } = account();
    try {
      for (const [type, key] of [
        ['jsapi', `wechatpy:${appId}_jsapi_ticket`],
        ['wx_card', `wechatpy:${appId}_jsapi_card_ticket`],
      ] as const) {
        const ticket = await app.jssdk.getTicket(type);
        expect(JSON.parse((await raw.get(key))!)).toBe(ticket);
        // wechatpy uses the stored ticket while `expires_at >= int(time.time())`.
        const expiresAt = JSON.parse((await raw.get(`${key}_expires_at`))!);
        expect(Number.isInteger(expiresAt)).toBe(true);
        expect(expiresAt - now()).toBeGreaterThan(7000);
        // Neither outlives the ticket.
        expect(await raw.pTTL(`${key}_expires_at`)).toBeGreaterThan(0);
      }
      expect(mock.counters(appId).ticketRequests).toBe(2);
    } finally {
      await close();
    }
  });

  it("takes a live ticket wechatpy wrote, and refetches one whose expires_at has passed instead of serving it for ever", async () => {
    const { appId, app, close } = account();
    const key = `wechatpy:${appId}_jsapi_ticket`;
    try {
      await writeAsWechatpy(key, 'TICKET_OF_WECHATPY', now() + 3600);
      expect(await app.jssdk.getTicket()).toBe('TICKET_OF_WECHATPY');
      expect(mock.counters(appId).ticketRequests).toBe(0);
    } finally {
      await close();
    }
    // wechatpy stopped hours ago: the ticket is still stored (no TTL), its expires_at long past.
    const later = account();
    const laterKey = `wechatpy:${later.appId}_jsapi_ticket`;
    try {
      await writeAsWechatpy(laterKey, 'DEAD_TICKET_OF_WECHATPY', now() - 3 * 3600);
      const ticket = await later.app.jssdk.getTicket();
      expect(ticket).not.toBe('DEAD_TICKET_OF_WECHATPY');
      expect(mock.counters(later.appId).ticketRequests).toBe(1);
      expect(JSON.parse((await raw.get(laterKey))!)).toBe(ticket);
      expect(JSON.parse((await raw.get(`${laterKey}_expires_at`))!)).toBeGreaterThan(now() + 7000);
    } finally {
      await later.close();
    }
  });

  it('a ticket with no TTL and no expiry wechatpy could read beside it is fetched again, as wechatpy would, never served for ever', async () => {
    for (const [what, companion] of [
      ['absent', undefined],
      ['garbage', 'soon'],
      ['in milliseconds', String(Date.now() + 3_600_000)],
      ['negative', '-1'],
      ['a fraction, past', String(now() - 60.5)],
    ] as const) {
      const { appId, app, close } = account();
      const key = `wechatpy:${appId}_jsapi_ticket`;
      try {
        await raw.set(key, JSON.stringify('DEAD_TICKET'));
        if (companion !== undefined) await raw.set(`${key}_expires_at`, companion);
        expect(await app.jssdk.getTicket(), what).not.toBe('DEAD_TICKET');
        expect(mock.counters(appId).ticketRequests, what).toBe(1);
      } finally {
        await close();
      }
    }
  });

  it('a companion lost after the ticket was written is written again with the same ticket, so the next process reads it', async () => {
    const first = account();
    const key = `wechatpy:${first.appId}_jsapi_ticket`;
    try {
      const ticket = await first.app.jssdk.getTicket();
      // The process died between the ticket and its companion: the one left is an older ticket's.
      await raw.set(`${key}_expires_at`, JSON.stringify(now() - 60));
      const cache = new RedisCache(redis.url);
      const second = new OfficialAccount({ appId: first.appId, secret: first.secret, baseUrl: mock.url, cache, logger: false, schema: wechatpy() });
      // WeChat hands out the same ticket while it lives.
      expect(await second.jssdk.getTicket()).toBe(ticket);
      await second.close();
      await cache.close();
      expect(JSON.parse((await raw.get(`${key}_expires_at`))!)).toBeGreaterThan(now() + 7000);
      expect(mock.counters(first.appId).ticketRequests).toBe(2);
    } finally {
      await first.close();
    }
  });

  it("reads a token's life from its TTL, not its companion, which wechatpy 1.8 leaves to an older token", async () => {
    const { appId, secret, app, close } = account();
    try {
      // wechatpy 1.8 fetches and stores the token with its TTL (`session.set(key, token, expires_in)`) and keeps
      // its expires_at in memory: the companion still holds the expiry of a token of two hours ago.
      const answer = await fetch(`${mock.url}/cgi-bin/token?grant_type=client_credential&appid=${appId}&secret=${secret}`);
      const { access_token: token, expires_in: expiresIn } = (await answer.json()) as { access_token: string; expires_in: number };
      await raw.set(`wechatpy:${appId}_access_token`, JSON.stringify(token), { EX: expiresIn });
      await raw.set(`wechatpy:${appId}_access_token_expires_at`, JSON.stringify(now() - 60));
      expect(await app.accessToken.getToken()).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(1);
    } finally {
      await close();
    }
  });
});
