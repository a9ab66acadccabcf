import { createServer as createHttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { CacheError, HttpError, MemoryCache, OfficialAccount, WeChatApiError } from '../src/index.js';
import type { GuardedStore } from '../src/store.js';
import { FailureGate, clampRetryAt, decodeMarker, encodeMarker, markerError, markerFor } from '../src/token/failure.js';
import { shortLivedEndsInMs, validateFetched } from '../src/token/upstream.js';
import { FetchSpacing } from '../src/token/spacing.js';
import { retryAtOf } from '../src/retry-at.js';
import { newApp, rejection } from './helpers.js';

// The shared failure marker and the spacing of fetches: how long a failure holds the fleet back, what a
// peer's marker may claim, and what a process keeps of a marker it could not write.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/** The store calls the gate and the spacing make, on a MemoryCache; `failWrites` fails them as a store gone away would. */
function gateStore() {
  const cache = new MemoryCache();
  const state = { failWrites: false };
  const write = async <T>(run: () => Promise<T>): Promise<T> => {
    if (state.failWrites) throw new CacheError('The token store did not answer');
    return run();
  };
  const store = {
    get: (key: string) => cache.get(key),
    getOrOtherKind: (key: string) => cache.get(key),
    set: (key: string, value: string, ttl: number) => write(() => cache.set(key, value, ttl)),
    add: (key: string, value: string, ttl: number) => write(() => cache.add(key, value, ttl)),
    compareAndSet: (key: string, expected: string, value: string, ttl: number) => write(() => cache.compareAndSet(key, expected, value, ttl)),
    delete: (key: string) => cache.delete(key),
  } as unknown as GuardedStore;
  return { store, state };
}

const transient = () => new HttpError('ERR_WXKIT_HTTP', 'WeChat answered 502', { path: 'cgi-bin/token', status: 502 });

describe('a marker as read', () => {
  it("of a value handed back with too little life records when it ends (ends_at), and the error it stands for says so until then", () => {
    const now = 1764000000000;
    let short: unknown;
    try {
      validateFetched({ ticket: 'TICKET-0123456789', expires_in: 25 }, 'ticket', 'cgi-bin/ticket/getticket');
    } catch (error) {
      short = error;
    }
    const marker = markerFor(short, 1, now, 'web-1:4242')!;
    expect(marker).toMatchObject({ endsAt: now + 25_000, retryAt: now + 26_000 });
    const read = decodeMarker(encodeMarker(marker))!;
    expect(JSON.parse(encodeMarker(marker))).toMatchObject({ ends_at: now + 25_000 });
    expect(read.endsAt).toBe(now + 25_000);
    expect(shortLivedEndsInMs(markerError(read, 'jsapi_ticket', now + 5_000))).toBe(20_000);
    // Past that end, or a marker without it (another writer's, a failure of another kind): no value lives.
    expect(shortLivedEndsInMs(markerError(read, 'jsapi_ticket', now + 25_000))).toBeUndefined();
    const transient = markerFor(new WeChatApiError({ errcode: -1, errmsg: 'system error' }, 'cgi-bin/token'), 1, now, 'web-1:4242')!;
    expect(transient.endsAt).toBeUndefined();
    expect(encodeMarker(transient)).not.toContain('ends_at');
    expect(shortLivedEndsInMs(markerError(transient, 'access_token', now))).toBeUndefined();
    expect(decodeMarker(encodeMarker(transient).replace('"attempt"', '"ends_at":"soon","attempt"'))!.endsAt).toBeUndefined();
  });

  it('dated ahead of this clock by less than a minute holds back no longer than its kind of failure would from now', () => {
    const now = Date.now();
    const marker = { code: 'ERR_WXKIT_WECHAT_API' as const, errcode: 45011, failedAt: now + 50_000, retryAt: now + 600_000, attempt: 1 };
    expect(clampRetryAt(marker, now)).toBe(now + 60_000);
  });

  it("of a revoked authorization (61003) holds up to the hour its back-off reaches, and no longer", () => {
    const now = Date.now();
    const revoked = (retryAt: number) => ({ code: 'ERR_WXKIT_WECHAT_API' as const, errcode: 61003, path: 'cgi-bin/component/api_authorizer_token', failedAt: now, retryAt, attempt: 8 });
    expect(clampRetryAt(revoked(now + 3_600_000), now)).toBe(now + 3_600_000);
    expect(clampRetryAt(revoked(now + 86_400_000), now)).toBe(now + 3_600_000);
  });

  it('with an attempt below 1 counts as a first failure, so the next pause does not shrink under a second', () => {
    for (const attempt of [0, -5]) {
      expect(decodeMarker(JSON.stringify({ failed_at: 1, retry_at: 2, attempt }))?.attempt).toBe(1);
    }
  });
});

describe('a marker as written', () => {
  it('pauses the fleet a minute for the IP confirmation WeChat asks of the administrator (89501, 89503, 89506, 89507), not a transient second', () => {
    const now = Date.now();
    for (const errcode of [89501, 89503, 89506, 89507]) {
      const marker = markerFor(new WeChatApiError({ errcode, errmsg: 'ip refused by the administrator' }, 'cgi-bin/token'), 1, now, 'host:1')!;
      expect({ errcode, pauseMs: marker.retryAt - now }).toEqual({ errcode, pauseMs: 60_000 });
    }
    expect(new WeChatApiError({ errcode: 89506, errmsg: 'ip refused' }, 'cgi-bin/token').message).toContain('blocked for 24 hours');
  });
});

describe('a revoked authorization (61003)', () => {
  it('pauses a minute at its first refusal, however many transient failures came before it, then doubles', async () => {
    const { store } = gateStore();
    const gate = new FailureGate('wechat:authorizer_access_token:wxc:wxa', 'authorizer_access_token');
    const revoked = () => new WeChatApiError({ errcode: 61003, errmsg: 'component is not authorized by this account' }, 'cgi-bin/component/api_authorizer_token');
    let now = Date.now();
    for (let i = 0; i < 6; i += 1) {
      const marker = (await gate.record(store, transient(), now, 'host:1'))!;
      now = marker.retryAt;
    }
    const first = (await gate.record(store, revoked(), now, 'host:1'))!;
    expect(first.retryAt - now).toBe(60_000);
    now = first.retryAt;
    const second = (await gate.record(store, revoked(), now, 'host:1'))!;
    expect(second.retryAt - now).toBe(120_000);
  });

  it('keeps its pause at the hour through a transient failure between two 61003s', async () => {
    const { store } = gateStore();
    const gate = new FailureGate('wechat:authorizer_access_token:wxc:wxa', 'authorizer_access_token');
    const revoked = () => new WeChatApiError({ errcode: 61003, errmsg: 'component is not authorized by this account' }, 'cgi-bin/component/api_authorizer_token');
    let now = Date.now();
    let marker = (await gate.record(store, revoked(), now, 'host:1'))!;
    for (let i = 0; i < 6; i += 1) {
      now = marker.retryAt;
      marker = (await gate.record(store, revoked(), now, 'host:1'))!;
    }
    expect(marker.retryAt - now).toBe(3_600_000);
    now = marker.retryAt;
    // One 502 (or -1, system busy) when the hour is up: the account is no less revoked for it.
    now = (await gate.record(store, transient(), now, 'host:1'))!.retryAt;
    const next = (await gate.record(store, revoked(), now, 'host:1'))!;
    expect(next.retryAt - now).toBe(3_600_000);
  });
});

describe('a marker this process could not write', () => {
  it('holds this process back, and a success ends it', async () => {
    const { store, state } = gateStore();
    const gate = new FailureGate('wechat:access_token:wx1', 'access_token');
    const now = Date.now();
    state.failWrites = true;
    expect(await gate.record(store, transient(), now, 'host:1')).toMatchObject({ attempt: 1 });
    expect(await gate.active(store, now + 1)).toBeDefined();
    state.failWrites = false;
    await gate.clear(store);
    expect(await gate.active(store, now + 1)).toBeUndefined();
  });

  it('counts over an older stored one: the later failure, the next attempt, is the one in force', async () => {
    const { store, state } = gateStore();
    const gate = new FailureGate('wechat:access_token:wx2', 'access_token');
    const t0 = Date.now();
    await gate.record(store, transient(), t0, 'host:1');
    // The first pause (1 s ± 20 %) has passed; the second failure's marker cannot be written.
    const t1 = t0 + 1_500;
    state.failWrites = true;
    await gate.record(store, transient(), t1, 'host:1');
    const active = await gate.active(store, t1 + 100);
    expect(active?.failedAt).toBe(t1);
    expect(active?.attempt).toBe(2);
  });
});

describe('fetch spacing', () => {
  it('doubles the pause while slots follow each other closely, up to its longest', async () => {
    const { store } = gateStore();
    const spacing = new FetchSpacing('wechat:access_token:wx3', 'spacing');
    const now = Date.now();
    const step = (raw: string | undefined) => (JSON.parse(raw!) as { step: number }).step;
    expect(step(await spacing.take(store, now, 30_000, 100_000))).toBe(30_000);
    expect(step(await spacing.take(store, now + 30_000, 30_000, 100_000))).toBe(60_000);
    expect(step(await spacing.take(store, now + 90_000, 30_000, 100_000))).toBe(100_000);
  });
});

describe('a forced refresh', () => {
  it('does not pass a quota marker (45009): it fails with it, asking WeChat nothing', async () => {
    const { app, appId, cache } = newApp(mock);
    const marker = markerFor(new WeChatApiError({ errcode: 45009, errmsg: 'reach max api daily quota limit' }, 'cgi-bin/stable_token'), 1, Date.now(), 'peer:1')!;
    await cache.set(`${app.accessToken.cacheKey}:failed`, encodeMarker(marker), 600);
    const error = await rejection(app.accessToken.forceRefresh());
    expect(error.errcode).toBe(45009);
    expect(mock.counters(appId).requests).toBe(0);
    await app.close();
  });
});

describe('a waiter for the lock', () => {
  it("fails with the holder's marker held to the pause its failure calls for: a marker dated for days does not stop it longer than a minute", async () => {
    const cache = new MemoryCache();
    const { app } = newApp(mock, { cache });
    const key = app.accessToken.cacheKey;
    const now = Date.now();
    await cache.set(`${key}:lock`, 'other-host:1:abcdef', 60);
    const get = cache.get.bind(cache);
    let markerReads = 0;
    cache.get = async (k) => {
      const value = await get(k);
      // The holder fails once this process has looked for a marker (none) and found the lock taken.
      if (k === `${key}:failed` && ++markerReads === 1) {
        const peer = { code: 'ERR_WXKIT_WECHAT_API' as const, errcode: 40164, errmsg: 'invalid ip', path: 'cgi-bin/stable_token', failedAt: now, retryAt: now + 10 * 86_400_000, attempt: 1 };
        await cache.set(`${key}:failed`, encodeMarker(peer), 600);
      }
      return value;
    };
    const error = await rejection(app.accessToken.getToken());
    expect(error.errcode).toBe(40164);
    expect(retryAtOf(error)).toBeLessThanOrEqual(now + 60_000);
    await app.close();
  });

  it('takes the holder\'s token when an earlier failure\'s marker, past its retry time, is still kept: that failure is not the holder\'s', async () => {
    const cache = new MemoryCache();
    const { app, appId } = newApp(mock, { cache });
    const key = app.accessToken.cacheKey;
    const now = Date.now();
    // An earlier failure, its pause over, kept so that the next failure counts as the next attempt.
    await cache.set(`${key}:failed`, encodeMarker({ code: 'ERR_WXKIT_HTTP', path: 'cgi-bin/stable_token', failedAt: now - 5_000, retryAt: now - 3_000, attempt: 1 }), 600);
    // Another process holds the lock; it writes its token once this one has looked at the marker while waiting.
    await cache.set(`${key}:lock`, 'other-host:1:abcdef', 60);
    const holders = mock.issueClassicToken(appId);
    const get = cache.get.bind(cache);
    let markerReads = 0;
    cache.get = async (k) => {
      const value = await get(k);
      if (k === `${key}:failed` && ++markerReads === 2) {
        await cache.set(key, JSON.stringify({ access_token: holders, expires_at: Math.floor(now / 1000) + 7200, fetched_at: Math.floor(now / 1000) }), 6900);
        await cache.delete(`${key}:lock`);
      }
      return value;
    };
    expect(await app.accessToken.getToken()).toBe(holders);
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await app.close();
  });
});

describe('a secret rotated across a fleet', () => {
  /** Processes of one app on one store, each on the secret it is given. */
  const onSecrets = <const S extends readonly string[]>(appId: string, cache: MemoryCache, secrets: S) =>
    secrets.map((secret) => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, fallbackDir: false })) as { [I in keyof S]: OfficialAccount };

  it("a process on the new secret is not held back by the failures of one still on the old secret; one on the old secret is", async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const [stale, staleToo, fresh] = onSecrets(appId, cache, ['the-secret-before-its-rotation', 'the-secret-before-its-rotation', secret]);
    try {
      await expect(stale.accessToken.getToken()).rejects.toMatchObject({ errcode: 40125 });
      const marker = decodeMarker(await cache.get(`${stale.accessToken.cacheKey}:failed`));
      expect(marker).toMatchObject({ errcode: 40125, secretDigests: [expect.stringMatching(/^[0-9a-f]{16}$/)] });
      expect(JSON.stringify(await cache.get(`${stale.accessToken.cacheKey}:failed`))).not.toContain('the-secret-before');
      // Another process on the old secret backs off with it, asking WeChat nothing.
      await expect(staleToo.accessToken.getToken()).rejects.toMatchObject({ errcode: 40125 });
      expect(mock.counters(appId).tokenRequests).toBe(1);
      // The process on the new secret fetches, and the old ones take its token from the store.
      const token = await fresh.accessToken.getToken();
      expect(mock.counters(appId).tokenRequests).toBe(2);
      expect(await staleToo.accessToken.getToken()).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      await Promise.all([stale.close(), staleToo.close(), fresh.close()]);
    }
  });

  it('two wrong secrets each ask WeChat once per pause, not once a call by turns; a failure after theirs counts as the first in a row', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const [one, two, fresh] = onSecrets(appId, cache, ['a-secret-reset-once', 'a-secret-reset-twice', secret]);
    try {
      for (let round = 0; round < 4; round += 1) {
        await expect(one.accessToken.getToken()).rejects.toMatchObject({ errcode: 40125 });
        await expect(two.accessToken.getToken()).rejects.toMatchObject({ errcode: 40125 });
      }
      expect(mock.counters(appId).tokenRequests).toBe(2);
      expect(decodeMarker(await cache.get(`${one.accessToken.cacheKey}:failed`))?.secretDigests).toHaveLength(2);
      // The right secret's first failure (a 502) pauses the fleet for a first failure's second, not the
      // ninth's minute.
      mock.injectFault({ kind: 'http-502', path: 'cgi-bin/stable_token', times: 1 });
      await expect(fresh.accessToken.getToken()).rejects.toThrow();
      expect(decodeMarker(await cache.get(`${one.accessToken.cacheKey}:failed`))).toMatchObject({ status: 502, attempt: 1 });
    } finally {
      await Promise.all([one.close(), two.close(), fresh.close()]);
    }
  });

  it('more wrong secrets than the marker lists hold every process: of nine, eight ask WeChat once each and the ninth not at all, rather than each on every call', async () => {
    const { appId } = mock.createApp();
    const cache = new MemoryCache();
    const clients = onSecrets(appId, cache, Array.from({ length: 9 }, (_, i) => `a-wrong-secret-${i}`));
    try {
      for (let round = 0; round < 3; round += 1) {
        for (const client of clients) await expect(client.accessToken.getToken()).rejects.toMatchObject({ errcode: 40125 });
      }
      expect(mock.counters(appId).tokenRequests).toBe(8);
    } finally {
      await Promise.all(clients.map((client) => client.close()));
    }
  });
});

