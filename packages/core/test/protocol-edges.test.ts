import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { freePort, startMockWeChat, switchableStore, type MockWeChat } from '@wxkit/testing';
import { ClientPool, MemoryCache, OfficialAccount, OpenPlatform, TokenUnavailableError, easyWeChat4, easyWeChat6, wechatpy, type TokenCache, type TokenEvents } from '../src/index.js';
import { componentOptions, deferred, endedByClose, holdingDispatcher, killedAcrossOutage, nextEvent, rejection } from './helpers.js';

// Edges of the token protocol in one process: what a process does while the store is away, how long a
// failure holds it back, background refreshes, forced refreshes, and what the memo may hold.

let mock: MockWeChat;
const dirs: string[] = [];
const fallbackDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'wxkit-edges-'));
  dirs.push(dir);
  return dir;
};
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/**
 * Resolves after timers already due (a 0 ms timeout set before this call) have fired. A background
 * refresh with no jitter is due on a 1 ms timer: this one, set after it, fires after it, and by then the
 * refresh has made its first store calls (it tries the lock: count the lock's adds).
 */
const afterDueTimers = () => new Promise((resolve) => setTimeout(resolve, 5));

/** Counts the adds of one key (the refresh lock's, `watched()`); `firstAdd` resolves on the first. */
class CountingAdds extends MemoryCache {
  adds = 0;
  #first!: () => void;
  readonly firstAdd = new Promise<void>((resolve) => (this.#first = resolve));
  constructor(readonly watched: () => string) {
    super();
  }
  override add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    if (key === this.watched()) {
      this.adds += 1;
      this.#first();
    }
    return super.add(key, value, ttlSeconds);
  }
}


/** Two hosts of one app on `cache` (each its own fallback directory), on EasyWeChat 4's format: its entries record no fetch time. */
function undatedHosts(cache: TokenCache) {
  const { appId, secret } = mock.createApp();
  const host = () => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: easyWeChat4(), memoMs: 0, fallbackDir: fallbackDir(), logger: false });
  return { appId, fetcher: host(), other: host() };
}

/**
 * `store`'s cache, whose next read hands out what the store held and then runs the work given to
 * `between()` (once): another host writes its token under the lock before the offer of a token fetched
 * during an outage looks at the entry again.
 */
function betweenReadAndOffer(store: ReturnType<typeof switchableStore>): { cache: TokenCache; between: (work: () => Promise<unknown>) => void } {
  let next: (() => Promise<unknown>) | undefined;
  const cache: TokenCache = {
    ...store.cache,
    get: async (key) => {
      const value = await store.cache.get(key);
      const run = next;
      next = undefined;
      if (run) await run();
      return value;
    },
  };
  return { cache, between: (work) => void (next = work) };
}

/** `app`'s token, forced while `store` is down; resolved once `app` has heard the store is back. */
async function refreshedDuringOutage(store: ReturnType<typeof switchableStore>, app: OfficialAccount): Promise<string> {
  store.down();
  const during = await app.accessToken.forceRefresh();
  const recovered = nextEvent(app, 'cache.recovered');
  store.up();
  await recovered;
  return during;
}

