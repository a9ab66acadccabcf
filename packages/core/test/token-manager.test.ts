import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, MiniProgram, OfficialAccount, easyWeChat6, wxJava, type TokenCache } from '../src/index.js';
import { newApp, recordingLogger, rejection } from './helpers.js';

// The token manager's own promises, each of which the protocol tests reach only by the way: what an
// aborted signal gets, how long a rejected token stays rejected, and when refresh-ahead is considered.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/** The native entry for `token`, fetched `ageSeconds` ago with 7200 s of life. */
const entry = (token: string, ageSeconds = 0) => {
  const fetchedAt = Math.floor(Date.now() / 1000) - ageSeconds;
  return JSON.stringify({ access_token: token, expires_at: fetchedAt + 7200, fetched_at: fetchedAt });
};

describe('an aborted signal', () => {
  it('rejects getToken(), getEntry() and forceRefresh() with its reason even when the memo holds a fresh token', async () => {
    const { app, appId } = newApp(mock);
    await app.accessToken.getToken();
    const controller = new AbortController();
    const reason = new Error('caller gave up');
    controller.abort(reason);
    expect(await rejection(app.accessToken.getToken({ signal: controller.signal }))).toBe(reason);
    expect(await rejection(app.accessToken.getEntry({ signal: controller.signal }))).toBe(reason);
    expect(await rejection(app.accessToken.forceRefresh({ signal: controller.signal }))).toBe(reason);
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it('an AbortSignal-like signal (a polyfill\'s: no throwIfAborted()) lets a send whose token WeChat rejects resend with a new one', async () => {
    const { app, appId } = newApp(mock, { tokenEndpoint: 'classic' });
    await app.accessToken.getToken();
    // Another system fetched a token: the one the client holds is dead.
    mock.invalidateTokens(appId);
    const signal = { aborted: false, reason: undefined, addEventListener: () => undefined, removeEventListener: () => undefined } as unknown as AbortSignal;
    expect(await app.client.get('cgi-bin/get_api_domain_ip', {}, { signal })).toMatchObject({ ip_list: expect.any(Array) });
    expect(mock.counters(appId)).toMatchObject({ tokenRequests: 2, errcodes: { '40001': 1 } });
  });

  it('a signal that is no AbortSignal is a ConfigError naming options.signal, before any token fetch or send', async () => {
    const { app, appId } = newApp(mock);
    const mp = new MiniProgram({ ...mock.createApp(), baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    const calls: [string, (signal: AbortSignal) => Promise<unknown>][] = [
      ['getToken', (signal) => app.accessToken.getToken({ signal })],
      ['getEntry', (signal) => app.accessToken.getEntry({ signal })],
      ['forceRefresh', (signal) => app.accessToken.forceRefresh({ signal })],
      ['getTicket', (signal) => app.jssdk.getTicket('jsapi', { signal })],
      ['client.get', (signal) => app.client.get('cgi-bin/get_api_domain_ip', {}, { signal })],
      ['templateMessage.send', (signal) => app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }, { signal })],
      ['code2Session', (signal) => mp.auth.code2Session('code-abc', { signal })],
    ];
    for (const [name, call] of calls) {
      for (const signal of ['stop', {}, { aborted: 'no' }]) {
        expect(await rejection(call(signal as unknown as AbortSignal)), `${name}(${JSON.stringify(signal)})`).toMatchObject({
          code: 'ERR_WXKIT_INVALID_OPTION',
          option: 'signal',
          message: expect.stringMatching(/^The call's options\.signal must be an AbortSignal \(got (string|object)\)$/),
        });
      }
    }
    // Nothing started for a call that failed: no token fetched, no API call sent, no code exchanged.
    expect(mock.counters(appId)).toMatchObject({ requests: 0 });
    expect(mock.counters(mp.appId).requests).toBe(0);
    await Promise.all([app.close(), mp.close()]);
  });

  it('options, or a signal, given as null (from JavaScript) are none: the calls answer, and none throws at once', async () => {
    const { app, appId } = newApp(mock);
    const nothing = null as never;
    let calls: Promise<unknown>[] = [];
    expect(() => {
      calls = [
        app.accessToken.getToken(nothing),
        app.accessToken.getEntry(nothing),
        app.client.get('cgi-bin/get_api_domain_ip', {}, nothing),
        app.client.postJson('cgi-bin/message/template/send', { touser: 'o1', template_id: 'T', data: {} }, nothing),
        app.accessToken.getToken({ signal: nothing }),
        app.client.get('cgi-bin/get_api_domain_ip', {}, { signal: nothing }),
      ];
    }).not.toThrow();
    const [token, entry, ips, sent, again, ipsAgain] = await Promise.all(calls);
    expect(again).toBe(token);
    expect(ipsAgain).toMatchObject({ ip_list: expect.any(Array) });
    expect(entry).toMatchObject({ value: token });
    expect(ips).toMatchObject({ ip_list: expect.any(Array) });
    expect(sent).toMatchObject({ msgid: expect.anything() });
    expect(mock.counters(appId)).toMatchObject({ tokenRequests: 1, templateSends: 1 });
    await app.close();
  });
});

describe('a wait every caller gave up on', () => {
  /** A MemoryCache that counts the reads of one key. */
  class CountingReads extends MemoryCache {
    reads = 0;
    key = '';
    override get(key: string): Promise<string | undefined> {
      if (key === this.key) this.reads += 1;
      return super.get(key);
    }
  }

  /**
   * A client whose store's lock another process holds (and keeps), on the test's clock: the wait's budget
   * passes only as the timers are run.
   */
  async function heldByAnother() {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const cache = new CountingReads();
    const { app, appId } = newApp(mock, { cache, lockWaitMs: 120_000 });
    cache.key = `wechat:stable_access_token:${appId}`;
    await cache.set(`${cache.key}:lock`, 'other-host:4242:abcdef123456', 600);
    return { app, appId, cache };
  }

  /** heldByAnother(), with a caller (`call`: a token by default) waiting on the holder that gives up. */
  async function givenUpWait(call = (app: OfficialAccount, signal: AbortSignal): Promise<unknown> => app.accessToken.getToken({ signal })) {
    const { app, appId, cache } = await heldByAnother();
    const controller = new AbortController();
    const reason = new Error('caller gave up');
    const waiting = rejection(call(app, controller.signal));
    // It waits for the holder: it has looked at the store more than once.
    await vi.advanceTimersByTimeAsync(3_000);
    expect(cache.reads).toBeGreaterThan(1);
    controller.abort(reason);
    expect(await waiting).toBe(reason);
    return { app, appId, cache };
  }

  afterEach(() => {
    vi.useRealTimers();
  });

  it("ends: the store is read no more (the process can exit), and nothing is fetched", async () => {
    const { app, appId, cache } = await givenUpWait();
    const after = cache.reads;
    await vi.advanceTimersByTimeAsync(120_000);
    expect(cache.reads).toBe(after);
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await app.close();
  });

  it('a caller that comes after it waits anew, and takes the token the holder writes', async () => {
    const { app, appId, cache } = await givenUpWait();
    const patient = app.accessToken.getToken();
    await vi.advanceTimersByTimeAsync(3_000);
    await cache.set(cache.key, entry('HOLDERS_TOKEN_123'), 7200);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(await patient).toBe('HOLDERS_TOKEN_123');
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await app.close();
  });

  it('goes on while a caller that cannot give up (no signal) shares it', async () => {
    const { app, appId, cache } = await heldByAnother();
    const controller = new AbortController();
    const call = rejection(app.accessToken.getToken({ signal: controller.signal }));
    const patient = app.accessToken.getToken();
    await vi.advanceTimersByTimeAsync(3_000);
    controller.abort(new Error('caller gave up'));
    await call;
    const after = cache.reads;
    await vi.advanceTimersByTimeAsync(10_000);
    expect(cache.reads).toBeGreaterThan(after);
    await cache.set(cache.key, entry('HOLDERS_TOKEN_123'), 7200);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(await patient).toBe('HOLDERS_TOKEN_123');
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await app.close();
  });

  it("ends while it waits for its input: a ticket's refresh no longer waits for the access token's holder", async () => {
    // The ticket's refresh waits for the access token, whose refresh waits for the holder.
    const { app, appId, cache } = await givenUpWait((client, signal) => client.jssdk.getTicket('jsapi', { signal }));
    await vi.advanceTimersByTimeAsync(1_000);
    const after = cache.reads;
    await vi.advanceTimersByTimeAsync(120_000);
    expect(cache.reads).toBe(after);
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await app.close();
  });
});

describe('rejected tokens', () => {
  it('a token reported again after its invalidation ended starts no second round', async () => {
    const { app } = newApp(mock);
    let invalidations = 0;
    app.on('access_token.invalidated', () => (invalidations += 1));
    const token = await app.accessToken.getToken();
    await app.accessToken.invalidate(token, 40001);
    // A call that was in flight with the same token comes back late with its own 40001.
    await app.accessToken.invalidate(token, 40001);
    expect(invalidations).toBe(1);
  });

  it('passes WeChat\'s errcode on: a 40001 on the token the store still holds is reported as invalidated from outside the fleet', async () => {
    const logger = recordingLogger();
    const { app } = newApp(mock, { logger });
    let external = 0;
    app.on('access_token.invalidated_externally', () => (external += 1));
    const token = await app.accessToken.getToken();
    await app.accessToken.invalidate(token, 40001);
    expect(external).toBe(1);
    // A client's own access token can follow the program that fetched it.
    expect(logger.lines.find((line) => (line.fields as { event?: string }).event === 'access_token.invalidated_externally')?.message).toMatch(/or follow it \(refresh: 'never'\)$/);
  });

  it('more than one rejected token stays rejected: a store that holds an earlier one again is not served from', async () => {
    // The clock moves past the fleet's spacing of fetches after a rejection (1 s after the first).
    let clock = Date.now();
    const now = () => clock;
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic', memoMs: 0, now, cache: new MemoryCache({ now }) });
    const first = await app.accessToken.getToken();
    await app.accessToken.invalidate(first, 40001);
    const second = await app.accessToken.getToken();
    expect(second).not.toBe(first);
    await app.accessToken.invalidate(second, 40001);
    clock += 1_001;
    // A peer without compare-and-delete writes the first, long dead, token back.
    await cache.set(app.accessToken.cacheKey, entry(first), 6900);
    const third = await app.accessToken.getToken();
    expect([first, second]).not.toContain(third);
    expect(mock.counters(appId).classicTokenRequests).toBe(3);
  });
});

describe('the memo window', () => {
  it('never lasts past the entry\'s store life, however long memoMs is: the next call fetches', async () => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), tokenEndpoint: 'classic', now: () => now, memoMs: 7_200_000, logger: false });
    const first = await app.accessToken.getToken();
    // Past the store life (7200 − 300 s), not yet within 30 s of WeChat's expiry.
    now += 6_950_000;
    expect(await app.accessToken.getToken()).not.toBe(first);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });

  it('never lasts into the last 30 s before WeChat\'s expiry of an entry without a fetch time', async () => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', now: () => now, memoMs: 7_200_000, logger: false });
    // Written by hand, or by a writer that records no fetched_at: 100 s left.
    const peer = mock.issueClassicToken(appId);
    await cache.set(app.accessToken.cacheKey, JSON.stringify({ access_token: peer, expires_at: Math.floor(now / 1000) + 100 }), 100);
    expect(await app.accessToken.getToken()).toBe(peer);
    now += 75_000;
    expect(await app.accessToken.getToken()).not.toBe(peer);
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    await app.close();
  });
});

