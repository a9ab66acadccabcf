import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Keyv from 'keyv';
import KeyvRedis from '@keyv/redis';
import KeyvPostgres from '@keyv/postgres';
import { redisCli, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { describeTokenCache } from '@wxkit/testing/suite';
import { OfficialAccount } from '@wxkit/core';
import { KeyvCache } from '../src/index.js';

// "Any Keyv store" shown on two real ones: @keyv/redis on a redis-server of our own, and @keyv/postgres
// on the machine's PostgreSQL (127.0.0.1:5432, database test, trust auth), in a table of this run.
const POSTGRES = 'postgresql://postgres@127.0.0.1:5432/test';
const table = `wxkit_keyv_${randomBytes(4).toString('hex')}`;
const psql = (sql: string) => spawnSync('psql', [POSTGRES, '-Atc', sql], { encoding: 'utf8' });

let redis: StoreServer;
let mock: MockWeChat;
const stores: { disconnect(): Promise<void> }[] = [];
beforeAll(async () => {
  [redis, mock] = await Promise.all([startRedis(), startMockWeChat()]);
});
afterAll(async () => {
  await Promise.all(stores.map((store) => store.disconnect().catch(() => undefined)));
  psql(`DROP TABLE IF EXISTS public.${table}`);
  await Promise.all([redis?.stop(), mock?.close()]);
});

function redisStore(): KeyvRedis<string> {
  const store = new KeyvRedis<string>(redis.url);
  stores.push(store);
  return store;
}
function postgresStore(): KeyvPostgres {
  const store = new KeyvPostgres({ uri: POSTGRES, table });
  stores.push(store);
  return store;
}

describeTokenCache('KeyvCache on @keyv/redis', {
  create: () => new KeyvCache(redisStore()),
  supports: { add: false, deleteIfEquals: false },
});

describeTokenCache('KeyvCache on @keyv/postgres', {
  create: () => new KeyvCache(postgresStore()),
  // @keyv/postgres has no TTL of its own: entries stay until overwritten.
  supports: { add: false, deleteIfEquals: false, ttl: false },
});

describe('KeyvCache', () => {
  it('writes raw bytes through @keyv/redis: no keyv: namespace, no JSON envelope', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new KeyvCache(redisStore()), logger: false });
    const token = await app.accessToken.getToken();
    const raw = redisCli(redis.port, 'GET', `wechat:stable_access_token:${appId}`);
    expect(raw).toMatch(new RegExp(`^\\{"access_token":"${token}","expires_at":\\d{10},"fetched_at":\\d{10},"fetched_by":"[^"]+:${process.pid}"\\}$`));
    expect(Number(redisCli(redis.port, 'TTL', `wechat:stable_access_token:${appId}`))).toBeGreaterThan(6800);
    expect(redisCli(redis.port, 'KEYS', 'keyv*')).toBe('');
    await app.close();
  });

  it('writes raw bytes through @keyv/postgres, readable with plain SQL', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new KeyvCache(postgresStore()), logger: false });
    const token = await app.accessToken.getToken();
    const row = psql(`SELECT value FROM public.${table} WHERE key = 'wechat:stable_access_token:${appId}'`);
    expect(row.stdout.trim()).toMatch(new RegExp(`^\\{"access_token":"${token}","expires_at":\\d{10},"fetched_at":\\d{10},"fetched_by":"[^"]+:${process.pid}"\\}$`));
    await app.close();
  });

  it('on a store without TTL, an entry past its time is refreshed by wxkit, not served', async () => {
    const { appId, secret } = mock.createApp();
    const store = postgresStore();
    const now = Math.floor(Date.now() / 1000);
    // Fetched 7000 s ago with 7200 s of life: its store TTL (6900 s) has passed, though the token has not.
    await store.set(`wechat:stable_access_token:${appId}`, `{"access_token":"OLD","expires_at":${now + 200},"fetched_at":${now - 7000}}`);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new KeyvCache(store), logger: false });
    expect(await app.accessToken.getToken()).not.toBe('OLD');
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it('accepts a Keyv instance without a namespace, and explains one with', () => {
    expect(() => new KeyvCache(new Keyv(redisStore(), { namespace: undefined }))).not.toThrow();
    expect(() => new KeyvCache(new Keyv(redisStore()))).toThrow(/without a namespace.*"keyv"/);
    expect(() => new KeyvCache({} as never)).toThrow(/KeyvCache needs a Keyv instance or a Keyv store/);
  });

  it('a Keyv instance given to setCache() gets an error that says how to wrap it', () => {
    const app = new OfficialAccount({ appId: 'wx4202f388888ab123', secret: 's', logger: false });
    expect(() => app.setCache(new Keyv(redisStore()) as never)).toThrow(/new KeyvCache\(keyv\)` from @wxkit\/keyv/);
  });

  it('a failed read is a CacheError, never a miss, even on a store that swallows errors', async () => {
    const store = new KeyvRedis<string>({ url: 'redis://127.0.0.1:1', socket: { connectTimeout: 200, reconnectStrategy: false } }, { connectionTimeout: 300 });
    store.on('error', () => undefined);
    expect(store.throwOnErrors).toBe(false);
    const cache = new KeyvCache(store);
    await expect(cache.get('wechat:x')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    await store.disconnect().catch(() => undefined);
  });
});