describe('while the store is down', () => {
  it('a process that holds a valid token serves it past the memo window, and fetches nothing', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, tokenEndpoint: 'classic', now: () => now, fallbackDir: fallbackDir(), logger: false });
    const token = await app.accessToken.getToken();
    store.down();
    for (let i = 0; i < 4; i += 1) {
      now += 31_000;
      expect(await app.accessToken.getToken()).toBe(token);
    }
    // Once the store is back (a probe noticed), nothing was fetched in the meantime.
    const recovered = nextEvent(app, 'cache.recovered');
    store.up();
    await recovered;
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    await app.close();
  });

  it('the probe asks for a key of the app, so a store user limited to its own keys (an ACL) is seen recovering', async () => {
    const { appId, secret } = mock.createApp();
    const inner = new MemoryCache();
    let blip = false;
    const acl =
      <A extends [string, ...unknown[]], R>(fn: (...args: A) => Promise<R>) =>
      async (...args: A): Promise<R> => {
        if (blip) {
          blip = false;
          throw new Error('ECONNRESET');
        }
        if (!args[0].startsWith('wechat:')) throw new Error('NOPERM this user has no permissions to access one of the keys used as arguments');
        return fn(...args);
      };
    const cache: TokenCache = {
      get: acl((key: string) => inner.get(key)),
      set: acl((key: string, value: string, ttl: number) => inner.set(key, value, ttl)),
      delete: acl((key: string) => inner.delete(key)),
      add: acl((key: string, value: string, ttl: number) => inner.add(key, value, ttl)),
      deleteIfEquals: acl((key: string, expected: string) => inner.deleteIfEquals(key, expected)),
    };
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, memoMs: 0, fallbackDir: false, logger: false });
    await app.accessToken.getToken();
    const recovered = nextEvent(app, 'cache.recovered');
    blip = true;
    await app.accessToken.getToken();
    await recovered;
    await app.close();
  });

  it('a token fetched during the outage replaces the older one the store kept through it: the newest wins, not the first back', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: fallbackDir(), logger: false });
    const before = await app.accessToken.getToken();
    store.down();
    // WeChat rejects the token; the process fetches a new one through its fallback, killing the old one.
    await app.accessToken.invalidate(before, 40001);
    mock.invalidateTokens(appId);
    const during = await app.accessToken.getToken();
    expect(during).not.toBe(before);
    const recovered = nextEvent(app, 'cache.recovered');
    store.up();
    await recovered;
    expect(await app.accessToken.getToken()).toBe(during);
    expect(JSON.parse((await store.inner.get(app.accessToken.cacheKey))!).access_token).toBe(during);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });
  it('on a profile whose entries record no fetch time (EasyWeChat 4), a token fetched during the outage never replaces one another host fetched once the store came back', async () => {
    const store = switchableStore({ up: false });
    const { appId, fetcher, other } = undatedHosts(store.cache);
    const recovered = nextEvent(fetcher, 'cache.recovered');
    const during = await fetcher.accessToken.getToken();
    store.up();
    await recovered;
    // The store came back empty: the other host takes the lock and fetches, which on the classic endpoint
    // ends the token fetched during the outage once its grace window is over.
    const newer = await other.accessToken.getToken();
    expect(newer).not.toBe(during);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    // Its entry says nothing of its age, but it is no token this host ever took from the store: kept, and taken.
    expect(await fetcher.accessToken.getToken()).toBe(newer);
    expect(await other.accessToken.getToken()).toBe(newer);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await Promise.all([fetcher.close(), other.close()]);
  });

  it('on a profile whose entries record no fetch time (EasyWeChat 4), a token fetched during the outage still replaces the one the store kept through it', async () => {
    const store = switchableStore();
    const { appId, fetcher, other } = undatedHosts(store.cache);
    const before = await fetcher.accessToken.getToken();
    expect(await other.accessToken.getToken()).toBe(before);
    // A forced refresh, not a rejection: the token the store keeps is one WeChat never refused.
    const during = await refreshedDuringOutage(store, fetcher);
    expect(during).not.toBe(before);
    expect(await fetcher.accessToken.getToken()).toBe(during);
    expect(await other.accessToken.getToken()).toBe(during);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await Promise.all([fetcher.close(), other.close()]);
  });

  it('on a profile whose entries record no fetch time (EasyWeChat 4), a token another host writes between the read and the offer of one fetched during the outage is the one taken, not the older one read', async () => {
    const store = switchableStore();
    const { cache, between } = betweenReadAndOffer(store);
    const { appId, fetcher, other } = undatedHosts(cache);
    const before = await fetcher.accessToken.getToken();
    expect(await other.accessToken.getToken()).toBe(before);
    const during = await refreshedDuringOutage(store, fetcher);
    let newer: string | undefined;
    between(async () => (newer = await other.accessToken.forceRefresh()));
    const taken = await fetcher.accessToken.getToken();
    expect(newer).toBeDefined();
    expect([before, during]).not.toContain(newer);
    // The store holds the other host's token: the one read before it was written is older than the one
    // this host fetched, and neither is served.
    expect(taken).toBe(newer);
    expect(mock.counters(appId).classicTokenRequests).toBe(3);
    await Promise.all([fetcher.close(), other.close()]);
  });

  it('a token another host fetched in the same second, under the lock, and wrote between the read and the offer of one fetched during the outage is kept: the offer holds no lock', async () => {
    // fetched_at cannot order two fetches of one second; a lock holder's write is the fleet's, and the
    // offer of a token fetched while the store was away (which holds no lock) gives way to it.
    const store = switchableStore();
    const { cache, between } = betweenReadAndOffer(store);
    const { appId, secret } = mock.createApp();
    // One clock for both hosts: the outage's fetch and the other host's come in one second, after the first.
    let now = Date.now();
    const host = () => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: fallbackDir(), logger: false, now: () => now });
    const [fetcher, other] = [host(), host()];
    const before = await fetcher.accessToken.getToken();
    expect(await other.accessToken.getToken()).toBe(before);
    now += 5_000;
    const during = await refreshedDuringOutage(store, fetcher);
    let newer: string | undefined;
    between(async () => (newer = await other.accessToken.forceRefresh()));
    const taken = await fetcher.accessToken.getToken();
    expect([before, during]).not.toContain(newer);
    expect(taken).toBe(newer);
    expect(JSON.parse((await store.inner.get(fetcher.accessToken.cacheKey))!).access_token).toBe(newer);
    expect(mock.isTokenValid(appId, taken)).toBe(true);
    await Promise.all([fetcher.close(), other.close()]);
  });

  it('a token fetched during the outage replaces an unreadable entry the store holds once back, without a fetch more', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore({ up: false });
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: fallbackDir(), logger: false });
    const recovered = nextEvent(app, 'cache.recovered');
    const during = await app.accessToken.getToken();
    await store.inner.set(app.accessToken.cacheKey, '{"access_tok', 600);
    store.up();
    await recovered;
    expect(await app.accessToken.getToken()).toBe(during);
    expect(JSON.parse((await store.inner.get(app.accessToken.cacheKey))!).access_token).toBe(during);
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    await app.close();
  });

  it('a token is served through the outage only until 30 s before WeChat expires it: then one is fetched', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, tokenEndpoint: 'classic', now: () => now, fallbackDir: fallbackDir(), logger: false });
    const token = await app.accessToken.getToken();
    store.down();
    now += 7_180_000;
    const next = await app.accessToken.getToken();
    expect(next).not.toBe(token);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });

  it('a token whose format records no expiry (a peer\'s bare token) is served through the outage for the memo window only', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    let now = Date.now();
    // The store cannot tell a key's TTL, and the peer wrote the token bare: its expiry is unknown.
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, schema: easyWeChat6(), tokenEndpoint: 'classic', now: () => now, fallbackDir: fallbackDir(), logger: false });
    const peer = mock.issueClassicToken(appId);
    await store.inner.set(app.accessToken.cacheKey, `s:${peer.length}:"${peer}";`, 7200);
    expect(await app.accessToken.getToken()).toBe(peer);
    store.down();
    now += 31_000;
    const next = await app.accessToken.getToken();
    expect(next).not.toBe(peer);
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    await app.close();
  });

  it('a token the store took back from this process, then lost to a peer\'s invalidation, is not offered to it again', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore({ up: false });
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: fallbackDir(), logger: false });
    const recovered = nextEvent(app, 'cache.recovered');
    const during = await app.accessToken.getToken();
    store.up();
    await recovered;
    expect(await app.accessToken.getToken()).toBe(during);
    expect(JSON.parse((await store.inner.get(app.accessToken.cacheKey))!).access_token).toBe(during);
    // A peer's call is rejected with it (another program fetched meanwhile), and the peer deletes it.
    mock.invalidateTokens(appId);
    await store.inner.delete(app.accessToken.cacheKey);
    const next = await app.accessToken.getToken();
    expect(next).not.toBe(during);
    expect(mock.isTokenValid(appId, next)).toBe(true);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });

  /** A dispatcher whose token fetches, once armed, wait until released. */
  function heldTokenFetches() {
    const agent = new Agent();
    const dispatch = agent.dispatch.bind(agent);
    const arrived = deferred();
    const released = deferred();
    let armed = false;
    agent.dispatch = (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) => {
      if (!armed || !String(options.path).includes('cgi-bin/token')) return dispatch(options, handler);
      arrived.resolve();
      void released.promise.then(() => dispatch(options, handler));
      return true;
    };
    return { agent, arrived: arrived.promise, release: released.resolve, arm: () => void (armed = true) };
  }

  /**
   * Two processes of a host on one store (each its own connection): the store went down and the token
   * was killed, the host fetched once through its fallback; then the store came back, and the first
   * process found out while the second still takes it for down (its connection refused until `mend()`).
   * The token fetched during the outage is killed, and both have found it rejected.
   */
  async function neighbourFoundStoreBack(options: { dispatcher?: Dispatcher } = {}) {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    // The second process's own connection to the store, which it takes for down a moment longer.
    let secondUp = true;
    const refused = () => Promise.reject(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }));
    // The calls it sent, by method.
    const sent: Record<string, number> = {};
    const second: TokenCache = Object.fromEntries(
      Object.entries(store.cache).map(([name, call]) => [
        name,
        (...args: unknown[]) => {
          sent[name] = (sent[name] ?? 0) + 1;
          return secondUp ? (call as (...a: unknown[]) => Promise<unknown>)(...args) : refused();
        },
      ]),
    ) as unknown as TokenCache;
    const dir = fallbackDir();
    const process = (cache: TokenCache, dispatcher?: Dispatcher) =>
      new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: dir, logger: false, dispatcher });
    const a = process({ ...store.cache }, options.dispatcher);
    const b = process(second);
    const fetches = () => mock.counters(appId).classicTokenRequests;
    // The store is back: the first process finds out; the second still takes it for down when its call is rejected.
    await killedAcrossOutage(mock, appId, a, b, { down: store.down, up: store.up, holdSecond: (held) => void (secondUp = !held) });
    return { appId, a, b, fetches, sent, mend: () => void (secondUp = true) };
  }

  it("a process that still takes the store for down takes the token a neighbour wrote there once it found the store back, rather than fetch one that ends it (classic endpoint)", async () => {
    const { appId, a, b, fetches, mend } = await neighbourFoundStoreBack();
    // The first process fetches the next token in the store; the store answers the second now.
    const after = await a.accessToken.getToken();
    expect(fetches()).toBe(3);
    mend();
    expect(await b.accessToken.getToken()).toBe(after);
    expect(fetches()).toBe(3);
    expect(mock.isTokenValid(appId, after)).toBe(true);
    await a.close();
    await b.close();
  });

  it('a process that still takes the store for down, asking it once more while a neighbour that found it back is fetching there, waits for that fetch rather than fetch beside it', async () => {
    const held = heldTokenFetches();
    const { a, b, fetches, sent, mend } = await neighbourFoundStoreBack({ dispatcher: held.agent });
    // The first process takes the store's lock and fetches; WeChat's answer is held.
    held.arm();
    const fromFirst = a.accessToken.getToken();
    await held.arrived;
    mend();
    const adds = sent.add ?? 0;
    let settled = false;
    const fromSecond = b.accessToken.getToken().finally(() => (settled = true));
    // The second has fetched on its own, or tried the store's lock (and waits for its holder): the answer is let through.
    await vi.waitFor(() => expect(settled || (sent.add ?? 0) > adds).toBe(true));
    held.release();
    const [first, second] = await Promise.all([fromFirst, fromSecond]);
    expect(second).toBe(first);
    expect(fetches()).toBe(3);
    await a.close();
    await b.close();
  });

  it("a process that still takes the store for down, asking it once more after a neighbour's fetch there failed, backs off with the fleet rather than ask WeChat again", async () => {
    const { a, b, fetches, mend } = await neighbourFoundStoreBack();
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token' });
    await expect(a.accessToken.getToken()).rejects.toMatchObject({ errcode: -1 });
    expect(fetches()).toBe(3);
    mend();
    await expect(b.accessToken.getToken()).rejects.toMatchObject({ errcode: -1 });
    expect(fetches()).toBe(3);
    await a.close();
    await b.close();
  });

  it('asking a store whose reads answer while its writes fail (a read-only replica) whether it is back before a fallback fetch sends it no write: its outage is told once', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    let readOnly = false;
    const refused = () => Promise.reject(Object.assign(new Error("READONLY You can't write against a read only replica."), { code: 'READONLY' }));
    const writes = <A extends unknown[], R>(call: (...args: A) => Promise<R>) => (...args: A): Promise<R> => (readOnly ? refused() : call(...args));
    const { get, set, delete: remove, add, deleteIfEquals, compareAndSet } = store.cache;
    const cache: TokenCache = { get, set: writes(set), delete: writes(remove), add: writes(add!), deleteIfEquals: writes(deleteIfEquals!), compareAndSet: writes(compareAndSet!) };
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: fallbackDir(), logger: false });
    const told = { unavailable: 0, recovered: 0 };
    app.on('cache.unavailable', () => (told.unavailable += 1));
    app.on('cache.recovered', () => (told.recovered += 1));
    const first = await app.accessToken.getToken();
    readOnly = true;
    mock.invalidateTokens(appId);
    // The report's delete fails: the store is taken for down, and the next token is fetched in the fallback.
    await app.accessToken.invalidate(first, 40001);
    const next = await app.accessToken.getToken();
    expect(mock.isTokenValid(appId, next)).toBe(true);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    // The store answered the probe (a read): back for up, and not taken down again by a write of the refresh.
    expect(told).toEqual({ unavailable: 1, recovered: 1 });
    await app.close();
  });

  it('the clients of a process, each asking a hung store whether it is back before it fetches in the fallback, send it one probe between them, not one each', async () => {
    const store = switchableStore();
    let hung = false;
    let sent = 0;
    // Once hung, the store never answers: each call sent waits out cacheTimeoutMs.
    const hang = <A extends unknown[], R>(call: (...args: A) => Promise<R>) => (...args: A): Promise<R> => {
      if (!hung) return call(...args);
      sent += 1;
      return new Promise<R>(() => undefined);
    };
    const cache: TokenCache = Object.fromEntries(Object.entries(store.cache).map(([name, call]) => [name, hang(call as (...args: unknown[]) => Promise<unknown>)])) as unknown as TokenCache;
    const dir = fallbackDir();
    const accounts = Array.from({ length: 40 }, () => {
      const { appId, secret } = mock.createApp();
      return { appId, app: new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: dir, logger: false, cacheTimeoutMs: 1_000 }) };
    });
    const tokens = await Promise.all(accounts.map(({ app }) => app.accessToken.getToken()));
    hung = true;
    // Every token is killed; the first report waits out its call, and takes the store for down for all.
    for (const [i, { appId, app }] of accounts.entries()) {
      mock.invalidateTokens(appId);
      await app.accessToken.invalidate(tokens[i]!, 40001);
    }
    const before = sent;
    const next = await Promise.all(accounts.map(({ app }) => app.accessToken.getToken()));
    expect(next.every((token, i) => token !== tokens[i])).toBe(true);
    // One probe under way at a time (the refreshes', and the one the breaker sends in the background).
    expect(sent - before).toBeLessThanOrEqual(2);
    await Promise.all(accounts.map(({ app }) => app.close()));
  });

  it('a process that asks the store once more before a fallback fetch does not take the token the store kept through the outage, which that outage\'s fetch ended (classic endpoint)', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    const dir = fallbackDir();
    let now = Date.now();
    const process = (cache: TokenCache) => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: dir, logger: false, now: () => now });
    const first = process({ ...store.cache });
    const kept = await first.accessToken.getToken();
    // The store goes down, keeping that token; the host fetches the next one through its fallback.
    store.down();
    now += 5_000;
    mock.invalidateTokens(appId);
    await first.accessToken.invalidate(kept, 40001);
    const during = await first.accessToken.getToken();
    await first.close();
    // A process started during the outage takes the host's token: it never used the one the store kept.
    const second = process({ ...store.cache });
    expect(await second.accessToken.getToken()).toBe(during);
    // The store is back (the second process has not noticed yet), and the host's token is killed in turn.
    now += 1_500;
    store.up();
    mock.invalidateTokens(appId);
    await second.accessToken.invalidate(during, 40001);
    const next = await second.accessToken.getToken();
    expect([kept, during]).not.toContain(next);
    expect(mock.isTokenValid(appId, next)).toBe(true);
    expect(mock.counters(appId).classicTokenRequests).toBe(3);
    await second.close();
  });

  it('forceRefresh() that asks the store once more before a fallback fetch fetches: it does not take the token the store kept through the outage', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: fallbackDir(), logger: false });
    const kept = await app.accessToken.getToken();
    store.down();
    const during = await app.accessToken.forceRefresh();
    expect(during).not.toBe(kept);
    // The store is back, holding the token the last fetch replaced; the process has not noticed yet.
    store.up();
    const next = await app.accessToken.forceRefresh();
    expect([kept, during]).not.toContain(next);
    expect(mock.counters(appId).classicTokenRequests).toBe(3);
    await app.close();
  });

  /**
   * A client that fetched its token while its store was down, the store back, and the next read of the
   * token held at `held` (the entry's read, or its writes: the token offered back) until release().
   */
  async function offeringBack(held: 'read' | 'write') {
    const { appId, secret } = mock.createApp();
    const store = switchableStore({ up: false });
    let entryKey = '';
    let holding = false;
    const reaching = deferred();
    const released = deferred();
    const release = released.resolve;
    const gate =
      <A extends unknown[], R>(call: (key: string, ...rest: A) => Promise<R>) =>
      async (key: string, ...rest: A): Promise<R> => {
        if (holding && key === entryKey) {
          reaching.resolve();
          await released.promise;
        }
        return call(key, ...rest);
      };
    const { get, add, set, compareAndSet } = store.cache;
    const cache = held === 'read' ? { ...store.cache, get: gate(get) } : { ...store.cache, add: gate(add!), set: gate(set), compareAndSet: gate(compareAndSet!) };
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: fallbackDir(), logger: false });
    entryKey = app.accessToken.cacheKey;
    const recovered = nextEvent(app, 'cache.recovered');
    const during = await app.accessToken.getToken();
    store.up();
    await recovered;
    holding = true;
    const reading = app.accessToken.getToken();
    await reaching.promise;
    return { app, appId, store, entryKey, during, reading, release };
  }

  it('close() waits for a token fetched during the outage that a read is offering back to the store: it lands before close() resolves', async () => {
    const { app, appId, store, entryKey, during, reading, release } = await offeringBack('write');
    try {
      let closed = false;
      const closing = app.close().then(() => (closed = true));
      // Two turns of the event loop: a close() that waited for nothing but refreshes has resolved by then.
      for (let turn = 0; turn < 2; turn += 1) await new Promise((resolve) => setImmediate(resolve));
      expect(closed).toBe(false);
      release();
      await closing;
      expect(JSON.parse((await store.inner.get(entryKey))!).access_token).toBe(during);
      expect(await reading).toBe(during);
      expect(mock.counters(appId).classicTokenRequests).toBe(1);
    } finally {
      release();
      await app.close();
    }
  });

  it('a read under way at close() does not offer the token fetched during the outage to the store: it serves it, and writes nothing', async () => {
    const { app, appId, store, entryKey, during, reading, release } = await offeringBack('read');
    try {
      await app.close();
      release();
      expect(await reading).toBe(during);
      expect(await store.inner.get(entryKey)).toBeUndefined();
      expect(mock.counters(appId).classicTokenRequests).toBe(1);
    } finally {
      release();
      await app.close();
    }
  });

  it('a token fetched during the outage is not offered to the store once its store life has passed: the next read fetches', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore({ up: false });
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, tokenEndpoint: 'classic', now: () => now, fallbackDir: fallbackDir(), logger: false });
    const recovered = nextEvent(app, 'cache.recovered');
    const during = await app.accessToken.getToken();
    // Past the entry's store life (7200 − 300 s) but not yet within 30 s of WeChat's expiry.
    now += 7_000_000;
    store.up();
    await recovered;
    const next = await app.accessToken.getToken();
    expect(next).not.toBe(during);
    expect(JSON.parse((await store.inner.get(app.accessToken.cacheKey))!).access_token).toBe(next);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });
});

