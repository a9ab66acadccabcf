import { createServer, type Server } from 'node:http';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { MemoryCache, OfficialAccount, remoteTokenSource } from '../src/index.js';

// A token service that takes each request and answers it only when told: a request the client waited
// a second for, then served its held token instead, is answered late, after what came meanwhile.
interface Held {
  method: string;
  url: string;
  send: (token: string) => void;
  fail: (status: number) => void;
}
let server: Server;
let url: string;
let pending: Held[] = [];
let received: string[] = [];
let letGo = 0;
beforeAll(async () => {
  server = createServer((req, res) => {
    received.push(`${req.method} ${req.url}`);
    req.resume();
    res.once('close', () => {
      if (!res.writableEnded) letGo += 1;
    });
    pending.push({
      method: req.method ?? '',
      url: req.url ?? '',
      send: (token) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: token, expires_at: Math.floor(Date.now() / 1000) + 7200 })),
      fail: (status) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'unavailable' } })),
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
beforeEach(() => {
  pending = [];
  received = [];
  letGo = 0;
  // Every case moves the clock past memo windows and token lives, rather than wait.
  vi.useFakeTimers({ toFake: ['Date', 'performance'] });
});
afterEach(() => {
  vi.useRealTimers();
});

/** Under fake dates, a wait counted in turns of the event loop rather than by the clock. */
const turns = async (condition: () => boolean) => {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
};
/** The request the service holds whose method is `method`, taken out of those it holds. */
const take = async (method: 'GET' | 'POST'): Promise<Held> => {
  await turns(() => pending.some((held) => held.method === method));
  const index = pending.findIndex((held) => held.method === method);
  expect(index).toBeGreaterThanOrEqual(0);
  return pending.splice(index, 1)[0]!;
};

function client(timeoutMs = 600_000) {
  const app = new OfficialAccount({ appId: 'wx0123456789abcdef', cache: new MemoryCache(), tokenSource: remoteTokenSource({ url, key: 'k'.repeat(32), timeoutMs }), logger: false });
  const fetched: string[] = [];
  app.on('access_token.fetched', (event) => fetched.push(event.event));
  return { app, fetched };
}

