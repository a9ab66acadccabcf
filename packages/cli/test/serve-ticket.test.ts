import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Dispatcher } from 'undici';
import { MemoryCache, OfficialAccount, Work, remoteTokenSource, type TokenCache } from '@wxkit/core';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { CountingAgent } from './counting-agent.js';
import { startTokenService, type TokenService } from '../src/serve.js';

// A JS-SDK ticket that wx.config refuses (another program outside the fleet got WeChat to hand out a new
// one): the program's refreshTicket() reports it to the token service, which replaces it if it still
// holds it, once however many clients report it.
const KEY = 'serve-ticket-key-0123456789abcdef';
const auth = { authorization: `Bearer ${KEY}` };

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

/** A service for one new app of the mock's, on a store of its own, and a client of it. */
async function serviceOf(): Promise<{ appId: string; store: MemoryCache; service: TokenService }> {
  const { appId, secret } = mock.createApp();
  const store = new MemoryCache();
  const service = await startTokenService({ cache: store, apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
  return { appId, store, service };
}

function clientOf(appId: string, url: string, dispatcher?: Dispatcher): OfficialAccount {
  return new OfficialAccount({ appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: KEY, ...(dispatcher ? { dispatcher } : {}) }), logger: false });
}

/**
 * Moves the service's jsapi ticket entry's fetched_at `seconds` back, as if the service had fetched the
 * ticket that long ago: a ticket fetched within the last minute is not replaced on a report.
 */
async function age(store: MemoryCache, appId: string, seconds = 120, key = `wechat:jsapi_ticket:${appId}`): Promise<void> {
  const entry = JSON.parse((await store.get(key))!) as { fetched_at: number; expires_at: number };
  entry.fetched_at -= seconds;
  await store.set(key, JSON.stringify(entry), entry.expires_at - Math.floor(Date.now() / 1000));
}

async function report(url: string, appId: string, ticket: unknown, type = 'jsapi'): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }> {
  const res = await fetch(`${url}/v1/ticket/oa/${appId}/${type}/invalidate`, { method: 'POST', headers: auth, body: JSON.stringify({ ticket }) });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, unknown> };
}

