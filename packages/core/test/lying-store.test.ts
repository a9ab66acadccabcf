import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, TokenUnavailableError, type OfficialAccountOptions, type TokenCache } from '../src/index.js';
import { retryAtOf } from '../src/retry-at.js';
import { over } from './helpers.js';

// Stores that lie rather than fail: they acknowledge what they do not do, or answer what is not so.
// wxkit cannot share a token through them; what it must keep is a bound on what it asks WeChat.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});


/** A store that acknowledges every write of a key `evicted` picks, and drops it at once (maxmemory allkeys-lru). */
function evicting(shared: MemoryCache, evicted: (key: string) => boolean): TokenCache {
  return over(shared, {
    async set(key, value, ttl) {
      await shared.set(key, value, ttl);
      if (evicted(key)) await shared.delete(key);
    },
    async add(key, value, ttl) {
      const added = await shared.add(key, value, ttl);
      if (evicted(key)) await shared.delete(key);
      return added;
    },
    async compareAndSet(key, expected, value, ttl) {
      const replaced = await shared.compareAndSet(key, expected, value, ttl);
      if (evicted(key)) await shared.delete(key);
      return replaced;
    },
  });
}

/** One template send of `app`: 'sent', or what it was rejected with. */
function sent(app: OfficialAccount): Promise<unknown> {
  return app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }).then(() => 'sent', (error: unknown) => error);
}

/** `clients` clients of one app on the classic endpoint, each seeing the shared store through `view`. */
function fleet(clients: number, view: (shared: MemoryCache) => TokenCache, options: Partial<OfficialAccountOptions> = {}) {
  const { appId, secret } = mock.createApp();
  const shared = new MemoryCache();
  const apps = Array.from(
    { length: clients },
    () => new OfficialAccount({ appId, secret, baseUrl: mock.url, logger: false, tokenEndpoint: 'classic', ...options, cache: view(shared) }),
  );
  /** One round: `sends` template sends from each client at once; resolves how many failed. */
  const round = async (sends = 1) => {
    const results = await Promise.allSettled(
      apps.flatMap((app) => Array.from({ length: sends }, () => app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }))),
    );
    return results.filter((result) => result.status === 'rejected').length;
  };
  return { appId, apps, round, close: () => Promise.all(apps.map((app) => app.close())) };
}

describe('a failure marker the store acknowledges and drops', () => {
  it('still holds back the process that wrote it: one fetch per back-off step, not one per call', async () => {
    const clock = Date.now();
    const { appId, round, close } = fleet(1, (shared) => evicting(shared, (key) => key.endsWith(':failed')), { now: () => clock });
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token', times: Infinity });
    try {
      let failed = 0;
      for (let i = 0; i < 10; i += 1) failed += await round();
      expect(failed).toBe(10);
      // The clock stands still, so every call falls within the first pause: the first fetch, and one more
      // after the marker is first found gone (it may have been deleted: `wxkit token clear`), then none.
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      mock.clearFaults();
      await close();
    }
  });

  it('holds a fleet to two fetches per process within a step, where it fetched once per call', async () => {
    const clock = Date.now();
    const { appId, round, close } = fleet(3, (shared) => evicting(shared, (key) => key.endsWith(':failed')), { now: () => clock });
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token', times: Infinity });
    try {
      for (let i = 0; i < 10; i += 1) expect(await round()).toBe(3);
      expect(mock.counters(appId).tokenRequests).toBeLessThanOrEqual(6);
    } finally {
      mock.clearFaults();
      await close();
    }
  });
});

