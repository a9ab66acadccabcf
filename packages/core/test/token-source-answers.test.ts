import { createServer, type Server } from 'node:http';
import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { startMockWeChat } from '@wxkit/testing';
import { BadResponseError, MemoryCache, OfficialAccount, remoteTokenSource } from '../src/index.js';
import { SOURCE_HELD_PATHS } from '../src/token-source.js';

// What a token service (wxkit serve, or another implementation of its protocol) may answer that the
// client must not take: each answer here is a typed error naming what was wrong.
let server: Server;
let url: string;
let answer: (path: string, body: string) => { status: number; body: string; headers?: Record<string, string>; delayMs?: number } = () => ({ status: 404, body: '' });
/** The requests the server got, as `METHOD /path`. */
let asked: string[] = [];
beforeAll(async () => {
  server = createServer((req, res) => {
    asked.push(`${req.method} ${req.url}`);
    let received = '';
    req.on('data', (chunk: Buffer) => (received += chunk.toString('utf8')));
    req.on('end', () => {
      const { status, body, headers, delayMs } = answer(req.url ?? '', received);
      const send = () => res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(body);
      if (delayMs) setTimeout(send, delayMs);
      else send();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

const request = { kind: 'official_account', id: 'wx0123456789abcdef', field: 'access_token' } as const;
const now = () => Math.floor(Date.now() / 1000);


/** A port of 127.0.0.1 nothing listens on (it was free a moment ago): a connection to it is refused. */
async function closedPort(): Promise<number> {
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as { port: number }).port;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  return port;
}

describe('remoteTokenSource refuses answers no token service gives', () => {
  it('a body over its 64 KiB: a BadResponseError naming no option to raise (it has none)', async () => {
    answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'x'.repeat(70 * 1024), expires_at: now() + 7200 }) });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    const failure = await source.fetch(request).catch((error: unknown) => error);
    await source.close?.();
    expect(failure).toBeInstanceOf(BadResponseError);
    expect((failure as Error).message).toBe('The token service answered v1/token/official_account/wx0123456789abcdef with a body over 65536 bytes');
  });

  it('an expires_at in milliseconds (a day or more ahead): refused, not kept as a token that never expires', async () => {
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: Date.now() + 7_200_000 }) });
      const failure = await source.fetch(request).catch((error: unknown) => error);
      expect(failure).toBeInstanceOf(BadResponseError);
      expect((failure as Error).message).toMatch(/expires_at more than a day ahead/);
      // What a token service answers: seconds, at most about 2 h ahead.
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(source.fetch(request)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_1' });
    } finally {
      await source.close?.();
    }
  });
});

describe("remoteTokenSource and a service's Retry-After", () => {
  beforeEach(() => {
    asked = [];
  });
  afterEach(() => {
    vi.useRealTimers();
  });
  const unavailable = (retryAfter: string) => () => ({
    status: 503,
    body: JSON.stringify({ error: { code: 'wechat_unreachable', message: 'WeChat did not answer' } }),
    headers: { 'retry-after': retryAfter },
  });

  it('holds the next requests of the path back until then: one request per back-off step', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      answer = unavailable('5');
      const answered = await source.fetch(request).catch((error: unknown) => error);
      expect(answered).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 503 });
      const held = await source.fetch(request).catch((error: unknown) => error);
      expect(held).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 503, sent: false });
      expect((held as Error).cause).toBe(answered);
      expect((held as Error).message).toMatch(/HTTP 503 wechat_unreachable; the token service said to ask again after \S+, and this process waits until then$/);
      expect(asked).toHaveLength(1);
      // Another path (a ticket) is not held back.
      await expect(source.fetch({ ...request, field: 'ticket', ticketType: 'jsapi' })).rejects.toMatchObject({ status: 503 });
      expect(asked).toHaveLength(2);
      vi.advanceTimersByTime(4_000);
      await expect(source.fetch(request)).rejects.toMatchObject({ sent: false });
      expect(asked).toHaveLength(2);
      vi.advanceTimersByTime(1_001);
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(source.fetch(request)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_1' });
      expect(asked).toHaveLength(3);
    } finally {
      await source.close?.();
    }
  });

  it('takes an HTTP-date, and holds no longer than a minute whatever it says', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      answer = unavailable(new Date(Date.now() + 10_000).toUTCString());
      await expect(source.fetch(request)).rejects.toMatchObject({ status: 503 });
      await expect(source.fetch(request)).rejects.toMatchObject({ sent: false });
      expect(asked).toHaveLength(1);
      vi.advanceTimersByTime(11_000);
      // A proxy's maintenance page asking for a day.
      answer = unavailable('86400');
      await expect(source.fetch(request)).rejects.toMatchObject({ status: 503, sent: true });
      expect(asked).toHaveLength(2);
      vi.advanceTimersByTime(59_000);
      await expect(source.fetch(request)).rejects.toMatchObject({ sent: false });
      vi.advanceTimersByTime(1_001);
      await expect(source.fetch(request)).rejects.toMatchObject({ sent: true });
      expect(asked).toHaveLength(3);
    } finally {
      await source.close?.();
    }
  });

  it('keeps no hold past its window: a source behind which many accounts met a back-off forgets theirs', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    const heldPaths = () => (source as unknown as Record<symbol, number>)[SOURCE_HELD_PATHS];
    const account = (i: number) => ({ ...request, id: `wx${String(i).padStart(16, '0')}` });
    try {
      answer = unavailable('5');
      for (let i = 0; i < 20; i++) await expect(source.fetch(account(i))).rejects.toMatchObject({ status: 503, sent: true });
      expect(heldPaths()).toBe(20);
      // Past every hold, and past a sweep's window: the next hold set sweeps the ended ones.
      vi.advanceTimersByTime(61_000);
      await expect(source.fetch(account(20))).rejects.toMatchObject({ status: 503, sent: true });
      expect(heldPaths()).toBe(1);
      expect(asked).toHaveLength(21);
    } finally {
      await source.close?.();
    }
  });

  it('counts the hold on the monotonic clock: a wall clock stepped back an hour does not stretch it', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      answer = unavailable('5');
      await expect(source.fetch(request)).rejects.toMatchObject({ status: 503, sent: true });
      vi.setSystemTime(Date.now() - 3_600_000);
      vi.advanceTimersByTime(5_001);
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(source.fetch(request)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_1' });
      expect(asked).toHaveLength(2);
    } finally {
      await source.close?.();
    }
  });
});

