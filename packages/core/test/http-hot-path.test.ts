import { inspect } from 'node:util';
import { getHeapSpaceStatistics } from 'node:v8';
import { PerformanceObserver, constants } from 'node:perf_hooks';
import type { Dispatcher } from 'undici';
import { describe, expect, it } from 'vitest';
import { HttpClient, cleanPath, type QueryValue } from '../src/http.js';
import { retryAtOf } from '../src/retry-at.js';
import type { ApiClient } from '../src/api-client.js';
import { TemplateMessage } from '../src/template-message.js';
import { gc, rejection } from './helpers.js';

// The per-send path of HttpClient, on a dispatcher of the test's own (undici's plain handler interface):
// the query sent for each token, the wait for a socket, and an answer parsed as it completes.

interface Handler {
  onConnect(abort: (error?: Error) => void): void;
  onHeaders(status: number, headers: Buffer[], resume: () => void, statusText: string): boolean;
  onData(chunk: Buffer): boolean;
  onComplete(trailers: unknown): void;
  onError(error: Error): void;
}

type Dispatch = (options: Dispatcher.DispatchOptions, handler: Handler) => boolean;

function http(dispatch: Dispatch, extra: { queueTimeoutMs?: number; timeoutMs?: number } = {}): HttpClient {
  return new HttpClient({
    baseUrl: 'http://127.0.0.1:9',
    timeoutMs: 2_000,
    maxResponseBytes: 1 << 20,
    dispatcher: { dispatch } as unknown as Dispatcher,
    userAgent: 'test',
    ...extra,
  });
}

/** Answers in full, inside dispatch(): on a socket at once, then status, headers and body. */
function answer(handler: Handler, status: number, body: string, headers: Record<string, string> = { 'content-type': 'application/json' }): void {
  handler.onConnect(() => {});
  handler.onHeaders(status, Object.entries(headers).flatMap(([name, value]) => [Buffer.from(name), Buffer.from(value)]), () => {}, '');
  handler.onData(Buffer.from(body));
  handler.onComplete([]);
}

const busyWait = (ms: number) => {
  const until = performance.now() + ms;
  while (performance.now() < until);
};

describe('the access_token in the query', () => {
  it('each send carries its own token, however the tokens of one client (or of many sharing it) follow each other', async () => {
    const sent: string[] = [];
    const client = http((options, handler) => {
      sent.push(String(options.path));
      answer(handler, 200, '{"errcode":0}');
      return true;
    });
    const tokens: QueryValue[] = ['A', 'B', 'A', 'A', 'a+b/c=?&#%', 'a+b/c=?&#%', '令牌', 1, '1', 1, true, 'true', false, 0, 'B'];
    for (const token of tokens) await client.json({ method: 'GET', path: 'cgi-bin/x', query: { openid: 'o', access_token: token } });
    // A name that only ends like it is encoded on its own, and does not disturb the next send.
    await client.json({ method: 'GET', path: 'cgi-bin/x', query: { component_access_token: 'C', access_token: 'B' } });
    await client.json({ method: 'GET', path: 'cgi-bin/x', query: { access_token: 'A', openid: 'o' } });
    await client.close();
    expect(sent).toEqual([
      ...tokens.map((token) => `/cgi-bin/x?openid=o&access_token=${encodeURIComponent(String(token))}`),
      '/cgi-bin/x?component_access_token=C&access_token=B',
      '/cgi-bin/x?access_token=A&openid=o',
    ]);
  });

  it('the client keeps no token where inspecting it would show one', async () => {
    const client = http((_options, handler) => {
      answer(handler, 200, '{"errcode":0}');
      return true;
    });
    await client.json({ method: 'GET', path: 'cgi-bin/x', query: { access_token: 'SECRET-TOKEN-7f3a' } });
    await client.close();
    const text = inspect(client, { depth: 8, showHidden: true, getters: true });
    expect(text).not.toContain('SECRET-TOKEN-7f3a');
  });
});