describe('refresh-ahead', () => {
  it('hands its token to the memo: calls after it get the new token at once, however long memoMs is', async () => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), tokenEndpoint: 'classic', now: () => now, memoMs: 7_200_000, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, logger: false });
    const fetched = new Promise<string>((resolve) => app.on('access_token.fetched', (event) => event.ahead && resolve('fetched')));
    const first = await app.accessToken.getToken();
    now += 6_500_000;
    await app.accessToken.getToken();
    await fetched;
    await app.close();
    const next = await app.accessToken.getToken().catch(() => undefined);
    expect(next).toBeDefined();
    expect(next).not.toBe(first);
  });

  it('opens from the memo too: a memo window that spans the opening still starts the background refresh', async () => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    // The memo answers until the entry leaves the store (6900 s): no store read comes in between.
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), tokenEndpoint: 'classic', now: () => now, memoMs: 7_200_000, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, logger: false });
    const ahead = new Promise((resolve) => app.on('access_token.fetched', (event) => event.ahead && resolve(event)));
    const first = await app.accessToken.getToken();
    now += 6_500_000;
    expect(await app.accessToken.getToken()).toBe(first);
    await Promise.race([ahead, new Promise((_, reject) => setTimeout(() => reject(new Error('no background refresh began')), 10_000).unref())]);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });
});

