import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { FileCache, MemoryCache, OfficialAccount, type TokenCache } from '../src/index.js';
import { storeHealth } from '../src/store-health.js';
import { hostFallback } from '../src/token/tiers.js';
import { nextEvent } from './helpers.js';

// A client's first fetch looks in the host's fallback directory for a token a process of the host kept
// there (KeptTokens), through a handle made for the look where the client holds none. A look that finds
// that store down, or takes it for down, leaves the client a handle on it, as any use of it does: one that
// probes the store and hears of its recovery.
let mock: MockWeChat;
const dirs: string[] = [];
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `wxkit-${name}-`));
  dirs.push(dir);
  return dir;
}

const hashed = (name: string) => createHash('sha256').update(name).digest('hex');

/** A store shared beyond this process as the client sees it (no locality): its fallback is the host's directory. */
function sharedStore(failing?: () => boolean): TokenCache {
  const inner = new MemoryCache();
  const guard = async () => {
    if (failing?.()) throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
  };
  return {
    get: async (key) => (await guard(), inner.get(key)),
    set: async (key, value, ttl) => (await guard(), inner.set(key, value, ttl)),
    delete: async (key) => (await guard(), inner.delete(key)),
    add: async (key, value, ttl) => (await guard(), inner.add(key, value, ttl)),
    deleteIfEquals: async (key, expected) => (await guard(), inner.deleteIfEquals(key, expected)),
    compareAndSet: async (key, expected, value, ttl) => (await guard(), inner.compareAndSet(key, expected, value, ttl)),
  };
}

/** A token a process of this host kept in `fallbackDir` for the next holder of the lock: its entry and `{key}:kept`. */
async function keptInFallback(fallbackDir: string) {
  const app = mock.createApp();
  const store = new MemoryCache();
  const writer = new OfficialAccount({ ...app, baseUrl: mock.url, tokenEndpoint: 'classic', cache: store, fallbackDir: false, logger: false });
  const kept = await writer.accessToken.getToken();
  const key = writer.accessToken.cacheKey;
  const fallback = new FileCache({ dir: fallbackDir });
  await fallback.set(hashed(key), (await store.get(key))!, 300);
  await fallback.set(hashed(`${key}:kept`), kept, 300);
  await writer.close();
  return { app, kept, key };
}

/** The events of `client` about its stores, in order. */
function storeEvents(client: OfficialAccount): string[] {
  const seen: string[] = [];
  client.on('cache.unavailable', () => seen.push('unavailable'));
  client.on('cache.recovered', () => seen.push('recovered'));
  return seen;
}

describe("a token a process of the host kept in the host's fallback", () => {
  it('is taken by the next client of the host, which keeps no handle on that store', async () => {
    const fallbackDir = tempDir('kept-look');
    const { app, kept } = await keptInFallback(fallbackDir);
    const client = new OfficialAccount({ ...app, baseUrl: mock.url, tokenEndpoint: 'classic', cache: sharedStore(), fallbackDir, logger: false });
    try {
      expect(await client.accessToken.getToken()).toBe(kept);
      expect(mock.counters(app.appId).tokenRequests).toBe(1);
      expect(storeHealth(hostFallback(fallbackDir) as TokenCache, '').users()).toHaveLength(0);
    } finally {
      await client.close();
    }
  });

  it("whose entry the look fails to read leaves the host's store taken for down to a client that probes it, and is taken once it answers", async () => {
    const fallbackDir = tempDir('kept-look-fails');
    const first = await keptInFallback(fallbackDir);
    const host = hostFallback(fallbackDir) as TokenCache;
    const get = host.get;
    // The kept token reads; its entry's read fails (a disk that stalls, a file another tool locked).
    host.get = async (key) => {
      if (key === first.key) throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
      return get.call(host, key);
    };
    const client = new OfficialAccount({ ...first.app, baseUrl: mock.url, tokenEndpoint: 'classic', cache: sharedStore(), fallbackDir, logger: false });
    const events = storeEvents(client);
    const recovered = nextEvent(client, 'cache.recovered');
    try {
      await client.accessToken.getToken();
      expect(events).toEqual(['unavailable']);
      const health = storeHealth(host, '');
      expect(health.down).toBe(true);
      // Someone is left to probe it: else it stays taken for down, and no look of this process finds a kept token again.
      expect(health.users().length).toBeGreaterThan(0);
      host.get = get;
      await recovered;
      expect(health.down).toBe(false);
      expect(events).toEqual(['unavailable', 'recovered']);
      // The next account's first fetch takes the token kept for it.
      const second = await keptInFallback(fallbackDir);
      const other = new OfficialAccount({ ...second.app, baseUrl: mock.url, tokenEndpoint: 'classic', cache: sharedStore(), fallbackDir, logger: false });
      try {
        expect(await other.accessToken.getToken()).toBe(second.kept);
        expect(mock.counters(second.app.appId).tokenRequests).toBe(1);
      } finally {
        await other.close();
      }
    } finally {
      host.get = get;
      await client.close();
    }
  });

  it("looked for while the host's store is down, tells the client of that outage's end as of its start", async () => {
    const fallbackDir = tempDir('kept-look-down');
    const { app, kept } = await keptInFallback(fallbackDir);
    const host = hostFallback(fallbackDir) as TokenCache;
    const get = host.get;
    host.get = async () => {
      throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
    };
    // A client whose shared store is down takes the host's store for down too (it holds its handle, and probes it).
    let sharedDown = true;
    const broken = new OfficialAccount({ ...mock.createApp(), baseUrl: mock.url, tokenEndpoint: 'classic', cache: sharedStore(() => sharedDown), fallbackDir, logger: false });
    const hostBack = nextEvent(broken, 'cache.recovered');
    const client = new OfficialAccount({ ...app, baseUrl: mock.url, tokenEndpoint: 'classic', cache: sharedStore(), fallbackDir, logger: false });
    const events = storeEvents(client);
    try {
      await broken.accessToken.getToken();
      expect(storeHealth(host, '').down).toBe(true);
      // The look finds the host's store down, and takes nothing from it: the client fetches its own.
      expect(await client.accessToken.getToken()).not.toBe(kept);
      expect(events).toEqual(['unavailable']);
      host.get = get;
      await hostBack;
      expect(events).toEqual(['unavailable', 'recovered']);
    } finally {
      host.get = get;
      sharedDown = false;
      await Promise.all([broken.close(), client.close()]);
    }
  });
});

it("20 accounts' first fetches look in the host's fallback and keep no handle on it", async () => {
  const fallbackDir = tempDir('fallback-handles');
  const cache = new FileCache({ dir: tempDir('fallback-handles-store') });
  const clients = Array.from({ length: 20 }, () => new OfficialAccount({ ...mock.createApp(), baseUrl: mock.url, cache, fallbackDir, logger: false }));
  for (const client of clients) await client.accessToken.getToken();
  const host = hostFallback(fallbackDir) as TokenCache;
  expect(typeof host).toBe('object');
  expect(storeHealth(host, '').users()).toHaveLength(0);
  await Promise.all(clients.map((client) => client.close()));
});