describe('the host fallback directory', () => {
  it('is not used when other users may write it (they could plant tokens); the client says so once', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore({ up: false });
    const open = fallbackDir();
    chmodSync(open, 0o777);
    const warnings: TokenEvents['cache.fallback_unusable'][] = [];
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, fallbackDir: open, logger: false });
    app.on('cache.fallback_unusable', (event) => warnings.push(event));
    expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
    await app.accessToken.forceRefresh();
    expect(warnings).toHaveLength(1);
    expect(String(warnings[0]!.reason)).toContain('may be written by other users');
    expect(readdirSync(open)).toEqual([]);
    await app.close();
  });

  it('one found unusable is looked at again at the next outage: once its mode is fixed, the processes of the host share through it', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore({ up: false });
    const open = fallbackDir();
    chmodSync(open, 0o777);
    const warnings: TokenEvents['cache.fallback_unusable'][] = [];
    const client = () => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, tokenEndpoint: 'classic', fallbackDir: open, logger: false });
    const app = client();
    app.on('cache.fallback_unusable', (event) => warnings.push(event));
    expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
    chmodSync(open, 0o700);
    // Not within the outage that found it unusable: the process has its token already.
    await app.accessToken.forceRefresh();
    expect(readdirSync(open)).toEqual([]);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    const recovered = nextEvent(app, 'cache.recovered');
    store.up();
    await recovered;
    store.down();
    const token = await app.accessToken.forceRefresh();
    expect(readdirSync(open)).not.toEqual([]);
    // Another process of the host takes the host's token, without a fetch of its own.
    const other = client();
    expect(await other.accessToken.getToken()).toBe(token);
    expect(mock.counters(appId).classicTokenRequests).toBe(3);
    expect(warnings).toHaveLength(1);
    await Promise.all([app.close(), other.close()]);
  });

  it.skipIf(process.platform !== 'linux')("one that cannot be made (under /proc, where Node's recursive mkdir loops for ever) is said once, and the client serves from its memory", async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore({ up: false });
    const warnings: TokenEvents['cache.fallback_unusable'][] = [];
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, fallbackDir: '/proc/wxkit-nope/fallback', logger: false });
    app.on('cache.fallback_unusable', (event) => warnings.push(event));
    expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
    expect(warnings).toHaveLength(1);
    expect(String(warnings[0]!.reason)).toContain('(ENOENT)');
    await app.close();
  });

  it('is neither made nor said unusable by a process whose store answers', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    const unmade = join(fallbackDir(), 'fallback');
    const open = fallbackDir();
    chmodSync(open, 0o777);
    const warnings: TokenEvents['cache.fallback_unusable'][] = [];
    const apps = [unmade, open].map((dir) => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, fallbackDir: dir, logger: false }));
    for (const app of apps) app.on('cache.fallback_unusable', (event) => warnings.push(event));
    for (const app of apps) expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
    expect(existsSync(unmade)).toBe(false);
    expect(warnings).toHaveLength(0);
    await Promise.all(apps.map((app) => app.close()));
  });

  it('holds files named by a hash of the key, never the key (a profile\'s key may hold the secret)', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore({ up: false });
    const dir = fallbackDir();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, fallbackDir: dir, schema: easyWeChat6(), logger: false });
    await app.accessToken.getToken();
    const names = readdirSync(dir);
    expect(names.length).toBeGreaterThan(0);
    for (const name of names) {
      expect(name).toMatch(/^[0-9a-f]{64}$/);
      expect(name).not.toContain(secret);
      expect(statSync(join(dir, name)).mode & 0o777).toBe(0o600);
    }
    await app.close();
  });
});