describe('a closed client', () => {
  it('asks its token source for nothing once closed: a call that needs a token fails with ERR_WXKIT_NO_TOKEN', async () => {
    let fetches = 0;
    const tokenSource = {
      fetch: async () => {
        fetches += 1;
        return { value: `token-${fetches}`, expiresIn: 7200 };
      },
      invalidate: async () => undefined,
    };
    const app = new OfficialAccount({ appId: 'wx0000000000000001', tokenSource, cache: new MemoryCache(), logger: false });
    await app.close();
    const error = await rejection(app.accessToken.getToken());
    expect(error.code).toBe('ERR_WXKIT_NO_TOKEN');
    expect(fetches).toBe(0);
  });
});

describe('a read under way when its value is rejected', () => {
  it('does not hand the rejected value to its callers: they read once more, and a new token is fetched', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    // EasyWeChat 6 stores the token bare: its life is asked of the store after the value was read.
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: easyWeChat6(), tokenEndpoint: 'classic', memoMs: 0, logger: false });
    const first = await app.accessToken.getToken();
    let asked!: () => void;
    const askedForTtl = new Promise<void>((resolve) => (asked = resolve));
    let answer!: () => void;
    const answered = new Promise<void>((resolve) => (answer = resolve));
    const ttlMs = cache.ttlMs.bind(cache);
    cache.ttlMs = async (key) => {
      asked();
      await answered;
      return ttlMs(key);
    };
    const reading = app.accessToken.getToken();
    await askedForTtl;
    // A call that was sent with the same token comes back with 40001 while the read is under way.
    cache.ttlMs = ttlMs;
    const invalidated = app.accessToken.invalidate(first, 40001);
    answer();
    await invalidated;
    const token = await reading;
    expect(token).not.toBe(first);
    expect(mock.isTokenValid(appId, token)).toBe(true);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });
});

describe('a resend whose fresh token is rejected too', () => {
  it('resends with the newer token a lockless peer wrote meanwhile, without fetching again', async () => {
    const cache = new MemoryCache();
    const { app, appId } = newApp(mock, { cache, tokenEndpoint: 'classic' });
    const key = app.accessToken.cacheKey;
    await app.accessToken.getToken();
    // Every token dies: the send is rejected, and this process fetches once. Just after it wrote its
    // token, a peer without the lock fetches (killing it) and writes its own.
    mock.invalidateTokens(appId);
    let peer: string | undefined;
    const afterWrite = async (written: string, ok: boolean) => {
      if (written !== key || !ok || peer !== undefined) return;
      mock.invalidateTokens(appId);
      peer = mock.issueClassicToken(appId);
      await cache.set(key, entry(peer), 6900);
    };
    const add = cache.add.bind(cache);
    cache.add = async (k, value, ttl) => {
      const ok = await add(k, value, ttl);
      await afterWrite(k, ok);
      return ok;
    };
    const compareAndSet = cache.compareAndSet.bind(cache);
    cache.compareAndSet = async (k, expected, value, ttl) => {
      const ok = await compareAndSet(k, expected, value, ttl);
      await afterWrite(k, ok);
      return ok;
    };
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(mock.counters(appId).templateSends).toBe(1);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    expect(await app.accessToken.getToken()).toBe(peer);
    await app.close();
  });
});