describe('the wait for a socket, on a dispatcher of the caller', () => {
  it('a request no socket takes fails within its queue window, as not sent', async () => {
    const client = http(() => true, { queueTimeoutMs: 50 });
    const error = await rejection(client.json({ method: 'GET', path: 'cgi-bin/x' }));
    expect([error.code, error.sent]).toEqual(['ERR_WXKIT_TIMEOUT', false]);
    await client.close();
  }, 5_000);

  it('a socket that comes after the queue window, before the window is swept, takes nothing: the request was never sent', async () => {
    let queued: Handler | undefined;
    const client = http(
      (_options, handler) => {
        queued = handler;
        return true;
      },
      { queueTimeoutMs: 30 },
    );
    const sending = rejection(client.json({ method: 'GET', path: 'cgi-bin/x' }));
    // No timer has run: the socket comes past the window, before any sweep could.
    busyWait(60);
    expect(() => queued!.onConnect(() => {})).toThrow('given up while queued');
    const error = await sending;
    expect([error.code, error.sent]).toEqual(['ERR_WXKIT_TIMEOUT', false]);
    await client.close();
  });

  it('a request a socket takes within its window is answered, however long the answer then takes', async () => {
    const client = http(
      (_options, handler) => {
        // On a socket before any timer can run (the window cannot have passed), answered after it.
        queueMicrotask(() => handler.onConnect(() => {}));
        setTimeout(() => {
          handler.onHeaders(200, [Buffer.from('content-type'), Buffer.from('application/json')], () => {}, '');
          handler.onData(Buffer.from('{"ok":1}'));
          handler.onComplete([]);
        }, 150);
        return true;
      },
      { queueTimeoutMs: 40 },
    );
    expect(await client.json({ method: 'GET', path: 'cgi-bin/x' })).toEqual({ ok: 1 });
    await client.close();
  });

  it('a dispatcher that throws fails the call (a promise, never a throw): not sent before a socket, sent after', async () => {
    const before = http(() => {
      throw new Error('refused');
    });
    const after = http((_options, handler) => {
      handler.onConnect(() => {});
      throw new Error('broke');
    });
    let first: Promise<unknown> | undefined;
    let second: Promise<unknown> | undefined;
    expect(() => (first = before.json({ method: 'GET', path: 'cgi-bin/x' }))).not.toThrow();
    expect(() => (second = after.json({ method: 'GET', path: 'cgi-bin/x' }))).not.toThrow();
    expect([(await rejection(first!)).sent, (await rejection(second!)).sent]).toEqual([false, true]);
    await Promise.all([before.close(), after.close()]);
  });
});