describe("remoteTokenSource's report of a rejected token", () => {
  beforeEach(() => {
    asked = [];
  });

  it("resolves the token the service answers with, and nothing when the answer has none (204, {\"ok\":true}, a token already expired)", async () => {
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_2', expires_at: now() + 7200, fetched_at: now() }) });
      const answered = await source.invalidate(request, 'ACCESS_TOKEN_1');
      expect(answered).toMatchObject({ value: 'ACCESS_TOKEN_2' });
      expect((answered as { expiresIn: number }).expiresIn).toBeGreaterThan(7000);
      for (const body of [{ status: 204, body: '' }, { status: 200, body: '{"ok":true}' }, { status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_2', expires_at: now() - 1 }) }]) {
        answer = () => body;
        await expect(source.invalidate(request, 'ACCESS_TOKEN_1'), JSON.stringify(body)).resolves.toBeUndefined();
      }
      expect(asked.every((line) => line === 'POST /v1/token/official_account/wx0123456789abcdef/invalidate')).toBe(true);
      // The answer is an access token's: a ticket's report never takes it.
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_2', expires_at: now() + 7200 }) });
      await expect(source.invalidate({ ...request, field: 'ticket', ticketType: 'jsapi' }, 'TICKET_1')).resolves.toBeUndefined();
    } finally {
      await source.close?.();
    }
  });
});

describe("remoteTokenSource's report and WeChat's errcode", () => {
  beforeEach(() => {
    asked = [];
  });

  it('sends the errcode with the token; a service that refuses the field (400) is asked once more without it, and never sent it again', async () => {
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    const bodies: string[] = [];
    const current = JSON.stringify({ access_token: 'ACCESS_TOKEN_2', expires_at: now() + 7200 });
    try {
      answer = (_path, body) => (bodies.push(body), { status: 200, body: current });
      await expect(source.invalidate(request, 'ACCESS_TOKEN_1', 40001)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_2' });
      // No errcode known: the token alone.
      await source.invalidate(request, 'ACCESS_TOKEN_1');
      expect(bodies.map((body) => JSON.parse(body))).toEqual([{ token: 'ACCESS_TOKEN_1', errcode: 40001 }, { token: 'ACCESS_TOKEN_1' }]);
      // A service of another make that takes {"token"} only.
      bodies.length = 0;
      answer = (_path, body) => {
        bodies.push(body);
        return 'errcode' in JSON.parse(body) ? { status: 400, body: JSON.stringify({ error: 'unknown field errcode' }) } : { status: 200, body: current };
      };
      await expect(source.invalidate(request, 'ACCESS_TOKEN_1', 40001)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_2' });
      await expect(source.invalidate(request, 'ACCESS_TOKEN_1', 40001)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_2' });
      expect(bodies.map((body) => JSON.parse(body))).toEqual([{ token: 'ACCESS_TOKEN_1', errcode: 40001 }, { token: 'ACCESS_TOKEN_1' }, { token: 'ACCESS_TOKEN_1' }]);
      // A 400 for the token itself is the service's answer, not the field's: asked once more, then thrown.
      bodies.length = 0;
      const fresh = remoteTokenSource({ url, key: 'k'.repeat(32) });
      answer = (_path, body) => (bodies.push(body), { status: 400, body: JSON.stringify({ error: { code: 'bad_request' } }) });
      await expect(fresh.invalidate(request, 'ACCESS_TOKEN_1', 40001)).rejects.toMatchObject({ status: 400 });
      expect(bodies).toHaveLength(2);
      await fresh.close?.();
    } finally {
      await source.close?.();
    }
  });
});

describe("remoteTokenSource's report and whether a call went through with the token", () => {
  beforeEach(() => {
    asked = [];
  });

  it('says so in the report ("worked"); a service that refuses the field (422) is asked once more without it, and never sent it again', async () => {
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    const bodies: string[] = [];
    const current = JSON.stringify({ access_token: 'ACCESS_TOKEN_2', expires_at: now() + 7200 });
    try {
      answer = (_path, body) => (bodies.push(body), { status: 200, body: current });
      await source.invalidate(request, 'ACCESS_TOKEN_1', 40001, { worked: false });
      await source.invalidate(request, 'ACCESS_TOKEN_1', undefined, { worked: true });
      expect(bodies.map((body) => JSON.parse(body))).toEqual([
        { token: 'ACCESS_TOKEN_1', errcode: 40001, worked: false },
        { token: 'ACCESS_TOKEN_1', worked: true },
      ]);
      bodies.length = 0;
      answer = (_path, body) => {
        bodies.push(body);
        return 'worked' in JSON.parse(body) ? { status: 422, body: JSON.stringify({ error: 'unknown field worked' }) } : { status: 200, body: current };
      };
      await expect(source.invalidate(request, 'ACCESS_TOKEN_1', undefined, { worked: false })).resolves.toMatchObject({ value: 'ACCESS_TOKEN_2' });
      await expect(source.invalidate(request, 'ACCESS_TOKEN_1', undefined, { worked: false })).resolves.toMatchObject({ value: 'ACCESS_TOKEN_2' });
      expect(bodies.map((body) => JSON.parse(body))).toEqual([{ token: 'ACCESS_TOKEN_1', worked: false }, { token: 'ACCESS_TOKEN_1' }, { token: 'ACCESS_TOKEN_1' }]);
    } finally {
      await source.close?.();
    }
  });

  it("a client's report of a token it sent no call through with says worked: false; one a call went through with, worked: true", async () => {
    const mock = await startMockWeChat();
    const bodies: Record<string, unknown>[] = [];
    let issued = 0;
    answer = (path, body) => {
      if (path.endsWith('/invalidate')) bodies.push(JSON.parse(body) as Record<string, unknown>);
      return { status: 200, body: JSON.stringify({ access_token: `SERVICE_TOKEN_${(issued += 1)}`, expires_at: now() + 7200 }) };
    };
    const client = new OfficialAccount({ appId: mock.createApp().appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32) }), logger: false });
    try {
      // WeChat knows none of the service's tokens: the call's reports are of tokens no call went through with.
      await expect(client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} })).rejects.toMatchObject({ errcode: 40014 });
      expect(bodies.map((body) => body.worked)).toEqual([false, false]);
      // The program's own report (accessToken.invalidate()) is of a token that worked.
      await client.accessToken.invalidate(await client.accessToken.getToken(), 40001);
      expect(bodies.map((body) => body.worked)).toEqual([false, false, true]);
    } finally {
      await client.close();
      await mock.close();
    }
  });
});