/**
 * A peer without a lock fetched `peer` and writes it late: once wxkit, after deleting the token WeChat
 * rejected, took the lock and read the store again (and found nothing). `onRead` runs at each later read
 * of the key with what it returned. `stalled`: the write lands 10 ms after the store answered that read,
 * and the process takes the answer up only 250 ms later (held up past the 200 ms wait for the peer).
 */
function writesLate(cache: TokenCache, key: string, peer: string, onRead?: (value: string | undefined) => void, stalled = false): void {
  let locked = false;
  let written = false;
  const add = cache.add!.bind(cache);
  cache.add = async (k, value, ttl) => {
    const ok = await add(k, value, ttl);
    if (k === `${key}:lock` && ok) locked = true;
    return ok;
  };
  const get = cache.get.bind(cache);
  cache.get = async (k) => {
    const value = await get(k);
    if (k !== key || !locked) return value;
    if (!written) {
      written = true;
      if (!stalled) await cache.set(key, entry(peer), 6900);
      else {
        setTimeout(() => void cache.set(key, entry(peer), 6900), 10);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    } else onRead?.(value);
    return value;
  };
}

/** Sends one message, rejected once (40001) and resent with the peer's token: wxkit fetched none, which would have superseded it. */
async function resendsWithPeer(app: OfficialAccount, appId: string, peer: string): Promise<void> {
  await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
  expect(mock.counters(appId)).toMatchObject({ templateSends: 1, rejectedCalls: 1 });
  expect(mock.counters(appId).classicTokenRequests).toBe(0);
  expect(await app.accessToken.getToken()).toBe(peer);
  expect(mock.isTokenValid(appId, peer)).toBe(true);
}

/**
 * A lockless peer wrote the app's first token (no `fetched_by`), and the app holds it; then the peer
 * fetches twice more, writing neither yet: the token the app holds is dead, and the store still holds it.
 * Resolves both: the app's token and the peer's newest.
 */
async function supersededByPeer(app: OfficialAccount, cache: TokenCache, appId: string): Promise<{ first: string; peer: string }> {
  const first = mock.issueClassicToken(appId);
  await cache.set(app.accessToken.cacheKey, entry(first), 6900);
  expect(await app.accessToken.getToken()).toBe(first);
  mock.issueClassicToken(appId);
  return { first, peer: mock.issueClassicToken(appId) };
}

/**
 * Sends one message with `token` rejected (40001), and checks that the refresh after it fetched at once:
 * from the delete of `token` to the fetch, only the reads of the recovery, the refresh and the holder
 * (a wait for a peer's write would add its looks).
 */
async function fetchesAtOnce(app: OfficialAccount, cache: TokenCache, token: string, appId: string): Promise<void> {
  const key = app.accessToken.cacheKey;
  const fetchesBefore = mock.counters(appId).classicTokenRequests;
  const sendsBefore = mock.counters(appId).templateSends;
  let deleted = false;
  let reads = 0;
  const deleteIfEquals = cache.deleteIfEquals!.bind(cache);
  cache.deleteIfEquals = async (k, expected) => {
    const done = await deleteIfEquals(k, expected);
    if (k === key && expected.includes(token)) deleted = done;
    return done;
  };
  const get = cache.get.bind(cache);
  cache.get = async (k) => {
    if (k === key && deleted && mock.counters(appId).classicTokenRequests === fetchesBefore) reads += 1;
    return get(k);
  };
  await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
  expect(deleted).toBe(true);
  expect(mock.counters(appId).classicTokenRequests).toBe(fetchesBefore + 1);
  expect(mock.counters(appId).templateSends).toBe(sendsBefore + 1);
  expect(reads).toBeLessThanOrEqual(3);
}

describe('a 40001 whose newer token a lockless peer has not written yet', () => {
  it("the wait after the call's fetch ends once every call waiting on it gave up: it stops watching the store", async () => {
    /** A MemoryCache that counts the watches still registered. */
    class Watched extends MemoryCache {
      watching = 0;
      onWatch: (() => void) | undefined;
      override watch(key: string, onChange: () => void): () => void {
        const stop = super.watch(key, onChange);
        this.watching += 1;
        this.onWatch?.();
        let stopped = false;
        return () => {
          if (!stopped) this.watching -= 1;
          stopped = true;
          stop();
        };
      }
    }
    const cache = new Watched();
    const { app, appId } = newApp(mock, { tokenEndpoint: 'classic', cache });
    const key = app.accessToken.cacheKey;
    await supersededByPeer(app, cache, appId);
    // Every token the app fetches dies as it is written: the call's fetch is spent, and the 40001 on its
    // resend starts the wait for a newer token from the peer.
    for (const method of ['add', 'compareAndSet', 'set'] as const) {
      const write = (cache[method] as (...args: unknown[]) => Promise<unknown>).bind(cache);
      (cache as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
        const done = await write(...args);
        if (args[0] === key) mock.invalidateTokens(appId);
        return done;
      };
    }
    const controller = new AbortController();
    const reason = new Error('gave up');
    // The caller gives up once that wait watches the store.
    cache.onWatch = () => {
      if (mock.counters(appId).rejectedCalls === 2) setImmediate(() => controller.abort(reason));
    };
    expect(await rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }, { signal: controller.signal }))).toBe(reason);
    expect(mock.counters(appId)).toMatchObject({ rejectedCalls: 2, classicTokenRequests: 1 });
    // Its end follows the abort within the same turn of the event loop, not the wait's 2 s.
    await new Promise((resolve) => setImmediate(resolve));
    expect(cache.watching).toBe(0);
    await app.close();
  });

  it('a call that comes to the wait as every earlier one gave up waits on its own: it resends with the peer\'s token written meanwhile', async () => {
    // Two calls fail with the token their shared fetch brought: the resend that leaves second (the 4th
    // send) is held until the call whose resend came back first has waited, and given up.
    const agent = new Agent();
    let sends = 0;
    let heldCall: number | undefined;
    let releaseSend!: () => void;
    const sendReleased = new Promise<void>((resolve) => (releaseSend = resolve));
    const dispatch = agent.dispatch.bind(agent);
    agent.dispatch = (options, handler) => {
      if (String(options.path).includes('/message/template/send') && ++sends === 4) {
        heldCall = String(options.body).includes('"touser":"o1"') ? 0 : 1;
        void sendReleased.then(() => dispatch(options, handler));
        return true;
      }
      return dispatch(options, handler);
    };
    const cache = new MemoryCache();
    const { app, appId } = newApp(mock, { tokenEndpoint: 'classic', cache, dispatcher: agent });
    const key = app.accessToken.cacheKey;
    await supersededByPeer(app, cache, appId);
    const peerWrites = new Set<string>();
    for (const method of ['add', 'compareAndSet', 'set'] as const) {
      const write = (cache[method] as (...args: unknown[]) => Promise<unknown>).bind(cache);
      (cache as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
        const done = await write(...args);
        if (args[0] === key && !peerWrites.has(String(args[1]))) mock.invalidateTokens(appId);
        return done;
      };
    }
    const controllers = [new AbortController(), new AbortController()];
    const reason = new Error('gave up');
    // Once the first call waits, the wait's first look is held, and that call gives up meanwhile. The
    // other call's read before it waits lets the peer write, and the held look answers what it read before.
    let holdLook = false;
    let lookHeld: ((raw: string | undefined) => void) | undefined;
    let readsAfter = 0;
    const get = cache.get.bind(cache);
    cache.get = async (k) => {
      if (k !== key) return get(k);
      if (holdLook) {
        holdLook = false;
        return new Promise<string | undefined>((resolve) => (lookHeld = resolve));
      }
      const raw = await get(k);
      if (lookHeld && ++readsAfter === 1) {
        setImmediate(() => {
          const written = entry(mock.issueClassicToken(appId));
          peerWrites.add(written);
          void cache.set(key, written, 6900).then(() => lookHeld!(undefined));
        });
      }
      return raw;
    };
    const watch = cache.watch.bind(cache);
    let waiting: AbortController | undefined;
    let armed!: () => void;
    const waits = new Promise<void>((resolve) => (armed = resolve));
    cache.watch = (k, onChange) => {
      const stop = watch(k, onChange);
      if (!waiting && mock.counters(appId).rejectedCalls === 3) {
        waiting = controllers[heldCall === 0 ? 1 : 0]!;
        holdLook = true;
        setImmediate(() => {
          waiting!.abort(reason);
          armed();
        });
      }
      return stop;
    };
    const calls = controllers.map((controller, i) => app.templateMessage.send({ touser: `o${i + 1}`, template_id: 'T', data: {} }, { signal: controller.signal }));
    await waits;
    expect(heldCall).toBeDefined();
    const [gaveUp, late] = controllers[0] === waiting ? calls : [calls[1]!, calls[0]!];
    expect(await rejection(gaveUp!)).toBe(reason);
    releaseSend();
    await late;
    expect(mock.counters(appId)).toMatchObject({ rejectedCalls: 4, classicTokenRequests: 1 });
    await app.close();
  });

  it('the lock\'s holder waits for the peer\'s write and the call resends with it: no fetch, which would supersede the peer\'s token', async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic' });
    const { peer } = await supersededByPeer(app, cache, appId);
    writesLate(cache, app.accessToken.cacheKey, peer);
    // wxkit fetched nothing: its first token and the one it resent with are the peer's.
    await resendsWithPeer(app, appId, peer);
    await app.close();
  });

  it("the store held another dead token at the delete, which another process deleted before this one read again: the holder still waits for the peer's write", async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic' });
    const key = app.accessToken.cacheKey;
    await supersededByPeer(app, cache, appId);
    // Two peers: the other one's earlier token is in the store, and dead too (two fetches followed it).
    const earlier = mock.issueClassicToken(appId);
    mock.issueClassicToken(appId);
    const peer = mock.issueClassicToken(appId);
    await cache.set(key, entry(earlier), 6900);
    expect(mock.isTokenValid(appId, earlier)).toBe(false);
    writesLate(cache, key, peer);
    // Once the store answered this process's delete of the rejected token (its read) with the earlier
    // token, another process of the fleet, rejected with that one, deletes it.
    let deletedBeside = false;
    const get = cache.get.bind(cache);
    cache.get = async (k) => {
      const value = await get(k);
      if (k === key && !deletedBeside && mock.counters(appId).rejectedCalls === 1) {
        expect(value).toContain(earlier);
        await cache.delete(key);
        deletedBeside = true;
      }
      return value;
    };
    await resendsWithPeer(app, appId, peer);
    expect(deletedBeside).toBe(true);
    await app.close();
  });

  it("the holder's read under the lock missed, but this process took up its answer only after the wait's end (held up meanwhile): it still looks once, and takes the peer's write of that moment rather than fetch", async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic' });
    const { peer } = await supersededByPeer(app, cache, appId);
    writesLate(cache, app.accessToken.cacheKey, peer, undefined, true);
    // The peer's token was in the store 240 ms before this process would have fetched.
    await resendsWithPeer(app, appId, peer);
    await app.close();
  });

  it('a call that comes while the holder waits joins it: no fetch beside the wait', async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic', memoMs: 0 });
    const { peer } = await supersededByPeer(app, cache, appId);
    // The other call starts at the holder's look for the peer's token, before that look has answered.
    let joining: Promise<string> | undefined;
    writesLate(cache, app.accessToken.cacheKey, peer, () => (joining ??= app.accessToken.getToken()));
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(joining).toBeDefined();
    expect(await joining).toBe(peer);
    expect(mock.counters(appId).templateSends).toBe(1);
    expect(mock.counters(appId).classicTokenRequests).toBe(0);
    await app.close();
  });

  it('a refresh that takes the lock while the rejected token is still being deleted waits too', async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic', memoMs: 0 });
    const key = app.accessToken.cacheKey;
    const { first, peer } = await supersededByPeer(app, cache, appId);
    writesLate(cache, key, peer);
    // The delete of the rejected token is slow: another call reads, takes the lock and reads again
    // before the store has answered it.
    let other: Promise<string> | undefined;
    const deleteIfEquals = cache.deleteIfEquals!.bind(cache);
    cache.deleteIfEquals = async (k, expected) => {
      if (k === key && expected.includes(first) && other === undefined) {
        other = app.accessToken.getToken();
        await other;
      }
      return deleteIfEquals(k, expected);
    };
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(await other).toBe(peer);
    expect(mock.counters(appId).templateSends).toBe(1);
    expect(mock.counters(appId).classicTokenRequests).toBe(0);
    await app.close();
  });

  it('does not spend the call\'s fetch on the token it waited for: when that one is superseded too, the call still fetches once', async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic' });
    const { peer } = await supersededByPeer(app, cache, appId);
    // Once wxkit has read the peer's token, every token dies (a second peer's rounds, the console's reset).
    let killed = false;
    writesLate(cache, app.accessToken.cacheKey, peer, (value) => {
      if (killed || !value?.includes(peer)) return;
      killed = true;
      mock.invalidateTokens(appId);
    });
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(killed).toBe(true);
    expect(mock.counters(appId).templateSends).toBe(1);
    expect(mock.counters(appId).rejectedCalls).toBe(2);
    // The call's one fetch, after the token it waited for was superseded too.
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    await app.close();
  });

  it('where only wxkit has written the token, a 40001 (a program that does not share the store) is not waited on: the fetch follows', async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic' });
    const first = await app.accessToken.getToken();
    mock.invalidateTokens(appId);
    await fetchesAtOnce(app, cache, first, appId);
    await app.close();
  });

  it("a profile whose writers all take the lock (WxJava's RedisTemplate lock) learns of no lockless writer from its tokens without fetched_by: the fetch follows the 40001", async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic', schema: wxJava() });
    const key = app.accessToken.cacheKey;
    // A Java instance's token: raw, as WxJava writes it, with no writer recorded.
    const java = mock.issueClassicToken(appId);
    await cache.set(key, java, 6900);
    expect(await app.accessToken.getToken()).toBe(java);
    mock.invalidateTokens(appId);
    await fetchesAtOnce(app, cache, java, appId);
    await app.close();
  });

  it('what a process learnt of a lockless writer on one store does not hold after setCache() to another: its 40001 is not waited on there', async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic' });
    const key = app.accessToken.cacheKey;
    // On the first store a lockless peer's token is rejected: the process learns such a writer is there.
    const first = mock.issueClassicToken(appId);
    await cache.set(key, entry(first), 6900);
    expect(await app.accessToken.getToken()).toBe(first);
    mock.invalidateTokens(appId);
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    // A store only wxkit writes.
    const other = new MemoryCache();
    app.setCache(other);
    const own = await app.accessToken.getToken();
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    mock.invalidateTokens(appId);
    await fetchesAtOnce(app, other, own, appId);
    await app.close();
  });
});

