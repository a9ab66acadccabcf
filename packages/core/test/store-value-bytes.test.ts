import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { CacheError, FileCache, MemoryCache, OfficialAccount, nativeSchema, type KeySchema, type LogFields } from '../src/index.js';
import { Log } from '../src/logger.js';
import { GuardedStore } from '../src/store.js';
import { rejection } from './helpers.js';

// Store values are binary strings (src/bytes.ts). A value with a character above U+00FF is a bug in what
// encoded it: it must not be reported as the store being down (the breaker is shared by every client of
// the store), and a custom schema's text is stored as its UTF-8 bytes, as the native codec stores its own.
let mock: MockWeChat;
let dir: string;
beforeAll(async () => {
  mock = await startMockWeChat();
  dir = mkdtempSync(join(tmpdir(), 'wxkit-bytes-'));
});
afterAll(async () => {
  await mock.close();
  rmSync(dir, { recursive: true, force: true });
});

function recording() {
  const lines: LogFields[] = [];
  const logger = { warn: (f: LogFields) => lines.push(f), info: (f: LogFields) => lines.push(f), error: (f: LogFields) => lines.push(f) };
  return { lines, logger };
}

describe('a custom KeySchema whose encode returns text', () => {
  it('has its entry stored as UTF-8 bytes and shared, and the store is not taken for down', async () => {
    const base = nativeSchema();
    const schema: KeySchema = { ...base, name: 'custom', encode: (...args) => base.encode(...args).replace('}', ',"team":"订单"}') };
    const { lines, logger } = recording();
    const { appId, secret } = mock.createApp();
    const writer = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new FileCache({ dir }), schema, logger });
    const token = await writer.accessToken.getToken();
    await writer.close();
    expect(lines.map((l) => l.event)).not.toContain('cache.unavailable');

    const raw = await new FileCache({ dir }).get(base.accessTokenKey({ kind: 'official_account', appId, endpoint: 'stable' }));
    expect(JSON.parse(Buffer.from(raw!, 'latin1').toString('utf8'))).toMatchObject({ access_token: token, team: '订单' });
    // Another process on the same directory takes the stored token.
    const reader = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new FileCache({ dir }), schema, logger });
    expect(await reader.accessToken.getToken()).toBe(token);
    await reader.close();
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });
});

describe('GuardedStore given a value that is no binary string', () => {
  it('rejects with CacheError reason "value", does not call the store, and leaves the breaker closed', async () => {
    const cache = new FileCache({ dir });
    let sets = 0;
    const counted = Object.assign(Object.create(cache) as FileCache, {
      set: (key: string, value: string, ttl: number) => ((sets += 1), cache.set(key, value, ttl)),
    });
    const { lines, logger } = recording();
    const store = new GuardedStore(counted, 1000, new Log(logger), 'wx-bytes');
    for (const call of [() => store.set('k', '订单', 60), () => store.add('k', '订单', 60)!, () => store.compareAndSet('k', 'a', '订单', 60)]) {
      const error = await rejection(call());
      expect(error).toBeInstanceOf(CacheError);
      expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'value' });
    }
    expect(sets).toBe(0);
    expect(store.down).toBe(false);
    expect(lines.map((l) => l.event)).not.toContain('cache.unavailable');
    // The store still takes bytes: UTF-8 as a binary string.
    await store.set('k', Buffer.from('订单').toString('latin1'), 60);
    expect(sets).toBe(1);
    store.dispose();
  });
});

describe('a store whose get() answers something other than a string', () => {
  it('null (what many Redis and Memcached clients give for a miss) is a miss: one fetch, the token stored', async () => {
    class NullMiss extends MemoryCache {
      override async get(key: string): Promise<string | undefined> {
        return (await super.get(key)) ?? (null as unknown as undefined);
      }
    }
    const { lines, logger } = recording();
    const { appId, secret } = mock.createApp();
    const cache = new NullMiss();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger });
    const token = await app.accessToken.getToken();
    expect(mock.isTokenValid(appId, token)).toBe(true);
    expect(await cache.get(app.accessToken.cacheKey)).toContain(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(lines.map((l) => l.event)).not.toContain('cache.unavailable');
    await app.close();
  });

  it('anything else fails the call as a CacheError naming what came back, never a TypeError', async () => {
    for (const answer of [42, { value: 'x' }, false]) {
      const cache = new MemoryCache();
      cache.get = async () => answer as unknown as string;
      const store = new GuardedStore(cache, 1000, new Log(false), 'wx0000000000000001');
      const error = await rejection(store.get('wechat:access_token:wx0000000000000001'));
      expect(error).toBeInstanceOf(CacheError);
      expect(error.message).toContain(`answered get wechat:access_token:wx0000000000000001 with ${typeof answer}`);
    }
    // A client on such a store serves from its fallback, with the store taken for down and said so.
    const { lines, logger } = recording();
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    cache.get = async () => 42 as unknown as string;
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, fallbackDir: false });
    expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
    expect(lines.filter((l) => l.event === 'cache.unavailable')).toHaveLength(1);
    await app.close();
  });
});

describe("a store's watch() that hands back no way to stop it", () => {
  it('is taken as no watch at all: the waiter polls at the faster pace instead of waiting for notifications', () => {
    const cache = new MemoryCache();
    cache.watch = (() => 'subscribed') as unknown as MemoryCache['watch'];
    const store = new GuardedStore(cache, 1000, new Log(false), 'wx0000000000000001');
    expect(store.watch(['k'], () => undefined)).toBeUndefined();
    // A watch that does hand one back is used.
    const watching = new GuardedStore(new MemoryCache(), 1000, new Log(false), 'wx0000000000000001');
    expect(typeof watching.watch(['k'], () => undefined)).toBe('function');
  });
});

describe('what a store\'s get() answers, checked everywhere', () => {
  it('the probe checks its answer as any get does: a store that answers garbage stays down, not down and up by turns', async () => {
    const cache = new MemoryCache();
    let gets = 0;
    cache.get = async () => ((gets += 1), 42 as unknown as string);
    const { lines, logger } = recording();
    const store = new GuardedStore(cache, 1000, new Log(logger), 'wx0000000000000001');
    expect(await rejection(store.get('wechat:access_token:wx0000000000000001'))).toBeInstanceOf(CacheError);
    // Two probes later (each a get of the key whose call failed), the store was never taken for up.
    await vi.waitFor(() => expect(gets).toBeGreaterThanOrEqual(3), { timeout: 10_000, interval: 20 });
    expect(store.down).toBe(true);
    expect(lines.map((l) => l.event)).toEqual(['cache.unavailable']);
    store.dispose();
  });

  it('a Buffer or a Uint8Array is read as the stored bytes: another client takes the token from it', async () => {
    const kinds = { Buffer: (bytes: Buffer) => bytes, Uint8Array: (bytes: Buffer) => new Uint8Array(bytes) };
    for (const [kind, wrap] of Object.entries(kinds)) {
      const { lines, logger } = recording();
      const { appId, secret } = mock.createApp();
      const cache = new MemoryCache();
      const get = cache.get.bind(cache);
      cache.get = async (key) => {
        const value = await get(key);
        return (value === undefined ? undefined : wrap(Buffer.from(value, 'latin1'))) as unknown as string;
      };
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger });
      const token = await app.accessToken.getToken();
      const other = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger });
      expect(await other.accessToken.getToken(), kind).toBe(token);
      expect(mock.counters(appId).tokenRequests, kind).toBe(1);
      expect(lines.map((l) => l.event), kind).not.toContain('cache.unavailable');
      await Promise.all([app.close(), other.close()]);
    }
  });
});