describe('a token entry the store acknowledges and drops', () => {
  // Three processes on the classic endpoint, none of which sees another's token: WeChat keeps the token
  // before the newest alive for its grace, and no older one, so each fetch of one process ends the token
  // of another. Each read that found the entry gone fetched, and each 40001 fetched again at once: one
  // fetch per round of calls for as long as calls came. The clock stands still: one pause, never over.
  for (const graceSeconds of [300, 0]) {
    it(`costs the fleet two fetches per process and the one that starts the pause, then none however many calls follow (grace ${graceSeconds} s)`, async () => {
      const strict = await startMockWeChat({ graceSeconds });
      const { appId, secret } = strict.createApp();
      const clock = Date.now();
      const shared = new MemoryCache({ now: () => clock });
      const entryKey = `access_token:${appId}`;
      const apps = Array.from({ length: 3 }, () =>
        new OfficialAccount({
          appId, secret, baseUrl: strict.url, logger: false, tokenEndpoint: 'classic', memoMs: 0, now: () => clock,
          cache: evicting(shared, (key) => key.endsWith(entryKey)),
        }),
      );
      const round = async () => {
        const results = await Promise.allSettled(apps.map((app) => app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} })));
        // Some send of each round goes through; one that cannot is held to the fleet's pause after the
        // rejection, and says when it ends, rather than asking WeChat again.
        expect(results.some((result) => result.status === 'fulfilled')).toBe(true);
        for (const result of results) {
          if (result.status === 'rejected') {
            expect(result.reason).toBeInstanceOf(TokenUnavailableError);
            expect(retryAtOf(result.reason)).toBe(clock + 1_000);
          }
        }
      };
      try {
        for (let i = 0; i < 4; i += 1) await round();
        // Each process's first token, and the one it fetched when that was gone (a deletion, for all it
        // knew), both dropped; then the one refetch after a rejection that starts the pause.
        const fetched = strict.counters(appId).classicTokenRequests;
        expect(fetched).toBeLessThanOrEqual(7);
        for (let i = 0; i < 4; i += 1) await round();
        expect(strict.counters(appId).classicTokenRequests).toBe(fetched);
        expect(strict.counters(appId).tokenRequests).toBe(fetched);
      } finally {
        await Promise.all(apps.map((app) => app.close()));
        await strict.close();
      }
    });
  }
});

describe('a token entry the store drops, within the pause that follows a rejection', () => {
  // The process that started the fleet's pause fetched the newest token; the store shows none. Within
  // the pause it fetches nothing, so its calls go out with that token rather than fail until the pause
  // ends, the token still good. One client keeps it deterministic: another program's fetch (on WeChat's
  // side) ends the token of its first write, before its call sends with it.
  it('serves the token it fetched last, with no fetch, where it failed every call', async () => {
    const { appId, secret } = mock.createApp();
    const clock = Date.now();
    const shared = new MemoryCache({ now: () => clock });
    const entryKey = `access_token:${appId}`;
    let ended = 0;
    const dropping = evicting(shared, (key) => {
      if (!key.endsWith(entryKey)) return false;
      if (ended === 0) mock.invalidateTokens(appId);
      ended += 1;
      return true;
    });
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, logger: false, tokenEndpoint: 'classic', memoMs: 0, now: () => clock, cache: dropping });
    const send = () => sent(app);
    try {
      // Its first token ended before any call went through with it: the next fetch starts a pause.
      for (let i = 0; i < 2 && mock.counters(appId).classicTokenRequests < 2; i += 1) await send();
      expect(mock.counters(appId).classicTokenRequests).toBe(2);
      expect(ended).toBe(2);
      const fetched = mock.counters(appId).classicTokenRequests;
      // The clock stands still: every call falls within that pause, and the store shows no entry.
      for (let i = 0; i < 3; i += 1) expect(await send()).toBe('sent');
      expect(mock.counters(appId).classicTokenRequests).toBe(fetched);
    } finally {
      await app.close();
    }
  });
});

