import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startMockWeChat } from '@wxkit/testing';
import { OfficialAccount, nativeSchema, type TokenCache } from '../src/index.js';
import { Log } from '../src/logger.js';
import { killedAcrossOutage } from './helpers.js';
import { GuardedStore } from '../src/store.js';
import { RefreshLock } from '../src/token/refresh-lock.js';

/** A store of two parts, `a` and `b` (the first letter of a key), each up or down on its own, as the servers of a MemcachedCache. */
function twoParts() {
  const data = new Map<string, string>();
  const up = { a: true, b: true };
  const gets = { a: 0, b: 0 };
  const part = (key: string): 'a' | 'b' => (cache.partition!(key) === 'b' ? 'b' : 'a');
  const check = (key: string) => {
    if (!up[part(key)]) throw new Error(`part ${part(key)} refused the connection`);
  };
  const cache: TokenCache = {
    partition: (key) => (key.startsWith('b') ? 'b' : 'a'),
    async get(key) {
      gets[part(key)] += 1;
      check(key);
      return data.get(key);
    },
    async set(key, value) {
      check(key);
      data.set(key, value);
    },
    async delete(key) {
      check(key);
      data.delete(key);
    },
    async add(key, value) {
      check(key);
      if (data.has(key)) return false;
      data.set(key, value);
      return true;
    },
    async deleteIfEquals(key, expected) {
      check(key);
      if (data.get(key) !== expected) return false;
      data.delete(key);
      return true;
    },
  };
  return { cache, data, up, gets };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('a store whose parts fail one at a time', () => {
  it('a client done with the store does not probe a part that a call made after dispose() found down', async () => {
    vi.useFakeTimers();
    const { cache, up, gets } = twoParts();
    const store = new GuardedStore(cache, 1000, new Log(false), 'wxparts');
    store.dispose();
    up.b = false;
    await expect(store.get('b:entry')).rejects.toThrow();
    expect(gets.b).toBe(1);
    await vi.advanceTimersByTimeAsync(10_000);
    // As a store that fails as a whole: nobody uses it, nothing probes it.
    expect(gets.b).toBe(1);
  });

  it("a lock left on a part that was down is cleaned up when that part answers again, after another part's outage came and went", async () => {
    const { cache, data, up } = twoParts();
    const store = new GuardedStore(cache, 1000, new Log(false), 'wxparts');
    const lock = new RefreshLock('b:entry:lock', 'b:entry:lock', new Log(false), 'wxparts');
    const held = await lock.tryAcquire(store, 10_000);
    expect(typeof held).toBe('object');
    // The release fails: the owner stays in the store, to be deleted once its part answers.
    up.b = false;
    await (held as { release(): Promise<void> }).release();
    expect(data.has('b:entry:lock')).toBe(true);
    // The other part goes down and comes back meanwhile.
    up.a = false;
    await expect(store.get('a:entry')).rejects.toThrow();
    up.a = true;
    await vi.waitFor(() => expect(store.downFor('a:entry')).toBe(false), { timeout: 5_000 });
    expect(store.downFor('b:entry')).toBe(true);
    up.b = true;
    await vi.waitFor(() => expect(data.has('b:entry:lock')).toBe(false), { timeout: 5_000 });
  });

  it('a client that first uses a part while it is down hears of the outage before its recovery', async () => {
    const mock = await startMockWeChat();
    const first = mock.createApp();
    const second = mock.createApp();
    const { cache, up } = twoParts();
    cache.partition = (key) => (key.includes(first.appId) || key.includes(second.appId) ? 'b' : 'a');
    const heard: string[] = [];
    const clients = [first, second].map((app, i) => {
      const client = new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, logger: false, memoMs: 0, fallbackDir: false });
      client.on('cache.unavailable', () => heard.push(`${i}:unavailable`));
      client.on('cache.recovered', () => heard.push(`${i}:recovered`));
      return client;
    });
    try {
      await clients[0]!.accessToken.getToken();
      up.b = false;
      await clients[0]!.accessToken.getToken();
      // The second client's entry is on the part that is down: its first call is refused, unsent.
      await clients[1]!.accessToken.getToken();
      up.b = true;
      await vi.waitFor(() => expect(heard.filter((event) => event.endsWith('recovered'))).toHaveLength(2), { timeout: 5_000 });
      expect(heard.filter((event) => event.startsWith('1:'))).toEqual(['1:unavailable', '1:recovered']);
    } finally {
      await Promise.all(clients.map((client) => client.close()));
      await mock.close();
    }
  });

  it("an entry whose schema puts its lock on another part, which is down, is served from the fallback, as a whole store's outage is", async () => {
    const mock = await startMockWeChat();
    const app = mock.createApp();
    const { cache, up } = twoParts();
    // The entry on part a, its lock (a peer's layout: `lock:{key}`) on part b.
    const schema = { ...nativeSchema(), lockKey: (key: string) => `b-lock:${key}` };
    up.b = false;
    const clients = [0, 1].map(() => new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, schema, logger: false, memoMs: 0, fallbackDir: false, tokenEndpoint: 'classic' }));
    try {
      for (let round = 0; round < 2; round += 1) {
        for (const client of clients) await expect(client.accessToken.getToken()).resolves.toEqual(expect.any(String));
      }
      expect(mock.counters(app.appId).tokenRequests).toBe(1);
    } finally {
      await Promise.all(clients.map((client) => client.close()));
      await mock.close();
    }
  });

  it("a process that still takes the part holding an entry's lock for down asks that part once more before a fallback fetch, and takes the token a neighbour wrote once it found the part back", async () => {
    const mock = await startMockWeChat();
    const { appId, secret } = mock.createApp();
    const { cache, up } = twoParts();
    // The entry on part a, its lock (a peer's layout) on part b.
    const schema = { ...nativeSchema(), lockKey: (key: string) => `b-lock:${key}` };
    // The second process's own connections: the one to part b refused until it is mended.
    let secondToB = true;
    const refusing = <A extends [string, ...unknown[]], R>(call: (...args: A) => Promise<R>) => (...args: A): Promise<R> =>
      secondToB || cache.partition!(args[0]) !== 'b' ? call(...args) : Promise.reject(new Error('part b refused the connection'));
    const second: TokenCache = {
      partition: cache.partition,
      get: refusing(cache.get),
      set: refusing(cache.set),
      delete: refusing(cache.delete),
      add: refusing(cache.add!),
      deleteIfEquals: refusing(cache.deleteIfEquals!),
    };
    const dir = mkdtempSync(join(tmpdir(), 'wxkit-parts-'));
    const process = (store: TokenCache) => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store, schema, tokenEndpoint: 'classic', memoMs: 0, fallbackDir: dir, logger: false });
    const [a, b] = [process({ ...cache }), process(second)];
    const fetches = () => mock.counters(appId).classicTokenRequests;
    try {
      // Part b goes down and comes back: the first process finds out, the second does not yet.
      await killedAcrossOutage(mock, appId, a, b, { down: () => void (up.b = false), up: () => void (up.b = true), holdSecond: (held) => void (secondToB = !held) });
      const after = await a.accessToken.getToken();
      expect(fetches()).toBe(3);
      // The second still takes part b for down; it answers it now.
      secondToB = true;
      expect(await b.accessToken.getToken()).toBe(after);
      expect(fetches()).toBe(3);
    } finally {
      await Promise.all([a.close(), b.close()]);
      await mock.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a client that points at the same store again while a part of it is down hears of that outage once', async () => {
    const mock = await startMockWeChat();
    const app = mock.createApp();
    const { cache, up } = twoParts();
    cache.partition = (key) => (key.includes(app.appId) ? 'b' : 'a');
    const heard: string[] = [];
    const client = new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, logger: false, memoMs: 0, fallbackDir: false });
    client.on('cache.unavailable', () => heard.push('unavailable'));
    client.on('cache.recovered', () => heard.push('recovered'));
    try {
      await client.accessToken.getToken();
      up.b = false;
      await client.accessToken.getToken();
      client.setCache(cache);
      await client.accessToken.getToken();
      up.b = true;
      await vi.waitFor(() => expect(heard).toContain('recovered'), { timeout: 5_000 });
      expect(heard).toEqual(['unavailable', 'recovered']);
    } finally {
      await client.close();
      await mock.close();
    }
  });
});
