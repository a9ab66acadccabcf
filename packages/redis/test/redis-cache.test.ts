import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from '@keyv/redis';
import { startMockWeChat, startRedis, redisCli, redisGetBytes, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { badWriteRefusals, describeTokenCache } from '@wxkit/testing/suite';
import { OfficialAccount } from '@wxkit/core';
import { RedisCache } from '../src/index.js';

let redis: StoreServer;
// The conformance suite's own server: its outage check stops and restarts it, which the other tests
// here must not see.
let conformance: StoreServer;
let mock: MockWeChat;
beforeAll(async () => {
  [redis, conformance, mock] = await Promise.all([startRedis(), startRedis(), startMockWeChat()]);
});
afterAll(async () => {
  await Promise.all([redis?.stop(), conformance?.stop(), mock?.close()]);
});

const built = new URL('../dist/index.js', import.meta.url).href;

describeTokenCache('RedisCache', {
  create: () => new RedisCache(conformance.url),
  shared: () => ({ module: built, export: 'RedisCache', args: [conformance.url] }),
  supports: { ttlMs: true, compareAndSet: true, watch: true },
  outage: { stop: () => conformance.stop(), start: () => conformance.start() },
  rawBytes: async (key) => redisGetBytes(conformance.port, key),
});

describe('RedisCache on a real redis-server', () => {
  it('stores raw bytes: redis-cli GET prints exactly the documented value, with the TTL rule', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new RedisCache(redis.url);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const token = await app.accessToken.getToken();
    const key = `wechat:stable_access_token:${appId}`;
    const raw = redisCli(redis.port, 'GET', key);
    expect(raw).toMatch(new RegExp(`^\\{"access_token":"${token}","expires_at":\\d{10},"fetched_at":\\d{10},"fetched_by":"[^"]+:${process.pid}"\\}$`));
    const { expires_at, fetched_at } = JSON.parse(raw) as { expires_at: number; fetched_at: number };
    expect(expires_at - fetched_at).toBe(7200);
    const ttl = Number(redisCli(redis.port, 'TTL', key));
    expect(ttl).toBeGreaterThan(6890);
    expect(ttl).toBeLessThanOrEqual(6900);
    // The lock's release is not waited for by getToken(); close() waits for it, before the store goes.
    await app.close();
    expect(redisCli(redis.port, 'EXISTS', `${key}:lock`)).toBe('0');
    await cache.close();
  });

  it('uses a value another program wrote with redis-cli, without an upstream fetch', async () => {
    const { appId, secret } = mock.createApp();
    const now = Math.floor(Date.now() / 1000);
    const value = `{"access_token":"FROM_REDIS_CLI","expires_at":${now + 7000},"fetched_at":${now - 200}}`;
    redisCli(redis.port, 'SET', `wechat:access_token:${appId}`, value, 'EX', '6700');
    const cache = new RedisCache(redis.url);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', logger: false });
    expect(await app.accessToken.getToken()).toBe('FROM_REDIS_CLI');
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await cache.close();
  });

  it('holds the refresh lock as {key}:lock with the owner and a lease, and releases it', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new RedisCache(redis.url);
    // Looks without blocking the process (redis-cli is a synchronous spawn: on a busy machine one could
    // outlast the fetch, whose answer would then be written and the lock released before the next look).
    const observer = new RedisCache(redis.url);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    mock.setLatency(300);
    try {
      const pending = app.accessToken.getToken();
      const lockKey = `wechat:stable_access_token:${appId}:lock`;
      let owner = '';
      for (let i = 0; i < 100 && !owner; i += 1) {
        owner = (await observer.get(lockKey)) ?? '';
        if (!owner) await new Promise((resolve) => setTimeout(resolve, 10));
      }
      // Held while the fetch waits for WeChat: redis-cli's spawn below blocks this process, and with it
      // the holder's release.
      expect(owner).toMatch(/^.+:\d+:[0-9a-f]{12}$/);
      const pttl = Number(redisCli(redis.port, 'PTTL', lockKey));
      expect(pttl).toBeGreaterThan(0);
      // The lease is the critical section: the HTTP call's wait for a connection and its exchange
      // (10 s each) + 7 store calls × 2 s + 1 s.
      expect(pttl).toBeLessThanOrEqual(35_000);
      await pending;
      await app.close();
      expect(redisCli(redis.port, 'EXISTS', lockKey)).toBe('0');
    } finally {
      mock.setLatency(0);
      await cache.close();
      await observer.close();
    }
  });

  it('connects with an ACL user, a password and a database number', async () => {
    const acl = await startRedis({ args: ['--user', 'default', 'off', '--user', 'wxkit', 'on', '>s3cr3t-pass', '~wechat:*', '+@all'] });
    try {
      const cache = new RedisCache(`redis://wxkit:s3cr3t-pass@127.0.0.1:${acl.port}/3`);
      await cache.set('wechat:acl-test', 'v', 60);
      expect(await cache.get('wechat:acl-test')).toBe('v');
      expect(redisCli(acl.port, '--user', 'wxkit', '--pass', 's3cr3t-pass', '-n', '3', 'GET', 'wechat:acl-test')).toBe('v');
      await cache.close();

      const wrong = new RedisCache({ url: `redis://wxkit:not-the-pass@127.0.0.1:${acl.port}/3`, connectTimeoutMs: 500 });
      const error = await wrong.get('wechat:x').then(
        () => undefined,
        (e: unknown) => e as Error & { code: string },
      );
      expect(error?.code).toBe('ERR_WXKIT_CACHE');
      expect(error?.message).toContain(`redis://wxkit:***@127.0.0.1:${acl.port}/3`);
      expect(JSON.stringify({ message: error?.message, stack: error?.stack })).not.toContain('not-the-pass');
      await wrong.close();
    } finally {
      await acl.stop();
    }
  });

  it('speaks TLS on rediss://, trusting the CA it is given and no other', async () => {
    const tls = await startRedis({ tls: true });
    try {
      expect(tls.url).toMatch(/^rediss:\/\//);
      const cache = new RedisCache({ url: tls.url, clientOptions: { socket: { tls: true, ca: tls.ca } } });
      await cache.set('wechat:tls-test', 'over tls', 60);
      expect(await cache.get('wechat:tls-test')).toBe('over tls');
      await cache.close();
      const untrusting = new RedisCache({ url: tls.url, connectTimeoutMs: 500 });
      await expect(untrusting.get('wechat:tls-test')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
      await untrusting.close();
    } finally {
      await tls.stop();
    }
  });

  it('compareAndSet and deleteIfEquals load their scripts again after SCRIPT FLUSH (NOSCRIPT)', async () => {
    const cache = new RedisCache(redis.url);
    try {
      const key = `wechat:script-flush:${Date.now()}`;
      await cache.set(key, 'one', 60);
      for (const expected of ['one', 'two']) {
        redisCli(redis.port, 'SCRIPT', 'FLUSH');
        expect(await cache.compareAndSet(key, expected, expected === 'one' ? 'two' : 'three', 60)).toBe(true);
      }
      expect(redisCli(redis.port, 'GET', key)).toBe('three');
      redisCli(redis.port, 'SCRIPT', 'FLUSH');
      expect(await cache.deleteIfEquals(key, 'three')).toBe(true);
      expect(redisCli(redis.port, 'EXISTS', key)).toBe('0');
    } finally {
      await cache.close();
    }
  });

  it("a token key holding a hash (another program's) is a foreign entry: left as it is, one fetch, and the store stays up for every other key", async () => {
    const cache = new RedisCache(redis.url);
    const events: string[] = [];
    const logger = { debug() {}, info() {}, warn: (fields: unknown) => void events.push(String((fields as { event?: string }).event)), error() {} };
    const one = mock.createApp();
    const other = mock.createApp();
    const key = `wechat:stable_access_token:${one.appId}`;
    redisCli(redis.port, 'HSET', key, 'access_token', 'NOT_OURS');
    try {
      // The adapter: WRONGTYPE is reason `type`, for add too (no lock can be held under a hash).
      await expect(cache.get(key)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'type' });
      await expect(cache.compareAndSet(key, 'a', 'b', 60)).rejects.toMatchObject({ reason: 'type', message: expect.stringMatching(/another kind of value/) });
      await expect(cache.deleteIfEquals(key, 'a')).rejects.toMatchObject({ reason: 'type' });
      await expect(cache.add(key, 'a', 60)).rejects.toMatchObject({ reason: 'type' });
      // The protocol: a miss that is never replaced, the token fetched once and kept in memory.
      const app = new OfficialAccount({ ...one, baseUrl: mock.url, cache, logger, memoMs: 0 });
      const token = await app.accessToken.getToken();
      for (let i = 0; i < 3; i += 1) expect(await app.accessToken.getToken()).toBe(token);
      expect(mock.counters(one.appId).tokenRequests).toBe(1);
      expect(await app.accessToken.forceRefresh()).not.toBe(token);
      expect(redisCli(redis.port, 'HGET', key, 'access_token')).toBe('NOT_OURS');
      // Another account's client on the same store reads and writes it: no outage was declared.
      const neighbour = new OfficialAccount({ ...other, baseUrl: mock.url, cache, logger });
      const theirs = await neighbour.accessToken.getToken();
      expect(JSON.parse(redisCli(redis.port, 'GET', `wechat:stable_access_token:${other.appId}`)).access_token).toBe(theirs);
      expect(events.filter((event) => event === 'cache.foreign_entry')).toHaveLength(1);
      expect(events).not.toContain('cache.unavailable');
      await Promise.all([app.close(), neighbour.close()]);
    } finally {
      await cache.close();
    }
  });

  it("a refresh lock key holding a hash (another program's) holds no lock: the token is fetched without the shared lock, once, and the hash is left as it is", async () => {
    const cache = new RedisCache(redis.url);
    const events: string[] = [];
    const logger = { debug() {}, info() {}, warn: (fields: unknown) => void events.push(String((fields as { event?: string }).event)), error() {} };
    const { appId, secret } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    redisCli(redis.port, 'HSET', `${key}:lock`, 'owner', 'another-program');
    try {
      // The adapter: add on a hash is reason `type`, as every other call on it, not a lock taken for ever.
      await expect(cache.add(`${key}:lock`, 'a', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'type' });
      // The protocol: a lock wait far shorter than the default, which a process waiting on the hash would spend and fail.
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, memoMs: 0, lockWaitMs: 1_000 });
      const token = await app.accessToken.getToken();
      expect(JSON.parse(redisCli(redis.port, 'GET', key)).access_token).toBe(token);
      const forced = await app.accessToken.forceRefresh();
      expect(forced).not.toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(2);
      expect(redisCli(redis.port, 'HGET', `${key}:lock`, 'owner')).toBe('another-program');
      expect(events.filter((event) => event === 'cache.foreign_entry')).toHaveLength(1);
      expect(events).not.toContain('cache.unavailable');
      await app.close();
    } finally {
      await cache.close();
    }
  });

  it('a refresh lock left without expiry (SET by hand, or PERSIST) is noted when a wait runs out on it, and taken over 10 minutes later: one fetch, then released', async () => {
    const cache = new RedisCache(redis.url);
    const events: { event?: string; reason?: string }[] = [];
    const logger = { debug() {}, info() {}, warn: (fields: unknown) => void events.push(fields as { event?: string }), error() {} };
    const { appId, secret } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    redisCli(redis.port, 'SET', `${key}:lock`, 'left-by-hand');
    expect(redisCli(redis.port, 'PTTL', `${key}:lock`)).toBe('-1');
    let now = Date.now();
    try {
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, lockWaitMs: 500, now: () => now });
      await expect(app.accessToken.getToken()).rejects.toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN', message: expect.stringContaining('keeps without expiry') });
      expect(mock.counters(appId).tokenRequests).toBe(0);
      now += 10 * 60_000;
      const token = await app.accessToken.getToken();
      expect(JSON.parse(redisCli(redis.port, 'GET', key)).access_token).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(events.filter((fields) => fields.event === 'lock.taken_over')).toEqual([expect.objectContaining({ reason: 'no_expiry' })]);
      expect(redisCli(redis.port, 'EXISTS', `${key}:lock`)).toBe('0');
      await app.close();
    } finally {
      await cache.close();
    }
  });

  it('a failure marker key holding a hash reads as no marker: the token is fetched once, and that success deletes the key', async () => {
    const cache = new RedisCache(redis.url);
    const { appId, secret } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    redisCli(redis.port, 'HSET', `${key}:failed`, 'retry_at', '9999999999999');
    try {
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
      const [token, again] = await Promise.all([app.accessToken.getToken(), app.accessToken.getToken()]);
      expect(again).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(JSON.parse(redisCli(redis.port, 'GET', key)).access_token).toBe(token);
      expect(redisCli(redis.port, 'EXISTS', `${key}:failed`)).toBe('0');
      await app.close();
    } finally {
      await cache.close();
    }
  });

  it('uses an existing client and leaves it open on close()', async () => {
    const client = createClient({ url: redis.url });
    await client.connect();
    const cache = new RedisCache({ client });
    await cache.set('wechat:shared-client', 'v', 60);
    expect(await cache.get('wechat:shared-client')).toBe('v');
    await cache.close();
    expect(await client.get('wechat:shared-client')).toBe('v');
    await client.close();
  });

  it("a caller's client that the caller closed is not opened again by a later call: the call fails, and nothing is left open", async () => {
    for (const end of ['close', 'quit', 'destroy'] as const) {
      const client = createClient({ url: redis.url });
      await client.connect();
      const cache = new RedisCache({ client });
      await cache.set('wechat:closed-client', 'v', 60);
      // The application shuts its Redis client down first; a call of wxkit's still comes after it (a
      // refresh ahead, a request finishing). Opened again, the client would keep the process alive, as
      // neither wxkit (a caller's client is never ended) nor the caller (who closed it) would end it.
      if (end === 'destroy') client.destroy();
      else await client[end]();
      await expect(cache.get('wechat:closed-client')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'closed' });
      expect({ end, open: client.isOpen }).toEqual({ end, open: false });
      await cache.close();
      // Connected again by the caller, it serves wxkit again.
      await client.connect();
      const again = new RedisCache({ client });
      expect(await again.get('wechat:closed-client')).toBe('v');
      await again.close();
      client.destroy();
    }
  });

  it("a caller's client outlives the caches made on it: each cache's close() takes back what it listens for on the client", async () => {
    const client = createClient({ url: redis.url });
    await client.connect();
    try {
      const before = { end: client.listenerCount('end'), connect: client.listenerCount('connect') };
      // A cache per tenant, or per job, on the application's one client: made, used, closed, many times.
      for (let i = 0; i < 12; i += 1) {
        const cache = new RedisCache({ client });
        await cache.set(`wechat:listeners-${i}`, 'v', 60);
        await cache.close();
      }
      expect({ end: client.listenerCount('end'), connect: client.listenerCount('connect') }).toEqual(before);
    } finally {
      client.destroy();
    }
  });

  it('a server that is not there: ERR_WXKIT_CACHE after connectTimeoutMs, no unhandled rejection', async () => {
    const cache = new RedisCache({ url: 'redis://:pw@127.0.0.1:1/0', connectTimeoutMs: 300 });
    const calls = await Promise.allSettled([
      cache.get('k'), cache.set('k', 'v', 1), cache.add('k', 'v', 1), cache.deleteIfEquals('k', 'v'), cache.compareAndSet('k', 'v', 'w', 1),
    ]);
    for (const call of calls) {
      expect(call.status).toBe('rejected');
      expect((call as PromiseRejectedResult).reason).toMatchObject({
        code: 'ERR_WXKIT_CACHE',
        message: expect.stringContaining('redis://:***@127.0.0.1:1/0'),
      });
    }
    await cache.close();
  });

  it('a value above U+00FF or a bad TTL is refused with a RangeError before connecting, not taken for a store failure', async () => {
    const cache = new RedisCache({ url: 'redis://127.0.0.1:1/0', connectTimeoutMs: 300 });
    for (const refusal of await badWriteRefusals(cache)) expect(refusal).toBeInstanceOf(RangeError);
    await cache.close();
  });

  it('checks its options before connecting, and never echoes a password', () => {
    const error = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return e as Error & { code: string; option: string };
      }
      throw new Error('expected an error');
    };
    expect(error(() => new RedisCache('http://127.0.0.1:6379'))).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'url' });
    const bad = error(() => new RedisCache('redis://u:topsecret@host:6379/notadb'));
    expect(bad.message).toContain('redis://u:***@host:6379/notadb');
    expect(bad.message).not.toContain('topsecret');
    // A number past what SELECT parses is no database either: refused here, where the server would answer
    // every call with an error no retry mends.
    expect(error(() => new RedisCache('redis://u:topsecret@host:6379/99999999999999999999'))).toMatchObject({
      code: 'ERR_WXKIT_INVALID_OPTION',
      option: 'url',
      message: expect.stringContaining('below 2147483647 (got redis://u:***@host:6379/99999999999999999999)'),
    });
    // A password holding a character a URL gives a meaning to, not percent-encoded: the message says how
    // to write it, and shows no part of it (the URL does not parse, so no mask could find the password).
    for (const url of ['redis://:top#secret@host:6379/0', 'redis://:top/secret@host:6379', 'rediss://u:top?secret@host:6380']) {
      const unencoded = error(() => new RedisCache(url));
      expect(unencoded).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'url', message: expect.stringContaining('percent-encoded') });
      expect(unencoded.message).not.toContain('secret');
    }
    expect(error(() => new RedisCache('http://127.0.0.1:6379')).message).not.toContain('percent-encoded');
    // A query string, which node-redis does not read: ?db=3 would leave the client on database 0, and a
    // password there would be ignored. The message says where each goes, and shows no part of the query.
    for (const url of ['redis://host:6379?db=3', 'redis://u:topsecret@host:6379/0?password=topsecret']) {
      const query = error(() => new RedisCache(url));
      expect(query).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'url', message: expect.stringContaining('without a query string') });
      expect(query.message).toContain('redis://host:6379/3');
      expect(query.message).not.toContain('topsecret');
      expect(query.message).not.toContain('db=3');
    }
    expect(error(() => new RedisCache({ url: 'redis://a:1', cluster: ['redis://b:2'] })).message).toContain('exactly one of url, cluster, sentinel or client');
    expect(error(() => new RedisCache({ cluster: [] })).option).toBe('cluster');
    expect(error(() => new RedisCache({ url: 'redis://a:1', connectTimeoutMs: 0 })).option).toBe('connectTimeoutMs');
    expect(error(() => new RedisCache(42 as never)).option).toBe('options');
    expect(() => new RedisCache('rediss://user:pw@redis.example:6380/1')).not.toThrow();
    // A TLS flag contradicting the scheme, which node-redis would refuse at every connect.
    const tls = (url: string, flag: boolean) => ({ ...(url.includes(',') ? { cluster: url.split(',') } : { url }), clientOptions: { socket: { tls: flag } as never } });
    // A scheme is read as node-redis reads it, case aside (REDISS:// is TLS).
    for (const [url, flag] of [['rediss://:topsecret@host:6380/1', false], ['REDISS://:topsecret@host:6380/1', false], ['redis://:topsecret@host:6379', true], ['redis://:topsecret@a:7000,redis://:topsecret@b:7000', true]] as const) {
      expect(error(() => new RedisCache(tls(url, flag)))).toMatchObject({
        code: 'ERR_WXKIT_INVALID_OPTION',
        option: 'clientOptions',
        message: expect.stringMatching(new RegExp(`socket\\.tls must be left out, or agree with the URL.*\\(got ${flag} for rediss?://:\\*\\*\\*@`)),
      });
    }
    for (const agreeing of ['rediss://user:pw@redis.example:6380/1', 'REDISS://user:pw@redis.example:6380/1']) expect(() => new RedisCache(tls(agreeing, true))).not.toThrow();
  });
});