/** A client holding ACCESS_TOKEN_1, past its memo window, whose next request the service holds. */
async function lateRequest(timeoutMs?: number) {
  const made = client(timeoutMs);
  const first = made.app.accessToken.getToken();
  (await take('GET')).send('ACCESS_TOKEN_1');
  await expect(first).resolves.toBe('ACCESS_TOKEN_1');
  vi.advanceTimersByTime(31_000);
  // Served the held token after the grace, the request still under way.
  await expect(made.app.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
  const late = await take('GET');
  return { ...made, late };
}

describe('the late answer of a request the held token stood in for', () => {
  it('does not bring back a token reported rejected meanwhile: the report\'s answer stays, and the rejected token is not served', async () => {
    const { app, fetched, late } = await lateRequest();
    try {
      const report = app.accessToken.invalidate('ACCESS_TOKEN_1', 40001);
      (await take('POST')).send('ACCESS_TOKEN_2');
      await report;
      await expect(app.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
      // The service answers the request it held with the token it had then.
      late.send('ACCESS_TOKEN_1');
      await turns(() => fetched.length === 3);
      expect(fetched).toHaveLength(3);
      await expect(app.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
      vi.advanceTimersByTime(10_000);
      await expect(app.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
      expect(received.filter((line) => line.startsWith('GET '))).toHaveLength(2);
    } finally {
      await app.close();
    }
  });

  it('does not bring back a token reported rejected meanwhile whose report got no answer: the next call asks anew', async () => {
    const { app, fetched, late } = await lateRequest();
    try {
      const report = app.accessToken.invalidate('ACCESS_TOKEN_1', 40001);
      (await take('POST')).fail(503);
      await report.catch(() => undefined);
      const call = app.accessToken.getToken();
      let settled = false;
      void call.finally(() => (settled = true)).catch(() => undefined);
      late.send('ACCESS_TOKEN_1');
      // The call does not take the rejected token: it asks once more, and gets the new one.
      await turns(() => settled || pending.some((held) => held.method === 'GET'));
      pending.find((held) => held.method === 'GET')?.send('ACCESS_TOKEN_2');
      await expect(call).resolves.toBe('ACCESS_TOKEN_2');
      expect(fetched).toHaveLength(3);
      await expect(app.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
    } finally {
      await app.close();
    }
  });

  it('does not replace the answer of a forced refresh made meanwhile', async () => {
    const { app, fetched, late } = await lateRequest();
    try {
      const forced = app.accessToken.forceRefresh();
      (await take('GET')).send('ACCESS_TOKEN_2');
      await expect(forced).resolves.toBe('ACCESS_TOKEN_2');
      late.send('ACCESS_TOKEN_1');
      await turns(() => fetched.length === 3);
      expect(fetched).toHaveLength(3);
      await expect(app.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_2');
    } finally {
      await app.close();
    }
  });

  it('failing after a forced refresh made meanwhile got its answer, is old news: the next failure of the service is said', async () => {
    const { app, late } = await lateRequest();
    const failed: { error?: string }[] = [];
    app.on('access_token.fetch_failed', (event) => failed.push(event));
    try {
      const forced = app.accessToken.forceRefresh();
      (await take('GET')).send('ACCESS_TOKEN_2');
      await expect(forced).resolves.toBe('ACCESS_TOKEN_2');
      late.fail(503);
      // A memo window on, a call is served the held token while the late request has not ended; once it
      // has, the call asks.
      let next: Promise<string> | undefined;
      for (let i = 0; i < 20 && !pending.some((held) => held.method === 'GET'); i++) {
        vi.advanceTimersByTime(31_000);
        let settled = false;
        next = app.accessToken.getToken().finally(() => (settled = true));
        await turns(() => settled || pending.some((held) => held.method === 'GET'));
      }
      (await take('GET')).fail(404);
      await expect(next).resolves.toBe('ACCESS_TOKEN_2');
      expect(failed.map((event) => event.error)).toEqual([expect.stringMatching(/404/)]);
    } finally {
      await app.close();
    }
  });

  it('close() while it is under way: resolves, lets it go, says nothing after', async () => {
    const { app } = await lateRequest();
    const failed: unknown[] = [];
    app.on('access_token.fetch_failed', (event) => failed.push(event));
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      await app.close();
      // close() waited for the request to end: let go, its failure nobody's.
      await turns(() => letGo === 1);
      expect(letGo).toBe(1);
      expect({ failed: failed.length, unhandled }).toEqual({ failed: 0, unhandled: [] });
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('a caller with no good token held joins it rather than start a second request, and gets its answer', async () => {
    const { app, late } = await lateRequest();
    try {
      // The held token nears its end while the request is still under way.
      vi.advanceTimersByTime(7_200_000 - 31_000 - 20_000);
      const call = app.accessToken.getToken();
      // Only the request under way can answer it: a second one beside it would still be held.
      late.send('ACCESS_TOKEN_2');
      await expect(call).resolves.toBe('ACCESS_TOKEN_2');
      expect(received.filter((line) => line.startsWith('GET '))).toHaveLength(2);
    } finally {
      await app.close();
    }
  });

  it("failing once the held token nears its end, it is its joiners' error, not said as a held token serving on", async () => {
    const { app, late } = await lateRequest();
    const failed: unknown[] = [];
    app.on('access_token.fetch_failed', (event) => failed.push(event));
    try {
      vi.advanceTimersByTime(7_200_000 - 31_000 - 20_000);
      const call = app.accessToken.getToken();
      late.fail(503);
      await expect(call).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 503 });
      expect(failed).toEqual([]);
    } finally {
      await app.close();
    }
  });

  it('every caller giving up before the grace lets the request go, and the next call asks anew', async () => {
    const { app } = client();
    try {
      const first = app.accessToken.getToken();
      (await take('GET')).send('ACCESS_TOKEN_1');
      await first;
      vi.advanceTimersByTime(31_000);
      const controller = new AbortController();
      const call = app.accessToken.getToken({ signal: controller.signal });
      await take('GET');
      controller.abort(new Error('gave up'));
      await expect(call).rejects.toThrow('gave up');
      await turns(() => letGo === 1);
      const next = app.accessToken.getToken();
      (await take('GET')).send('ACCESS_TOKEN_2');
      await expect(next).resolves.toBe('ACCESS_TOKEN_2');
    } finally {
      await app.close();
    }
  });
});

describe('a request the held token stood in for after every caller gave up on it', () => {
  it("is no failure of the service's to say when it ends (the source let it go late): the next window's failure is said", async () => {
    // A source of the program's own that answers when told, whatever its signal says.
    const answers: { resolve: (answer: { value: string; expiresIn: number }) => void; reject: (error: Error) => void }[] = [];
    const source = {
      fetch: () => new Promise<{ value: string; expiresIn: number }>((resolve, reject) => answers.push({ resolve, reject })),
      invalidate: async () => undefined,
    };
    const app = new OfficialAccount({ appId: 'wx0123456789abcdef', cache: new MemoryCache(), tokenSource: source, logger: false });
    const failed: { error?: string }[] = [];
    app.on('access_token.fetch_failed', (event) => failed.push(event));
    try {
      const first = app.accessToken.getToken();
      await turns(() => answers.length === 1);
      answers[0]!.resolve({ value: 'ACCESS_TOKEN_1', expiresIn: 7200 });
      await expect(first).resolves.toBe('ACCESS_TOKEN_1');
      vi.advanceTimersByTime(31_000);
      const controller = new AbortController();
      const gaveUp = app.accessToken.getToken({ signal: controller.signal });
      await turns(() => answers.length === 2);
      controller.abort(new Error('gave up'));
      await expect(gaveUp).rejects.toThrow('gave up');
      // A call that comes meanwhile is served the held token once the grace is over.
      await expect(app.accessToken.getToken()).resolves.toBe('ACCESS_TOKEN_1');
      answers[1]!.reject(new Error('the service is down'));
      // The next memo window asks again, and its failure is said.
      vi.advanceTimersByTime(31_000);
      const next = app.accessToken.getToken();
      await turns(() => answers.length === 3);
      answers[2]!.reject(new Error('the service is down'));
      await expect(next).resolves.toBe('ACCESS_TOKEN_1');
      expect(failed.map((event) => event.error)).toEqual(['the service is down']);
    } finally {
      await app.close();
    }
  });
});