describe('how long a failure holds a process back', () => {
  it('a failure long after a recovered one starts at attempt 1 again', async () => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    const cache = new MemoryCache({ now: () => now });
    const options = { appId, secret, baseUrl: mock.url, cache, now: () => now, logger: false as const };
    const [a, b] = [new OfficialAccount(options), new OfficialAccount(options)];
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/stable_token' });
    await expect(a.accessToken.getToken()).rejects.toMatchObject({ errcode: -1 });
    now += 5_000;
    await b.accessToken.getToken();
    expect(await cache.get(`${a.accessToken.cacheKey}:failed`)).toBeUndefined();
    now += 3 * 3_600_000;
    mock.advanceClock(3 * 3_600);
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/stable_token' });
    await expect(a.accessToken.getToken()).rejects.toMatchObject({ errcode: -1 });
    expect(JSON.parse((await cache.get(`${a.accessToken.cacheKey}:failed`))!).attempt).toBe(1);
    await Promise.all([a.close(), b.close()]);
  });

  it('a marker whose retry_at lies 10 days ahead holds the fleet back no longer than its failure would', async () => {
    const DAY = 86_400_000;
    // errcode -1: at most the transient cap (60 s, +20 % jitter); 45009: until the next Beijing midnight.
    for (const { errcode, pauseMs } of [
      { errcode: -1, pauseMs: 72_000 },
      { errcode: 45009, pauseMs: undefined },
    ]) {
      const { appId, secret } = mock.createApp();
      // Two seconds before a Beijing midnight (UTC+8), so the 45009 pause ends two seconds later.
      let now = Math.floor((Date.now() + 8 * 3_600_000) / DAY) * DAY + DAY - 8 * 3_600_000 - 2_000;
      const cache = new MemoryCache({ now: () => now });
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, now: () => now, logger: false });
      const marker = { code: 'ERR_WXKIT_WECHAT_API', errcode, errmsg: 'x', path: 'cgi-bin/stable_token', failed_at: now, retry_at: now + 10 * DAY, attempt: 1 };
      await cache.set(`${app.accessToken.cacheKey}:failed`, JSON.stringify(marker), 10 * 86_400);
      await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode });
      now += (pauseMs ?? 2_000) - 1_000;
      await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode });
      now += 1_001;
      expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      await app.close();
    }
  });

  it('a marker dated a day ahead (a clock far ahead) holds no one back; one a few seconds ahead holds for its pause', async () => {
    const { appId, secret } = mock.createApp();
    const now = Date.now();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, now: () => now, logger: false });
    const key = `${app.accessToken.cacheKey}:failed`;
    const marker = (failedAt: number) => JSON.stringify({ code: 'ERR_WXKIT_HTTP', path: 'cgi-bin/stable_token', failed_at: failedAt, retry_at: failedAt + 30 * 86_400_000, attempt: 1 });
    // A few seconds ahead: plausible skew; the failure holds the process back.
    await cache.set(key, marker(now + 5_000), 60);
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP' });
    expect(mock.counters(appId).tokenRequests).toBe(0);
    // A day ahead: counted from now at every read, it would stop the fleet until then.
    await cache.set(key, marker(now + 86_400_000), 60);
    expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await app.close();
  });

  it('a marker or a forced-fetch slot with a time no Date can hold is ignored, not a RangeError', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    await cache.set(`${app.accessToken.cacheKey}:failed`, JSON.stringify({ code: 'ERR_WXKIT_HTTP', failed_at: 1e300, retry_at: Date.now() + 30_000 }), 60);
    expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
    await cache.set(`${app.accessToken.cacheKey}:forced`, JSON.stringify({ until: 1e300, step: 1, reason: 'quota' }), 60);
    const forced = await app.accessToken.forceRefresh();
    expect(mock.isTokenValid(appId, forced)).toBe(true);
    expect(mock.counters(appId).forceRefreshes).toBe(1);
    await app.close();
  });

  it('a marker the store no longer holds no longer holds the process back (its clock may not move)', async () => {
    const { appId, secret } = mock.createApp();
    const now = Date.now();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, now: () => now, logger: false });
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/stable_token' });
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode: -1 });
    await cache.delete(`${app.accessToken.cacheKey}:failed`);
    expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
    await app.close();
  });

  it('each deletion of the marker (wxkit token clear) lets the next call fetch: a second one, after the fetch the first allowed failed too', async () => {
    const { appId, secret } = mock.createApp();
    const now = Date.now();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, now: () => now, logger: false });
    // 40164 (an IP whitelist): a 60 s pause the operator ends with wxkit token clear once it is fixed.
    mock.injectFault({ kind: 'errcode', errcode: 40164, path: 'cgi-bin/stable_token', times: 2 });
    try {
      await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode: 40164 });
      // Fixed, cleared; the whitelist has not caught up yet, and the fetch fails again.
      await cache.delete(`${app.accessToken.cacheKey}:failed`);
      await expect(app.accessToken.getToken()).rejects.toMatchObject({ errcode: 40164 });
      // Counted from the start again, as after any deletion: the clear ended the back-off.
      expect(JSON.parse((await cache.get(`${app.accessToken.cacheKey}:failed`))!)).toMatchObject({ errcode: 40164, attempt: 1 });
      // Cleared again: the store holds no marker, and the next call asks WeChat.
      await cache.delete(`${app.accessToken.cacheKey}:failed`);
      expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
      expect(mock.counters(appId).tokenRequests).toBe(3);
    } finally {
      mock.clearFaults();
      await app.close();
    }
  });

  it('a waiter whose clock runs ahead of the holder\'s still returns the holder\'s failure, without a fetch of its own', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const holder = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', logger: false });
    const waiter = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', logger: false, now: () => Date.now() + 30_000 });
    mock.setLatency(300);
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token' });
    try {
      const held = holder.accessToken.getToken();
      // The holder's request is at WeChat (so it holds the lock) before the waiter starts.
      while (mock.counters(appId).classicTokenRequests === 0) await new Promise((resolve) => setTimeout(resolve, 5));
      const waited = waiter.accessToken.getToken();
      await expect(held).rejects.toMatchObject({ errcode: -1 });
      await expect(waited).rejects.toMatchObject({ errcode: -1 });
      expect(mock.counters(appId).classicTokenRequests).toBe(1);
    } finally {
      mock.setLatency(0);
    }
    await Promise.all([holder.close(), waiter.close()]);
  });
});

