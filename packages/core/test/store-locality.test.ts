import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import * as esm from '../src/index.js';
import { localityOf, markLocality } from '../src/internal.js';

// A program that loads both builds of @wxkit/core (an ESM program, a CommonJS store adapter or library)
// has two copies of MemoryCache and FileCache: the client's rules for a store that is this process's or
// this host's hold for either copy, and for a wrapper of the store that says where it keeps its entries.
const cjs = createRequire(import.meta.url)('../dist/index.cjs') as typeof esm;
let mock: MockWeChat;
let dir: string;
beforeAll(async () => {
  mock = await startMockWeChat();
  dir = mkdtempSync(join(tmpdir(), 'wxkit-locality-'));
});
afterAll(async () => {
  await mock.close();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * A token a process of this host kept in the host's fallback directory `fallbackDir` for the next lock
 * holder (the shared store refused to hold it): what a client on a store of this process's never takes.
 */
async function keptInFallback(fallbackDir: string) {
  const app = mock.createApp();
  const store = new esm.MemoryCache();
  const writer = new esm.OfficialAccount({ ...app, baseUrl: mock.url, tokenEndpoint: 'classic', cache: store, fallbackDir: false, logger: false });
  const kept = await writer.accessToken.getToken();
  const key = writer.accessToken.cacheKey;
  // The host's fallback names its files by the hash of each key (a profile's key may hold the secret).
  const hashed = (name: string) => createHash('sha256').update(name).digest('hex');
  const fallback = new esm.FileCache({ dir: fallbackDir });
  await fallback.set(hashed(key), (await store.get(key))!, 300);
  await fallback.set(hashed(`${key}:kept`), kept, 300);
  await writer.close();
  return { app, kept };
}

describe('a MemoryCache of either build of @wxkit/core', () => {
  for (const [build, MemoryCache] of [
    ['ESM', esm.MemoryCache],
    ['CJS', cjs.MemoryCache],
  ] as const) {
    it(`(${build}) is this process's store: a token kept in the host's fallback directory is not taken, the client fetches its own`, async () => {
      const fallbackDir = join(dir, `fallback-${build}`);
      const { app, kept } = await keptInFallback(fallbackDir);
      expect(mock.counters(app.appId).tokenRequests).toBe(1);
      const client = new esm.OfficialAccount({ ...app, baseUrl: mock.url, tokenEndpoint: 'classic', cache: new MemoryCache(), fallbackDir, logger: false });
      try {
        const token = await client.accessToken.getToken();
        expect(token).not.toBe(kept);
        expect(mock.counters(app.appId).tokenRequests).toBe(2);
      } finally {
        await client.close();
      }
    });
  }
});

describe('where a store keeps its entries', () => {
  it('is said by MemoryCache and FileCache of either build, and carried by a wrapper branded with it', () => {
    expect(localityOf(new cjs.MemoryCache())).toEqual({ scope: 'process' });
    expect(localityOf(new cjs.FileCache({ dir }))).toEqual({ scope: 'host', dir });
    expect(localityOf(new esm.FileCache({ dir }))).toEqual({ scope: 'host', dir });
    const wrapper = { get: async () => undefined, set: async () => undefined, delete: async () => undefined };
    expect(localityOf(wrapper)).toBeUndefined();
    markLocality(wrapper, { scope: 'host', dir });
    expect(localityOf(wrapper)).toEqual({ scope: 'host', dir });
    // Not enumerable: a store's own fields (JSON.stringify, a spread) do not carry it.
    expect(Object.keys(wrapper)).toEqual(['get', 'set', 'delete']);
    expect(localityOf({ [Symbol.for('wxkit.cache.locality')]: { scope: 'host' } })).toBeUndefined();
  });
});
