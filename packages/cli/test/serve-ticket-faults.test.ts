import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { HttpError, MemoryCache, OfficialAccount, TokenUnavailableError, WeChatApiError, remoteTokenSource, type Logger } from '@wxkit/core';
import { retryAtOf } from '@wxkit/core/internal';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { startTokenService, type TokenService } from '../src/serve.js';

// A ticket's report (POST /v1/ticket/{app}/{type}/invalidate) when WeChat, the store, the caller or the
// client fail: what the client gets, what the fleet is left with, and what it costs WeChat's quota.
const KEY = 'serve-ticket-faults-key-0123456789';
const auth = { authorization: `Bearer ${KEY}` };

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

/** A logger that keeps every line, fields and message, as text. */
function recorder(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const put = (fields: unknown, message: string) => void lines.push(`${JSON.stringify(fields)} ${message}`);
  return { logger: { debug: put, info: put, warn: put, error: put }, lines };
}

/** Moves the jsapi ticket entry's fetched_at two minutes back: a report may replace it. */
async function age(store: MemoryCache, appId: string): Promise<void> {
  const key = `wechat:jsapi_ticket:${appId}`;
  const entry = JSON.parse((await store.get(key))!) as { fetched_at: number; expires_at: number };
  entry.fetched_at -= 120;
  await store.set(key, JSON.stringify(entry), entry.expires_at - Math.floor(Date.now() / 1000));
}

async function report(url: string, appId: string, ticket: unknown, options: { type?: string; key?: string } = {}): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${url}/v1/ticket/oa/${appId}/${options.type ?? 'jsapi'}/invalidate`, {
    method: 'POST',
    headers: options.key === undefined ? auth : options.key ? { authorization: `Bearer ${options.key}` } : {},
    body: JSON.stringify({ ticket }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function ticketOf(url: string, appId: string): Promise<string> {
  const res = await fetch(`${url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth });
  return ((await res.json()) as { ticket: string }).ticket;
}

interface Setup {
  appId: string;
  store: MemoryCache;
  service: TokenService;
  client: OfficialAccount;
  lines: string[];
}

/** A service for one new app, on a store of its own, and a client of it; both log into `lines`. */
async function setup(): Promise<Setup> {
  const { appId, secret } = mock.createApp();
  const store = new MemoryCache();
  const { logger, lines } = recorder();
  const service = await startTokenService({ cache: store, apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger });
  const client = new OfficialAccount({ appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url: service.url, key: KEY }), logger });
  return { appId, store, service, client, lines };
}

async function teardown({ client, service }: Setup): Promise<void> {
  await client.close();
  await service.close();
}

describe("a ticket's report when getticket fails", () => {
  for (const errcode of [45009, -1]) {
    it(`(${errcode}): the client gets WeChat's error, typed; the failure is the fleet's, and later reports fetch nothing until it ends`, async () => {
      const setting = await setup();
      const { appId, store, service, client } = setting;
      try {
        const first = await client.jssdk.getTicket();
        await age(store, appId);
        const entry = await store.get(`wechat:jsapi_ticket:${appId}`);
        mock.issueTicket(appId);
        mock.injectFault({ kind: 'errcode', path: 'cgi-bin/ticket/getticket', errcode, times: 1 });
        const failure = await client.jssdk.refreshTicket().catch((error: unknown) => error);
        expect(failure).toBeInstanceOf(WeChatApiError);
        expect(failure).toMatchObject({ errcode });
        expect(retryAtOf(failure)).toBeGreaterThan(Date.now());
        // The entry deleted before the fetch failed is back, as it was: the fleet keeps the ticket it had
        // (a report may be wrong), not none until the back-off ends; the failure marker holds every
        // instance back.
        expect(await store.get(`wechat:jsapi_ticket:${appId}`)).toBe(entry);
        expect(await store.get(`wechat:jsapi_ticket:${appId}:failed`)).toContain(`"errcode":${errcode}`);
        expect(await ticketOf(service.url, appId)).toBe(first);
        const requests = mock.counters(appId).ticketRequests;
        const again = await Promise.all([0, 1, 2].map(() => report(service.url, appId, first)));
        expect(again.map(({ status, body }) => ({ status, errcode: body.errcode }))).toEqual([0, 1, 2].map(() => ({ status: 502, errcode })));
        expect(mock.counters(appId).ticketRequests).toBe(requests);
        // The client keeps serving the ticket it holds meanwhile.
        expect(await client.jssdk.getTicket()).toBe(first);
      } finally {
        await teardown(setting);
      }
    });
  }

  it("(40001 on the service's access token): the token is replaced, the ticket fetched once more, and the report answered with it", async () => {
    const setting = await setup();
    const { appId, store, client } = setting;
    try {
      const first = await client.jssdk.getTicket();
      await age(store, appId);
      mock.issueTicket(appId);
      // Another program's fetch ended the service's token: getticket answers 40001 with it.
      mock.invalidateTokens(appId);
      const before = mock.counters(appId);
      const second = await client.jssdk.refreshTicket();
      expect(second).not.toBe(first);
      expect(mock.isTicketValid(appId, second)).toBe(true);
      expect(mock.counters(appId).tokenRequests - before.tokenRequests).toBe(1);
      expect(mock.counters(appId).ticketRequests - before.ticketRequests).toBe(1);
    } finally {
      await teardown(setting);
    }
  });
});