describe('background refreshes', () => {
  it('close() cancels a background refresh that was scheduled: nothing is fetched or marked after it', async () => {
    const { appId, secret } = mock.createApp();
    let lockKey = '';
    const cache = new CountingAdds(() => lockKey);
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', now: () => now, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, logger: false });
    lockKey = `${app.accessToken.cacheKey}:lock`;
    await app.accessToken.getToken();
    now += (6900 - 500) * 1000;
    await app.accessToken.getToken();
    await app.close();
    await afterDueTimers();
    expect(cache.adds).toBe(1); // the first fetch's
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    expect(await cache.get(`${app.accessToken.cacheKey}:failed`)).toBeUndefined();
  });

  it('refresh_ahead_skipped tells a background refresh that asked nothing from one that asked WeChat, even one whose write kept a newer token', async () => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    let key = '';
    let newer: string | undefined;
    // Once the background fetch has reached WeChat, another process stores a newer token before its write.
    class Overtaken extends MemoryCache {
      override async get(k: string) {
        if (k === key && newer === undefined && mock.counters(appId).classicTokenRequests === 2) {
          newer = mock.issueClassicToken(appId);
          const fetchedAt = Math.floor(now / 1000) + 60;
          await super.set(key, JSON.stringify({ access_token: newer, expires_at: fetchedAt + 7200, fetched_at: fetchedAt }), 7200);
        }
        return super.get(k);
      }
    }
    const cache = new Overtaken();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', now: () => now, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, logger: false });
    key = app.accessToken.cacheKey;
    const seen: string[] = [];
    const ended = new Promise<void>((resolve) => {
      app.on('access_token.fetched', (event) => event.ahead && (seen.push('fetched'), resolve()));
      app.on('access_token.refresh_ahead_skipped', () => (seen.push('skipped'), resolve()));
    });
    await app.accessToken.getToken();
    now += (6900 - 500) * 1000;
    await app.accessToken.getToken();
    await ended;
    await app.close(); // the background refresh has ended, and its event with it
    expect(newer).toBeDefined();
    expect(seen).toEqual(['fetched']);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
  });

  it('a background refresh that close() cuts short before it asked WeChat is skipped, not failed', async () => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    let lockKey = '';
    let hold = false;
    const released = deferred();
    const holding = deferred();
    // Once `hold` is set, the next lock take (the background refresh's) is answered only when the test says so.
    class HeldLock extends MemoryCache {
      override async add(k: string, value: string, ttl: number) {
        if (k === lockKey && hold) {
          hold = false;
          holding.resolve();
          await released.promise;
        }
        return super.add(k, value, ttl);
      }
    }
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new HeldLock(), tokenEndpoint: 'classic', now: () => now, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, logger: false });
    lockKey = `${app.accessToken.cacheKey}:lock`;
    const seen: string[] = [];
    app.on('access_token.refresh_ahead_failed', () => seen.push('failed'));
    app.on('access_token.refresh_ahead_skipped', () => seen.push('skipped'));
    await app.accessToken.getToken();
    now += (6900 - 500) * 1000;
    hold = true;
    await app.accessToken.getToken();
    await holding.promise;
    const closing = app.close();
    released.resolve();
    await closing;
    expect(seen).toEqual(['skipped']);
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
  });

  it('a refresh-ahead window wider than half the token\'s life opens only at half its life, once', async () => {
    const { appId, secret } = mock.createApp();
    let lockKey = '';
    const cache = new CountingAdds(() => lockKey);
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', now: () => now, refreshAheadSeconds: 7000, refreshAheadJitterMs: 0, logger: false });
    lockKey = `${app.accessToken.cacheKey}:lock`;
    const ahead = new Promise((resolve) => app.on('access_token.fetched', (event) => event.ahead && resolve(event)));
    await app.accessToken.getToken();
    for (let i = 0; i < 10; i += 1) await app.accessToken.getToken();
    // The store TTL is 6900 s: the window opens 3450 s before it ends, not at once.
    now += 3_400_000;
    await app.accessToken.getToken();
    await afterDueTimers();
    expect(cache.adds).toBe(1); // the first fetch's
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    now += 100_000;
    await app.accessToken.getToken();
    await ahead;
    for (let i = 0; i < 10; i += 1) await app.accessToken.getToken();
    await afterDueTimers();
    expect(cache.adds).toBe(2);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await app.close();
  });

  it('on a profile that stores the token bare (EasyWeChat 6), the process that fetched it still refreshes ahead after it reads the store again', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: easyWeChat6(), tokenEndpoint: 'classic', now: () => now, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, logger: false });
    const ahead = new Promise((resolve) => app.on('access_token.fetched', (event) => event.ahead && resolve(event)));
    const first = await app.accessToken.getToken();
    expect(await cache.get(app.accessToken.cacheKey)).toBe(`s:${first.length}:"${first}";`);
    // 500 s before the entry (EasyWeChat 6 keeps it for expires_in, 7200 s) leaves the store: past the
    // memo window, so the read goes to the store, which holds the token without a date; the window is
    // still known, and opens.
    now += 6_700_000;
    expect(await app.accessToken.getToken()).toBe(first);
    await Promise.race([ahead, new Promise((_, reject) => setTimeout(() => reject(new Error('no background refresh began')), 10_000).unref())]);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    expect(await cache.get(app.accessToken.cacheKey)).not.toContain(first);
    await app.close();
  });

  it('a token source that never answers fails the call after timeoutMs instead of hanging every caller', async () => {
    const app = new OfficialAccount({
      appId: 'wx0000000000000001',
      timeoutMs: 300,
      logger: false,
      tokenSource: { fetch: () => new Promise(() => undefined), invalidate: async () => undefined },
    });
    await expect(app.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_TIMEOUT' });
    await app.close();
  });

  it.each([['a string', '7200'], ['Infinity', Infinity], ['NaN', NaN]])(
    'a token source (plain JavaScript) answering expiresIn as %s is refused, not taken as a token that is never refreshed',
    async (_, expiresIn) => {
      let fetches = 0;
      const app = new OfficialAccount({
        appId: 'wx0000000000000001',
        logger: false,
        tokenSource: { fetch: async () => ((fetches += 1), { value: 'TOKEN_FROM_SOURCE', expiresIn: expiresIn as number }), invalidate: async () => undefined },
      });
      await expect(app.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP', message: expect.stringContaining('without a usable') });
      expect(fetches).toBe(1);
      await app.close();
    },
  );

  it('invalidate() not waited for, with a token source that fails the report, leaves no unhandled rejection', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    let reported!: () => void;
    const report = new Promise<void>((resolve) => (reported = resolve));
    const app = new OfficialAccount({
      appId: 'wx0000000000000001',
      logger: false,
      tokenSource: {
        fetch: async () => ({ value: 'TOKEN_FROM_SOURCE', expiresIn: 7200 }),
        invalidate: async () => {
          reported();
          throw new Error('the token service is down');
        },
      },
    });
    try {
      void app.accessToken.invalidate('TOKEN_FROM_SOURCE');
      await report;
      // Two turns of the event loop: Node tells of a rejection nobody handled after the microtasks of a turn.
      for (let turn = 0; turn < 2; turn += 1) await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await app.close();
    }
  });

  it.each([['milliseconds', 7_200_000], ['1e300', 1e300]])(
    'a token source answering expiresIn in %s (a day or more) is refused, not taken as a token kept long after WeChat dropped it',
    async (_, expiresIn) => {
      const app = new OfficialAccount({
        appId: 'wx0000000000000001',
        logger: false,
        tokenSource: { fetch: async () => ({ value: 'TOKEN_FROM_SOURCE', expiresIn }), invalidate: async () => undefined },
      });
      await expect(app.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP', message: expect.stringContaining('a day or more (it takes seconds)') });
      await app.close();
    },
  );
});