/** Calls `then` with the token of wxkit's first write of the entry at `key` (an add, or a compare-and-set), once it landed. */
function afterFirstWrite(cache: TokenCache, key: string, then: (token: string) => void): void {
  let seen = false;
  const written = (k: string, ok: boolean, value: string) => {
    if (k !== key || !ok || seen) return;
    seen = true;
    then(value.startsWith('{') ? (JSON.parse(value).access_token as string) : value);
  };
  const add = cache.add!.bind(cache);
  cache.add = async (k, value, ttl) => {
    const ok = await add(k, value, ttl);
    written(k, ok, value);
    return ok;
  };
  const compareAndSet = cache.compareAndSet!.bind(cache);
  cache.compareAndSet = async (k, expected, value, ttl) => {
    const ok = await compareAndSet(k, expected, value, ttl);
    written(k, ok, value);
    return ok;
  };
}

describe('a call whose fetched token is superseded too, before a peer wrote the newer one', () => {
  // Under WxJava's format (no fetched_by, every Java writer takes the lock: writersLock) the holder does
  // not wait after a 40001, but a call whose own fetch was superseded still waits for the newer token.
  it.each([
    ["wxkit's own format", false],
    ["WxJava's, whose writers lock", true],
  ])('%s: waits for the newer token to reach the store and resends with it, rather than give up', async (_format, java) => {
    const own = await startMockWeChat();
    try {
      const { app, appId, cache } = newApp(own, { tokenEndpoint: 'classic', ...(java ? { schema: wxJava() } : {}) });
      const stored = (token: string) => (java ? token : entry(token));
      const key = app.accessToken.cacheKey;
      // A lockless peer wrote the app's first token.
      const first = own.issueClassicToken(appId);
      await cache.set(key, stored(first), 6900);
      expect(await app.accessToken.getToken()).toBe(first);
      // WeChat's clock passes the token's expiry (42001): the call fetches its one token. As soon as that
      // is written, every token dies, and a peer fetches the next one; the peer's write lands only after
      // wxkit, its fetch spent, has looked at the store and found nothing new.
      own.advanceClock(7201);
      let fetched: string | undefined;
      afterFirstWrite(cache, key, (token) => {
        fetched = token;
        own.invalidateTokens(appId);
      });
      let deleted = false;
      const deleteIfEquals = cache.deleteIfEquals!.bind(cache);
      cache.deleteIfEquals = async (k, expected) => {
        const done = await deleteIfEquals(k, expected);
        if (k === key && fetched !== undefined && expected.includes(fetched)) deleted = done;
        return done;
      };
      let peer: string | undefined;
      const get = cache.get.bind(cache);
      cache.get = async (k) => {
        const value = await get(k);
        if (deleted && k === key && peer === undefined) {
          peer = own.issueClassicToken(appId);
          await cache.set(key, stored(peer), 6900);
        }
        return value;
      };
      await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
      expect(fetched).toBeDefined();
      expect(fetched).not.toBe(first);
      expect(own.counters(appId).errcodes['42001']).toBe(1);
      expect(own.counters(appId).errcodes['40001']).toBe(1);
      expect(own.counters(appId).templateSends).toBe(1);
      // The call's one fetch: the peer's token served the last resend.
      expect(own.counters(appId).classicTokenRequests).toBe(1);
      expect(await app.accessToken.getToken()).toBe(peer);
      await app.close();
    } finally {
      await own.close();
    }
  });
});

