import { createServer, type Server } from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { OfficialAccount, remoteTokenSource, type TokenSource, type TokenSourceRequest } from '../src/index.js';

// refreshTicket() with a token source: the ticket wx.config refused is reported to a source that takes
// such reports (remoteTokenSource); any other source is asked for a ticket with force, as before.
let server: Server;
let url: string;
let answer: (method: string, path: string) => { status: number; body: string } = () => ({ status: 404, body: '' });
/** The requests the server got, as `METHOD /path`. */
let asked: string[] = [];
beforeAll(async () => {
  server = createServer((req, res) => {
    asked.push(`${req.method} ${req.url}`);
    req.resume();
    req.on('end', () => {
      const { status, body } = answer(req.method ?? 'GET', req.url ?? '');
      res.writeHead(status, { 'content-type': 'application/json' }).end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
afterEach(() => {
  vi.useRealTimers();
  asked = [];
});

const ticketRequest: TokenSourceRequest = { kind: 'official_account', id: 'wx0123456789abcdef', field: 'ticket', ticketType: 'jsapi' };
const now = () => Math.floor(Date.now() / 1000);

describe("remoteTokenSource and a service without the ticket report's route", () => {
  it('sends no ticket report for a minute after a 405, then tries the route again: a service upgraded meanwhile (a rolling upgrade) gets reports', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    const report = `POST /v1/ticket/official_account/wx0123456789abcdef/jsapi/invalidate`;
    try {
      // An instance from before the route: it takes only GET there.
      answer = () => ({ status: 405, body: JSON.stringify({ error: { code: 'method_not_allowed', message: 'GET only' } }) });
      await expect(source.invalidate(ticketRequest, 'TICKET_1', undefined, { force: true })).resolves.toBeUndefined();
      await expect(source.invalidate(ticketRequest, 'TICKET_1', undefined, { force: true })).resolves.toBeUndefined();
      expect(asked).toEqual([report]);
      // Every instance runs the new release now.
      answer = (method) => ({ status: 200, body: JSON.stringify({ ticket: method === 'POST' ? 'TICKET_2' : 'TICKET_1', expires_at: now() + 7200 }) });
      vi.advanceTimersByTime(61_000);
      await expect(source.invalidate(ticketRequest, 'TICKET_1', undefined, { force: true })).resolves.toMatchObject({ value: 'TICKET_2' });
      expect(asked).toEqual([report, report]);
    } finally {
      await source.close?.();
    }
  });
});

describe('refreshTicket() with a token source of your own', () => {
  /** A source written before tickets were reported: its invalidate() handles access tokens only. */
  function tokenOnlySource(invalidate: TokenSource['invalidate']): TokenSource & { fetched: string[]; reported: string[] } {
    let tickets = 0;
    const fetched: string[] = [];
    const reported: string[] = [];
    return {
      fetched,
      reported,
      async fetch(request, options) {
        fetched.push(`${request.field}${options?.force ? ' force' : ''}`);
        if (request.field === 'access_token') return { value: 'ACCESS_TOKEN_0123456789', expiresIn: 7000 };
        tickets += 1;
        return { value: `TICKET_${tickets}_0123456789`, expiresIn: 7000 };
      },
      async invalidate(request, value, errcode, options) {
        reported.push(`${request.field} ${value}`);
        return invalidate(request, value, errcode, options);
      },
    };
  }

  it('that reports access tokens only gets no ticket report: the ticket is fetched with force, as before, never taken from an answer about the access token', async () => {
    // It answers a report with its current access token, whatever was reported: a report of a ticket would
    // have the client sign wx.config with the access token.
    const answersTheToken = tokenOnlySource(async () => ({ value: 'ACCESS_TOKEN_0123456789', expiresIn: 7000 }));
    const throwsForTickets = tokenOnlySource(async (request) => {
      if (request.field !== 'access_token') throw new Error('this source replaces access tokens only');
    });
    for (const source of [answersTheToken, throwsForTickets]) {
      const client = new OfficialAccount({ appId: 'wx0123456789abcdef', tokenSource: source, logger: false });
      try {
        expect(await client.jssdk.getTicket()).toBe('TICKET_1_0123456789');
        expect(await client.jssdk.refreshTicket()).toBe('TICKET_2_0123456789');
        expect(source.reported).toEqual([]);
        expect(source.fetched).toEqual(['ticket', 'ticket force']);
      } finally {
        await client.close();
      }
    }
  });

  it('that says it takes ticket reports (takesTicketReports) gets the ticket the client holds, and its answer is the new ticket', async () => {
    const source = { ...tokenOnlySource(async () => ({ value: 'TICKET_REPLACED_0123456789', expiresIn: 7000 })), takesTicketReports: true };
    const client = new OfficialAccount({ appId: 'wx0123456789abcdef', tokenSource: source, logger: false });
    try {
      expect(await client.jssdk.getTicket()).toBe('TICKET_1_0123456789');
      expect(await client.jssdk.refreshTicket()).toBe('TICKET_REPLACED_0123456789');
      expect(source.reported).toEqual(['ticket TICKET_1_0123456789']);
      expect(source.fetched).toEqual(['ticket']);
    } finally {
      await client.close();
    }
  });
});
