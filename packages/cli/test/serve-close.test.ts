import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { Agent, request, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { MemoryCache, WeChatClient } from '@wxkit/core';
import { startMockWeChat, type MockApp, type MockWeChat } from '@wxkit/testing';
import { startTokenService, type TokenService, type TokenServiceOptions } from '../src/serve.js';
import { ServiceMetrics } from '../src/serve-metrics.js';

setFlagsFromString('--expose-gc');
/** V8's garbage collector, for the test that checks what a request leaves reachable. */
const gc = runInNewContext('gc') as () => void;

// close() (SIGTERM) on connections a client keeps alive: the requests under way finish, and nothing
// after them is served on those connections, so close() ends however busy its clients are.
const KEY = 'close-test-key-0123456789abcdef';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

/** A service for a fresh mock app. */
async function serve(options: Partial<TokenServiceOptions> = {}): Promise<{ service: TokenService; app: MockApp }> {
  const app = mock.createApp();
  const service = await startTokenService({
    cache: new MemoryCache(),
    apps: [{ kind: 'official_account', appId: app.appId, secret: app.secret }],
    keys: [KEY],
    port: 0,
    baseUrl: mock.url,
    logger: false,
    ...options,
  });
  return { service, app };
}

interface Answer {
  /** -1 when no answer came: the connection was refused or closed. */
  status: number;
  connection?: string;
}

/** GET `path` on `agent`'s connections: its status and Connection header. */
function get(service: TokenService, path: string, agent: Agent): Promise<Answer> {
  return new Promise((resolve) => {
    request(`${service.url}${path}`, { agent, headers: { authorization: `Bearer ${KEY}` } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode!, connection: res.headers.connection }));
      res.on('error', () => resolve({ status: -1 }));
    })
      .on('error', () => resolve({ status: -1 }))
      .end();
  });
}