describe('a call whose fetched token is superseded too, where only wxkit writes', () => {
  it('fails with the 40001 without waiting for a token that nobody will write', async () => {
    const { app, appId, cache } = newApp(mock, { tokenEndpoint: 'classic' });
    const key = app.accessToken.cacheKey;
    await app.accessToken.getToken();
    // A program that does not share the store fetches: the token dies; and again once wxkit wrote its new one.
    mock.invalidateTokens(appId);
    afterFirstWrite(cache, key, () => mock.invalidateTokens(appId));
    // Reads of the entry once the call's fetched token was rejected: the recovery's only, no wait's.
    let reads = 0;
    const get = cache.get.bind(cache);
    cache.get = async (k) => {
      if (k === key && mock.counters(appId).rejectedCalls === 2) reads += 1;
      return get(k);
    };
    const error = await rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }));
    expect(error.code).toBe('ERR_WXKIT_WECHAT_API');
    expect(mock.counters(appId).rejectedCalls).toBe(2);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    expect(reads).toBeLessThanOrEqual(2);
    await app.close();
  });
});

describe('a resend whose token came from a peer under the lock', () => {
  it('still has its fetch when the peer supersedes that token too and the store is empty for a moment', async () => {
    const cache = new MemoryCache();
    const { app, appId } = newApp(mock, { cache, tokenEndpoint: 'classic' });
    const key = app.accessToken.cacheKey;
    await app.accessToken.getToken();
    // A peer without a lock fetches twice: the token wxkit holds dies, and the store still holds it
    // (the peer's write lags its fetch). wxkit's recovery deletes it and finds the store empty.
    mock.issueClassicToken(appId);
    const second = mock.issueClassicToken(appId);
    let stage = 'write';
    // The peer's write lands once wxkit holds the lock: the holder finds it and fetches nothing.
    const add = cache.add.bind(cache);
    cache.add = async (k, value, ttl) => {
      const ok = await add(k, value, ttl);
      if (stage === 'write' && k === `${key}:lock` && ok) {
        stage = 'supersede';
        await cache.set(key, entry(second), 6900);
      }
      return ok;
    };
    // Once the holder has read it, the peer fetches twice more, and has not written yet when the
    // resend is rejected: wxkit deletes the token and finds the store empty again.
    const get = cache.get.bind(cache);
    cache.get = async (k) => {
      const value = await get(k);
      if (stage === 'supersede' && k === key && value?.includes(second)) {
        stage = 'done';
        mock.issueClassicToken(appId);
        mock.issueClassicToken(appId);
      }
      return value;
    };
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(stage).toBe('done');
    expect(mock.counters(appId).templateSends).toBe(1);
    expect(mock.counters(appId).rejectedCalls).toBe(2);
    // The call fetched once: for its second resend, the first having asked WeChat nothing.
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });
});