describe('remoteTokenSource and a service it cannot reach, or that refuses its key', () => {
  beforeEach(() => {
    asked = [];
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('a request refused before it reached the service holds every path back a second: one connection attempt, not one per call or per account', async () => {
    const port = await closedPort();
    let attempts = 0;
    const dispatcher = new Agent().compose((dispatch) => (options, handler) => {
      attempts += 1;
      return dispatch(options, handler);
    });
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const source = remoteTokenSource({ url: `http://127.0.0.1:${port}`, key: 'k'.repeat(32), dispatcher });
    try {
      const refused = await source.fetch(request).catch((error: unknown) => error);
      expect(refused).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false, cause: { code: 'ECONNREFUSED' } });
      for (let i = 0; i < 20; i++) {
        const held = await source.fetch(request).catch((error: unknown) => error);
        expect(held).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false });
        expect((held as Error).message).toMatch(/ECONNREFUSED.*; this process asks the token service again after \S+$/);
        // The refusal itself, and the connection's code in it, as the cause.
        expect((held as Error).cause).toBe(refused);
      }
      // The service's host is as far for every account and ticket: held back with it.
      for (const other of [{ ...request, id: 'wxfedcba9876543210' }, { ...request, field: 'ticket', ticketType: 'jsapi' } as const]) {
        const held = await source.fetch(other).catch((error: unknown) => error);
        expect(attempts).toBe(1);
        expect(held).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false });
        expect((held as Error).cause).toBe(refused);
      }
      expect(attempts).toBe(1);
      vi.advanceTimersByTime(1_001);
      await expect(source.fetch(request)).rejects.toMatchObject({ sent: false });
      expect(attempts).toBe(2);
    } finally {
      await source.close?.();
      await dispatcher.close();
    }
  });

  it("a request that reaches the service ends the second's hold of every path: after a forced refresh that got through, the other accounts are asked at once", async () => {
    const port = await closedPort();
    // The first request goes to an instance that refuses connections (one of several behind a name).
    let refuse = true;
    let attempts = 0;
    const dispatcher = new Agent().compose((dispatch) => (options, handler) => {
      attempts += 1;
      return dispatch(refuse ? { ...options, origin: `http://127.0.0.1:${port}` } : options, handler);
    });
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32), dispatcher });
    try {
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(source.fetch(request)).rejects.toMatchObject({ sent: false, cause: { code: 'ECONNREFUSED' } });
      refuse = false;
      await expect(source.fetch(request, { force: true })).resolves.toMatchObject({ value: 'ACCESS_TOKEN_1' });
      await expect(source.fetch({ ...request, id: 'wxfedcba9876543210' })).resolves.toMatchObject({ value: 'ACCESS_TOKEN_1' });
      expect(attempts).toBe(3);
    } finally {
      await source.close?.();
      await dispatcher.close();
    }
  });

  // A 401: the key not (yet) added at the service; the next request a second later gets the token.
  for (const [status, code] of [
    [401, 'unauthorized'],
    [503, 'wechat_unreachable'],
    [503, 'store_unavailable'],
    [500, 'internal'],
    [404, 'not_found'],
    [429, 'too_many_requests'],
  ] as const) {
    it(`a ${status} ${code} without Retry-After holds its path back a second: a process without a token asks once a second, not once per call; other accounts are asked`, async () => {
      vi.useFakeTimers({ toFake: ['Date', 'performance'] });
      const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
      try {
        answer = () => ({ status, body: JSON.stringify({ error: { code, message: 'no' } }) });
        await expect(source.fetch(request)).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP', status, sent: true });
        for (let i = 0; i < 20; i++) {
          const held = await source.fetch(request).catch((error: unknown) => error);
          expect(held).toMatchObject({ code: 'ERR_WXKIT_HTTP', status });
          expect((held as Error).message).toMatch(/; this process asks the token service again after \S+$/);
        }
        expect(asked).toHaveLength(1);
        await expect(source.fetch({ ...request, id: 'wxfedcba9876543210' })).rejects.toMatchObject({ status });
        expect(asked).toHaveLength(2);
        answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
        vi.advanceTimersByTime(1_001);
        await expect(source.fetch(request)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_1' });
        expect(asked).toHaveLength(3);
      } finally {
        await source.close?.();
      }
    });
  }

  it("a client's forceRefresh() passes the second's hold: the key added, the forced refresh reaches the service; still refused, forced refreshes ask once a second", async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const client = new OfficialAccount({ appId: request.id, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32) }), logger: false });
    const refused = () => ({ status: 401, body: JSON.stringify({ error: { code: 'unauthorized', reason: 'unknown_key' } }) });
    try {
      answer = refused;
      await expect(client.accessToken.getToken()).rejects.toMatchObject({ status: 401 });
      expect(asked).toHaveLength(1);
      // The key is added at the service: the program forces a refresh, which is not held back.
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(client.accessToken.forceRefresh()).resolves.toBe('ACCESS_TOKEN_1');
      expect(asked).toHaveLength(2);
      // Refused again: a forced refresh goes out once, and the forced refreshes after it within the
      // second fail at once, with the error it met.
      answer = refused;
      await expect(client.accessToken.forceRefresh()).rejects.toMatchObject({ status: 401 });
      for (let i = 0; i < 5; i++) {
        const held = await client.accessToken.forceRefresh().catch((error: unknown) => error);
        expect(held).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 401 });
        expect((held as Error).message).toMatch(/; this process asks the token service again after \S+$/);
      }
      expect(asked).toHaveLength(3);
      vi.advanceTimersByTime(1_001);
      await expect(client.accessToken.forceRefresh()).rejects.toMatchObject({ status: 401 });
      expect(asked).toHaveLength(4);
    } finally {
      await client.close();
    }
  });

  it("a forced fetch does not pass a hold the service asked for (Retry-After)", async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      answer = () => ({ status: 503, body: JSON.stringify({ error: { code: 'wechat_unreachable', message: 'backing off' } }), headers: { 'retry-after': '5' } });
      await expect(source.fetch(request)).rejects.toMatchObject({ status: 503, sent: true });
      const held = await source.fetch(request, { force: true }).catch((error: unknown) => error);
      expect(held).toMatchObject({ status: 503, sent: false });
      expect((held as Error).message).toMatch(/the token service said to ask again after/);
      expect(asked).toHaveLength(1);
    } finally {
      await source.close?.();
    }
  });

  it("a 401 or an unreached request under way beside one the service told to wait does not cut that wait short", async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      let n = 0;
      // The first request is told to wait 30 s; the second, answered after it (another instance, its key
      // not yet added), is refused for its key.
      answer = () =>
        (n += 1) === 1
          ? { status: 503, body: JSON.stringify({ error: { code: 'wechat_unreachable', message: 'backing off' } }), headers: { 'retry-after': '30' } }
          : { status: 401, body: JSON.stringify({ error: { code: 'unauthorized', reason: 'unknown_key' } }), delayMs: 100 };
      const both = await Promise.all([source.fetch(request).catch((error: unknown) => error), source.fetch(request).catch((error: unknown) => error)]);
      expect(both.map((error) => (error as { status?: number }).status).sort()).toEqual([401, 503]);
      expect(asked).toHaveLength(2);
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      vi.advanceTimersByTime(1_500);
      const held = await source.fetch(request).catch((error: unknown) => error);
      expect(held).toMatchObject({ status: 503 });
      expect((held as Error).message).toMatch(/the token service said to ask again after/);
      expect(asked).toHaveLength(2);
    } finally {
      await source.close?.();
    }
  });

  it("a request the caller aborted holds nothing back: the next caller's request goes out", async () => {
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(source.fetch(request, { signal: AbortSignal.abort() })).rejects.toBeDefined();
      await expect(source.fetch(request)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_1' });
      expect(asked).toHaveLength(1);
    } finally {
      await source.close?.();
    }
  });
});