describe('the queue watch', () => {
  it('of many requests queued together, those a socket takes are answered and the others fail as not sent, whatever their place in the queue', async () => {
    const queued: Handler[] = [];
    const client = http(
      (_options, handler) => {
        queued.push(handler);
        return true;
      },
      { queueTimeoutMs: 40 },
    );
    const calls = Array.from({ length: 7 }, (_, i) => client.json({ method: 'GET', path: `cgi-bin/x${i}` }).then((value) => ({ value }), (error: { code: string; sent: boolean }) => ({ error: [error.code, error.sent] })));
    // Sockets for the first, a middle one and the last (each end of the queue and its inside), then for two
    // neighbours: every other request waits out its window.
    for (const i of [0, 3, 6, 4, 5]) answer(queued[i]!, 200, `{"n":${i}}`);
    // One more, queued after the others left: the watch still holds it to its own window.
    const late = rejection(client.json({ method: 'GET', path: 'cgi-bin/late' }));
    const outcomes = await Promise.all(calls);
    expect(outcomes).toEqual([
      { value: { n: 0 } },
      { error: ['ERR_WXKIT_TIMEOUT', false] },
      { error: ['ERR_WXKIT_TIMEOUT', false] },
      { value: { n: 3 } },
      { value: { n: 4 } },
      { value: { n: 5 } },
      { value: { n: 6 } },
    ]);
    expect([(await late).code, (await late).sent]).toEqual(['ERR_WXKIT_TIMEOUT', false]);
    // A socket that comes for an expired request takes nothing.
    expect(() => queued[1]!.onConnect(() => {})).toThrow('given up while queued');
    await client.close();
  }, 5_000);

  it('keeps nothing of a request once a socket took it: sends leave the young generation as garbage, not promoted', async () => {
    const oldSpace = () => getHeapSpaceStatistics().find((space) => space.space_name === 'old_space')!.space_used_size;
    // As undici's Pool does: the request waits (so the watch holds it), a socket takes it a moment later.
    const body = JSON.stringify({ errcode: 0, padding: 'x'.repeat(2_000) });
    const client = http((_options, handler) => {
      setImmediate(() => answer(handler, 200, body));
      return true;
    });
    const sends = async (count: number) => {
      let left = count;
      const lane = async () => {
        while (left-- > 0) await client.json({ method: 'GET', path: 'cgi-bin/x', query: { access_token: 'T' } });
      };
      await Promise.all(Array.from({ length: 32 }, lane));
    };
    await sends(2_000); // compiled, warm
    gc();
    // A full collection during the sends would take back what was promoted and hide it: there must be none
    // (the old generation hardly grows while nothing is promoted).
    const collections = new PerformanceObserver(() => undefined);
    collections.observe({ entryTypes: ['gc'] });
    const before = oldSpace();
    await sends(20_000);
    const promoted = oldSpace() - before;
    const full = collections.takeRecords().filter((entry) => (entry as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR).length;
    collections.disconnect();
    await client.close();
    // About 50 MB pass through the young generation; a request kept past its end (by a long-lived table
    // still naming it) brings megabytes over. Measured here: 0.06-0.16 MB, and 14 MB with a Set.
    expect({ promoted: promoted < 1_500_000, full }).toEqual({ promoted: true, full: 0 });
  }, 30_000);
});

describe('an answer parsed as it completes', () => {
  it('a body that is not JSON, or a failure with Retry-After, rejects the call, even when answered inside dispatch()', async () => {
    const answers = new Map<string, [number, string, Record<string, string>]>([
      ['/plain', [200, 'not json', { 'content-type': 'text/plain' }]],
      ['/busy?x=1', [503, 'busy', { 'content-type': 'text/plain', 'retry-after': '120' }]],
      ['/denied', [200, '{"errcode":40001,"errmsg":"invalid credential"}', { 'content-type': 'application/json' }]],
    ]);
    const client = http((options, handler) => {
      const [status, body, headers] = answers.get(String(options.path))!;
      answer(handler, status, body, headers);
      return true;
    });
    const plain = await rejection(client.json({ method: 'GET', path: 'plain' }));
    const before = Date.now();
    const busy = await rejection(client.json({ method: 'GET', path: '/busy?x=1' }));
    const denied = await rejection(client.binary({ method: 'POST', path: 'denied', json: {} }));
    await client.close();
    expect([plain.name, plain.code, plain.path]).toEqual(['BadResponseError', 'ERR_WXKIT_BAD_RESPONSE', 'plain']);
    expect([busy.code, busy.status, busy.path]).toEqual(['ERR_WXKIT_HTTP', 503, 'busy']);
    expect(retryAtOf(busy)! - before).toBeGreaterThanOrEqual(119_000);
    expect(retryAtOf(busy)! - before).toBeLessThanOrEqual(121_000);
    expect([denied.code, denied.errcode]).toEqual(['ERR_WXKIT_WECHAT_API', 40001]);
  }, 5_000);
});

describe('a body that is not JSON, quoted nowhere', () => {
  it("the error and its cause keep no character of the body (a proxy answering a bare token), only JSON.parse's position", async () => {
    const TOKEN = 'ACCESSTOKENSECRETPART0123456789abcdefghij';
    const bodies = [TOKEN, `x${TOKEN}`, `{"access_token":${TOKEN}}`, `{"access_token":"${TOKEN}" "expires_in":7200}`, `[${TOKEN}]`];
    const client = http((options, handler) => {
      answer(handler, 200, bodies[Number(new URLSearchParams(String(options.path).split('?')[1]).get('n'))]!, { 'content-type': 'text/plain' });
      return true;
    });
    const failures = [];
    for (const [n] of bodies.entries()) failures.push(await rejection(client.json({ method: 'GET', path: 'cgi-bin/token', query: { n } })));
    await client.close();
    for (const failure of failures) {
      expect(failure).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE', message: expect.stringMatching(/not JSON/) });
      expect(failure.cause).toBeInstanceOf(SyntaxError);
      const shown = `${inspect(failure, { depth: 10 })} ${JSON.stringify(failure)} ${String(failure.cause)} ${(failure.cause as Error).stack}`;
      for (let at = 0; at + 4 <= TOKEN.length; at += 1) expect(shown).not.toContain(TOKEN.slice(at, at + 4));
    }
    // Where JSON.parse says where, without quoting the body, the position is kept.
    expect(String(failures[3]!.cause)).toMatch(/at position \d+/);
  });
});

describe('cleanPath', () => {
  // What it always was: the query string and fragment cut, then the leading slashes.
  const reference = (path: string) => path.replace(/[?#].*$/s, '').replace(/^\/+/, '');

  it('is the same as cutting the query string and the leading slashes, for any path', () => {
    const samples = ['', '/', '//', '?', '#', 'a', '/a', '//a/b', 'a?b', 'a#b', 'a/b?c#d', '?a', '#a', '/?a', 'a\n?b', 'a\n#b\nc', '\u2215a', '\uff0fa', '\ud800a?', '令牌/接口?x=1', ' /a', '\\a'];
    const alphabet = ['a', '/', '?', '#', '\n', '\r', ' ', '%', '\u2028', '\ud83d', '\ude00', '\uff0f', '\\', ':'];
    let seed = 12345;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
    for (let i = 0; i < 20_000; i += 1) {
      const length = next() % 8;
      let path = '';
      for (let j = 0; j < length; j += 1) path += alphabet[next() % alphabet.length];
      samples.push(path);
    }
    const differing = samples.filter((path) => cleanPath(path) !== reference(path));
    expect(differing).toEqual([]);
  });
});

describe('templateMessage.send()', () => {
  it('rejects, never throws: a message that is no message, or the method called off its object', async () => {
    const templates = new TemplateMessage({ postJson: () => Promise.resolve({ errcode: 0, msgid: 1 }) } as unknown as ApiClient);
    const { send } = templates;
    let invalid: Promise<unknown> | undefined;
    let detached: Promise<unknown> | undefined;
    expect(() => (invalid = templates.send(undefined as never))).not.toThrow();
    expect(() => (detached = (send as (message: unknown) => Promise<unknown>)({ touser: 'o', template_id: 'T', data: {} }))).not.toThrow();
    expect((await rejection(invalid!)).name).toBe('ConfigError');
    expect((await rejection(detached!)).name).toBe('TypeError');
    expect(await templates.send({ touser: 'o', template_id: 'T', data: {} })).toEqual({ errcode: 0, msgid: 1 });
  });
});