describe('refreshTicket() of a client of wxkit serve', () => {
  it("after the service's ticket was superseded, gets a new ticket that wx.config takes, in one request to the service", async () => {
    const { appId, store, service } = await serviceOf();
    const agent = new CountingAgent();
    const client = clientOf(appId, service.url, agent);
    try {
      const first = await client.jssdk.getTicket();
      await age(store, appId);
      // Another program got a new ticket: the service's lives out its grace window, then wx.config refuses it.
      mock.issueTicket(appId);
      mock.advanceClock(300);
      expect(mock.isTicketValid(appId, first)).toBe(false);
      const fetches = mock.counters(appId).ticketRequests;

      const second = await client.jssdk.refreshTicket();
      expect(second).not.toBe(first);
      expect(mock.isTicketValid(appId, second)).toBe(true);
      expect(mock.counters(appId).ticketRequests).toBe(fetches + 1);
      // The report, answered with the new ticket; no GET after it, and the client keeps what it got.
      expect(agent.sent).toEqual([`GET v1/ticket/official_account/${appId}/jsapi`, `POST v1/ticket/official_account/${appId}/jsapi/invalidate`]);
      expect(await client.jssdk.getTicket()).toBe(second);
      expect(agent.sent).toHaveLength(2);
      // The service hands it to everyone from now on.
      const res = await fetch(`${service.url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth });
      expect(((await res.json()) as { ticket: string }).ticket).toBe(second);
    } finally {
      await client.close();
      await service.close();
      await agent.close();
    }
  });

  it("holding no ticket yet, reports the one the service answers", async () => {
    const { appId, store, service } = await serviceOf();
    const agent = new CountingAgent();
    const client = clientOf(appId, service.url, agent);
    try {
      const res = await fetch(`${service.url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth });
      const { ticket: first } = (await res.json()) as { ticket: string };
      await age(store, appId);
      mock.issueTicket(appId);
      const second = await client.jssdk.refreshTicket();
      expect(second).not.toBe(first);
      expect(mock.isTicketValid(appId, second)).toBe(true);
      expect(agent.sent).toEqual([`GET v1/ticket/official_account/${appId}/jsapi`, `POST v1/ticket/official_account/${appId}/jsapi/invalidate`]);
    } finally {
      await client.close();
      await service.close();
      await agent.close();
    }
  });

  it("a WeCom agent's ticket (agent_jsapi) is reported on its own route, and replaced", async () => {
    const { corpId, agentId, secret } = mock.createWorkApp();
    const id = `${corpId}:${agentId}`;
    const store = new MemoryCache();
    const service = await startTokenService({ cache: store, apps: [{ kind: 'work', corpId, agentId, secret }], keys: [KEY], port: 0, workBaseUrl: mock.url, logger: false });
    const agent = new CountingAgent();
    const client = new Work({ corpId, agentId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url: service.url, key: KEY, dispatcher: agent }), logger: false });
    try {
      const corp = await client.jssdk.getTicket('jsapi');
      const first = await client.jssdk.getTicket('agent_jsapi');
      await age(store, id, 120, `wechat:work:agent_jsapi_ticket:${corpId}:${agentId}`);
      mock.issueTicket(id, 'agent_config');
      const second = await client.jssdk.refreshTicket('agent_jsapi');
      expect(second).not.toBe(first);
      expect(mock.isTicketValid(id, second)).toBe(true);
      expect(agent.sent.at(-1)).toBe(`POST v1/ticket/work/${encodeURIComponent(id)}/agent_jsapi/invalidate`);
      // The corp's ticket is another entry: untouched.
      expect(await client.jssdk.getTicket('jsapi')).toBe(corp);
    } finally {
      await client.close();
      await service.close();
      await agent.close();
    }
  });

  it('3 clients reporting the same ticket cost one ticket fetch, and all get the same new ticket', async () => {
    const { appId, store, service } = await serviceOf();
    const clients = [0, 1, 2].map(() => clientOf(appId, service.url));
    try {
      const held = await Promise.all(clients.map((client) => client.jssdk.getTicket()));
      expect(new Set(held).size).toBe(1);
      await age(store, appId);
      mock.issueTicket(appId);
      const fetches = mock.counters(appId).ticketRequests;

      const renewed = await Promise.all(clients.map((client) => client.jssdk.refreshTicket()));
      expect(new Set(renewed).size).toBe(1);
      expect(renewed[0]).not.toBe(held[0]);
      expect(mock.isTicketValid(appId, renewed[0]!)).toBe(true);
      expect(mock.counters(appId).ticketRequests).toBe(fetches + 1);
      // A late report of the old ticket is answered with the new one, with no fetch.
      const late = await report(service.url, appId, held[0]);
      expect(late).toMatchObject({ status: 200, body: { ticket: renewed[0] } });
      expect(mock.counters(appId).ticketRequests).toBe(fetches + 1);
    } finally {
      await Promise.all(clients.map((client) => client.close()));
      await service.close();
    }
  });

  it('on a service without the route (another make: 404; an older wxkit serve: 405) still gets its ticket, and the report is not sent again within the minute', async () => {
    const ticket = 'ticket-of-a-service-of-another-make-0123456789';
    for (const refusal of [404, 405]) {
      const asked: string[] = [];
      const server: Server = createServer((req, res) => {
        asked.push(`${req.method} ${req.url}`);
        req.resume();
        if (req.method === 'GET' && /^\/v1\/ticket\/official_account\/[^/]+\/jsapi$/.test(req.url ?? '')) {
          res.writeHead(200, { 'content-type': 'application/json' });
          return void res.end(JSON.stringify({ ticket, expires_at: Math.floor(Date.now() / 1000) + 3600 }));
        }
        res.writeHead(refusal, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { code: refusal === 404 ? 'not_found' : 'method_not_allowed', message: 'no' } }));
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const { appId } = mock.createApp();
      const client = clientOf(appId, `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
      try {
        expect(await client.jssdk.getTicket()).toBe(ticket);
        expect(await client.jssdk.refreshTicket()).toBe(ticket);
        expect(await client.jssdk.refreshTicket()).toBe(ticket);
        const get = `GET /v1/ticket/official_account/${appId}/jsapi`;
        expect(asked).toEqual([get, `POST /v1/ticket/official_account/${appId}/jsapi/invalidate`, get, get]);
      } finally {
        await client.close();
        await new Promise((resolve) => server.close(resolve));
      }
    }
  });
});

describe('POST /v1/ticket/{app}/{type}/invalidate', () => {
  it('reports of a ticket that reach two instances at once cost one fetch, when WeChat hands the same ticket out again (wx.config refused the page URL)', async () => {
    const { appId, secret } = mock.createApp();
    const key = `wechat:jsapi_ticket:${appId}`;
    // One store, seen by each instance through a view of its own. Once armed, a delete of the ticket entry
    // waits until both instances have read the entry: the two reports are checked against the same
    // entry before either instance replaces it.
    const store = new MemoryCache();
    let armed = false;
    const read = new Set<number>();
    const waiting: (() => void)[] = [];
    const view = (instance: number): TokenCache => ({
      get: async (k) => {
        const value = await store.get(k);
        if (armed && k === key && !read.has(instance)) {
          read.add(instance);
          if (read.size === 2) for (const go of waiting.splice(0)) go();
        }
        return value;
      },
      set: (k, value, ttl) => store.set(k, value, ttl),
      delete: (k) => store.delete(k),
      add: (k, value, ttl) => store.add(k, value, ttl),
      deleteIfEquals: async (k, expected) => {
        if (armed && k === key && read.size < 2) await new Promise<void>((resolve) => waiting.push(resolve));
        return store.deleteIfEquals(k, expected);
      },
      compareAndSet: (k, expected, value, ttl) => store.compareAndSet(k, expected, value, ttl),
    });
    const services = await Promise.all([0, 1].map((instance) => startTokenService({ cache: view(instance), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false })));
    try {
      const res = await fetch(`${services[0]!.url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth });
      const { ticket } = (await res.json()) as { ticket: string };
      await age(store, appId);
      const fetches = mock.counters(appId).ticketRequests;
      armed = true;
      const answers = await Promise.all(services.map((service) => report(service.url, appId, ticket)));
      // getticket answers the ticket it still takes: the one reported, fetched anew.
      expect(answers.map(({ status, body }) => ({ status, ticket: body.ticket }))).toEqual([
        { status: 200, ticket },
        { status: 200, ticket },
      ]);
      expect(mock.counters(appId).ticketRequests).toBe(fetches + 1);
      // Neither instance refuses it since: a GET of each fetches nothing.
      for (const service of services) {
        const again = await fetch(`${service.url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth });
        expect(((await again.json()) as { ticket: string }).ticket).toBe(ticket);
      }
      expect(mock.counters(appId).ticketRequests).toBe(fetches + 1);
    } finally {
      await Promise.all(services.map((service) => service.close()));
    }
  });

  it("a report that reaches an instance once another deleted the ticket waits for that one's fetch: one fetch, though this instance still remembered the ticket", async () => {
    const { appId, secret } = mock.createApp();
    const store = new MemoryCache();
    const key = `wechat:jsapi_ticket:${appId}`;
    const services = await Promise.all([0, 1].map(() => startTokenService({ cache: store, apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false })));
    try {
      const res = await fetch(`${services[0]!.url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth });
      const { ticket } = (await res.json()) as { ticket: string };
      await age(store, appId);
      // The second instance reads the entry now: it remembers the ticket for its memo window (a second).
      await (await fetch(`${services[1]!.url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth })).text();
      const fetches = mock.counters(appId).ticketRequests;
      mock.setLatency(300);
      try {
        const first = report(services[0]!.url, appId, ticket);
        while ((await store.get(key)) !== undefined) await new Promise((resolve) => setTimeout(resolve, 5));
        const second = await report(services[1]!.url, appId, ticket);
        expect((await first).status).toBe(200);
        // getticket handed out the same ticket again, fetched just now: not replaced once more.
        expect(second.status).toBe(429);
      } finally {
        mock.setLatency(0);
      }
      expect(mock.counters(appId).ticketRequests).toBe(fetches + 1);
      const again = await fetch(`${services[1]!.url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth });
      expect(((await again.json()) as { ticket: string }).ticket).toBe(ticket);
      expect(mock.counters(appId).ticketRequests).toBe(fetches + 1);
    } finally {
      await Promise.all(services.map((service) => service.close()));
    }
  });

  it('a ticket fetched less than a minute ago is not replaced: 429 invalidate_spaced, with Retry-After', async () => {
    const { appId, service } = await serviceOf();
    try {
      const res = await fetch(`${service.url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth });
      const { ticket } = (await res.json()) as { ticket: string };
      mock.issueTicket(appId);
      const fetches = mock.counters(appId).ticketRequests;
      const spaced = await report(service.url, appId, ticket);
      expect(spaced.status).toBe(429);
      expect(spaced.body).toMatchObject({ error: { code: 'invalidate_spaced', retryAfterSeconds: expect.any(Number) } });
      const seconds = Number(spaced.headers.get('retry-after'));
      expect(seconds).toBeGreaterThanOrEqual(1);
      expect(seconds).toBeLessThanOrEqual(60);
      expect(mock.counters(appId).ticketRequests).toBe(fetches);
    } finally {
      await service.close();
    }
  });

  it('a report of a ticket the service no longer holds is answered with the current one, with its expiry, and fetches nothing', async () => {
    const { appId, service } = await serviceOf();
    try {
      const res = await fetch(`${service.url}/v1/ticket/oa/${appId}/jsapi`, { headers: auth });
      const current = (await res.json()) as { ticket: string; expires_at: number };
      const fetches = mock.counters(appId).ticketRequests;
      const answered = await report(service.url, appId, 'a-ticket-the-service-never-held');
      expect(answered).toMatchObject({ status: 200, body: { ticket: current.ticket, expires_at: current.expires_at } });
      expect(mock.counters(appId).ticketRequests).toBe(fetches);
    } finally {
      await service.close();
    }
  });

  it('refuses a body without a ticket (400), a ticket type the app has not (404), and a GET (405)', async () => {
    const { appId, service } = await serviceOf();
    try {
      expect(await report(service.url, appId, undefined)).toMatchObject({ status: 400, body: { error: { code: 'bad_request', message: expect.stringContaining('{"ticket":"…"}') } } });
      expect(await report(service.url, appId, 'x', 'agent_jsapi')).toMatchObject({ status: 404, body: { error: { code: 'unknown_ticket_type' } } });
      const get = await fetch(`${service.url}/v1/ticket/oa/${appId}/jsapi/invalidate`, { headers: auth });
      expect(get.status).toBe(405);
      expect(get.headers.get('allow')).toBe('POST');
      await get.text();
      expect(mock.counters(appId).ticketRequests).toBe(0);
    } finally {
      await service.close();
    }
  });
});