describe("remoteTokenSource's key", () => {
  it('one shorter than wxkit serve takes, refused with 401: the message says so', async () => {
    answer = () => ({ status: 401, body: JSON.stringify({ error: { code: 'unauthorized', reason: 'unknown_key' } }) });
    const short = remoteTokenSource({ url, key: 'k'.repeat(12) });
    const long = remoteTokenSource({ url, key: 'k'.repeat(16) });
    try {
      const failure = await short.fetch(request).catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 401 });
      expect((failure as Error).message).toMatch(/HTTP 401 unauthorized \(unknown_key\); the key has fewer than 16 characters, and wxkit serve takes none that short$/);
      expect(((await long.fetch(request).catch((error: unknown) => error)) as Error).message).toMatch(/HTTP 401 unauthorized \(unknown_key\)$/);
    } finally {
      await Promise.all([short.close?.(), long.close?.()]);
    }
  });
});

describe("remoteTokenSource's timeoutMs", () => {
  it("is waited for in full when longer than its client's timeoutMs: a slow service is not cut short by the client", async () => {
    answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_SLOW', expires_at: now() + 7200 }), delayMs: 600 });
    const client = new OfficialAccount({
      appId: 'wx0123456789abcdef',
      cache: new MemoryCache(),
      timeoutMs: 200,
      tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32), timeoutMs: 5_000 }),
      logger: false,
    });
    try {
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_SLOW');
    } finally {
      await client.close();
    }
  });
});

