import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, TokenUnavailableError, WeChatApiError, type OfficialAccountOptions, type TokenCache } from '../src/index.js';
import { retryAtOf } from '../src/retry-at.js';

// A token WeChat rejects moments after each fetch (another program fetching in a loop, an account WeChat
// refuses) must not cost a fetch per round of resends: each call may fetch once, but calls keep coming.
// The fetches that follow the rejection of a token no call went through with are spaced, fleet-wide: the
// first at once, then 1 s, 2 s, 4 s … apart while such rejections go on. A token that worked and was then
// replaced from outside is refetched at once. These tests count the mock's token requests; the clock is
// the clients' and the store's `now`, moved by the test.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterEach(() => mock.clearFaults());
afterAll(() => mock.close());

const TEMPLATE = { touser: 'oUser1', template_id: 'TPL', data: { first: { value: 'Paid' } } };

/**
 * An app on `on` (the shared mock by default) and a clock the test moves; `client()` makes a process of
 * it on the classic endpoint, with that clock unless `extra` says otherwise.
 */
function account(on: MockWeChat = mock) {
  const { appId, secret } = on.createApp();
  const clock = { now: Date.now() };
  const now = () => clock.now;
  const client = (cache: TokenCache, extra: Partial<OfficialAccountOptions> = {}) =>
    new OfficialAccount({ appId, secret, baseUrl: on.url, cache, logger: false, fallbackDir: false, tokenEndpoint: 'classic', now, ...extra });
  return { appId, clock, now, client };
}

// Within a pause a call waits for another process's token up to lockWaitMs (2 s at most) of real time,
// which the test's clock does not shorten: tests that count fetches, not that wait, keep it short.
const QUICK: Partial<OfficialAccountOptions> = { lockWaitMs: 250 };

/** `processes` clients (processes of a fleet) on one store, with a clock the test moves. */
function fleet(processes: number, extra: Partial<OfficialAccountOptions> = {}) {
  const { appId, clock, now, client } = account();
  const cache = new MemoryCache({ now });
  const clients = Array.from({ length: processes }, () => client(cache, extra));
  const fetches = () => mock.counters(appId).tokenRequests;
  /** Ten sends at once, spread over the clients: what each ended with. */
  const burst = () =>
    Promise.all(Array.from({ length: 10 }, (_, i) => clients[i % processes]!.templateMessage.send(TEMPLATE).then(() => 'sent' as const, (error: unknown) => error)));
  /** The fleet's pause as the store holds it. */
  const pause = async () => JSON.parse((await cache.get(`${clients[0]!.accessToken.cacheKey}:refetch`)) ?? 'null') as { until: number; step: number } | null;
  return { clock, cache, clients, fetches, burst, pause, close: () => Promise.all(clients.map((client) => client.close())) };
}

/**
 * Two hosts on one store, on a clock the test moves: a healthy one, and one that cannot reach WeChat's
 * token endpoint (a firewall rule, a proxy refusing it: its requests there are refused before they
 * leave; its other calls go through). `healthy()` makes another healthy host.
 */
function cutOff<C extends MemoryCache>(makeCache: (now: () => number) => C, cutOptions: { cacheTimeoutMs?: number } = {}) {
  const { appId, clock, now, client } = account();
  const cache = makeCache(now);
  const refusing = new Agent().compose((dispatch) => (options, handler) =>
    dispatch(String(options.path).includes('cgi-bin/token') ? { ...options, origin: 'http://127.0.0.1:1' } : options, handler),
  );
  const healthy = () => client(cache);
  const [first, cut] = [healthy(), client(cache, { dispatcher: refusing, ...cutOptions })];
  /** The fleet's pause as the store holds it. */
  const pause = async () => JSON.parse((await cache.get(`${first.accessToken.cacheKey}:refetch`)) ?? 'null') as { step: number } | null;
  const close = async () => {
    await Promise.all([first.close(), cut.close()]);
    await refusing.close();
  };
  return { appId, clock, cache, healthy: first, cut, another: healthy, pause, close };
}

/** A store that runs `onLockAdd` once, after the next attempt at the lock. */
class LockWatched extends MemoryCache {
  onLockAdd: (() => Promise<void>) | undefined;
  override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    const added = await super.add(key, value, ttlSeconds);
    const hook = key.endsWith(':lock') ? this.onLockAdd : undefined;
    this.onLockAdd = undefined;
    await hook?.();
    return added;
  }
}

