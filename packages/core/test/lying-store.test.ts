import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, type OfficialAccountOptions, type TokenCache } from '../src/index.js';

// Stores that lie rather than fail: they acknowledge what they do not do, or answer what is not so.
// wxkit cannot share a token through them; what it must keep is a bound on what it asks WeChat.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/** `shared` with the methods of `methods` in place of its own. */
function over(shared: MemoryCache, methods: Partial<TokenCache>): TokenCache {
  return new Proxy(shared, {
    get(target, name) {
      if (name in methods) return (methods as Record<string | symbol, unknown>)[name];
      const value = Reflect.get(target, name, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  }) as unknown as TokenCache;
}

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