describe('close()', () => {
  it('a call under way at close() finishes; one made after it is refused by name, never sent', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    await app.accessToken.getToken();
    const message = { touser: 'o1', template_id: 'T', data: {} };
    mock.setLatency(100);
    try {
      const underWay = app.templateMessage.send(message);
      while (mock.counters(appId).requests < 2) await new Promise((resolve) => setTimeout(resolve, 5));
      const closing = app.close();
      const after = await rejection(app.templateMessage.send(message));
      expect(after).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false });
      expect(after.message).toMatch(/not sent: the client was closed/);
      await underWay;
      await closing;
      expect(await rejection(app.templateMessage.send(message))).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false, message: expect.stringMatching(/closed/) });
      expect(mock.counters(appId).templateSends).toBe(1);
    } finally {
      mock.setLatency(0);
    }
  });

  it("a fetch that WeChat's side fails after close() (a gateway's 502) is recorded for the fleet: the next process does not ask again at once", async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const held = holdingDispatcher('cgi-bin/stable_token');
    const first = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, dispatcher: held.agent, logger: false });
    try {
      const fetching = rejection(first.accessToken.getToken());
      await vi.waitFor(() => expect(held.arrived()).toBe(1));
      const closing = first.close();
      mock.injectFault({ kind: 'http-502', path: 'cgi-bin/stable_token' });
      held.release();
      expect(await fetching).toMatchObject({ code: 'ERR_WXKIT_HTTP' });
      await closing;
      expect(await cache.get(`wechat:stable_access_token:${appId}:failed`)).toBeDefined();
      const asked = mock.counters(appId).tokenRequests;
      const next = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
      expect(await rejection(next.accessToken.getToken())).toMatchObject({ code: 'ERR_WXKIT_HTTP' });
      await next.close();
      expect(mock.counters(appId).tokenRequests).toBe(asked);
    } finally {
      mock.clearFaults();
      await held.agent.close();
    }
  });

  it('a second close() resolves only once the first one is done', async () => {
    let finish!: () => void;
    const finished = new Promise<void>((resolve) => (finish = resolve));
    // A token source whose own close() takes a while (it drains a connection).
    const app = new OfficialAccount({
      appId: 'wx0000000000000002',
      logger: false,
      tokenSource: { fetch: async () => ({ value: 'T', expiresIn: 7200 }), invalidate: async () => undefined, close: () => (sourceCloses += 1, finished) },
    });
    let sourceCloses = 0;
    let first = false;
    const closing = app.close().then(() => (first = true));
    const again = app.close();
    expect(again).toBe(app.close());
    const second = again.then(() => first);
    finish();
    expect(await second).toBe(true);
    await closing;
    // The work of closing ran once.
    expect(sourceCloses).toBe(1);
  });

  it('ClientPool and OpenPlatform: a second close() is the first one\'s promise', async () => {
    const pool = new ClientPool({ kind: 'officialAccount', credentials: () => undefined, cache: new MemoryCache(), logger: false });
    const open = new OpenPlatform({ ...componentOptions(mock, mock.createComponent()), cache: new MemoryCache(), durableStore: new MemoryCache(), logger: false });
    const closing = [pool.close(), open.close()];
    expect(pool.close()).toBe(closing[0]);
    expect(open.close()).toBe(closing[1]);
    await Promise.all(closing);
  });

  it("ends a wait on another process's refresh at once: the call fails as closed, and nothing is fetched after it", async () => {
    const { appId, secret } = mock.createApp();
    let lockKey = '';
    const cache = new CountingAdds(() => lockKey);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', logger: false });
    lockKey = `${app.accessToken.cacheKey}:lock`;
    // Another process holds the refresh lock for a minute (its fetch is slow, or it was stopped).
    await cache.set(lockKey, 'elsewhere:1', 60);
    const waiting = endedByClose(app.accessToken.getToken());
    // It tried the lock, found it held, and waits for the holder's entry.
    await cache.firstAdd;
    await app.close();
    const error = await waiting;
    expect(error).toBeInstanceOf(TokenUnavailableError);
    expect((error as Error).message).toMatch(/closed/);
    // The wait is over, and it ended without a fetch: none can follow.
    expect(mock.counters(appId).classicTokenRequests).toBe(0);
    expect(await cache.get(lockKey)).toBe('elsewhere:1');
  });

  it('while this process holds the refresh lock for a fetch: resolves once the fetch is written and the lock released, so a store closed after it holds no lock', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', logger: false });
    // Another client of the process keeps the origin's shared connection pools open.
    const other = new OfficialAccount({ appId: mock.createApp().appId, secret: 'x'.repeat(32), baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    const lockKey = `${app.accessToken.cacheKey}:lock`;
    mock.setLatency(200);
    try {
      const caller = app.accessToken.getToken();
      // The fetch is at WeChat, under the lock.
      while (mock.counters(appId).classicTokenRequests < 1) await new Promise((resolve) => setTimeout(resolve, 5));
      expect(await cache.get(lockKey)).toBeDefined();
      await app.close();
      // What the program finds once close() resolved, before it closes its store and exits.
      expect(await cache.get(lockKey)).toBeUndefined();
      expect(await cache.get(app.accessToken.cacheKey)).toBeDefined();
      expect(await caller).toMatch(/./);
      expect(mock.counters(appId).classicTokenRequests).toBe(1);
    } finally {
      mock.setLatency(0);
      await other.close();
    }
  });

  it("while a call reports a token WeChat rejected: resolves once the rejected entry is deleted, and nothing is written after it", async () => {
    const { appId, secret } = mock.createApp();
    let entryKey = '';
    const released = deferred();
    const release = released.resolve;
    const deleting = deferred();
    let closed = false;
    const writesAfterClose: string[] = [];
    // A store whose compare-and-delete of the entry (the report of the rejected token) lands when told.
    class HoldingDelete extends MemoryCache {
      override async deleteIfEquals(key: string, expected: string): Promise<boolean> {
        if (closed) writesAfterClose.push(`deleteIfEquals ${key}`);
        if (key === entryKey) {
          deleting.resolve();
          await released.promise;
        }
        return super.deleteIfEquals(key, expected);
      }
      override async set(key: string, value: string, ttlSeconds: number): Promise<void> {
        if (closed) writesAfterClose.push(`set ${key}`);
        return super.set(key, value, ttlSeconds);
      }
      override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (closed) writesAfterClose.push(`add ${key}`);
        return super.add(key, value, ttlSeconds);
      }
    }
    const cache = new HoldingDelete();
    // The test's own connection pool: closing the client closes no pool, so close() has nothing else to wait for.
    const dispatcher = new Agent();
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, dispatcher, logger: false });
    entryKey = app.accessToken.cacheKey;
    try {
      const rejected = await app.accessToken.getToken();
      mock.invalidateTokens(appId);
      const sending = rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }));
      await deleting.promise;
      const closing = app.close().then(() => (closed = true));
      // Two turns of the event loop: a close() that waited for nothing but the requests on the wire has resolved by then.
      for (let turn = 0; turn < 2; turn += 1) await new Promise((resolve) => setImmediate(resolve));
      expect(closed).toBe(false);
      release();
      await closing;
      // What the program finds once close() resolved, before it closes its store and exits: the
      // rejected token is gone, so no other process takes it from the store.
      expect(await cache.get(entryKey)).toBeUndefined();
      expect(rejected).toMatch(/./);
      // The call needed a new token after close() began: refused as closed, and never resent.
      expect(await sending).toBeInstanceOf(TokenUnavailableError);
      for (let turn = 0; turn < 2; turn += 1) await new Promise((resolve) => setImmediate(resolve));
      expect(writesAfterClose).toEqual([]);
      expect(unhandled).toEqual([]);
      expect(mock.counters(appId)).toMatchObject({ tokenRequests: 1, rejectedCalls: 1, templateSends: 0 });
    } finally {
      release();
      process.off('unhandledRejection', onUnhandled);
      await app.close();
      await dispatcher.close();
    }
  });

  it('a call whose token WeChat rejects once close() has resolved fails as closed, and reports nothing to the store the program may have closed', async () => {
    const { appId, secret } = mock.createApp();
    let closed = false;
    const afterClose: string[] = [];
    class Watched extends MemoryCache {
      override get(key: string) {
        if (closed) afterClose.push(`get ${key}`);
        return super.get(key);
      }
      override deleteIfEquals(key: string, expected: string) {
        if (closed) afterClose.push(`deleteIfEquals ${key}`);
        return super.deleteIfEquals(key, expected);
      }
    }
    const cache = new Watched();
    // The send is held before it leaves: close() does not wait for calls on the wire.
    const gate = holdingDispatcher('/cgi-bin/message/template/send');
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, dispatcher: gate.agent, logger: false });
    try {
      await app.accessToken.getToken();
      mock.invalidateTokens(appId);
      const sending = rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }));
      await vi.waitFor(() => expect(gate.arrived()).toBe(1));
      await app.close();
      closed = true;
      gate.release();
      expect(await sending).toBeInstanceOf(TokenUnavailableError);
      expect(afterClose).toEqual([]);
      expect(mock.counters(appId)).toMatchObject({ tokenRequests: 1, rejectedCalls: 1, templateSends: 0 });
    } finally {
      gate.release();
      await gate.agent.close();
    }
  });

  it('accessToken.invalidate() once close() has resolved: refused as closed, each time, the store untouched', async () => {
    const { appId, secret } = mock.createApp();
    let closed = false;
    const afterClose: string[] = [];
    class Watched extends MemoryCache {
      override deleteIfEquals(key: string, expected: string) {
        if (closed) afterClose.push(`deleteIfEquals ${key}`);
        return super.deleteIfEquals(key, expected);
      }
    }
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new Watched(), logger: false });
    const token = await app.accessToken.getToken();
    await app.close();
    closed = true;
    const refused = await rejection(app.accessToken.invalidate(token, 40001));
    expect(refused).toBeInstanceOf(TokenUnavailableError);
    expect(refused.message).toBe('The client was closed: it reports no rejected access_token to its store or token service; make a new client');
    // The program may close its store after close(): the client asks it nothing.
    expect(afterClose).toEqual([]);
    // Every report after close() is refused alike, the same token's again included.
    expect(await rejection(app.accessToken.invalidate(token))).toBeInstanceOf(TokenUnavailableError);
    expect(afterClose).toEqual([]);
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it("a rejection that comes while close() waits for another of the client's refreshes is reported, and close() waits for it", async () => {
    const { appId, secret } = mock.createApp();
    let reports = 0;
    let entryKey = '';
    // Counts the compare-and-deletes of the token's entry: the reports of a rejected token.
    class Watched extends MemoryCache {
      override deleteIfEquals(key: string, expected: string) {
        if (key === entryKey) reports += 1;
        return super.deleteIfEquals(key, expected);
      }
    }
    const cache = new Watched();
    const SEND = '/cgi-bin/message/template/send';
    const TICKET = '/cgi-bin/ticket/getticket';
    const gate = holdingDispatcher(SEND, TICKET);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, dispatcher: gate.agent, logger: false });
    entryKey = app.accessToken.cacheKey;
    try {
      const rejected = await app.accessToken.getToken();
      // The jsapi ticket's fetch is held: close() waits for it.
      const ticket = rejection(app.jssdk.getTicket());
      await vi.waitFor(() => expect(gate.arrived(TICKET)).toBe(1));
      mock.invalidateTokens(appId);
      const sending = rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }));
      await vi.waitFor(() => expect(gate.arrived(SEND)).toBe(1));
      let closed = false;
      const closing = app.close().then(() => (closed = true));
      // WeChat rejects the send's token while close() still waits for the ticket: the report goes out.
      gate.release(SEND);
      await vi.waitFor(() => expect(reports).toBe(1));
      expect(closed).toBe(false);
      gate.release(TICKET);
      await closing;
      expect(await cache.get(app.accessToken.cacheKey)).toBeUndefined();
      expect(rejected).toMatch(/./);
      expect(await sending).toBeInstanceOf(TokenUnavailableError);
      await ticket;
    } finally {
      gate.release();
      await gate.agent.close();
    }
  });

  it('starts no background refresh after it, even when a read finds the entry inside the refresh-ahead window', async () => {
    const { appId, secret } = mock.createApp();
    let lockKey = '';
    const cache = new CountingAdds(() => lockKey);
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', now: () => now, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, logger: false });
    lockKey = `${app.accessToken.cacheKey}:lock`;
    await app.accessToken.getToken();
    const adds = cache.adds;
    await app.close();
    now += (6900 - 500) * 1000;
    await app.accessToken.getToken();
    // A background refresh would have been due at once (no jitter), and its first store calls made
    // before this timer fires: it would have tried the lock.
    await afterDueTimers();
    expect(cache.adds).toBe(adds);
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
  });
});

