import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, wxJava, type TokenCache } from '../src/index.js';
import { recordingLogger } from './helpers.js';

// jedis-lock (WxJava's Jedis config) writes its lock without a TTL and takes over one whose expiry has
// passed. wxkit does the same only with the store's own atomic compareAndSet: a read-then-write takeover
// could let two takers both win.
let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

/** `cache` without its compareAndSet: a store that can add atomically but not compare-and-set. */
function withoutCompareAndSet(cache: MemoryCache): TokenCache {
  return {
    get: cache.get.bind(cache),
    set: cache.set.bind(cache),
    delete: cache.delete.bind(cache),
    add: cache.add.bind(cache),
    deleteIfEquals: cache.deleteIfEquals.bind(cache),
    ttlMs: cache.ttlMs.bind(cache),
  };
}

async function expiredJavaLock(atomic: boolean) {
  const { appId, secret } = mock.createApp();
  const memory = new MemoryCache();
  const lockKey = `wx:lock:${appId}:accessTokenLock`;
  // A Java process died holding the lock: its expiry passed a second ago.
  const javaValue = String(Date.now() - 1_000);
  await memory.set(lockKey, javaValue, 3_600);
  const logger = recordingLogger();
  const cache = atomic ? memory : withoutCompareAndSet(memory);
  const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: wxJava({ redisOps: 'jedis' }), lockWaitMs: 300, logger });
  const result = await app.accessToken.getToken().then(
    (token) => ({ token, error: undefined }),
    (error: unknown) => ({ token: undefined, error }),
  );
  await app.close();
  const events = logger.lines.map((line) => (line.fields as { event: string }).event);
  return { appId, result, events, lock: await memory.get(lockKey), javaValue };
}

describe('taking over an expired jedis-lock', () => {
  it('is refused on a store without an atomic compareAndSet: the lock stays, WeChat is not asked, one warning', async () => {
    const { appId, result, events, lock, javaValue } = await expiredJavaLock(false);
    expect(result.error).toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
    expect(lock).toBe(javaValue);
    expect(events.filter((event) => event === 'lock.takeover_refused')).toHaveLength(1);
    expect(events).not.toContain('lock.taken_over');
    expect(mock.counters(appId).classicTokenRequests).toBe(0);
  });

  it('is done with an atomic compareAndSet, as jedis-lock does', async () => {
    const { appId, result, events } = await expiredJavaLock(true);
    expect(mock.isTokenValid(appId, result.token!)).toBe(true);
    expect(events).toContain('lock.taken_over');
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
  });
});

describe('a jedis-lock whose expiry has not passed', () => {
  it('is not taken over: the Java holder keeps it, and its token is taken when it writes', async () => {
    const { appId, secret } = mock.createApp();
    const memory = new MemoryCache();
    const lockKey = `wx:lock:${appId}:accessTokenLock`;
    // A live Java process holds the lock for another minute.
    const javaValue = String(Date.now() + 60_000);
    await memory.set(lockKey, javaValue, 3_600);
    const logger = recordingLogger();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: memory, schema: wxJava({ redisOps: 'jedis' }), logger });
    // The holder writes its token as wxkit finds the lock held.
    const holders = mock.issueClassicToken(appId);
    const add = memory.add.bind(memory);
    memory.add = async (key, value, ttl) => {
      const added = await add(key, value, ttl);
      if (key === lockKey && !added) await memory.set(app.accessToken.cacheKey, holders, 7000);
      return added;
    };
    expect(await app.accessToken.getToken()).toBe(holders);
    await app.close();
    expect(await memory.get(lockKey)).toBe(javaValue);
    expect(logger.lines.map((line) => (line.fields as { event: string }).event)).not.toContain('lock.taken_over');
    expect(mock.counters(appId).classicTokenRequests).toBe(0);
  });
});
