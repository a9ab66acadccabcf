import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, startRedis, redisCli, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { OfficialAccount, wxJava, type Logger } from '@wxkit/core';
import { RedisCache } from '../src/index.js';

// WxJava's Jedis config (JedisWxRedisOps → JedisDistributedLock → jedis-lock 1.0.0) locks with
// `SETNX lock <System.currentTimeMillis() + expireMsecs + 1>` and, on a held lock, reads the value back
// with `Long.parseLong(value) < System.currentTimeMillis()` to take over an expired one (GETSET). A
// value it cannot parse throws NumberFormatException in the Java process. wxkit must write a value Java
// parses, and respect Java's.

/** Java's Long.parseLong: an optional sign, decimal digits, within a signed 64-bit integer; else it throws. */
function javaParseLong(value: string): bigint {
  if (!/^[+-]?\d+$/.test(value)) throw new Error(`NumberFormatException: For input string: "${value}"`);
  const n = BigInt(value);
  if (n < -(2n ** 63n) || n > 2n ** 63n - 1n) throw new Error(`NumberFormatException: For input string: "${value}"`);
  return n;
}

let redis: StoreServer;
let mock: MockWeChat;
beforeAll(async () => {
  [redis, mock] = await Promise.all([startRedis(), startMockWeChat()]);
});
afterAll(async () => {
  await Promise.all([redis?.stop(), mock?.close()]);
});

const setCalls = () => Number(/cmdstat_set:calls=(\d+)/.exec(redisCli(redis.port, 'INFO', 'commandstats'))?.[1] ?? 0);
async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i += 1) {
    if (check()) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}
function recording(): Logger & { events: string[] } {
  const events: string[] = [];
  const keep = (fields: unknown) => void events.push(String((fields as { event?: string }).event));
  return { events, debug: keep, info: keep, warn: keep, error: keep } as Logger & { events: string[] };
}

describe('WxJava Jedis lock dialect (jedis-lock 1.0.0) on a real redis-server', () => {
  it('the lock wxkit holds is a timestamp Java parses with Long.parseLong, in the future by about the lease; released after', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new RedisCache(redis.url);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: wxJava({ redisOps: 'jedis' }), logger: false });
    const lockKey = `wx:lock:${appId}:accessTokenLock`;
    mock.setLatency(300);
    try {
      const before = Date.now();
      const pending = app.accessToken.getToken();
      let value = '';
      await until(() => (value = redisCli(redis.port, 'GET', lockKey)) !== '', 'the lock');
      // What JedisLock.acquire() does with it on the Java side.
      const expiry = javaParseLong(value);
      expect(value).toMatch(/^\d{13}$/);
      expect(expiry > BigInt(before)).toBe(true);
      expect(expiry <= BigInt(Date.now() + 35_000 + 1)).toBe(true);
      // Not expired for Java: a Java process keeps waiting instead of taking it over.
      expect(expiry < BigInt(Date.now())).toBe(false);
      const token = await pending;
      expect(redisCli(redis.port, 'GET', `wx:access_token:${appId}`)).toBe(token);
      await app.close();
      expect(redisCli(redis.port, 'EXISTS', lockKey)).toBe('0');
    } finally {
      mock.setLatency(0);
      await cache.close();
    }
  });

  it('a jedis-lock held by the Java peer (no TTL, expiry ahead) is respected: wxkit waits and takes the token Java writes, no fetch', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new RedisCache(redis.url);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: wxJava({ redisOps: 'jedis' }), logger: false });
    const lockKey = `wx:lock:${appId}:accessTokenLock`;
    try {
      // JedisLock: SETNX, no expiry, the value its own expiry 60 s ahead.
      const javaValue = String(Date.now() + 60_000 + 1);
      redisCli(redis.port, 'SET', lockKey, javaValue);
      const calls = setCalls();
      const pending = app.accessToken.getToken();
      // wxkit's SET NX met the lock (and found it not expired).
      await until(() => setCalls() > calls, 'wxkit to try the lock');
      expect(redisCli(redis.port, 'GET', lockKey)).toBe(javaValue);
      // The Java side fetched: it writes the token (psetex) and releases (DEL).
      redisCli(redis.port, 'PSETEX', `wx:access_token:${appId}`, '7200000', 'TOKEN_FROM_JAVA');
      redisCli(redis.port, 'DEL', lockKey);
      expect(await pending).toBe('TOKEN_FROM_JAVA');
      expect(mock.counters(appId).tokenRequests).toBe(0);
    } finally {
      await cache.close();
    }
  });

  it("a jedis-lock whose expiry passed (a Java process died holding it, no TTL) is taken over once, as jedis-lock does; Java's own later value is never deleted by wxkit", async () => {
    const { appId, secret } = mock.createApp();
    const cache = new RedisCache(redis.url);
    const logger = recording();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: wxJava({ redisOps: 'jedis' }), logger });
    const lockKey = `wx:lock:${appId}:accessTokenLock`;
    try {
      redisCli(redis.port, 'SET', lockKey, String(Date.now() - 1_000));
      mock.setLatency(300);
      const pending = app.accessToken.getToken();
      let ours = '';
      await until(() => /^\d{13}$/.test((ours = redisCli(redis.port, 'GET', lockKey))) && javaParseLong(ours) > BigInt(Date.now()), 'the takeover');
      // While wxkit fetches, a Java process takes the lock over (say wxkit's lease had passed): GETSET.
      const javaValue = String(Date.now() + 60_001);
      redisCli(redis.port, 'GETSET', lockKey, javaValue);
      await pending;
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(logger.events).toContain('lock.taken_over');
      // wxkit released by compare-and-delete on the digits it wrote: Java's lock stays.
      expect(redisCli(redis.port, 'GET', lockKey)).toBe(javaValue);
    } finally {
      mock.setLatency(0);
      await cache.close();
    }
  });

  it('the RedisTemplate dialect stays an owner string with a PX lease, and Redisson keeps its lock key out of reach', async () => {
    const { appId, secret } = mock.createApp();
    expect(wxJava().lockKey(`wx:access_token:${appId}`)).toBe(`wx:lock:${appId}:accessTokenLock`);
    expect(wxJava().lockValue).toBe('owner');
    expect(wxJava({ redisOps: 'jedis' }).lockValue).toBe('expiry-ms');
    // Redisson's lock is a hash (HINCRBY, pub/sub): a string there would make Java's Lua fail with WRONGTYPE.
    expect(wxJava({ redisOps: 'redisson' }).lockKey(`wx:access_token:${appId}`)).toBe(`wx:access_token:${appId}:lock`);
    const cache = new RedisCache(redis.url);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: wxJava({ redisOps: 'redisson' }), logger: false });
    try {
      redisCli(redis.port, 'HSET', `wx:lock:${appId}:accessTokenLock`, 'a5f1-uuid:1', '1');
      await app.accessToken.getToken();
      expect(redisCli(redis.port, 'TYPE', `wx:lock:${appId}:accessTokenLock`)).toBe('hash');
      expect(redisCli(redis.port, 'HGET', `wx:lock:${appId}:accessTokenLock`, 'a5f1-uuid:1')).toBe('1');
    } finally {
      await cache.close();
    }
  });
});