describe('a client of a token service whose every token WeChat rejects', () => {
  it('takes one new token per call from the reports, as it would take one fetch: two reports and two sends, then the error', async () => {
    const mock = await startMockWeChat();
    // WeChat knows none of this service's tokens (40014), and each report is answered with a new one.
    let issued = 0;
    asked = [];
    answer = () => ({ status: 200, body: JSON.stringify({ access_token: `SERVICE_TOKEN_${(issued += 1)}`, expires_at: now() + 7200 }) });
    const client = new OfficialAccount({ appId: mock.createApp().appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32) }), logger: false });
    try {
      const failure = await client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} }).catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40014 });
      expect(asked.filter((line) => line.startsWith('GET '))).toHaveLength(1);
      expect(asked.filter((line) => line.startsWith('POST '))).toHaveLength(2);
    } finally {
      await client.close();
      await mock.close();
    }
  });
});

describe('a client of a token service that stops answering', () => {
  beforeEach(() => {
    asked = [];
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('serves the token it holds, still good, for another memo window at a time, then the error once the token nears its end', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const client = new OfficialAccount({ appId: request.id, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32) }), logger: false });
    try {
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      // The service restarts: past the memo window, its answer is a 503, and the token still works.
      answer = () => ({ status: 503, body: JSON.stringify({ error: { code: 'shutting_down' } }) });
      vi.advanceTimersByTime(31_000);
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      expect(asked).toHaveLength(2);
      // Asked again one memo window later, not at every call.
      for (let i = 0; i < 5; i++) await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      expect(asked).toHaveLength(2);
      vi.advanceTimersByTime(31_000);
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      expect(asked).toHaveLength(3);
      // Back, with another token: taken at the next window.
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_2', expires_at: now() + 7200 }) });
      vi.advanceTimersByTime(31_000);
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
      expect(asked).toHaveLength(4);
      // Down again until the token nears its end: the service's error then.
      answer = () => ({ status: 503, body: JSON.stringify({ error: { code: 'shutting_down' } }) });
      vi.advanceTimersByTime(7_200_000 - 29_000);
      await expect(client.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 503 });
      // A forced refresh is no call for the token held: it fails.
      await expect(client.accessToken.forceRefresh()).rejects.toMatchObject({ status: 503 });
    } finally {
      await client.close();
    }
  });
  it('says so when it serves the token it holds for want of an answer, once until the service answers again: a key the service no longer takes (401) is seen before the token ends', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const client = new OfficialAccount({ appId: request.id, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32) }), logger: false });
    const failed: { code?: string; error?: string; tier: string; sent: boolean; level: string }[] = [];
    client.on('access_token.fetch_failed', (event) => failed.push(event));
    try {
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      expect(failed).toEqual([]);
      answer = () => ({ status: 401, body: JSON.stringify({ error: { code: 'unauthorized' } }) });
      vi.advanceTimersByTime(31_000);
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      expect(asked).toHaveLength(2);
      expect(failed).toEqual([expect.objectContaining({ level: 'warn', code: 'ERR_WXKIT_HTTP', tier: 'process', sent: true, error: expect.stringMatching(/401/) })]);
      expect(JSON.stringify(failed)).not.toContain('ACCESS_TOKEN_1');
      expect(JSON.stringify(failed)).not.toContain('k'.repeat(32));
      // Within the memo window the token is served without a request; the next window's failure is not
      // said again, until the service has answered once more.
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      vi.advanceTimersByTime(31_000);
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      expect(asked).toHaveLength(3);
      expect(failed).toHaveLength(1);
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_2', expires_at: now() + 7200 }) });
      vi.advanceTimersByTime(31_000);
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
      answer = () => ({ status: 404, body: JSON.stringify({ error: { code: 'not_found' } }) });
      vi.advanceTimersByTime(31_000);
      await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
      expect(failed).toHaveLength(2);
      expect(failed[1]!.error).toMatch(/404/);
    } finally {
      await client.close();
    }
  });

  // The service answering a forced refresh, or a report of a rejected token, has answered as much as it
  // does a refresh of the memo's: its next failure is said again.
  for (const answeredBy of ['a forced refresh', 'a report of a rejected token'] as const) {
    it(`says so again after the service answered ${answeredBy} in between`, async () => {
      vi.useFakeTimers({ toFake: ['Date', 'performance'] });
      const client = new OfficialAccount({ appId: request.id, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32) }), logger: false });
      const failed: { error?: string }[] = [];
      client.on('access_token.fetch_failed', (event) => failed.push(event));
      try {
        answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
        await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
        answer = () => ({ status: 401, body: JSON.stringify({ error: { code: 'unauthorized' } }) });
        vi.advanceTimersByTime(31_000);
        await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
        expect(failed).toHaveLength(1);
        // The service answers again, with a new token, to a request that is no refresh of the memo's.
        answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_2', expires_at: now() + 7200 }) });
        vi.advanceTimersByTime(2_000);
        if (answeredBy === 'a forced refresh') await expect(client.accessToken.forceRefresh()).resolves.toBe('ACCESS_TOKEN_2');
        else await client.accessToken.invalidate('ACCESS_TOKEN_1', 40001);
        await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
        const before = asked.length;
        // And fails once more, past the memo window: said, not left unseen until ACCESS_TOKEN_2 ends.
        answer = () => ({ status: 404, body: JSON.stringify({ error: { code: 'not_found' } }) });
        vi.advanceTimersByTime(31_000);
        await expect(client.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
        expect(asked).toHaveLength(before + 1);
        expect(failed).toHaveLength(2);
        expect(failed[1]!.error).toMatch(/404/);
      } finally {
        await client.close();
      }
    });
  }
});