/** A raw connection to the service, and everything it receives until the service closes it. */
function rawConnection(service: TokenService): { socket: Socket; received: Promise<string> } {
  const { hostname, port } = new URL(service.url);
  const socket = connect(Number(port), hostname);
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  const received = new Promise<string>((resolve) => {
    socket.on('error', () => undefined);
    socket.once('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
  return { socket, received };
}

/** A service for a fresh mock app, and the log lines it writes. */
async function servedWithLog(options: Partial<TokenServiceOptions> = {}): Promise<{ service: TokenService; app: MockApp; lines: Record<string, unknown>[] }> {
  const lines: Record<string, unknown>[] = [];
  const record = (fields: Record<string, unknown>) => void lines.push(fields);
  return { ...(await serve({ ...options, logger: { info: record, warn: record, error: record } })), lines };
}

/**
 * Sends `requests` on a connection of its own, and hangs up once WeChat was asked for the first (its
 * answer still to come); resolves with what the connection received.
 */
async function hangUpOnceAsked(service: TokenService, app: MockApp, requests: string): Promise<string> {
  const before = mock.counters(app.appId).requests;
  const { socket, received } = rawConnection(service);
  socket.write(requests);
  await vi.waitFor(() => expect(mock.counters(app.appId).requests).toBe(before + 1));
  socket.destroy();
  return received;
}

/** A token request for `app` as it goes on the wire. */
const tokenRequest = (app: MockApp) => `GET /v1/token/oa/${app.appId} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\n\r\n`;

/** The service's request log, a line each as `route status reason`. */
const requestsLogged = (lines: Record<string, unknown>[]) =>
  lines.filter((line) => line.event === 'serve.request').map((line) => `${String(line.route)} ${String(line.status)} ${String(line.reason)}`);

/**
 * A store whose reads of the app's jsapi ticket entry, once `hold` is set, and whose compare-and-deletes
 * of it, once `holdDeletes` is set, each wait until the test lets them go (`held`): a store that hangs,
 * for as long as the test needs.
 */
function heldTicketCalls(appId: string) {
  const ticketKey = `wechat:jsapi_ticket:${appId}`;
  class HeldCalls extends MemoryCache {
    hold = false;
    holdDeletes = false;
    /** The compare-and-deletes of the ticket entry asked for, held or not. */
    deletesAsked = 0;
    readonly held: (() => void)[] = [];
    override get(key: string): Promise<string | undefined> {
      if (!this.hold || key !== ticketKey) return super.get(key);
      return new Promise((resolve) => this.held.push(() => resolve(super.get(key))));
    }
    override deleteIfEquals(key: string, expected: string): Promise<boolean> {
      if (key === ticketKey) this.deletesAsked += 1;
      if (!this.holdDeletes || key !== ticketKey) return super.deleteIfEquals(key, expected);
      return new Promise((resolve) => this.held.push(() => resolve(super.deleteIfEquals(key, expected))));
    }
    /** Moves the ticket entry's fetched_at two minutes back: a report of that ticket replaces it. */
    async age(): Promise<void> {
      const entry = JSON.parse((await super.get(ticketKey))!) as { fetched_at: number; expires_at: number };
      entry.fetched_at -= 120;
      await this.set(ticketKey, JSON.stringify(entry), entry.expires_at - Math.floor(Date.now() / 1000));
    }
  }
  return new HeldCalls();
}

/** The service's answers to the POSTs for `appId`, as its handlers write them; `taken` is to unsubscribe. */
function postAnswers(appId: string) {
  const answers: ServerResponse[] = [];
  const taken = (message: unknown) => {
    const { request: req, response } = message as { request: IncomingMessage; response: ServerResponse };
    if (req.method === 'POST' && req.url?.includes(appId)) answers.push(response);
  };
  subscribe('http.server.request.start', taken);
  return { answers, taken };
}

/** A service for a fresh mock app on a store that holds its ticket calls, its jsapi ticket fetched two minutes ago. */
async function servedAged(options: Partial<TokenServiceOptions>) {
  const app = mock.createApp();
  const cache = heldTicketCalls(app.appId);
  const lines: Record<string, unknown>[] = [];
  const record = (fields: Record<string, unknown>) => void lines.push(fields);
  const service = await startTokenService({ cache, apps: [{ kind: 'official_account', appId: app.appId, secret: app.secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: { info: record, warn: record, error: record }, ...options });
  const warm = await fetch(`${service.url}/v1/ticket/oa/${app.appId}/jsapi`, { headers: { authorization: `Bearer ${KEY}` } });
  expect(warm.status).toBe(200);
  const { ticket } = (await warm.json()) as { ticket: string };
  await cache.age();
  const stored = await cache.get(`wechat:jsapi_ticket:${app.appId}`);
  lines.length = 0;
  return { app, cache, lines, service, ticket, stored, events: () => lines.map((line) => String(line.event)) };
}

/** A report of `ticket` on a raw connection of its own. */
function reportOn(service: TokenService, appId: string, ticket: string): { socket: Socket; received: Promise<string> } {
  const body = JSON.stringify({ ticket });
  const connection = rawConnection(service);
  connection.socket.write(`POST /v1/ticket/oa/${appId}/jsapi/invalidate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
  return connection;
}

/** The status lines of the HTTP answers in `text`. */
const statusLines = (text: string) => text.split('\r\n').filter((line) => line.startsWith('HTTP/1.1 '));

/**
 * Sends `head` (a request's line and headers, announcing `total` bytes of body) on a raw connection,
 * then the body as fast as the service reads it, until it is all written or the service closes the
 * connection: `uploaded` resolves the bytes written.
 */
function bigUpload(service: TokenService, head: string, total: number): { socket: Socket; received: Promise<string>; uploaded: Promise<number> } {
  const { socket, received } = rawConnection(service);
  const chunk = Buffer.alloc(64 * 1024, 'a');
  let gone = false;
  socket.once('close', () => (gone = true));
  socket.write(head);
  const uploaded = (async () => {
    let written = 0;
    while (written < total && !gone) {
      written += chunk.length;
      if (!socket.write(chunk)) await new Promise((resolve) => (socket.once('drain', resolve), socket.once('close', resolve)));
    }
    return written;
  })();
  return { socket, received, uploaded };
}

describe('close() of the token service', () => {
  it('a keep-alive connection with a request under way: that request gets its answer with Connection: close, and nothing after it is served', async () => {
    const { service, app } = await serve();
    let closing: Promise<unknown> | undefined;
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const token = `/v1/token/oa/${app.appId}`;
      expect((await get(service, token, agent)).status).toBe(200);
      // A ticket fetch under way on the same kept-alive connection when close() begins.
      mock.setLatency(1000);
      const before = mock.counters(app.appId).requests;
      const inFlight = get(service, `/v1/ticket/oa/${app.appId}/jsapi`, agent);
      await vi.waitFor(() => expect(mock.counters(app.appId).requests).toBe(before + 1));
      let closed = false;
      closing = service.close().then(() => (closed = true));
      expect(await inFlight).toEqual({ status: 200, connection: 'close' });
      mock.setLatency(0);
      // A client that keeps asking on that agent, until close() is done and three times at least: none of it is served.
      const after: number[] = [];
      while (after.length < 3 || (!closed && after.length < 20)) after.push((await get(service, token, agent)).status);
      expect(after).not.toContain(200);
      await closing;
      expect(closed).toBe(true);
    } finally {
      mock.setLatency(0);
      agent.destroy();
      await (closing ?? service.close());
    }
  });

  it("connections that have sent no byte (a load balancer's pre-opened ones) are closed at once: close() does not wait requestTimeoutMs for them, and a request under way still gets its answer", async () => {
    const { service, app } = await serve({ requestTimeoutMs: 600_000, headersTimeoutMs: 600_000 });
    let closing: Promise<unknown> | undefined;
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const silent = [rawConnection(service), rawConnection(service)];
    try {
      await Promise.all(silent.map(({ socket }) => new Promise((resolve) => socket.once('connect', resolve))));
      mock.setLatency(1000);
      const before = mock.counters(app.appId).requests;
      const inFlight = get(service, `/v1/ticket/oa/${app.appId}/jsapi`, agent);
      await vi.waitFor(() => expect(mock.counters(app.appId).requests).toBe(before + 1));
      // Past the silent ones' 'connect' and the request's arrival: the service has taken every connection.
      closing = service.close();
      // Closed by the service without a byte: the test's timeout (not 600 s) bounds both waits.
      expect(await Promise.all(silent.map(({ received }) => received))).toEqual(['', '']);
      expect(await inFlight).toEqual({ status: 200, connection: 'close' });
      await closing;
    } finally {
      mock.setLatency(0);
      agent.destroy();
      for (const { socket } of silent) socket.destroy();
      await (closing ?? service.close());
    }
  }, 10_000);

  it('a request whose bytes reached the host as close() began, on a connection that had sent nothing before, is answered 503 shutting_down, not cut unanswered', async () => {
    const { service } = await serve({ requestTimeoutMs: 600_000, headersTimeoutMs: 600_000 });
    const agent = new Agent({ keepAlive: false });
    const late = rawConnection(service);
    let closing: Promise<unknown> | undefined;
    try {
      await new Promise((resolve) => late.socket.once('connect', resolve));
      // A request on a connection opened after it, answered: the service has taken the first one.
      expect((await get(service, '/healthz', agent)).status).toBe(200);
      // Written to the kernel at once (the socket is connected and its buffer empty), and close() called
      // before the service's event loop reads it.
      late.socket.write(`GET /healthz HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\n\r\n`);
      closing = service.close();
      expect(await late.received).toMatch(/^HTTP\/1\.1 503 [^]*shutting_down/);
      await closing;
    } finally {
      agent.destroy();
      late.socket.destroy();
      await (closing ?? service.close());
    }
  }, 10_000);

  it('a request finished on a kept-alive connection after close() began is answered 503 shutting_down, and the connection closed; its log line says why', async () => {
    const { service, app, lines } = await servedWithLog();
    let closing: Promise<unknown> | undefined;
    const { socket, received } = rawConnection(service);
    const head = `GET /v1/token/oa/${app.appId} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer ${KEY}\r\n`;
    try {
      // One request and the start of the next in one write: once the first is answered, the service holds
      // the second's first lines, so the connection is not idle when close() begins.
      socket.write(`${head}\r\n${head}`);
      await new Promise((resolve) => socket.once('data', resolve));
      closing = service.close();
      socket.write('\r\n');
      const text = await received;
      await closing;
      expect(statusLines(text)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 503 Service Unavailable']);
      const last = text.slice(text.lastIndexOf('HTTP/1.1 '));
      expect(last.toLowerCase()).toContain('connection: close');
      expect(last).toContain('{"error":{"code":"shutting_down"');
      // Refused before its route is read, as a busy connection's request is: the reason says why.
      expect(requestsLogged(lines)).toEqual(['/v1/token/{app} 200 undefined', 'unmatched 503 shutting_down']);
    } finally {
      socket.destroy();
      await (closing ?? service.close());
    }
  });

  it('a body over the limit is answered 413 with Connection: close: the rest of it is not read, and close() does not wait for it', async () => {
    const { service, app } = await serve();
    let closing: Promise<unknown> | undefined;
    const total = 50 * 1024 * 1024;
    const head = `POST /v1/token/oa/${app.appId}/invalidate HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer ${KEY}\r\ncontent-type: application/json\r\ncontent-length: ${total}\r\n\r\n`;
    const { socket, received, uploaded } = bigUpload(service, head, total);
    // The answer, or the connection's end if none comes.
    const refused = new Promise<void>((resolve) => {
      socket.on('data', (data: Buffer) => data.toString('latin1').startsWith('HTTP/1.1 ') && resolve());
      socket.once('close', resolve);
    });
    try {
      await refused;
      closing = service.close();
      const written = await uploaded;
      const text = await received;
      await closing;
      expect(statusLines(text)).toEqual(['HTTP/1.1 413 Payload Too Large']);
      expect(text.toLowerCase()).toContain('connection: close');
      expect(written).toBeLessThan(total);
    } finally {
      socket.destroy();
      await (closing ?? service.close());
    }
  });

  it('a request still under way requestTimeoutMs after close() began is cut (logged 503 cut_at_shutdown, not as its client gone), and close() resolves', async () => {
    const { service, app, lines } = await servedWithLog({ requestTimeoutMs: 300 });
    let closing: Promise<unknown> | undefined;
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      expect((await get(service, `/v1/token/oa/${app.appId}`, agent)).status).toBe(200);
      // WeChat does not answer the ticket fetch within the test.
      mock.setLatency(600_000);
      const before = mock.counters(app.appId).requests;
      const inFlight = get(service, `/v1/ticket/oa/${app.appId}/jsapi`, agent);
      await vi.waitFor(() => expect(mock.counters(app.appId).requests).toBe(before + 1));
      closing = service.close();
      expect(await inFlight).toEqual({ status: -1 });
      await closing;
      expect(lines.filter((line) => line.event === 'serve.request' && line.route === '/v1/ticket/{app}/{type}')).toEqual([
        expect.objectContaining({ status: 503, reason: 'cut_at_shutdown' }),
      ]);
    } finally {
      mock.setLatency(0);
      agent.destroy();
      await (closing ?? service.close());
    }
  });

  it('a request whose client hung up before SIGTERM, its fetch then cut, is logged 499 client_gone, not cut_at_shutdown', async () => {
    // One connection served: the next is served only once the service has seen the first one go.
    const { service, app, lines } = await servedWithLog({ requestTimeoutMs: 300, maxConnections: 1 });
    try {
      mock.setLatency(600_000);
      await hangUpOnceAsked(service, app, `GET /v1/ticket/oa/${app.appId}/jsapi HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\n\r\n`);
      await vi.waitFor(async () => expect((await fetch(`${service.url}/healthz`)).status).toBe(200));
      await service.close();
      expect(lines.filter((line) => line.event === 'serve.request' && line.route === '/v1/ticket/{app}/{type}')).toHaveLength(1);
      expect(lines.find((line) => line.event === 'serve.request' && line.route === '/v1/ticket/{app}/{type}')).toMatchObject({ status: 499, reason: 'client_gone' });
    } finally {
      mock.setLatency(0);
      await service.close();
    }
  });

  it('a request whose client hung up while its token was fetched (its own timeout ran out) is logged and counted 499 client_gone, not as the 200 it never got', async () => {
    const { service, app, lines } = await servedWithLog({ checkEverySeconds: 3600 });
    try {
      // WeChat answers, but only after the client is gone.
      mock.setLatency(2_000);
      await hangUpOnceAsked(service, app, tokenRequest(app));
      const answered = () => lines.filter((line) => line.event === 'serve.request' && line.route === '/v1/token/{app}');
      await vi.waitFor(() => expect(answered()).toHaveLength(1), { timeout: 10_000 });
      expect(answered()[0]).toMatchObject({ status: 499, reason: 'client_gone' });
      const metrics = await (await fetch(`${service.url}/metrics`)).text();
      expect(metrics).toMatch(/^wxkit_http_requests_total\{route="\/v1\/token\/\{app\}",status="499"\} 1$/m);
      expect(metrics).not.toMatch(/^wxkit_http_requests_total\{route="\/v1\/token\/\{app\}",status="200"\}/m);
    } finally {
      mock.setLatency(0);
      await service.close();
    }
  });

  it('a request pipelined behind one still under way that fails (404) is answered, after the first, and logged with its status', async () => {
    const { service, app, lines } = await servedWithLog({ checkEverySeconds: 3600 });
    const { socket } = rawConnection(service);
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
    try {
      mock.setLatency(1_000);
      socket.write(`${tokenRequest(app)}GET /no-such-endpoint HTTP/1.1\r\nhost: x\r\n\r\n`);
      await vi.waitFor(() => expect(statusLines(text)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 404 Not Found']), { timeout: 10_000 });
      // Logged as each handler ends: the 404's first.
      await vi.waitFor(() => expect(lines.filter((line) => line.event === 'serve.request').map((line) => `${String(line.route)} ${String(line.status)}`).sort()).toEqual(['/v1/token/{app} 200', 'unmatched 404']));
    } finally {
      mock.setLatency(0);
      socket.destroy();
      await service.close();
    }
  });

  it('requests pipelined behind one under way whose client hangs up are each logged 499 client_gone, not 200', async () => {
    const { service, app, lines } = await servedWithLog({ checkEverySeconds: 3600 });
    try {
      mock.setLatency(2_000);
      await hangUpOnceAsked(service, app, tokenRequest(app) + tokenRequest(app));
      await vi.waitFor(() => expect(requestsLogged(lines)).toHaveLength(2), { timeout: 10_000 });
      expect(requestsLogged(lines)).toEqual(['/v1/token/{app} 499 client_gone', '/v1/token/{app} 499 client_gone']);
    } finally {
      mock.setLatency(0);
      await service.close();
    }
  });

  it('an answer pipelined behind a slow one, its handler done, whose client hangs up before either is sent is logged 499 client_gone, not 200', async () => {
    const { service, app, lines } = await servedWithLog({ checkEverySeconds: 3600 });
    try {
      mock.setLatency(2_000);
      // /healthz's handler ends at once; its answer waits behind the token's.
      const received = await hangUpOnceAsked(service, app, `${tokenRequest(app)}GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n`);
      expect(received).toBe('');
      await vi.waitFor(() => expect(requestsLogged(lines)).toHaveLength(2), { timeout: 10_000 });
      expect(requestsLogged(lines).sort()).toEqual(['/healthz 499 client_gone', '/v1/token/{app} 499 client_gone']);
    } finally {
      mock.setLatency(0);
      await service.close();
    }
  });

  it('an answer pipelined behind one cut at shutdown, its handler done, is logged 503 cut_at_shutdown with it: its client was still there', async () => {
    const { service, app, lines } = await servedWithLog({ requestTimeoutMs: 300 });
    try {
      mock.setLatency(600_000);
      const before = mock.counters(app.appId).requests;
      const { socket, received } = rawConnection(service);
      socket.write(`${tokenRequest(app)}GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n`);
      await vi.waitFor(() => expect(mock.counters(app.appId).requests).toBe(before + 1));
      await service.close();
      expect(requestsLogged(lines).sort()).toEqual(['/healthz 503 cut_at_shutdown', '/v1/token/{app} 503 cut_at_shutdown']);
      expect(statusLines(await received)).toEqual([]);
    } finally {
      mock.setLatency(0);
      await service.close();
    }
  });

  it('a request cut at shutdown whose handler answers after the cut (a slow store read) is logged 503 cut_at_shutdown, not 200', async () => {
    const lines: Record<string, unknown>[] = [];
    const record = (fields: Record<string, unknown>) => void lines.push(fields);
    const app = mock.createApp();
    let slow = false;
    let slowReads = 0;
    // Once `slow`, each read takes 800 ms: the handler is still reading when the grace (300 ms) cuts it.
    class SlowReads extends MemoryCache {
      override async get(key: string): Promise<string | undefined> {
        if (slow) {
          slowReads += 1;
          await new Promise((resolve) => setTimeout(resolve, 800));
        }
        return super.get(key);
      }
    }
    const cache = new SlowReads();
    const service = await startTokenService({ cache, apps: [{ kind: 'official_account', appId: app.appId, secret: app.secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: { info: record, warn: record, error: record }, requestTimeoutMs: 300 });
    try {
      const warm = await fetch(`${service.url}/v1/ticket/oa/${app.appId}/jsapi`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(warm.status).toBe(200);
      await warm.arrayBuffer();
      lines.length = 0;
      slow = true;
      const { socket, received } = rawConnection(service);
      socket.write(`GET /v1/ticket/oa/${app.appId}/jsapi HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\n\r\n`);
      await vi.waitFor(() => expect(slowReads).toBeGreaterThan(0));
      await service.close();
      expect(lines.filter((line) => line.event === 'serve.request')).toEqual([expect.objectContaining({ status: 503, reason: 'cut_at_shutdown' })]);
      expect(await received).toBe('');
    } finally {
      await service.close();
    }
  });

  it('a request cut at shutdown whose handler still waits on the store when close() resolves is logged 503 cut_at_shutdown by then, and once only when the handler ends later', async () => {
    const app = mock.createApp();
    const cache = heldTicketCalls(app.appId);
    // The service's answer to the report, as the handler writes it.
    const { answers, taken } = postAnswers(app.appId);
    const lines: Record<string, unknown>[] = [];
    const record = (fields: Record<string, unknown>) => void lines.push(fields);
    const service = await startTokenService({ cache, apps: [{ kind: 'official_account', appId: app.appId, secret: app.secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: { info: record, warn: record, error: record }, requestTimeoutMs: 300 });
    try {
      const warm = await fetch(`${service.url}/v1/ticket/oa/${app.appId}/jsapi`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(warm.status).toBe(200);
      await warm.arrayBuffer();
      lines.length = 0;
      cache.hold = true;
      // A report of a ticket the fleet does not hold: the handler reads the store's entry, then answers it.
      const body = JSON.stringify({ ticket: 'a-ticket-never-handed-out' });
      const { socket, received } = rawConnection(service);
      socket.write(`POST /v1/ticket/oa/${app.appId}/jsapi/invalidate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
      await vi.waitFor(() => expect(cache.held).toHaveLength(1));
      await service.close();
      // The handler still waits on the store: close() made its report.
      expect(requestsLogged(lines)).toEqual(['/v1/ticket/{app}/{type}/invalidate 503 cut_at_shutdown']);
      expect(await received).toBe('');
      expect(answers).toHaveLength(1);
      expect(answers[0]!.headersSent).toBe(false);
      for (const release of cache.held) release();
      // The handler answers (to a connection cut), and ends in the same turn: its own report adds no line.
      await vi.waitFor(() => expect(answers[0]!.headersSent).toBe(true));
      expect(requestsLogged(lines)).toEqual(['/v1/ticket/{app}/{type}/invalidate 503 cut_at_shutdown']);
    } finally {
      unsubscribe('http.server.request.start', taken);
      await service.close();
    }
  });

  it('a report cut at shutdown whose delete of the ticket is still under way: close() waits for the delete, and its serve.ticket_replaced line comes before close() resolves, none after', async () => {
    const { app, cache, lines, service, ticket, events } = await servedAged({ requestTimeoutMs: 300 });
    // The service's answer to the report, as the handler writes it.
    const { answers, taken } = postAnswers(app.appId);
    try {
      cache.holdDeletes = true;
      // A report of the ticket the store holds, fetched two minutes ago: the handler deletes its entry.
      const { received } = reportOn(service, app.appId, ticket);
      await vi.waitFor(() => expect(cache.held).toHaveLength(1));
      let atClose: string[] | undefined;
      const closing = service.close().then(() => void (atClose = events()));
      // The grace cuts the report's connection; the delete lands after that, while close() waits for it.
      expect(await received).toBe('');
      for (const release of cache.held) release();
      await closing;
      expect(atClose).toEqual(['serve.ticket_replaced', 'serve.request']);
      expect(requestsLogged(lines)).toEqual(['/v1/ticket/{app}/{type}/invalidate 503 cut_at_shutdown']);
      // The handler goes on to a closed client, which fetches nothing, and fails to a connection cut: no line.
      await vi.waitFor(() => expect(answers[0]?.statusCode).toBe(499));
      expect(events()).toEqual(atClose);
    } finally {
      unsubscribe('http.server.request.start', taken);
      await service.close();
    }
  });

  it('a report cut at shutdown whose read of the ticket comes back once close() resolved deletes nothing and writes no line: the store is its caller\'s by then', async () => {
    const { app, cache, lines, service, ticket, stored, events } = await servedAged({ requestTimeoutMs: 300 });
    const { answers, taken } = postAnswers(app.appId);
    try {
      cache.hold = true;
      // A report the store's entry makes a replacement of, once the handler has read it.
      const { received } = reportOn(service, app.appId, ticket);
      await vi.waitFor(() => expect(cache.held).toHaveLength(1));
      await service.close();
      expect(await received).toBe('');
      const atClose = events();
      expect(requestsLogged(lines)).toEqual(['/v1/ticket/{app}/{type}/invalidate 503 cut_at_shutdown']);
      cache.hold = false;
      for (const release of cache.held) release();
      // The handler reads the entry, finds the ticket old enough to replace, and fails to a connection cut.
      await vi.waitFor(() => expect(answers[0]?.statusCode).toBe(499));
      expect(events()).toEqual(atClose);
      expect(await cache.get(`wechat:jsapi_ticket:${app.appId}`)).toBe(stored);
    } finally {
      unsubscribe('http.server.request.start', taken);
      await service.close();
    }
  });

  for (const [method, path, status] of [
    ['GET', '/healthz', 'HTTP/1.1 200 OK'],
    ['POST', '/healthz', 'HTTP/1.1 405 Method Not Allowed'],
    ['POST', '/nope', 'HTTP/1.1 404 Not Found'],
    ['POST', '/v1/token/oa/wxnokey/invalidate', 'HTTP/1.1 401 Unauthorized'],
  ] as const) {
    it(`${method} ${path} with a body it does not read (no key needed) is answered with Connection: close: the body is not read to its end`, async () => {
      const { service } = await serve();
      const total = 50 * 1024 * 1024;
      const { socket, received, uploaded } = bigUpload(service, `${method} ${path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: ${total}\r\n\r\n`, total);
      try {
        const written = await uploaded;
        const text = await received;
        expect(statusLines(text)).toEqual([status]);
        expect(text.toLowerCase()).toContain('connection: close');
        expect(written).toBeLessThan(total);
      } finally {
        socket.destroy();
        await service.close();
      }
    });
  }

  it('a request without a body, or whose body was read, keeps its connection alive', async () => {
    const { service, app } = await serve();
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      expect(await get(service, '/healthz', agent)).toEqual({ status: 200, connection: 'keep-alive' });
      const answer = await new Promise<Answer>((resolve) => {
        request(`${service.url}/v1/token/oa/${app.appId}/invalidate`, { method: 'POST', agent, headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' } }, (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode!, connection: res.headers.connection }));
        }).end(JSON.stringify({ token: 'not-the-current-one' }));
      });
      expect(answer.connection).toBe('keep-alive');
    } finally {
      agent.destroy();
      await service.close();
    }
  });

  it('a client that hangs up while sending its body is counted 499 client_gone, not logged as a fault of the service (500)', async () => {
    const app = mock.createApp();
    const lines: { level: string; fields: Record<string, unknown> }[] = [];
    const record = (level: string) => (fields: Record<string, unknown>) => void lines.push({ level, fields });
    const logger = { debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId: app.appId, secret: app.secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger });
    try {
      const { socket } = rawConnection(service);
      // Expect: 100-continue: the service's answer "100 Continue" says it has the request and reads its body.
      const continued = new Promise<void>((resolve) => socket.once('data', () => resolve()));
      socket.write(`POST /v1/token/oa/${app.appId}/invalidate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n`);
      await continued;
      socket.write('{"token":"');
      socket.destroy();
      await vi.waitFor(() => expect(lines.some((line) => line.fields.event === 'serve.request')).toBe(true));
      expect(lines.find((line) => line.fields.event === 'serve.request')!.fields).toMatchObject({ status: 499, reason: 'client_gone' });
      expect(lines.filter((line) => line.level === 'error')).toEqual([]);
      const metrics = await (await fetch(`${service.url}/metrics`)).text();
      expect(metrics).toMatch(/wxkit_http_requests_total\{route="\/v1\/token\/\{app\}\/invalidate",status="499"\} 1/);
      expect(metrics).not.toMatch(/status="500"/);
    } finally {
      await service.close();
    }
  });

  it('each request, however it ends (answered, pipelined, 503 busy, 503 shutting_down, cut), is logged and counted once before close() resolves, and not again; close() twice alike', async () => {
    const counted = vi.spyOn(ServiceMetrics.prototype, 'request');
    const { service, app, lines } = await servedWithLog({ requestTimeoutMs: 300, maxConnections: 2, checkEverySeconds: 3600 });
    /** The logged requests as `status reason`. */
    const logged = () => lines.filter((line) => line.event === 'serve.request').map((line) => `${String(line.status)} ${String(line.reason ?? '')}`.trim());
    try {
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      expect((await get(service, '/healthz', agent)).status).toBe(200);
      expect((await get(service, '/no-such-endpoint', agent)).status).toBe(404);
      expect((await get(service, `/v1/token/oa/${app.appId}`, agent)).status).toBe(200);
      agent.destroy();
      await vi.waitFor(() => expect(logged()).toHaveLength(3));
      mock.setLatency(600_000);
      // A ticket fetch WeChat does not answer, and a request pipelined behind it: both cut at shutdown.
      const before = mock.counters(app.appId).requests;
      const cutOnes = rawConnection(service);
      cutOnes.socket.write(`GET /v1/ticket/oa/${app.appId}/jsapi HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\n\r\nGET /healthz HTTP/1.1\r\nhost: x\r\n\r\n`);
      await vi.waitFor(() => expect(mock.counters(app.appId).requests).toBe(before + 1));
      // A request answered, the next one's head begun on the same connection: finished after close() began.
      const late = rawConnection(service);
      const head = 'GET /healthz HTTP/1.1\r\nhost: x\r\n';
      late.socket.write(`${head}\r\n${head}`);
      await new Promise((resolve) => late.socket.once('data', resolve));
      // A connection past maxConnections (2): 503 busy.
      const past = rawConnection(service);
      past.socket.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n');
      expect(statusLines(await past.received)).toEqual(['HTTP/1.1 503 Service Unavailable']);
      await vi.waitFor(() => expect(logged()).toHaveLength(5));
      const closing = service.close();
      const again = service.close();
      late.socket.write('\r\n');
      expect(statusLines(await late.received)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 503 Service Unavailable']);
      // The second call resolves with the first: every request is logged and counted by then, once. (A
      // handler that ends after close() resolved adds nothing: see the tests of a store that hangs.)
      await again;
      expect(logged().sort()).toEqual(['200', '200', '200', '404', '503 busy', '503 cut_at_shutdown', '503 cut_at_shutdown', '503 shutting_down'].sort());
      expect(counted).toHaveBeenCalledTimes(8);
      await closing;
      expect(statusLines(await cutOnes.received)).toEqual([]);
    } finally {
      counted.mockRestore();
      mock.setLatency(0);
      await service.close();
    }
  });

  it('a request cut at shutdown whose handler fails after close() resolved (a report refused 429) adds no line, no count and no internal error', async () => {
    const app = mock.createApp();
    const cache = heldTicketCalls(app.appId);
    // The service's answer to the report, as the handler writes it.
    const { answers, taken } = postAnswers(app.appId);
    const counted = vi.spyOn(ServiceMetrics.prototype, 'request');
    const lines: Record<string, unknown>[] = [];
    const record = (fields: Record<string, unknown>) => void lines.push(fields);
    const service = await startTokenService({ cache, apps: [{ kind: 'official_account', appId: app.appId, secret: app.secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: { info: record, warn: record, error: record }, requestTimeoutMs: 300 });
    try {
      const warm = await fetch(`${service.url}/v1/ticket/oa/${app.appId}/jsapi`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(warm.status).toBe(200);
      const { ticket } = (await warm.json()) as { ticket: string };
      lines.length = 0;
      counted.mockClear();
      cache.hold = true;
      // A report of the ticket just fetched: once the store's entry is read, the handler throws 429 invalidate_spaced.
      const body = JSON.stringify({ ticket });
      const { socket, received } = rawConnection(service);
      socket.write(`POST /v1/ticket/oa/${app.appId}/jsapi/invalidate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
      await vi.waitFor(() => expect(cache.held).toHaveLength(1));
      await service.close();
      expect(requestsLogged(lines)).toEqual(['/v1/ticket/{app}/{type}/invalidate 503 cut_at_shutdown']);
      expect(await received).toBe('');
      for (const release of cache.held) release();
      // The handler's failure finds its connection gone (and says so on the answer, which nobody logs again).
      await vi.waitFor(() => expect(answers[0]!.statusCode).toBe(499));
      expect(answers[0]!.headersSent).toBe(false);
      expect(requestsLogged(lines)).toEqual(['/v1/ticket/{app}/{type}/invalidate 503 cut_at_shutdown']);
      expect(lines.filter((line) => line.event === 'serve.internal_error')).toEqual([]);
      expect(counted).toHaveBeenCalledTimes(1);
    } finally {
      unsubscribe('http.server.request.start', taken);
      counted.mockRestore();
      await service.close();
    }
  });

  it('a service that runs without close() keeps nothing of the requests it logged: their answers are collected, the pipelined ones and those whose client went away too', async () => {
    const { service, app, lines } = await servedWithLog({ checkEverySeconds: 3600 });
    const port = Number(new URL(service.url).port);
    const refs: WeakRef<ServerResponse>[] = [];
    const taken = (message: unknown) => {
      const { request: req, response } = message as { request: IncomingMessage; response: ServerResponse };
      if (req.socket.localPort === port) refs.push(new WeakRef(response));
    };
    subscribe('http.server.request.start', taken);
    try {
      await (async () => {
        const agent = new Agent({ keepAlive: true, maxSockets: 4 });
        const paths = ['/healthz', '/readyz', '/no-such-endpoint', `/v1/token/oa/${app.appId}`, `/v1/token/oa/${app.appId}/invalidate`];
        for (let i = 0; i < 40; i += 1) await Promise.all(paths.map((path) => get(service, path, agent)));
        agent.destroy();
        for (let i = 0; i < 10; i += 1) {
          const { socket, received } = rawConnection(service);
          socket.write(`${tokenRequest(app)}GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`);
          expect(statusLines(await received)).toHaveLength(2);
        }
        // A ticket's first fetch, slow, whose client hangs up, a finished one pipelined behind it.
        mock.setLatency(1_000);
        await hangUpOnceAsked(service, app, `GET /v1/ticket/oa/${app.appId}/jsapi HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\n\r\nGET /healthz HTTP/1.1\r\nhost: x\r\n\r\n`);
      })();
      await vi.waitFor(() => expect(requestsLogged(lines)).toHaveLength(222), { timeout: 10_000 });
      expect(refs).toHaveLength(222);
      for (let round = 0; round < 3; round += 1) {
        await new Promise((resolve) => setImmediate(resolve));
        gc();
      }
      expect(refs.filter((ref) => ref.deref() !== undefined)).toEqual([]);
    } finally {
      mock.setLatency(0);
      unsubscribe('http.server.request.start', taken);
      await service.close();
    }
  });

  it("a token fetch cut by close() past requestTimeoutMs is no failure of WeChat's: the next instance on the store is served at once", async () => {
    const app = mock.createApp();
    const cache = new MemoryCache();
    const options = { cache, apps: [{ kind: 'official_account' as const, appId: app.appId, secret: app.secret, tokenEndpoint: 'classic' as const }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false as const };
    // The first instance's token fetch (at start) never gets its answer.
    mock.injectFault({ kind: 'hang', path: 'cgi-bin/token', times: 1 });
    const first = await startTokenService({ ...options, requestTimeoutMs: 300 });
    await vi.waitFor(() => expect(mock.counters(app.appId).tokenRequests).toBe(1));
    await first.close();
    expect(await cache.get(`wechat:access_token:${app.appId}:failed`)).toBeUndefined();
    const second = await startTokenService(options);
    try {
      const res = await fetch(`${second.url}/v1/token/oa/${app.appId}`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    } finally {
      await second.close();
    }
  });
});

describe("close() and a ticket's report's own writes to the store", () => {
  /** The rejections nobody handled while these tests ran. */
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => void unhandled.push(reason);
  beforeAll(() => void process.on('unhandledRejection', onUnhandled));
  afterAll(() => void process.off('unhandledRejection', onUnhandled));

  it('a report whose client went away while its next fetch was under way, WeChat refusing that fetch (45009) once close() began: the entry it deleted is back, and logged, when close() resolves', async () => {
    const { app, cache, lines, service, ticket, stored, events } = await servedAged({ requestTimeoutMs: 60_000 });
    let closing: Promise<unknown> | undefined;
    try {
      mock.setLatency(1_000);
      mock.injectFault({ kind: 'errcode', path: 'cgi-bin/ticket/getticket', errcode: 45009, times: 1 });
      const before = mock.counters(app.appId).requests;
      const { socket, received } = reportOn(service, app.appId, ticket);
      // The entry is deleted, and the next ticket asked for.
      await vi.waitFor(() => expect(mock.counters(app.appId).requests).toBe(before + 1));
      expect(await cache.get(`wechat:jsapi_ticket:${app.appId}`)).toBeUndefined();
      socket.destroy();
      expect(await received).toBe('');
      let atClose: { events: string[]; stored: string | undefined } | undefined;
      closing = service.close().then(async () => void (atClose = { events: events(), stored: await cache.get(`wechat:jsapi_ticket:${app.appId}`) }));
      await closing;
      // The fetch the clients' close waited for failed with WeChat's refusal: the entry went back before
      // the service was done with the store.
      expect(atClose).toEqual({ events: ['serve.ticket_replaced', 'jsapi_ticket.fetch_failed', 'serve.ticket_restored', 'serve.request'], stored });
      expect(requestsLogged(lines)).toEqual(['/v1/ticket/{app}/{type}/invalidate 499 client_gone']);
      expect(unhandled).toEqual([]);
    } finally {
      mock.setLatency(0);
      mock.clearFaults();
      await (closing ?? service.close());
    }
  });
  it("a report whose read of the ticket answers once close() has closed the clients, while close() waits for another report's delete, deletes nothing: close() waits only for the writes under way then", async () => {
    const { app, cache, lines, service, ticket, events } = await servedAged({ requestTimeoutMs: 300 });
    // The client's close, called by the grace's cut, then by close() once the connections are closed: once
    // it is done, close() waits for the writes under way.
    const clientsClosed: Promise<void>[] = [];
    const original = WeChatClient.prototype.close;
    const spied = vi.spyOn(WeChatClient.prototype, 'close').mockImplementation(function (this: WeChatClient) {
      const closed = original.call(this);
      clientsClosed.push(closed);
      return closed;
    });
    let closing: Promise<unknown> | undefined;
    try {
      // One report's delete of the entry waits on the store...
      cache.holdDeletes = true;
      const first = reportOn(service, app.appId, ticket);
      await vi.waitFor(() => expect(cache.held).toHaveLength(1));
      const releaseDelete = cache.held.shift()!;
      // ... and another report's read of it.
      cache.hold = true;
      const second = reportOn(service, app.appId, ticket);
      await vi.waitFor(() => expect(cache.held).toHaveLength(1));
      const releaseRead = cache.held.shift()!;
      cache.hold = false;
      closing = service.close();
      // The grace cuts both; the clients close.
      expect(await Promise.all([first.received, second.received])).toEqual(['', '']);
      await vi.waitFor(() => expect(clientsClosed).toHaveLength(2));
      await Promise.all(clientsClosed);
      await new Promise((resolve) => setImmediate(resolve));
      // The read answers now: its report goes no further than the client's own report, refused by the
      // closed client, and ends (logged); it asks the store for no delete.
      releaseRead();
      await vi.waitFor(() => expect(requestsLogged(lines).length + cache.deletesAsked).toBeGreaterThan(1));
      expect(cache.deletesAsked).toBe(1);
      releaseDelete();
      await closing;
      expect(events()).toEqual(['serve.request', 'serve.ticket_replaced', 'serve.request']);
      expect(unhandled).toEqual([]);
    } finally {
      spied.mockRestore();
      for (const release of cache.held.splice(0)) release();
      await (closing ?? service.close());
    }
  });
});