/**
 * A front for the mock whose first token request goes to WeChat at once (the token is issued then), but
 * whose answer is held until `answer()`: a holder whose fetch is slow to come back. `asked` resolves
 * once WeChat has answered that request.
 */
async function heldAnswerFront(target: string) {
  let held = false;
  let asked!: () => void;
  let answer!: () => void;
  const askedP = new Promise<void>((resolve) => (asked = resolve));
  const answerP = new Promise<void>((resolve) => (answer = resolve));
  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', async () => {
      const body = Buffer.concat(chunks);
      const upstream = await fetch(`${target}${req.url}`, { method: req.method, headers: { 'content-type': req.headers['content-type'] ?? 'application/json' }, ...(body.length > 0 ? { body } : {}) });
      const text = await upstream.text();
      if (!held && /token/.test(req.url ?? '')) {
        held = true;
        asked();
        await answerP;
      }
      res.writeHead(upstream.status, { 'content-type': upstream.headers.get('content-type') ?? 'application/json' });
      res.end(text);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, asked: askedP, answer, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

describe('a success after the holder lost its lock', () => {
  it("deletes the marker a later holder wrote meanwhile: the fleet's next fetch is not held back by a failure a success followed", async () => {
    const shared = new MemoryCache();
    const { appId, secret } = mock.createApp();
    const front = await heldAnswerFront(mock.url);
    let key = '';
    let lockLost!: () => void;
    const renewalRefused = new Promise<void>((resolve) => (lockLost = resolve));
    // The first holder's view of the store: a renewal of its lock that finds the lock no longer its own is told of.
    const firstStore = new Proxy(shared, {
      get(target, name) {
        const value = Reflect.get(target, name, target);
        if (name !== 'compareAndSet') return typeof value === 'function' ? value.bind(target) : value;
        return async (at: string, expected: string, v: string, ttl: number) => {
          const set = await target.compareAndSet(at, expected, v, ttl);
          if (at === `${key}:lock` && expected === v && !set) lockLost();
          return set;
        };
      },
    });
    const options = { appId, secret, logger: false as const, cacheTimeoutMs: 100 };
    const first = new OfficialAccount({ ...options, baseUrl: front.url, cache: firstStore });
    const second = new OfficialAccount({ ...options, baseUrl: mock.url, cache: shared });
    const third = new OfficialAccount({ ...options, baseUrl: mock.url, cache: shared });
    key = first.accessToken.cacheKey;

    // The first holder has asked WeChat; before the answer comes back, its lock's lease runs out in the store.
    const firstToken = first.accessToken.getToken();
    await front.asked;
    await shared.delete(`${key}:lock`);
    // A second process takes the lock, and WeChat refuses its host (an IP off the whitelist): its marker
    // holds the fleet back a minute.
    mock.injectFault({ kind: 'errcode', errcode: 40164, path: 'cgi-bin/stable_token', times: Infinity });
    expect((await rejection(second.accessToken.getToken())).errcode).toBe(40164);
    mock.clearFaults();
    expect(await shared.get(`${key}:failed`)).toBeDefined();
    // The first holder learns that the lock is no longer its own, then WeChat's answer reaches it.
    await renewalRefused;
    front.answer();
    const token = await firstToken;
    expect(mock.counters(appId).tokenRequests).toBe(2);

    // Its token serves the fleet, marker or not: a reader takes it, asking WeChat nothing.
    expect(await third.accessToken.getToken()).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(2);
    // The success ended the failure: once that token is reported rejected, the fleet asks WeChat at
    // once, rather than fail for the minute of a failure the success came after.
    expect(await shared.get(`${key}:failed`)).toBeUndefined();
    await third.accessToken.invalidate(token, 40001);
    expect(await third.accessToken.getToken()).toMatch(/./);
    expect(mock.counters(appId).tokenRequests).toBe(3);
    await Promise.all([first.close(), second.close(), third.close()]);
    await front.close();
  });
});