describe("a ticket's report whose next fetch fails: the entry put back", () => {
  it("with what was left of its TTL, not the rest of WeChat's expiry: the store drops it when its writer's TTL said", async () => {
    const setting = await setup();
    const { appId, store, client } = setting;
    try {
      await client.jssdk.getTicket();
      await age(store, appId);
      const key = `wechat:jsapi_ticket:${appId}`;
      const entry = await store.get(key);
      const { fetched_at: fetchedAt, expires_at: expiresAt } = JSON.parse(entry!) as { fetched_at: number; expires_at: number };
      mock.injectFault({ kind: 'errcode', path: 'cgi-bin/ticket/getticket', errcode: 45009, times: 1 });
      await client.jssdk.refreshTicket().catch(() => undefined);
      expect(await store.get(key)).toBe(entry);
      // The native schema's TTL rule: expires_in less a 300 s margin, from fetched_at.
      expect(await store.ttlMs(key)).toBeLessThanOrEqual((fetchedAt + (expiresAt - fetchedAt - 300)) * 1000 - Date.now() + 1_000);
    } finally {
      await teardown(setting);
    }
  });

  it('not where WeChat answered the fetch with a ticket the service could not read: the ticket WeChat holds is served once the pause ends, not the one reported', async () => {
    const setting = await setup();
    const { appId, store, service, client } = setting;
    try {
      const first = await client.jssdk.getTicket();
      await age(store, appId);
      // Another program's fetch replaced it, as the report says; getticket answers the new one, unread.
      const theirs = mock.issueTicket(appId);
      mock.injectFault({ kind: 'field', path: 'cgi-bin/ticket/getticket', field: 'ticket', value: 123, times: 1 });
      expect(await report(service.url, appId, first)).toMatchObject({ status: 503, body: { error: { code: 'wechat_unreachable' } } });
      expect(await store.get(`wechat:jsapi_ticket:${appId}`)).toBeUndefined();
      await vi.waitFor(async () => expect(await ticketOf(service.url, appId)).toBe(theirs), { timeout: 8_000, interval: 250 });
    } finally {
      await teardown(setting);
    }
  }, 15_000);

  it('by a report under way as close() cuts it: close() resolves once the entry is back in the store, which is the caller\'s to close then', async () => {
    const { appId, secret } = mock.createApp();
    class SlowAdd extends MemoryCache {
      slow = false;
      adding = 0;
      added = 0;
      override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (!this.slow || key !== `wechat:jsapi_ticket:${appId}`) return super.add(key, value, ttlSeconds);
        this.adding += 1;
        // A store slow to answer, within the service's deadline for it.
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        const done = await super.add(key, value, ttlSeconds);
        this.added += 1;
        return done;
      }
    }
    const store = new SlowAdd();
    const service = await startTokenService({ cache: store, apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false, requestTimeoutMs: 200 });
    let closing: Promise<void> | undefined;
    try {
      const first = await ticketOf(service.url, appId);
      await age(store, appId);
      const entry = await store.get(`wechat:jsapi_ticket:${appId}`);
      mock.injectFault({ kind: 'errcode', path: 'cgi-bin/ticket/getticket', errcode: 45009, times: 1 });
      store.slow = true;
      const reported = report(service.url, appId, first).catch(() => undefined);
      await vi.waitFor(() => expect(store.adding).toBe(1));
      closing = service.close();
      await closing;
      expect(store.added).toBe(1);
      expect(await store.get(`wechat:jsapi_ticket:${appId}`)).toBe(entry);
      await reported;
    } finally {
      await (closing ?? service.close());
    }
  }, 15_000);
});