describe('forced refreshes and the memo', () => {
  it('setCache() during a refresh: calls after it use the new store, and the old flight does not fill the memo', async () => {
    const { appId, secret } = mock.createApp();
    // The first store holds the old refresh's write of its entry until told, so that it ends last.
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    class Holding extends MemoryCache {
      override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (!key.endsWith(':lock')) await released;
        return super.add(key, value, ttlSeconds);
      }
    }
    const [first, second] = [new Holding(), new MemoryCache()];
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: first, tokenEndpoint: 'classic', logger: false });
    mock.setLatency(200);
    try {
      const before = app.accessToken.getToken();
      // The refresh on the first store is at WeChat.
      while (mock.counters(appId).classicTokenRequests === 0) await new Promise((resolve) => setTimeout(resolve, 5));
      app.setCache(second);
      const current = await app.accessToken.getToken();
      release();
      const old = await before;
      expect(current).not.toBe(old);
      expect(mock.counters(appId).classicTokenRequests).toBe(2);
      expect(await second.get(app.accessToken.cacheKey)).toContain(current);
      expect(await app.accessToken.getToken()).toBe(current);
    } finally {
      mock.setLatency(0);
    }
    await app.close();
  });

  it('setCache() during a background refresh: what it brings back from the old store does not fill the memo', async () => {
    const { appId, secret } = mock.createApp();
    // The first store holds the writes of entries (not of the lock) while told to.
    let holding = false;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    class Holding extends MemoryCache {
      override async set(key: string, value: string, ttlSeconds: number): Promise<void> {
        if (holding && !key.endsWith(':lock')) await released;
        return super.set(key, value, ttlSeconds);
      }
      override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (holding && !key.endsWith(':lock')) await released;
        return super.add(key, value, ttlSeconds);
      }
      override async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (holding && !key.endsWith(':lock')) await released;
        return super.compareAndSet(key, expected, value, ttlSeconds);
      }
    }
    const [first, second] = [new Holding(), new MemoryCache()];
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: first, tokenEndpoint: 'classic', now: () => now, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, logger: false });
    const aheadDone = new Promise<void>((resolve) => app.on('access_token.fetched', (event) => event.ahead && resolve()));
    await app.accessToken.getToken();
    holding = true;
    now += (6900 - 500) * 1000;
    await app.accessToken.getToken(); // starts the background refresh, on the first store
    while (mock.counters(appId).classicTokenRequests < 2) await new Promise((resolve) => setTimeout(resolve, 5));
    app.setCache(second);
    const current = await app.accessToken.getToken();
    expect(mock.counters(appId).classicTokenRequests).toBe(3);
    release();
    await aheadDone;
    await new Promise((resolve) => setImmediate(resolve));
    // The memo still holds the new store's token, the one WeChat now takes.
    expect(await app.accessToken.getToken()).toBe(current);
    expect(mock.isTokenValid(appId, current)).toBe(true);
    await app.close();
  });

  it('setCache() while a 40001 recovery reads the old store: what it read there does not fill the memo', async () => {
    const { appId, secret } = mock.createApp();
    let key = '';
    let holding = false;
    let reads = 0;
    let entered!: () => void;
    const inside = new Promise<void>((resolve) => (entered = resolve));
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    class Holding extends MemoryCache {
      override async get(k: string): Promise<string | undefined> {
        // The invalidation reads the entry first (to delete it only if it holds the rejected token), then
        // the recovery reads it for a newer one: that second read is held.
        if (holding && k === key && (reads += 1) === 2) {
          entered();
          await released;
        }
        return super.get(k);
      }
    }
    const [first, second] = [new Holding(), new MemoryCache()];
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: first, tokenEndpoint: 'classic', logger: false });
    key = app.accessToken.cacheKey;
    await app.accessToken.getToken();
    // Another process refreshed: the first store holds its token, and WeChat rejects this one's.
    const other = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: first, tokenEndpoint: 'classic', logger: false });
    const peers = await other.accessToken.forceRefresh();
    mock.advanceClock(301); // past WeChat's grace for the superseded token
    holding = true;
    const sent = app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    await inside; // the recovery reads the first store
    app.setCache(second);
    release();
    await sent;
    holding = false;
    // The resend took the peer's token; the memo does not hold it for the new store, which is read.
    const current = await app.accessToken.getToken();
    expect(current).not.toBe(peers);
    expect(await second.get(key)).toContain(current);
    await Promise.all([app.close(), other.close()]);
  });

  it("a forced refresh that never reached WeChat (no connection) gives the fleet's 30 s force slot back", async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const b = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const first = await b.accessToken.getToken();
    // A host whose requests cannot leave (nothing listens where it sends them).
    const a = new OfficialAccount({ appId, secret, baseUrl: `http://127.0.0.1:${await freePort()}`, cache, logger: false, fallbackDir: false });
    await expect(a.accessToken.forceRefresh()).rejects.toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false });
    // The slot it took is free again: a healthy host's forced refresh reaches WeChat, not the spacing.
    const second = await b.accessToken.forceRefresh();
    expect(second).not.toBe(first);
    expect(mock.counters(appId).forceRefreshes).toBe(1);
    expect(mock.isTokenValid(appId, second)).toBe(true);
    await Promise.all([a.close(), b.close()]);
  });

  it("a forced refresh WeChat refused for its credentials (a wrong secret) gives the fleet's 30 s force slot back", async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const right = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const first = await right.accessToken.getToken();
    // A process still on an old secret forces a refresh: WeChat answers 40125 and refreshes nothing.
    const wrong = new OfficialAccount({ appId, secret: 'f'.repeat(32), baseUrl: mock.url, cache, logger: false });
    await expect(wrong.accessToken.forceRefresh()).rejects.toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40125 });
    expect(mock.isTokenValid(appId, first)).toBe(true);
    // The secret fixed, a forced refresh at once reaches WeChat and gets a new token, not the old one.
    const second = await right.accessToken.forceRefresh();
    expect(second).not.toBe(first);
    expect(mock.isTokenValid(appId, second)).toBe(true);
    // The mock counts every request that asked to force, the refused one too.
    expect(mock.counters(appId)).toMatchObject({ forceRefreshes: 2, errcodes: { '40125': 1 } });
    await Promise.all([right.close(), wrong.close()]);
  });

  it('a second forced refresh within 30 s sends no force_refresh, even when the entry was removed meanwhile', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const options = { appId, secret, baseUrl: mock.url, cache, logger: false as const };
    const [a, b] = [new OfficialAccount(options), new OfficialAccount(options)];
    const forced = await a.accessToken.forceRefresh();
    await cache.delete(a.accessToken.cacheKey);
    expect(await b.accessToken.forceRefresh()).toBe(forced);
    expect(mock.counters(appId).forceRefreshes).toBe(1);
    await Promise.all([a.close(), b.close()]);
  });

  it('on a store that keeps entries past their TTL (a Keyv store without TTL support), a forced refresh 10 minutes after the last one reaches WeChat', async () => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    // Every entry is kept until it is overwritten or deleted, whatever TTL it was written with.
    class KeepsEverything extends MemoryCache {
      override set(key: string, value: string): Promise<void> {
        return super.set(key, value, 86_400);
      }
      override add(key: string, value: string): Promise<boolean> {
        return super.add(key, value, 86_400);
      }
      override compareAndSet(key: string, expected: string, value: string): Promise<boolean> {
        return super.compareAndSet(key, expected, value, 86_400);
      }
    }
    const cache = new KeepsEverything({ now: () => now });
    const options = { appId, secret, baseUrl: mock.url, cache, logger: false as const, now: () => now, fallbackDir: false as const };
    const [a, b] = [new OfficialAccount(options), new OfficialAccount(options)];
    const first = await a.accessToken.forceRefresh();
    now += 10 * 60_000;
    mock.advanceClock(600);
    const second = await a.accessToken.forceRefresh();
    expect(mock.counters(appId).forceRefreshes).toBe(2);
    expect(second).not.toBe(first);
    expect(mock.isTokenValid(appId, second)).toBe(true);
    // A process that finds a slot so old for the first time holds to it (its writer's clock may be behind),
    // and once it has seen it outlast what any store keeps, forces again too.
    now += 10 * 60_000;
    mock.advanceClock(600);
    expect(await b.accessToken.forceRefresh()).toBe(second);
    now += 2 * 60_000;
    mock.advanceClock(120);
    const third = await b.accessToken.forceRefresh();
    expect(third).not.toBe(second);
    expect(mock.counters(appId).forceRefreshes).toBe(3);
    await Promise.all([a.close(), b.close()]);
  });

  it('a token WeChat rejected is never served again because the store held it with a later fetched_at', async () => {
    const { appId, secret } = mock.createApp();
    const inner = new MemoryCache();
    const cache: TokenCache = {
      get: (key) => inner.get(key),
      set: (key, value, ttl) => inner.set(key, value, ttl),
      delete: (key) => inner.delete(key),
      add: (key, value, ttl) => inner.add(key, value, ttl),
      compareAndSet: (key, expected, value, ttl) => inner.compareAndSet(key, expected, value, ttl),
      // The delete of the rejected entry loses (a race, or a peer wrote it back).
      deleteIfEquals: async () => false,
    };
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', logger: false });
    const now = Math.floor(Date.now() / 1000);
    // Written by a host whose clock runs 10 minutes ahead.
    await inner.set(app.accessToken.cacheKey, JSON.stringify({ access_token: 'DEAD', expires_at: now + 7000, fetched_at: now + 600 }), 6900);
    expect(await app.accessToken.getToken()).toBe('DEAD');
    await app.accessToken.invalidate('DEAD', 40001);
    const next = await app.accessToken.getToken();
    expect(next).not.toBe('DEAD');
    expect(mock.isTokenValid(appId, next)).toBe(true);
    expect(JSON.parse((await inner.get(app.accessToken.cacheKey))!).access_token).toBe(next);
    await app.close();
  });

  it('a slow read that ends after a forced refresh does not bring the older token back into the memo', async () => {
    const { appId, secret } = mock.createApp();
    const inner = new MemoryCache();
    let slow = false;
    // The slow read answers when the test lets it: after the forced refresh has ended.
    let answer!: () => void;
    const answered = new Promise<void>((resolve) => (answer = resolve));
    const cache: TokenCache = {
      get: async (key) => {
        const value = await inner.get(key);
        if (slow && !key.endsWith(':failed') && !key.endsWith(':forced')) {
          slow = false;
          await answered;
        }
        return value;
      },
      set: (key, value, ttl) => inner.set(key, value, ttl),
      delete: (key) => inner.delete(key),
      add: (key, value, ttl) => inner.add(key, value, ttl),
      compareAndSet: (key, expected, value, ttl) => inner.compareAndSet(key, expected, value, ttl),
      deleteIfEquals: (key, expected) => inner.deleteIfEquals(key, expected),
    };
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, now: () => now, logger: false });
    const old = await app.accessToken.getToken();
    // The memo window passes: the next call reads the store, slowly; a forced refresh ends meanwhile.
    now += 31_000;
    slow = true;
    const read = app.accessToken.getToken();
    const forced = await app.accessToken.forceRefresh();
    expect(forced).not.toBe(old);
    expect(slow).toBe(false); // the read is held in the store
    answer();
    await read;
    // The memo answers the next calls: it holds the newer token, not the one the slow read brought back.
    expect(await app.accessToken.getToken()).toBe(forced);
    await app.close();
  });
});

