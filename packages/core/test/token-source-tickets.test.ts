import { createServer, type Server } from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { remoteTokenSource, type TokenSourceRequest } from '../src/index.js';

// refreshTicket() with a token source: the ticket wx.config refused is reported to the source.
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