describe("a ticket's report that should replace nothing", () => {
  it("one of another app, of another type, an access token, a string never handed out or one of 15 KB: answered with the current ticket of the route's app and type, nothing deleted", async () => {
    const a = mock.createApp();
    const b = mock.createApp();
    const store = new MemoryCache();
    const service = await startTokenService({ cache: store, apps: [{ kind: 'official_account', ...a }, { kind: 'official_account', ...b }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    try {
      const ticketA = await ticketOf(service.url, a.appId);
      const ticketB = await ticketOf(service.url, b.appId);
      const cardA = ((await (await fetch(`${service.url}/v1/ticket/oa/${a.appId}/wx_card`, { headers: auth })).json()) as { ticket: string }).ticket;
      await age(store, a.appId);
      await age(store, b.appId);
      const token = ((await (await fetch(`${service.url}/v1/token/oa/${a.appId}`, { headers: auth })).json()) as { access_token: string }).access_token;
      const before = [mock.counters(a.appId).ticketRequests, mock.counters(b.appId).ticketRequests];
      expect((await report(service.url, b.appId, ticketA)).body.ticket).toBe(ticketB);
      expect((await report(service.url, a.appId, ticketB)).body.ticket).toBe(ticketA);
      expect((await report(service.url, a.appId, ticketA, { type: 'wx_card' })).body.ticket).toBe(cardA);
      for (const stranger of [token, 'a-ticket-never-handed-out', 'x'.repeat(15_000)]) {
        expect(await report(service.url, a.appId, stranger)).toMatchObject({ status: 200, body: { ticket: ticketA } });
      }
      expect([mock.counters(a.appId).ticketRequests, mock.counters(b.appId).ticketRequests]).toEqual(before);
    } finally {
      await service.close();
    }
  });

  it('one without a key, or with a wrong one: 401 before the body is read, nothing fetched', async () => {
    const setting = await setup();
    const { appId, store, service, client } = setting;
    try {
      const ticket = await client.jssdk.getTicket();
      await age(store, appId);
      const requests = mock.counters(appId).ticketRequests;
      expect((await report(service.url, appId, ticket, { key: '' })).status).toBe(401);
      expect((await report(service.url, appId, ticket, { key: 'not-a-key-of-the-service-0123' })).status).toBe(401);
      expect(mock.counters(appId).ticketRequests).toBe(requests);
      expect(await ticketOf(service.url, appId)).toBe(ticket);
    } finally {
      await teardown(setting);
    }
  });

  it('the current ticket reported over and over by a client: one fetch, then 429 with Retry-After, typed for the client', async () => {
    const setting = await setup();
    const { appId, store, service, client } = setting;
    try {
      await client.jssdk.getTicket();
      await age(store, appId);
      const requests = mock.counters(appId).ticketRequests;
      const renewed = await client.jssdk.refreshTicket();
      const failure = await client.jssdk.refreshTicket().catch((error: unknown) => error);
      expect(failure).toBeInstanceOf(HttpError);
      expect(failure).toMatchObject({ status: 429 });
      expect(retryAtOf(failure)).toBeGreaterThan(Date.now());
      for (let i = 0; i < 5; i += 1) expect((await report(service.url, appId, renewed)).status).toBe(429);
      expect(mock.counters(appId).ticketRequests).toBe(requests + 1);
    } finally {
      await teardown(setting);
    }
  });
});

describe("a ticket's report and the store", () => {
  it('a store that stops answering (reads and deletes hang): the report is answered from what the service holds, and replaces the ticket once', async () => {
    const { appId, secret } = mock.createApp();
    class Hanging extends MemoryCache {
      hang = false;
      override get(key: string): Promise<string | undefined> {
        return this.hang ? new Promise(() => {}) : super.get(key);
      }
      override deleteIfEquals(key: string, expected: string): Promise<boolean> {
        return this.hang ? new Promise(() => {}) : super.deleteIfEquals(key, expected);
      }
    }
    const store = new Hanging();
    // The aged entry is there before the service starts: its memory of the ticket carries that age.
    const first = await startTokenService({ cache: store, apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    const ticket = await ticketOf(first.url, appId);
    await first.close();
    await age(store, appId);
    const service = await startTokenService({ cache: store, apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    try {
      expect(await ticketOf(service.url, appId)).toBe(ticket);
      mock.issueTicket(appId);
      store.hang = true;
      const requests = mock.counters(appId).ticketRequests;
      const answered = await report(service.url, appId, ticket);
      expect(answered.status).toBe(200);
      expect(answered.body.ticket).not.toBe(ticket);
      expect(mock.isTicketValid(appId, answered.body.ticket as string)).toBe(true);
      expect((await report(service.url, appId, answered.body.ticket)).status).toBe(429);
      expect(mock.counters(appId).ticketRequests).toBe(requests + 1);
    } finally {
      store.hang = false;
      await service.close();
    }
  }, 30_000);
});

describe("a ticket's report and its caller", () => {
  it('a caller that hangs up mid-report: counted 499, the fetch goes on, and the next report is answered with its ticket', async () => {
    const setting = await setup();
    const { appId, store, service, client } = setting;
    try {
      const ticket = await client.jssdk.getTicket();
      await age(store, appId);
      mock.issueTicket(appId);
      const requests = mock.counters(appId).ticketRequests;
      mock.setLatency(300);
      try {
        const controller = new AbortController();
        const sent = fetch(`${service.url}/v1/ticket/oa/${appId}/jsapi/invalidate`, { method: 'POST', headers: auth, body: JSON.stringify({ ticket }), signal: controller.signal });
        while ((await store.get(`wechat:jsapi_ticket:${appId}`)) !== undefined) await new Promise((resolve) => setTimeout(resolve, 5));
        controller.abort();
        await expect(sent).rejects.toMatchObject({ name: 'AbortError' });
        const next = await report(service.url, appId, ticket);
        expect(next.status).toBe(200);
        expect(mock.isTicketValid(appId, next.body.ticket as string)).toBe(true);
      } finally {
        mock.setLatency(0);
      }
      expect(mock.counters(appId).ticketRequests).toBe(requests + 1);
      const metrics = await (await fetch(`${service.url}/metrics`)).text();
      expect(metrics).toContain('wxkit_http_requests_total{route="/v1/ticket/{app}/{type}/invalidate",status="499"} 1');
      expect(metrics).toContain('wxkit_http_requests_total{route="/v1/ticket/{app}/{type}/invalidate",status="200"} 1');
    } finally {
      await teardown(setting);
    }
  });

  it('a client closed mid-report: its refreshTicket() fails as closed, typed', async () => {
    const setting = await setup();
    const { appId, store, client } = setting;
    try {
      await client.jssdk.getTicket();
      await age(store, appId);
      mock.issueTicket(appId);
      mock.setLatency(500);
      try {
        const refreshed = client.jssdk.refreshTicket().catch((error: unknown) => error);
        while ((await store.get(`wechat:jsapi_ticket:${appId}`)) !== undefined) await new Promise((resolve) => setTimeout(resolve, 5));
        await client.close();
        expect(await refreshed).toBeInstanceOf(TokenUnavailableError);
      } finally {
        mock.setLatency(0);
      }
    } finally {
      await teardown(setting);
    }
  });
});

describe("a ticket's report in the logs", () => {
  it("no line of the service or of its client holds a ticket, whatever the report's answer (200, 429, 502, 400)", async () => {
    const setting = await setup();
    const { appId, store, service, client, lines } = setting;
    try {
      const tickets = [await client.jssdk.getTicket()];
      await age(store, appId);
      mock.issueTicket(appId);
      tickets.push(await client.jssdk.refreshTicket());
      await client.jssdk.refreshTicket().catch(() => undefined);
      await age(store, appId);
      tickets.push(mock.issueTicket(appId));
      mock.injectFault({ kind: 'errcode', path: 'cgi-bin/ticket/getticket', errcode: -1, times: 1 });
      await client.jssdk.refreshTicket().catch(() => undefined);
      // A body whose ticket is no string: 400.
      await report(service.url, appId, { value: tickets[1] });
      expect(lines.some((line) => line.includes('serve.ticket_replaced'))).toBe(true);
      for (const ticket of tickets) expect(lines.filter((line) => line.includes(ticket))).toEqual([]);
      expect(lines.filter((line) => line.includes(KEY))).toEqual([]);
    } finally {
      await teardown(setting);
    }
  });
});