describe('a client of a token service that answers a report with the very token reported', () => {
  it('resends the call once with it, as after a fetch that brought back the same token: two sends and two reports, then the error', async () => {
    const mock = await startMockWeChat();
    // WeChat knows none of this service's tokens (40014), and the service answers every report with the
    // token reported (wxkit serve does so when WeChat takes it at its own check).
    asked = [];
    answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'SERVICE_TOKEN_1', expires_at: now() + 7200 }) });
    const { appId } = mock.createApp();
    const client = new OfficialAccount({ appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32) }), logger: false });
    try {
      const failure = await client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} }).catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40014 });
      expect(mock.counters().errcodes).toEqual({ '40014': 2 });
      expect(asked.filter((line) => line.startsWith('GET '))).toHaveLength(1);
      expect(asked.filter((line) => line.startsWith('POST '))).toHaveLength(2);
    } finally {
      await client.close();
      await mock.close();
    }
  });
});

describe('a request to a token service that nobody waits for any more', () => {
  // A service that takes the request and answers only when told (a service waiting for its own lock).
  let held: Server;
  let heldUrl: string;
  /** Requests the client let go of before the service answered. */
  let letGo = 0;
  let received = 0;
  let answerAll: () => void = () => undefined;
  /** The token the service answers with, when told to. */
  let heldToken = 'ACCESS_TOKEN_HELD';
  beforeAll(async () => {
    const pending: (() => void)[] = [];
    answerAll = () => pending.splice(0).forEach((send) => send());
    held = createServer((req, res) => {
      received += 1;
      res.once('close', () => {
        if (!res.writableEnded) letGo += 1;
      });
      pending.push(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: heldToken, expires_at: now() + 7200 })));
    });
    await new Promise<void>((resolve) => held.listen(0, '127.0.0.1', resolve));
    heldUrl = `http://127.0.0.1:${(held.address() as { port: number }).port}`;
  });
  afterAll(() => {
    answerAll();
    held.closeAllConnections();
    return new Promise<void>((resolve) => held.close(() => resolve()));
  });
  beforeEach(() => {
    letGo = 0;
    received = 0;
    heldToken = 'ACCESS_TOKEN_HELD';
  });
  afterEach(() => {
    vi.useRealTimers();
  });
  const client = (timeoutMs = 600_000) =>
    new OfficialAccount({ appId: 'wx0123456789abcdef', cache: new MemoryCache(), tokenSource: remoteTokenSource({ url: heldUrl, key: 'k'.repeat(32), timeoutMs }), logger: false });
  // A bound on a failure, not a measurement: without it a request nobody lets go would hang the test.
  const bound = () => new Promise<'still waiting'>((resolve) => setTimeout(() => resolve('still waiting'), 5_000).unref());
  const until = async (condition: () => boolean) => {
    const started = Date.now();
    while (!condition() && Date.now() - started < 5_000) await new Promise((resolve) => setTimeout(resolve, 10));
  };

  // Under fake dates, a wait counted in turns of the event loop rather than by the clock.
  const turns = async (condition: () => boolean) => {
    for (let i = 0; i < 500 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  };

  /** `app` takes ACCESS_TOKEN_1 from the service, then a memo window later asks again: the call's outcome, or 'still waiting'. */
  const pastTheWindow = async (app: OfficialAccount) => {
    heldToken = 'ACCESS_TOKEN_1';
    const first = app.accessToken.getToken();
    await turns(() => received === 1);
    answerAll();
    await expect(first).resolves.toBe('ACCESS_TOKEN_1');
    vi.advanceTimersByTime(31_000);
    return Promise.race([app.accessToken.getToken(), bound()]);
  };

  it("past the memo window, a client holding a good token serves it rather than wait out the source's timeoutMs for a service that holds its request: one request, whose late answer is taken", async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const app = client();
    let fetched = 0;
    app.on('access_token.fetched', () => (fetched += 1));
    try {
      // The service takes the next request and holds it (waiting for its lock, or hung).
      expect(await pastTheWindow(app)).toBe('ACCESS_TOKEN_1');
      expect(received).toBe(2);
      for (let i = 0; i < 5; i++) await expect(app.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      // Another memo window on, the request still held: none is made beside it.
      vi.advanceTimersByTime(31_000);
      expect(await Promise.race([app.accessToken.getToken(), bound()])).toBe('ACCESS_TOKEN_1');
      expect(received).toBe(2);
      // The service answers at last: its token is kept, and served without another request.
      heldToken = 'ACCESS_TOKEN_2';
      answerAll();
      await turns(() => fetched === 2);
      await expect(app.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
      expect({ received, fetched, letGo }).toEqual({ received: 2, fetched: 2, letGo: 0 });
    } finally {
      await app.close();
    }
  });

  it("a held request that ends at the source's timeoutMs is said once, the token held serving on; the next memo window asks again", async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const app = client(1_500);
    const failed: { code?: string; tier: string }[] = [];
    app.on('access_token.fetch_failed', (event) => failed.push(event));
    try {
      expect(await pastTheWindow(app)).toBe('ACCESS_TOKEN_1');
      await turns(() => failed.length === 1);
      expect(failed).toEqual([expect.objectContaining({ code: 'ERR_WXKIT_TIMEOUT', tier: 'process' })]);
      vi.advanceTimersByTime(31_000);
      expect(await Promise.race([app.accessToken.getToken(), bound()])).toBe('ACCESS_TOKEN_1');
      await turns(() => letGo === 2);
      expect({ received, letGo, failed: failed.length }).toEqual({ received: 3, letGo: 2, failed: 1 });
    } finally {
      await app.close();
    }
  });

  it('is let go once its only caller gives up: the caller gets its reason, and nothing holds the process open', async () => {
    const app = client();
    const controller = new AbortController();
    const call = app.accessToken.getToken({ signal: controller.signal });
    await until(() => received === 1);
    const reason = new Error('gave up');
    controller.abort(reason);
    expect(await Promise.race([call.catch((error: unknown) => error), bound()])).toBe(reason);
    // The connection to the service is closed by the client, not left open until timeoutMs.
    await until(() => letGo === 1);
    expect({ received, letGo }).toEqual({ received: 1, letGo: 1 });
    await Promise.race([app.close(), bound()]);
  });

  it('is kept while a caller without a signal waits, and close() lets it go rather than wait for the service', async () => {
    const app = client();
    const controller = new AbortController();
    const first = app.accessToken.getToken({ signal: controller.signal });
    const second = app.accessToken.getToken().then(
      (value) => value,
      (error: Error) => error.message,
    );
    await until(() => received === 1);
    controller.abort(new Error('gave up'));
    await expect(first).rejects.toThrow('gave up');
    // close() resolves while the service still holds its answer.
    expect(await Promise.race([app.close().then(() => 'closed'), bound()])).toBe('closed');
    expect(await second).toMatch(/The client was closed/);
    await until(() => letGo === 1);
    expect({ received, letGo }).toEqual({ received: 1, letGo: 1 });
  });

  it("a client that shares its source with another does not wait, at close(), for the other's request the service holds", async () => {
    const source = remoteTokenSource({ url: heldUrl, key: 'k'.repeat(32), timeoutMs: 600_000 });
    const closing = new OfficialAccount({ appId: 'wx0123456789abcdef', cache: new MemoryCache(), tokenSource: source, logger: false });
    const waiting = new OfficialAccount({ appId: 'wxfedcba9876543210', cache: new MemoryCache(), tokenSource: source, logger: false });
    try {
      const call = waiting.accessToken.getToken();
      await until(() => received === 1);
      expect(await Promise.race([closing.close().then(() => 'closed'), bound()])).toBe('closed');
      // The other client's request is still under way, and gets its answer.
      answerAll();
      await expect(call).resolves.toBe('ACCESS_TOKEN_HELD');
      expect({ received, letGo }).toEqual({ received: 1, letGo: 0 });
    } finally {
      await waiting.close();
    }
  });

  it("a report of a rejected token is let go by close() too, rather than waited for up to the source's timeoutMs", async () => {
    const app = client();
    const report = app.accessToken.invalidate('ACCESS_TOKEN_REJECTED', 40001).then(
      () => 'reported',
      (error: Error) => error.message,
    );
    await until(() => received === 1);
    expect(await Promise.race([app.close().then(() => 'closed'), bound()])).toBe('closed');
    expect(await report).toMatch(/The client was closed/);
    await until(() => letGo === 1);
    expect({ received, letGo }).toEqual({ received: 1, letGo: 1 });
  });
});