/**
 * Puts `app`'s process within its pause: its token, and the one fetched to replace it, are both rejected
 * before any call went through with them (the send fails; two token requests).
 */
async function intoPause(on: MockWeChat, app: OfficialAccount): Promise<void> {
  await app.accessToken.getToken();
  on.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: 2 });
  await expect(app.templateMessage.send(TEMPLATE)).rejects.toMatchObject({ errcode: 40001 });
  expect(on.counters(app.appId).tokenRequests).toBe(2);
}

describe('fetches after WeChat rejected a token no call went through with are spaced', () => {
  it('a token rejected moments after every fetch costs a process one fetch per step (at once, then 1 s, then 2 s), not one per round of resends', async () => {
    const f = fleet(1, QUICK);
    await f.clients[0]!.accessToken.getToken();
    expect(f.fetches()).toBe(1);
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });

    // The first rejection is answered with a fetch at once; WeChat rejects that token too.
    const first = await f.burst();
    expect(first.every((outcome) => outcome instanceof WeChatApiError || outcome instanceof TokenUnavailableError)).toBe(true);
    expect(f.fetches()).toBe(2);
    // More calls, at the same moment: the pause is in force, they fail without a fetch, and say when.
    const spaced = await f.burst();
    expect(f.fetches()).toBe(2);
    const refused = spaced.filter((outcome): outcome is TokenUnavailableError => outcome instanceof TokenUnavailableError);
    expect(refused.length).toBeGreaterThan(0);
    expect(refused[0]!.message).toContain('space their fetches');
    expect(retryAtOf(refused[0])).toBe(f.clock.now + 1_000);

    f.clock.now += 1_001;
    await f.burst();
    expect(f.fetches()).toBe(3);
    await f.burst();
    expect(f.fetches()).toBe(3);
    // The next pause is 2 s: a second later is not enough.
    f.clock.now += 1_001;
    await f.burst();
    expect(f.fetches()).toBe(3);
    f.clock.now += 1_000;
    await f.burst();
    expect(f.fetches()).toBe(4);

    // WeChat takes tokens again: the next send fetches and goes.
    mock.clearFaults();
    f.clock.now += 10_000;
    expect(await f.burst()).toEqual(Array(10).fill('sent'));
    expect(f.fetches()).toBe(5);
    await f.close();
  });

  it('a fleet fetches once per step: the pause is in the store, and a process that took its token from another one keeps it too', async () => {
    const f = fleet(3, QUICK);
    await f.clients[0]!.accessToken.getToken();
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
    for (let round = 0; round < 4; round += 1) await f.burst();
    // One fetch in the first step for the three processes, however many rounds of calls: the two that
    // never fetched read the pause the first one wrote.
    expect(f.fetches()).toBe(2);
    expect(await f.pause()).toEqual({ until: f.clock.now + 1_000, step: 1_000 });
    f.clock.now += 1_001;
    for (let round = 0; round < 3; round += 1) await f.burst();
    expect(f.fetches()).toBe(3);
    expect(await f.pause()).toEqual({ until: f.clock.now + 2_000, step: 2_000 });
    await f.close();
  });

  it("a process that knows of no rejection (nothing in its memo) keeps the fleet's pause too; one whose clock is behind the pause's writer's is held for a step of its own, and does not take the pause for over", async () => {
    const { appId, clock: ahead, now, client } = account();
    const behind = { now: ahead.now - 30_000 };
    const cache = new MemoryCache({ now });
    const [first, late] = [client(cache), client(cache, { now: () => behind.now })];
    try {
      await first.accessToken.getToken();
      mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
      // The first process fetches after the rejection and writes the pause, 30 s ahead of the other's clock.
      await expect(first.templateMessage.send(TEMPLATE)).rejects.toMatchObject({ errcode: 40001 });
      expect(mock.counters(appId).tokenRequests).toBe(2);
      // The other process starts now: the store holds no token (the first process reported its last one).
      const refused = await late.templateMessage.send(TEMPLATE).catch((error: unknown) => error);
      expect(refused).toBeInstanceOf(TokenUnavailableError);
      expect(retryAtOf(refused)).toBe(behind.now + 1_000);
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      await Promise.all([first.close(), late.close()]);
    }
  });

  it('a pause that reaches further ahead than its step and a minute (a clock far ahead, a value no wxkit wrote) holds no one back', async () => {
    const f = fleet(1);
    await f.cache.set(`${f.clients[0]!.accessToken.cacheKey}:refetch`, JSON.stringify({ until: f.clock.now + 3_600_000, step: 1_000 }), 7_200);
    expect(await f.burst()).toEqual(Array(10).fill('sent'));
    expect(f.fetches()).toBe(1);
    await f.close();
  });

  it('the store is the fleet\'s word: once the pause is deleted (wxkit token clear), a process that knew it fetches at once', async () => {
    const f = fleet(2, QUICK);
    await f.clients[0]!.accessToken.getToken();
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
    for (let round = 0; round < 3; round += 1) await f.burst();
    expect(f.fetches()).toBe(2);
    expect(await f.pause()).not.toBeNull();
    // The program that fetched in a loop is stopped, and the operator clears the pause.
    mock.clearFaults();
    await f.cache.delete(`${f.clients[0]!.accessToken.cacheKey}:refetch`);
    expect(await f.burst()).toEqual(Array(10).fill('sent'));
    expect(f.fetches()).toBe(3);
    await f.close();
  });

  it('a fetch that never left its host gives the pause it started back: a healthy host is not held by it', async () => {
    /** A store that notes, as each lock is released, whether a pause is stored. */
    class AtRelease extends MemoryCache {
      pausedAtRelease: boolean[] = [];
      override async deleteIfEquals(key: string, expected: string): Promise<boolean> {
        if (key.endsWith(':lock')) this.pausedAtRelease.push((await super.get(key.replace(/:lock$/, ':refetch'))) !== undefined);
        return super.deleteIfEquals(key, expected);
      }
    }
    const h = cutOff((now) => new AtRelease({ now }));
    try {
      await h.healthy.accessToken.getToken();
      mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: 1 });
      // The cut-off host's token is rejected before any call went through with it; its fetch fails unsent.
      await expect(h.cut.templateMessage.send(TEMPLATE)).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP', message: expect.stringContaining('ECONNREFUSED') });
      expect(await h.pause()).toBeNull();
      // Taken back before its lock was let go: no other process could read it meanwhile.
      expect(h.cache.pausedAtRelease).toEqual([false, false]);
      // A healthy host that starts now fetches, and sends.
      const fresh = h.another();
      expect(await fresh.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      await fresh.close();
      expect(mock.counters(h.appId).tokenRequests).toBe(2);
    } finally {
      await h.close();
    }
  });

  it("a store that never answers for the pause's key (a shard of its own) costs a cold refresh one store deadline, not the sharing", async () => {
    const { appId, client } = account();
    /** A store whose reads of a pause never answer. */
    class PauseHangs extends MemoryCache {
      override get(key: string): Promise<string | undefined> {
        return key.endsWith(':refetch') ? new Promise(() => undefined) : super.get(key);
      }
    }
    const cache = new PauseHangs();
    const options = { cacheTimeoutMs: 300, now: () => Date.now() };
    const [first, second] = [client(cache, options), client(cache, options)];
    try {
      const token = await first.accessToken.getToken();
      // Written to the store (the pause's silence did not take the store for down), and shared.
      expect(await cache.get(first.accessToken.cacheKey)).toContain(token);
      expect(await second.accessToken.getToken()).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(1);
    } finally {
      await Promise.all([first.close(), second.close()]);
    }
  });

  it('fetches that fail and succeed by turns (-1 on every other one) keep both ladders growing: a handful of requests a minute, not one per round', async () => {
    const f = fleet(2, QUICK);
    await f.clients[0]!.accessToken.getToken();
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
    const before = f.fetches();
    for (let round = 0; round * 1_300 < 60_000; round += 1) {
      if (round % 2 === 1) mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token', times: 1 });
      f.clock.now += 1_300;
      await f.burst();
    }
    // 47 requests in this minute when a failed fetch gave its pause back (the ladder started over at 1 s).
    expect(f.fetches() - before).toBeLessThanOrEqual(8);
    expect((await f.pause())!.step).toBeGreaterThanOrEqual(16_000);
    await f.close();
  });

  it('a pause the store refuses to hold (its write fails, its reads work) is still its writer\'s: one fetch per step, not one per round', async () => {
    const { appId, now, client } = account();
    /** A store that refuses writes of a pause (a Redis at maxmemory with noeviction, say). */
    class PauseRefused extends MemoryCache {
      override set(key: string, value: string, ttlSeconds: number): Promise<void> {
        return key.endsWith(':refetch') ? Promise.reject(new Error('OOM command not allowed when used memory > maxmemory')) : super.set(key, value, ttlSeconds);
      }
    }
    const app = client(new PauseRefused({ now }), QUICK);
    try {
      await app.accessToken.getToken();
      mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
      for (let round = 0; round < 5; round += 1) await Promise.all(Array.from({ length: 10 }, () => app.templateMessage.send(TEMPLATE).catch(() => undefined)));
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      await app.close();
    }
  });

  it("a give-back puts back the pause it replaced: the fleet's next step is still the one after it", async () => {
    const h = cutOff((now) => new MemoryCache({ now }));
    try {
      await h.healthy.accessToken.getToken();
      mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
      for (const step of [0, 1_001, 2_001]) {
        h.clock.now += step;
        await h.healthy.templateMessage.send(TEMPLATE).catch(() => undefined);
      }
      expect(await h.pause()).toMatchObject({ step: 4_000 });
      h.clock.now += 4_001;
      // The cut-off host holds a token WeChat rejects; its fetch never leaves, and gives its pause back.
      await h.cache.set(h.healthy.accessToken.cacheKey, JSON.stringify({ access_token: mock.issueClassicToken(h.appId), expires_at: Math.floor(h.clock.now / 1000) + 7200 }), 6900);
      await expect(h.cut.templateMessage.send(TEMPLATE)).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP' });
      expect(await h.pause()).toMatchObject({ step: 4_000 });
      await h.healthy.templateMessage.send(TEMPLATE).catch(() => undefined);
      expect(await h.pause()).toMatchObject({ step: 8_000 });
    } finally {
      await h.close();
    }
  });

  it('a pause whose write timed out and landed all the same is given back too', async () => {
    /** A store that writes a pause, then answers after the caller's deadline. */
    class LateAnswer extends MemoryCache {
      override async set(key: string, value: string, ttlSeconds: number): Promise<void> {
        await super.set(key, value, ttlSeconds);
        if (key.endsWith(':refetch')) await new Promise((resolve) => setTimeout(resolve, 400));
      }
    }
    const h = cutOff((now) => new LateAnswer({ now }), { cacheTimeoutMs: 200 });
    try {
      await h.healthy.accessToken.getToken();
      mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: 1 });
      await expect(h.cut.templateMessage.send(TEMPLATE)).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP' });
      expect(await h.pause()).toBeNull();
    } finally {
      await h.close();
    }
  });

  it('a token that carried calls and is then replaced from outside is refetched at once, however often: one fetch per invalidation, nothing lost', async () => {
    const f = fleet(2);
    await f.clients[0]!.accessToken.getToken();
    // The clock stands still: without the sends that went through, every round after the first would
    // be spaced.
    for (let round = 1; round <= 5; round += 1) {
      expect(await f.burst()).toEqual(Array(10).fill('sent'));
      // Another program fetches: the token that worked dies.
      mock.invalidateTokens(f.clients[0]!.appId);
      expect(await f.burst()).toEqual(Array(10).fill('sent'));
      expect(f.fetches()).toBe(1 + round);
    }
    await f.close();
  });

  it('a token that carried a call after an earlier rejection is refetched at once when it dies too, and so is one WeChat refused a call with for another reason', async () => {
    const f = fleet(1);
    await f.clients[0]!.accessToken.getToken();
    // The first token dies before any call went through with it: fetched again at once, and the send goes.
    mock.invalidateTokens(f.clients[0]!.appId);
    expect(await f.clients[0]!.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
    expect(f.fetches()).toBe(2);
    // That token worked; it dies too, within its process's pause: fetched at once all the same.
    mock.invalidateTokens(f.clients[0]!.appId);
    expect(await f.clients[0]!.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
    expect(f.fetches()).toBe(3);
    // A call WeChat refused for another reason than the token (40003: no such user) went through with it.
    mock.invalidateTokens(f.clients[0]!.appId);
    await expect(f.clients[0]!.client.postJson('cgi-bin/message/template/send', { ...TEMPLATE, touser: '' })).rejects.toMatchObject({ errcode: 40003 });
    mock.invalidateTokens(f.clients[0]!.appId);
    expect(await f.clients[0]!.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
    expect(f.fetches()).toBe(5);
    await f.close();
  });

  it('a slow call with an older token that succeeds late does not make the current token count as one no call went through with', async () => {
    const { appId, client } = account();
    const cache = new MemoryCache();
    // The first send waits before it leaves, carrying the first token.
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let held = false;
    const dispatcher = new Agent().compose((dispatch) => (options, handler) => {
      if (held || !String(options.path).includes('template/send')) return dispatch(options, handler);
      held = true;
      void released.then(() => dispatch(options, handler));
      return true;
    });
    const slow = client(cache, { dispatcher, now: () => Date.now() });
    try {
      await slow.accessToken.getToken();
      const late = slow.templateMessage.send(TEMPLATE);
      // A newer token (the older one stays valid for WeChat's grace), and a call that goes through with it.
      await slow.accessToken.forceRefresh();
      expect(await slow.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      release();
      expect(await late).toMatchObject({ errcode: 0 });
      // The newer token dies: it had worked, so its replacement is fetched at once, and no pause starts.
      mock.invalidateTokens(appId);
      expect(await slow.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      expect(await cache.get(`${slow.accessToken.cacheKey}:refetch`)).toBeUndefined();
      expect(mock.counters(appId).tokenRequests).toBe(3);
    } finally {
      await slow.close();
      await dispatcher.close();
    }
  });

  it('within its pause a process takes the token a lockless peer writes a moment after its fetch, and fetches none', async () => {
    // Strict: a fetch kills the previous token at once.
    const strict = await startMockWeChat({ graceSeconds: 0 });
    const { appId, clock, now, client } = account(strict);
    /** A store whose first miss of the entry, once armed, is followed by a lockless peer's write 20 ms later. */
    class PeerWritesLate extends MemoryCache {
      peer: (() => void) | undefined;
      override async get(key: string): Promise<string | undefined> {
        const value = await super.get(key);
        if (value === undefined && key.endsWith(appId) && this.peer) {
          const write = this.peer;
          this.peer = undefined;
          setTimeout(write, 20);
        }
        return value;
      }
    }
    const cache = new PeerWritesLate({ now });
    const app = client(cache);
    try {
      await intoPause(strict, app);
      // A peer fetches now and writes its token a moment after the process's next read: the process is in
      // its pause, and takes it.
      const peer = strict.issueClassicToken(appId);
      cache.peer = () => void cache.set(app.accessToken.cacheKey, JSON.stringify({ access_token: peer, expires_at: Math.floor(clock.now / 1000) + 7200 }), 6900);
      expect(await app.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      expect(await app.accessToken.getToken()).toBe(peer);
      expect(strict.counters(appId).tokenRequests).toBe(2);
    } finally {
      await app.close();
      await strict.close();
    }
  });

  it('within its pause a call waits for another process\'s token no longer than lockWaitMs', async () => {
    const { appId, clock, now, client } = account();
    /** A store where a peer's token shows at the 11th read of the entry once armed (0.2-0.4 s of looks). */
    class PeerShowsLate extends MemoryCache {
      reads = 0;
      peer: string | undefined;
      override async get(key: string): Promise<string | undefined> {
        if (this.peer !== undefined && key.endsWith(appId) && ++this.reads === 11) {
          await super.set(key, JSON.stringify({ access_token: this.peer, expires_at: Math.floor(clock.now / 1000) + 7200 }), 6900);
        }
        return super.get(key);
      }
    }
    const cache = new PeerShowsLate({ now });
    const app = client(cache, { lockWaitMs: 40 });
    try {
      await intoPause(mock, app);
      cache.peer = mock.issueClassicToken(appId);
      // The send's own reads, then looks about 10 ms apart and growing: within 40 ms at most 8 reads in
      // all; the pause's own 1 s would reach the 11th.
      await expect(app.templateMessage.send(TEMPLATE)).rejects.toBeInstanceOf(TokenUnavailableError);
      expect(cache.reads).toBeLessThan(11);
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      await app.close();
    }
  });

  it('within its pause a process still waits for another process that holds the lock, and takes its token', async () => {
    const { appId, clock, now, client } = account();
    const cache = new LockWatched({ now });
    const app = client(cache);
    try {
      await intoPause(mock, app);
      // Another process holds the lock, fetching; it writes its token and lets the lock go once this
      // process has tried the lock (the pause's own wait, 1 s on the standing clock, would end first).
      const lock = `${app.accessToken.cacheKey}:lock`;
      await cache.set(lock, 'vm:1:another', 60);
      const holders = mock.issueClassicToken(appId);
      cache.onLockAdd = async () => {
        await cache.set(app.accessToken.cacheKey, JSON.stringify({ access_token: holders, expires_at: Math.floor(clock.now / 1000) + 7200 }), 6900);
        await cache.delete(lock);
      };
      expect(await app.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      expect(await app.accessToken.getToken()).toBe(holders);
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      await app.close();
    }
  });

  // A process that waited for the lock and finds the store empty once it holds it cannot tell why: the
  // holder's token rejected and deleted, a holder within its pause that let the lock go, one that died, or
  // `wxkit token clear`. Taking that for the start of a streak held back the refetch of tokens that worked.
  it('a token that worked and was replaced from outside is refetched at once by a process that waited for the lock, though the holder let it go within a pause and wrote nothing', async () => {
    const { appId, clock, now, client } = account();
    const cache = new LockWatched({ now });
    const app = client(cache);
    const key = app.accessToken.cacheKey;
    try {
      expect(await app.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      // The fleet's pause from an earlier streak, and another process holding the lock within it; it lets
      // the lock go without a token once this process has tried the lock.
      await cache.set(`${key}:refetch`, JSON.stringify({ until: clock.now + 4_000, step: 4_000 }), 8);
      await cache.set(`${key}:lock`, 'vm:1:paused', 60);
      cache.onLockAdd = () => cache.delete(`${key}:lock`);
      mock.invalidateTokens(appId);
      expect(await app.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      await app.close();
    }
  });

  it('a process that takes the lock over from a holder that died without a token starts no pause: the next external refresh is refetched at once by any process', async () => {
    const { appId, now, client } = account();
    const cache = new LockWatched({ now });
    const [app, other] = [client(cache), client(cache)];
    const key = app.accessToken.cacheKey;
    try {
      expect(await app.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      await cache.set(`${key}:lock`, 'vm:1:dead', 60);
      cache.onLockAdd = () => cache.delete(`${key}:lock`);
      mock.invalidateTokens(appId);
      expect(await app.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      expect(await cache.get(`${key}:refetch`)).toBeUndefined();
      // That token carried calls, and is replaced from outside; a process that sends with it first now
      // refetches at once.
      mock.invalidateTokens(appId);
      expect(await other.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      expect(mock.counters(appId).tokenRequests).toBe(3);
    } finally {
      await Promise.all([app.close(), other.close()]);
    }
  });

  it('within its pause, a token WeChat refused a call with for another reason (40003) counts as one that worked: when it dies, it is refetched at once', async () => {
    const { appId, clock, now, client } = account();
    const cache = new MemoryCache({ now });
    const app = client(cache);
    try {
      await intoPause(mock, app);
      // Another process writes a token; this process takes it from the store, its pause still in force.
      const written = mock.issueClassicToken(appId);
      await cache.set(app.accessToken.cacheKey, JSON.stringify({ access_token: written, expires_at: Math.floor(clock.now / 1000) + 7200 }), 6900);
      await expect(app.client.postJson('cgi-bin/message/template/send', { ...TEMPLATE, touser: '' })).rejects.toMatchObject({ errcode: 40003 });
      mock.invalidateTokens(appId);
      expect(await app.templateMessage.send(TEMPLATE)).toMatchObject({ errcode: 0 });
      expect(mock.counters(appId).tokenRequests).toBe(3);
    } finally {
      await app.close();
    }
  });
});