describe('close() and a background refresh', () => {
  it('waits for a background refresh under way: its write and the lock\'s release come before close() resolves', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    let now = Date.now();
    // A caller's dispatcher, which close() leaves open: close() then does no I/O of its own, so once the
    // promises under way have run (one turn of the event loop), it has resolved unless it waits.
    const dispatcher = new Agent();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, dispatcher, tokenEndpoint: 'classic', now: () => now, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, logger: false });
    const key = app.accessToken.cacheKey;
    const first = await app.accessToken.getToken();
    // The background refresh's write of its token is held until the test lets it go, once close() began.
    const order: string[] = [];
    let writing!: () => void;
    const reachedWrite = new Promise<void>((resolve) => (writing = resolve));
    let letGo!: () => void;
    const gate = new Promise<void>((resolve) => (letGo = resolve));
    const compareAndSet = cache.compareAndSet.bind(cache);
    cache.compareAndSet = async (k, expected, value, ttl) => {
      if (k === key) {
        writing();
        await gate;
        order.push('written');
      }
      return compareAndSet(k, expected, value, ttl);
    };
    now += 6_500_000;
    expect(await app.accessToken.getToken()).toBe(first);
    await reachedWrite;
    const closed = app.close().then(() => order.push('closed'));
    // close() has had every chance to resolve on its own by the time the write is let go.
    await new Promise((resolve) => setImmediate(resolve));
    letGo();
    await closed;
    expect(order).toEqual(['written', 'closed']);
    expect(await cache.get(`${key}:lock`)).toBeUndefined();
    expect(JSON.parse((await cache.get(key))!).access_token).not.toBe(first);
    await dispatcher.close();
  });
});