describe('a client of a token service whose instances restart one by one, or lose their store', () => {
  it("a report answered 503 shutting_down (the instance's last answer on that connection) holds nothing back: the next call's report reaches another instance, and the call goes through", async () => {
    const mock = await startMockWeChat();
    const { appId } = mock.createApp();
    let current = mock.issueClassicToken(appId);
    let reports = 0;
    asked = [];
    // The first report meets an instance shutting down (no Retry-After: its clients may reach another
    // instance); the store still holds the token reported until an instance that runs takes the report.
    answer = (path) => {
      if (path.endsWith('/invalidate')) {
        reports += 1;
        if (reports === 1) return { status: 503, body: JSON.stringify({ error: { code: 'shutting_down', message: 'the service is shutting down' } }) };
        current = mock.issueClassicToken(appId);
      }
      return { status: 200, body: JSON.stringify({ access_token: current, expires_at: now() + 7200 }) };
    };
    const client = new OfficialAccount({ appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32) }), logger: false });
    try {
      await expect(client.accessToken.getToken()).resolves.toBe(current);
      // A program outside the fleet superseded the token.
      mock.invalidateTokens(appId);
      const send = () => client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} });
      await expect(send()).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 503 });
      await expect(send()).resolves.toMatchObject({ errcode: 0 });
      expect(reports).toBe(2);
    } finally {
      await client.close();
      await mock.close();
    }
  });

  it('a report answered 503 store_unavailable (no Retry-After) holds its own path back only: the token asked for next is, and a report of the token it brings goes out', async () => {
    const mock = await startMockWeChat();
    const { appId } = mock.createApp();
    let current = mock.issueClassicToken(appId);
    asked = [];
    let reports = 0;
    answer = (path) => {
      if (path.endsWith('/invalidate')) {
        reports += 1;
        if (reports === 1) return { status: 503, body: JSON.stringify({ error: { code: 'store_unavailable', message: 'the store did not answer' } }) };
      }
      return { status: 200, body: JSON.stringify({ access_token: current, expires_at: now() + 7200 }) };
    };
    const client = new OfficialAccount({ appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32) }), logger: false });
    try {
      const first = await client.accessToken.getToken();
      mock.invalidateTokens(appId);
      await expect(client.accessToken.invalidate(first, 40001)).rejects.toMatchObject({ status: 503 });
      // Another instance refreshed meanwhile: the token asked for at once is the new one.
      current = mock.issueClassicToken(appId);
      await expect(client.accessToken.getToken()).resolves.toBe(current);
      await expect(client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} })).resolves.toMatchObject({ errcode: 0 });
      expect(asked.filter((line) => line.startsWith('GET '))).toHaveLength(2);
      expect(reports).toBe(1);
    } finally {
      await client.close();
      await mock.close();
    }
  });

  it('a token asked for on a connection the instance answers 503 shutting_down is asked for again at the next call, not held back a second', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    asked = [];
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      answer = () => ({ status: 503, body: JSON.stringify({ error: { code: 'shutting_down', message: 'the service is shutting down' } }) });
      await expect(source.fetch(request)).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 503, sent: true });
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(source.fetch(request)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_1' });
      expect(asked).toHaveLength(2);
    } finally {
      vi.useRealTimers();
      await source.close?.();
    }
  });
});
