import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '@wxkit/testing';
import { HttpClient } from '../src/http.js';
import type { HttpError } from '../src/errors.js';

// The deadline of an exchange starts when the request is on a socket, not when it was queued behind the
// pool's 128 connections: a request the server answered in time is never reported as a timeout (a
// classic token fetch would have invalidated the previous token and its answer been thrown away; a send
// retried and duplicated). The wait for a socket has its own window, and a request that never left the
// queue fails as not sent. Token fetches have a pool of their own.

type Handler = (req: IncomingMessage, res: ServerResponse) => void;
let server: Server;
let base = '';
/** Requests the server received, by path. */
const received = new Map<string, number>();
const routes = new Map<string, Handler>();

beforeAll(async () => {
  server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    received.set(path, (received.get(path) ?? 0) + 1);
    const route = routes.get(path);
    if (route) route(req, res);
    else res.writeHead(404).end();
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

const json = (res: ServerResponse, body: unknown) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

// Each test uses a base URL path of its own and a timeout of its own, so each has pools of its own.
function client(timeoutMs: number, extra: { queueTimeoutMs?: number } = {}) {
  return new HttpClient({ baseUrl: base, timeoutMs, maxResponseBytes: 1 << 20, dispatcher: undefined, userAgent: 'test', ...extra });
}

const codeOf = (result: PromiseSettledResult<unknown>) => (result.status === 'rejected' ? (result.reason as HttpError).code : 'ok');

describe('the exchange deadline starts on the socket', () => {
  it('200 requests at once through 128 connections, each answered in 1 s with a 1.7 s deadline: all 200 succeed', async () => {
    let handled = 0;
    routes.set('/deadline/token', (_req, res) => {
      handled += 1;
      const n = handled;
      setTimeout(() => json(res, { access_token: `T${n}`, expires_in: 7200 }), 1_000);
    });
    // The 72 that wait one 1 s turn for a connection would pass the deadline if it ran from the queue
    // (2 s), and each exchange has 0.7 s to spare on a busy machine. A queue window long enough for them.
    const http = client(1_700, { queueTimeoutMs: 5_000 });
    const results = await Promise.allSettled(Array.from({ length: 200 }, () => http.json({ method: 'GET', path: 'deadline/token' })));
    await http.close();
    expect(handled).toBe(200);
    expect(results.map(codeOf).filter((code) => code !== 'ok')).toEqual([]);
  });

  it('a body that has fully arrived is kept, even when its last bytes came after the deadline', async () => {
    // Headers at once, the whole body after a pause shorter than the body timeout but past the
    // exchange's deadline: with a content-length, and chunked (the last chunk and the end together).
    const late = (chunked: boolean): Handler => (_req, res) => {
      const body = JSON.stringify({ ok: true, chunked });
      res.writeHead(200, chunked ? { 'content-type': 'application/json' } : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.flushHeaders();
      setTimeout(() => res.write(body.slice(0, 3)), 1_200);
      setTimeout(() => res.end(body.slice(3)), 2_400);
    };
    routes.set('/late/length', late(false));
    routes.set('/late/chunked', late(true));
    const http = client(2_000);
    const results = await Promise.allSettled([http.json({ method: 'GET', path: 'late/length' }), http.json({ method: 'GET', path: 'late/chunked' })]);
    await http.close();
    expect(results.map(codeOf)).toEqual(['ok', 'ok']);
  });
});

describe('the wait for a connection', () => {
  it('a request that finds no free connection within its queue window fails as not sent, and the server never sees it', async () => {
    const held: ServerResponse[] = [];
    routes.set('/queue/hold', (_req, res) => held.push(res));
    routes.set('/queue/queued', (_req, res) => json(res, { ok: 1 }));
    routes.set('/queue/after', (_req, res) => json(res, { ok: 1 }));
    // The 128 connections stay busy far past the queue window of the 20 queued behind them.
    const http = client(20_000, { queueTimeoutMs: 200 });
    const holding = Array.from({ length: 128 }, () => http.json({ method: 'GET', path: 'queue/hold' }));
    const queued = await Promise.allSettled(Array.from({ length: 20 }, () => http.json({ method: 'GET', path: 'queue/queued' })));
    expect(queued.map((result) => (result.status === 'rejected' ? [(result.reason as HttpError).code, (result.reason as HttpError).sent] : 'ok'))).toEqual(
      Array.from({ length: 20 }, () => ['ERR_WXKIT_TIMEOUT', false]),
    );
    // Free the connections. The given-up requests reach the front of the queue before the next one and
    // are dropped there: the server gets the 128 and then the one sent after, nothing else.
    while (held.length < 128) await new Promise((resolve) => setTimeout(resolve, 10));
    for (const res of held) json(res, { ok: 1 });
    await Promise.all(holding);
    await http.json({ method: 'GET', path: 'queue/after' });
    await http.close();
    expect(received.get('/queue/hold')).toBe(128);
    expect(received.get('/queue/queued')).toBeUndefined();
    expect(received.get('/queue/after')).toBe(1);
  });

  it('a token fetch is not held back by API calls filling the pool', async () => {
    const held: ServerResponse[] = [];
    routes.set('/lane/send', (_req, res) => held.push(res));
    routes.set('/lane/token', (_req, res) => json(res, { access_token: 'T', expires_in: 7200 }));
    const http = client(20_000, { queueTimeoutMs: 10_000 });
    let sendsDone = 0;
    const sends = Array.from({ length: 160 }, () => http.json({ method: 'POST', path: 'lane/send', json: {} }).finally(() => (sendsDone += 1)));
    while (held.length < 128) await new Promise((resolve) => setTimeout(resolve, 10));
    const token = await http.json({ method: 'GET', path: 'lane/token', tokenFetch: true });
    expect(token.access_token).toBe('T');
    // Answered while every send still waited, 32 of them for a connection.
    expect(sendsDone).toBe(0);
    expect(received.get('/lane/send')).toBe(128);
    for (const res of held) json(res, { ok: 1 });
    while (held.length < 160) await new Promise((resolve) => setTimeout(resolve, 10));
    for (const res of held.slice(128)) json(res, { ok: 1 });
    await Promise.all(sends);
    await http.close();
  });

  it('a refused connection is an HTTP error that was not sent, and it names where the request went (never the credentials of the URL)', async () => {
    // From the test kit's block: a port the kernel picked could be taken by another file's server.
    const port = await freePort();
    const http = new HttpClient({ baseUrl: `http://user:pa55word@127.0.0.1:${port}/base`, timeoutMs: 2_000, maxResponseBytes: 1 << 20, dispatcher: undefined, userAgent: 'test' });
    const [result] = await Promise.allSettled([http.json({ method: 'GET', path: 'x' })]);
    await http.close();
    expect(result.status === 'rejected' && [(result.reason as HttpError).code, (result.reason as HttpError).sent]).toEqual(['ERR_WXKIT_HTTP', false]);
    const { message } = (result as PromiseRejectedResult).reason as HttpError;
    expect(message).toBe(`The request to x failed before WeChat answered (ECONNREFUSED; it went to http://127.0.0.1:${port})`);
  });
});