describe("a companion the store refuses (wechatpy's `…_expires_at`)", () => {
  it('leaves the token written: its caller gets it, and the other processes take it from the store without asking WeChat', async () => {
    const shared = new MemoryCache();
    const { appId, secret } = mock.createApp();
    let refused = 0;
    // The store takes the entry, then refuses its companion once (a write-refusing ACL, a full store).
    const refusing = new Proxy(shared, {
      get(target, name) {
        const value = Reflect.get(target, name, target);
        if (name !== 'set') return typeof value === 'function' ? value.bind(target) : value;
        return async (key: string, v: string, ttl: number) => {
          if (key.endsWith('_access_token_expires_at') && refused++ === 0) throw new Error('OOM command not allowed when used memory > maxmemory');
          return target.set(key, v, ttl);
        };
      },
    });
    const lines: { event?: string; stored?: boolean; key?: string }[] = [];
    const logger = { debug: () => {}, info: (fields: object) => void lines.push(fields), warn: (fields: object) => void lines.push(fields), error: () => {} };
    // wechatpy fetches on the classic endpoint: a second fetch would end the token the first handed out.
    const first = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: refusing, schema: wechatpy(), logger });
    const second = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: shared, schema: wechatpy(), logger: false });
    const key = first.accessToken.cacheKey;

    const token = await first.accessToken.getToken();
    expect(refused).toBe(1);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(JSON.parse((await shared.get(key))!)).toBe(token);
    // What failed is told as what it was: the store refused the companion's key; the token was stored.
    expect(lines.find((line) => line.event === 'cache.unavailable')?.key).toBe(`${key}_expires_at`);
    expect(lines.find((line) => line.event === 'access_token.fetched')?.stored).toBe(true);

    expect(await second.accessToken.getToken()).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(mock.isTokenValid(appId, token)).toBe(true);
    await Promise.all([first.close(), second.close()]);
  });
});