describe('a token entry another process deleted after WeChat rejected it, within the pause that follows a rejection', () => {
  // An honest store: the entry is gone because another process found the token rejected and deleted it.
  // Within its pause the process that fetched that token fetches nothing, and must not send with it either.
  it('sends no call with the token another process found rejected', async () => {
    const { appId, secret } = mock.createApp();
    const clock = Date.now();
    const shared = new MemoryCache({ now: () => clock });
    const options = { appId, secret, baseUrl: mock.url, logger: false, tokenEndpoint: 'classic', memoMs: 0, now: () => clock, cache: shared } as const;
    const a = new OfficialAccount(options);
    const b = new OfficialAccount(options);
    try {
      // a's first token ends before any call went through with it: its refetch starts the fleet's pause.
      await a.accessToken.getToken();
      mock.invalidateTokens(appId);
      expect(await sent(a)).toBe('sent');
      expect(mock.counters(appId).classicTokenRequests).toBe(2);
      // Another program's fetch ends a's second token; b sends with it, is refused, and deletes it.
      mock.invalidateTokens(appId);
      expect(await sent(b)).toBeInstanceOf(TokenUnavailableError);
      expect(await shared.get(a.accessToken.cacheKey)).toBeUndefined();
      const refused = mock.counters(appId).rejectedCalls;
      // Still within the pause: a sends nothing with the token WeChat refused.
      expect(await sent(a)).toBeInstanceOf(TokenUnavailableError);
      expect(mock.counters(appId).rejectedCalls).toBe(refused);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

describe('a token entry its store ended at its TTL, as it was asked to', () => {
  // The native schema writes the entry with a TTL 300 s short of WeChat's expiry, and the process may
  // serve its token until 30 s before that expiry: a call that comes in between finds the entry gone
  // while the token it holds is still good. That is no dropped write, however often it happens.
  it('fetches on each such expiry, as on the first, and the store holds the token it fetched', async () => {
    let clock = Date.now();
    const shared = new MemoryCache({ now: () => clock });
    const app = new OfficialAccount({ ...mock.createApp(), baseUrl: mock.url, logger: false, tokenEndpoint: 'classic', cache: shared, now: () => clock });
    const { appId } = app;
    const send = () => app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    const key = app.accessToken.cacheKey;
    try {
      await send();
      const start = mock.counters(appId).classicTokenRequests;
      for (let i = 1; i <= 3; i += 1) {
        // A quiet spell past the entry's TTL (7200 − 300 s), within the token's life.
        clock += 7_000_000;
        await send();
        expect(await shared.get(key)).toBeDefined();
        expect(mock.counters(appId).classicTokenRequests).toBe(start + i);
      }
    } finally {
      await app.close();
    }
  });
});

describe('a token entry deleted twice in a row (`wxkit token clear`)', () => {
  it('the next caller fetches after each deletion, and the store holds the token it fetched', async () => {
    let clock = Date.now();
    const shared = new MemoryCache({ now: () => clock });
    const app = new OfficialAccount({ ...mock.createApp(), baseUrl: mock.url, logger: false, tokenEndpoint: 'classic', cache: shared, now: () => clock });
    const { appId } = app;
    const key = app.accessToken.cacheKey;
    try {
      const first = await app.accessToken.getToken();
      const start = mock.counters(appId).classicTokenRequests;
      let previous = first;
      for (let i = 1; i <= 2; i += 1) {
        await shared.delete(key);
        // Past the memo window: the next call reads the store.
        clock += 31_000;
        const token = await app.accessToken.getToken();
        expect(token).not.toBe(previous);
        expect(mock.counters(appId).classicTokenRequests).toBe(start + i);
        expect(await shared.get(key)).toContain(token);
        previous = token;
      }
    } finally {
      await app.close();
    }
  });
});

/**
 * Clients of one host (a fallback directory of their own) on a store that takes the refresh lock and
 * refuses every other write (memcached -M, full: SERVER_ERROR out of memory). Not a MemoryCache: a store
 * shared beyond this process, whose fallback is the host's directory. One store object per client, as
 * each process has its own: a failure one of them sees is not the others'.
 */
function refusingHost() {
  const { appId, secret } = mock.createApp();
  const shared = new MemoryCache();
  const dir = mkdtempSync(join(tmpdir(), 'wxkit-refused-'));
  const refuse = (key: string) => {
    if (!key.endsWith(':lock')) throw Object.assign(new Error('memcached add answered status 130'), { status: 130 });
  };
  const store = (): TokenCache => ({
    get: (key) => shared.get(key),
    delete: (key) => shared.delete(key),
    deleteIfEquals: (key, expected) => shared.deleteIfEquals(key, expected),
    async set(key, value, ttl) { refuse(key); return shared.set(key, value, ttl); },
    async add(key, value, ttl) { refuse(key); return shared.add(key, value, ttl); },
    async compareAndSet(key, expected, value, ttl) { refuse(key); return shared.compareAndSet(key, expected, value, ttl); },
  });
  const client = () => new OfficialAccount({ appId, secret, baseUrl: mock.url, logger: false, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: dir, cache: store() });
  return { appId, shared, dir, client };
}

describe("a store that takes the lock but refuses the entry's write", () => {
  it('costs the processes of one host one fetch, not one each', async () => {
    const refusing = (shared: MemoryCache) => {
      const refuse = (key: string) => {
        if (!key.endsWith(':lock')) throw Object.assign(new Error('memcached add answered status 130'), { status: 130 });
      };
      return over(shared, {
        async set(key, value, ttl) { refuse(key); return shared.set(key, value, ttl); },
        async add(key, value, ttl) { refuse(key); return shared.add(key, value, ttl); },
        async compareAndSet(key, expected, value, ttl) { refuse(key); return shared.compareAndSet(key, expected, value, ttl); },
      });
    };
    const { appId, apps, close } = fleet(4, refusing, { memoMs: 0 });
    try {
      const tokens = [];
      for (const app of apps) tokens.push(await app.accessToken.getToken());
      expect(new Set(tokens).size).toBe(1);
      expect(mock.counters(appId).tokenRequests).toBe(1);
    } finally { await close(); }
  });

  it("shares the token through the host's fallback directory, at once and one after the other, and never one WeChat rejected", async () => {
    const { appId, shared, dir, client } = refusingHost();
    const apps = [client(), client(), client(), client()];
    try {
      const first = await Promise.all(apps.slice(0, 2).map((app) => app.accessToken.getToken()));
      for (const app of apps.slice(2)) first.push(await app.accessToken.getToken());
      expect(new Set(first).size).toBe(1);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(await shared.get(apps[0]!.accessToken.cacheKey)).toBeUndefined();
      // WeChat ends it: the process that learns so fetches once, and the others take its token, not the one rejected.
      mock.invalidateTokens(appId);
      await apps[0]!.accessToken.invalidate(first[0]!, 40001);
      const second = await apps[0]!.accessToken.getToken();
      expect(second).not.toBe(first[0]);
      for (const app of apps.slice(1)) {
        await app.accessToken.invalidate(first[0]!, 40001);
        expect(await app.accessToken.getToken()).toBe(second);
      }
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      await Promise.all(apps.map((app) => app.close()));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("a token a refusing store's holder kept for the host, which WeChat rejected to another process of the host", () => {
  it('is not what the next process of the host takes', async () => {
    const { appId, dir, client } = refusingHost();
    const [a, b, c] = [client(), client(), client()];
    try {
      const kept = await a.accessToken.getToken();
      expect(await b.accessToken.getToken()).toBe(kept);
      // Another program's fetch ends it; b's call is refused, and b's refetch fails (WeChat busy).
      mock.invalidateTokens(appId);
      mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token', times: Infinity });
      const failed = await sent(b);
      expect(failed).not.toBe('sent');
      mock.clearFaults();
      // The next process of the host gets a token WeChat takes, not the one b found rejected.
      const token = await c.accessToken.getToken();
      expect(token).not.toBe(kept);
      expect(mock.isTokenValid(appId, token)).toBe(true);
    } finally {
      mock.clearFaults();
      await Promise.all([a.close(), b.close(), c.close()]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('an access token entry the store acknowledges and drops, while tickets are refreshed', () => {
  it('costs each process one token fetch, however many ticket refreshes follow: a token it fetched is never taken for deleted', async () => {
    // Ticket entries are dropped too: each process refreshes its ticket, and checks the token it fetched
    // against the store under the ticket's lock, which never shows it.
    const { appId, apps, close } = fleet(6, (shared) => evicting(shared, (key) => /(access_token|jsapi_ticket):[^:]+$/.test(key)), { tokenEndpoint: 'stable' });
    try {
      for (let round = 0; round < 8; round += 1) {
        const results = await Promise.allSettled(apps.flatMap((app) => [app.jssdk.getTicket(), sent(app)]));
        expect(results.filter((result) => result.status === 'rejected')).toEqual([]);
      }
      expect(mock.counters(appId)).toMatchObject({ tokenRequests: 6, ticketRequests: 6, rejectedCalls: 0 });
    } finally {
      await close();
    }
  });
});

describe('an access token entry a process read, gone from a store that then drops its writes (stable endpoint)', () => {
  it('the token the process fetched in its place, the same one, is not taken for deleted under the ticket lock: one token fetch', async () => {
    const { appId, secret } = mock.createApp();
    const shared = new MemoryCache();
    let dropping = false;
    let tokenKey = '';
    const cache = evicting(shared, (key) => dropping && key === tokenKey);
    const options = { appId, secret, baseUrl: mock.url, logger: false, tokenEndpoint: 'stable', memoMs: 0, fallbackDir: false, cache } as const;
    const [fetcher, reader] = [new OfficialAccount(options), new OfficialAccount(options)];
    tokenKey = fetcher.accessToken.cacheKey;
    try {
      const token = await fetcher.accessToken.getToken();
      // The reader takes the token from the store.
      expect(await reader.accessToken.getToken()).toBe(token);
      // The store evicts it, and drops every write of it from now on (maxmemory).
      dropping = true;
      await shared.delete(tokenKey);
      mock.resetCounters();
      // The reader's ticket refresh fetches the token again (WeChat's stable endpoint hands back the same
      // one), which the store drops: checked under the ticket's lock, it is one this process fetched.
      await reader.jssdk.getTicket();
      expect(mock.counters(appId)).toMatchObject({ tokenRequests: 1, ticketRequests: 1, rejectedCalls: 0 });
    } finally {
      await Promise.all([fetcher.close(), reader.close()]);
    }
  });
});