describe('setCache()', () => {
  it('forgets what the memo held: the next call reads the new store', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    const first = await app.accessToken.getToken();
    const other = new MemoryCache();
    const now = Math.floor(Date.now() / 1000);
    await other.set(app.accessToken.cacheKey, JSON.stringify({ access_token: 'TOKEN_IN_THE_OTHER_STORE', expires_at: now + 7200, fetched_at: now }), 6900);
    // The same through the token's own handle, as EasyWeChat's accessToken.setCache().
    app.accessToken.setCache(other);
    const next = await app.accessToken.getToken();
    expect(next).not.toBe(first);
    expect(next).toBe('TOKEN_IN_THE_OTHER_STORE');
    await app.close();
  });
});

describe("a 40001 whose newer token a lockless peer has not written yet, and the holder's caller gives up or its client closes", () => {
  it.each(['the caller gives up', 'the client closes'])("%s: the holder still gives the peer its wait before it lets the lock go; another process waiting for the lock takes the peer's token, and nobody fetches", async (what) => {
    const { app, appId, secret, cache } = newApp(mock, { tokenEndpoint: 'classic' });
    // Another process of the fleet, on the same store.
    const other = new OfficialAccount({ appId, secret, baseUrl: mock.url, logger: false, cache, tokenEndpoint: 'classic' });
    const key = app.accessToken.cacheKey;
    const { peer } = await supersededByPeer(app, cache, appId);
    const controller = new AbortController();
    const reason = new Error('caller gave up');
    // The holder (app) takes the lock after the 40001; then the other process tries it and waits; then
    // the holder's only caller gives up. The peer writes its token after the third read of the key
    // from then on (a store round trip or two after its fetch).
    let waiting: Promise<string> | undefined;
    let aborted = false;
    let readsSince = 0;
    let closed: Promise<void> | undefined;
    const add = cache.add!.bind(cache);
    cache.add = async (k, value, ttl) => {
      const ok = await add(k, value, ttl);
      if (k === `${key}:lock` && ok && waiting === undefined) waiting = other.accessToken.getToken();
      else if (k === `${key}:lock` && !ok && !aborted) {
        aborted = true;
        if (what === 'the caller gives up') controller.abort(reason);
        else closed = app.close();
      }
      return ok;
    };
    const get = cache.get.bind(cache);
    cache.get = async (k) => {
      const value = await get(k);
      if (k === key && aborted && ++readsSince === 3) await cache.set(key, entry(peer), 6900);
      return value;
    };
    const call = app.client.get('cgi-bin/get_api_domain_ip', {}, { signal: controller.signal });
    const outcome = await call.then(
      () => 'sent',
      (error: unknown) => error,
    );
    // Given up: its reason. Closed: its HTTP client refuses the resend (close() refuses new requests).
    if (what === 'the caller gives up') expect(outcome).toBe(reason);
    expect(aborted).toBe(true);
    expect(await waiting).toBe(peer);
    expect(mock.counters(appId).classicTokenRequests).toBe(0);
    expect(mock.isTokenValid(appId, peer)).toBe(true);
    await Promise.all([closed ?? app.close(), other.close()]);
  });
});
