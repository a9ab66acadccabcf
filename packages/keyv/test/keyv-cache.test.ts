import { connect, createServer, type AddressInfo } from 'node:net';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Keyv from 'keyv';
import KeyvRedis from '@keyv/redis';
import KeyvMemcache from '@keyv/memcache';
import KeyvMysql from '@keyv/mysql';
import { freePort, memcachedSet, redisCli, startMemcached, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { describeTokenCache } from '@wxkit/testing/suite';
import { OfficialAccount, type CacheError } from '@wxkit/core';
import { KeyvCache } from '../src/index.js';

// "Any Keyv store" shown on @keyv/redis, on a redis-server of our own: a store KeyvCache has no SQL
// for, so no atomic operations. The SQL stores have test files of their own.

let redis: StoreServer;
let mock: MockWeChat;
const stores: { disconnect(): Promise<void> }[] = [];
beforeAll(async () => {
  [redis, mock] = await Promise.all([startRedis(), startMockWeChat()]);
});
afterAll(async () => {
  await Promise.all(stores.map((store) => store.disconnect().catch(() => undefined)));
  await Promise.all([redis?.stop(), mock?.close()]);
});

function redisStore(): KeyvRedis<string> {
  const store = new KeyvRedis<string>(redis.url);
  stores.push(store);
  return store;
}

describeTokenCache('KeyvCache on @keyv/redis', {
  create: () => new KeyvCache(redisStore()),
  supports: { add: false, deleteIfEquals: false },
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

  it('keeps no atomic operations on a store it has no SQL for, however it looks', () => {
    // A look-alike of a SQL adapter, of a dialect KeyvCache does not know.
    const lookalike = Object.assign(new Map<string, string>(), { opts: { dialect: 'mongodb', table: 'keyv' }, query: async () => [] });
    for (const store of [redisStore(), new Map<string, string>(), lookalike]) {
      const cache = new KeyvCache(store as never);
      expect([typeof cache.add, typeof cache.deleteIfEquals, typeof cache.compareAndSet]).toEqual(['undefined', 'undefined', 'undefined']);
    }
  });

  it("a driver's socket error gives the CacheError its reason: refused, unreachable, timeout, disconnected", async () => {
    const reasons: Record<string, string | undefined> = { ECONNREFUSED: 'refused', ENOTFOUND: 'unreachable', ETIMEDOUT: 'timeout', ECONNRESET: 'disconnected', EACCES: undefined };
    for (const [code, reason] of Object.entries(reasons)) {
      // Any Keyv store whose driver fails with Node's socket error codes (as pg and mysql2 do).
      const failing = Object.assign(new Map<string, string>(), { get: async () => Promise.reject(Object.assign(new Error(`connect ${code}`), { code })) });
      await expect(new KeyvCache(failing as never).get('wechat:k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason, cause: { code } });
    }
  });

  it("a store's TimeoutError (the DOMException of AbortSignal.timeout()) has reason timeout; an AbortError none", async () => {
    for (const [name, reason] of [['TimeoutError', 'timeout'], ['AbortError', undefined]] as const) {
      const failing = Object.assign(new Map<string, string>(), { get: async () => Promise.reject(new DOMException('aborted', name)) });
      await expect(new KeyvCache(failing as never).get('wechat:k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason, cause: { name } });
    }
  });

  it('a failure of the moment is never taken for a SQL adapter\'s kept start failure: a new error each time, or none', async () => {
    // Look-alikes of a SQL adapter whose statements fail: PostgreSQL down at boot (pg makes a new error
    // for each), and a driver that rejects without an error.
    const failing = (dialect: string, reject: () => unknown) =>
      Object.assign(new Map<string, string>(), { opts: { dialect, table: 'keyv' }, query: async () => Promise.reject(reject()) });
    const fresh = () => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
    for (const store of [failing('postgres', fresh), failing('sqlite', () => undefined)]) {
      const cache = new KeyvCache(store as never);
      for (let call = 0; call < 3; call += 1) {
        const error = await cache.get('k').catch((caught: unknown) => caught);
        expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE' });
        expect((error as Error).message).not.toMatch(/does not try again/);
      }
    }
  });

  it('accepts a Keyv instance without a namespace, and explains one with', () => {
    expect(() => new KeyvCache(new Keyv(redisStore(), { namespace: undefined }))).not.toThrow();
    expect(() => new KeyvCache(new Keyv(redisStore()))).toThrow(/without a namespace.*"keyv"/);
    // The store it suggests is the safe one: @keyv/redis without a command timeout sends the writes held
    // during an outage once Redis is back, over newer values.
    expect(() => new KeyvCache(new Keyv(redisStore()))).toThrow('new KeyvRedis({ url, commandOptions: { timeout: 1000 } })');
    expect(() => new KeyvCache({} as never)).toThrow(/KeyvCache needs a Keyv instance or a Keyv store/);
    expect(() => new KeyvCache({} as never)).toThrow('new KeyvRedis({ url, commandOptions: { timeout: 1000 } })');
  });

  it('a Keyv instance given to setCache() gets an error that says how to wrap it', () => {
    const app = new OfficialAccount({ appId: 'wx4202f388888ab123', secret: 's', logger: false });
    expect(() => app.setCache(new Keyv(redisStore()) as never)).toThrow(/new KeyvCache\(keyv\)` from @wxkit\/keyv/);
  });

  it("reads a value another program stored as bytes as those bytes, and one of another kind as something, never a miss", async () => {
    // Keyv's own in-memory store keeps whatever it was given.
    const map = new Map<string, unknown>([
      ['bytes', new Uint8Array([0x7b, 0xff, 0x00])],
      ['view', new Uint8Array([0x00, 0x41, 0x42, 0x00]).subarray(1, 3)],
      ['function', () => 1],
    ]);
    const cache = new KeyvCache(map as never);
    expect(await cache.get('bytes')).toBe('\u007b\u00ff\u0000');
    expect(await cache.get('view')).toBe('AB');
    expect(await cache.get('function')).toBe('[function]');
  });

  it('a failed read is a CacheError, never a miss, even on a store that swallows errors', async () => {
    const store = new KeyvRedis<string>({ url: 'redis://127.0.0.1:1', socket: { connectTimeout: 200, reconnectStrategy: false } }, { connectionTimeout: 300 });
    store.on('error', () => undefined);
    expect(store.throwOnErrors).toBe(false);
    const cache = new KeyvCache(store);
    await expect(cache.get('wechat:x')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    await store.disconnect().catch(() => undefined);
  });

  it("a key that holds a hash (another program's) is a CacheError of reason type, not an outage, and is left as it is", async () => {
    const { appId, secret } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    redisCli(redis.port, 'HSET', key, 'access_token', 'NOT_OURS');
    const cache = new KeyvCache(redisStore());
    await expect(cache.get(key)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'type' });
    const events: string[] = [];
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, memoMs: 0 });
    app.on('cache.unavailable', () => events.push('cache.unavailable'));
    app.on('cache.foreign_entry', () => events.push('cache.foreign_entry'));
    const token = await app.accessToken.getToken();
    expect(await app.accessToken.getToken()).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(redisCli(redis.port, 'HGET', key, 'access_token')).toBe('NOT_OURS');
    expect(events).toEqual(['cache.foreign_entry']);
    await app.close();
  });
});

describe('KeyvCache on @keyv/redis down or refusing', () => {
  const servers: StoreServer[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((server) => server.stop()));
  });

  it('with commandOptions.timeout (as documented) a write during the outage fails, and is not run late over what the store holds once Redis is back', async () => {
    const own = await startRedis();
    servers.push(own);
    const store = new KeyvRedis<string>({ url: own.url, commandOptions: { timeout: 300 } });
    stores.push(store);
    const cache = new KeyvCache(store);
    await cache.set('wechat:k', 'before', 60);
    await own.stop();
    // wxkit bounds every call by cacheTimeoutMs and counts this one failed; without a timeout of its
    // own, node-redis's offline queue holds it (this test then ends by its timeout) and sends it once
    // Redis is back, over whatever was written meanwhile.
    await expect(cache.set('wechat:k', 'stale', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    // As an emitter: resolving once() over node-redis's union of client types costs the type check 10 s.
    const ready = new Promise((resolve) => (store.client as unknown as NodeJS.EventEmitter).once('ready', resolve));
    await own.start();
    await ready;
    expect(await cache.get('wechat:k')).toBeUndefined();
  }, 10_000);

  it('a server that refuses the client is a CacheError of reason auth (or permission) saying so; a closed cache, of reason closed', async () => {
    const own = await startRedis({ args: ['--requirepass', 'right', '--user', 'reader', 'on', '>pw', '~*', '+get', '+@connection'] });
    servers.push(own);
    const anonymous = new KeyvRedis<string>(own.url);
    const reader = new KeyvRedis<string>(`redis://reader:pw@127.0.0.1:${own.port}`);
    stores.push(anonymous, reader);
    await expect(new KeyvCache(anonymous).get('wechat:k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'auth', message: expect.stringMatching(/credentials/) });
    const cache = new KeyvCache(reader);
    await expect(cache.set('wechat:k', 'v', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'permission' });
    await cache.close();
    await expect(cache.get('wechat:k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'closed' });
  });

  it('a wrong password, which the server refuses at the handshake, fails the calls waiting for the connection with reason auth', async () => {
    // node-redis reconnects for ever after WRONGPASS and the store's calls wait for a connection that
    // never comes: without this, a call hung until the client's cacheTimeoutMs, said only "did not answer".
    const own = await startRedis({ args: ['--requirepass', 'right'] });
    servers.push(own);
    const wrong = new KeyvRedis<string>({ url: `redis://:wrong@127.0.0.1:${own.port}`, commandOptions: { timeout: 1_000 } });
    stores.push(wrong);
    const cache = new KeyvCache(wrong);
    const calls = await Promise.allSettled([cache.get('wechat:k'), cache.set('wechat:k', 'v', 60), cache.delete('wechat:k')]);
    expect(calls).toEqual(Array(3).fill({ status: 'rejected', reason: expect.objectContaining({ code: 'ERR_WXKIT_CACHE', reason: 'auth', message: expect.stringMatching(/check the user and password/) }) }));
    expect(calls.map((call) => (call as PromiseRejectedResult).reason.message).join()).not.toContain('wrong@');
  });

  it("a password in a store's URL is in no part of the CacheError, cause chain included, however the driver quotes the URL", async () => {
    const password = 'kv-pw-5d1e9a7c3b';
    // A password written with an unencoded `/` (as base64 makes them): the URL does not parse, and
    // @keyv/mysql fails every call with Node's TypeError, which carries the whole URL as its `input`.
    const mysql = new KeyvMysql({ uri: `mysql://app:${password}/1@127.0.0.1:${await freePort()}/test` });
    // A driver that names the server it could not reach by its URL, in its message and in a cause.
    const url = `redis://app:${password}@127.0.0.1:${await freePort()}/0`;
    const quoting = Object.assign(new Map<string, string>(), {
      get: async () => Promise.reject(Object.assign(new Error(`cannot connect to ${url}`, { cause: new Error(`ECONNREFUSED ${url}`) }), { code: 'ECONNREFUSED', url })),
    });
    const logger = { lines: [] as unknown[], warn: (fields: unknown, message: string) => void logger.lines.push(fields, message) };
    const shown: string[] = [];
    for (const store of [mysql, quoting]) {
      const cache = new KeyvCache(store as never);
      const error = (await cache.get('wechat:k').catch((caught: unknown) => caught)) as Error;
      expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE' });
      shown.push(inspect(error, { depth: Infinity, showHidden: true }), JSON.stringify(error), String(error?.stack));
      // Through a client, which logs the store's failure and fetches on its own.
      const { appId, secret } = mock.createApp();
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger });
      await app.accessToken.getToken();
      await app.close();
    }
    // The driver's words are still there, and its code, which the reason comes from.
    expect(shown.join('\n')).toContain('Invalid URL');
    expect(shown.join('\n')).toContain('cannot connect to redis://app:***@127.0.0.1');
    expect(shown.join('\n')).toContain("code: 'ECONNREFUSED'");
    expect(logger.lines.length).toBeGreaterThan(0);
    expect([...shown, JSON.stringify(logger.lines)].join('\n')).not.toContain(password);
    await mysql.disconnect().catch(() => undefined);
  });

  it('a server that takes no writes (memory full, a read-only replica) is a CacheError of reason readonly, as RedisCache says it', async () => {
    const full = await startRedis({ args: ['--maxmemory', '1', '--maxmemory-policy', 'noeviction'] });
    const replica = await startRedis({ args: ['--replicaof', '127.0.0.1', String(redis.port)] });
    servers.push(full, replica);
    const refusing = [full, replica].map((server) => new KeyvRedis<string>({ url: server.url, commandOptions: { timeout: 1_000 } }));
    stores.push(...refusing);
    for (const store of refusing) {
      await expect(new KeyvCache(store).set('wechat:k', 'v', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'readonly' });
    }
  });

  it("a write the server refuses (replica, READONLY) fails that write only: reads under way on the same store are answered", async () => {
    // @keyv/redis emits every failed command as an 'error' event too: only a refusal of the connection
    // (NOAUTH, WRONGPASS) leaves calls waiting for ever, and only it may fail the calls under way.
    const replica = await startRedis({ args: ['--replicaof', '127.0.0.1', String(redis.port)] });
    servers.push(replica);
    const store = new KeyvRedis<string>({ url: replica.url, commandOptions: { timeout: 1_000 } });
    stores.push(store);
    const cache = new KeyvCache(store);
    await cache.get('wechat:warm');
    const [write, ...reads] = await Promise.allSettled([cache.set('wechat:k', 'v', 60), ...Array.from({ length: 5 }, (_, i) => cache.get(`wechat:r${i}`))]);
    expect(write).toMatchObject({ status: 'rejected', reason: { reason: 'readonly' } });
    expect(reads.map((read) => read.status)).toEqual(Array(5).fill('fulfilled'));
  });

  it("node-redis's own failures have RedisCache's reasons: a command timeout is timeout, a client offline or a connection dropped under a command disconnected", async () => {
    const own = await startRedis();
    servers.push(own);
    // A proxy (a load balancer, say) that ends the connection, once, instead of passing a command on.
    let cutNext = false;
    const proxy = createServer((client) => {
      const upstream = connect(own.port, '127.0.0.1');
      for (const socket of [client, upstream]) socket.on('error', () => undefined);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      upstream.pipe(client);
      client.on('data', (chunk) => {
        if (!cutNext) return void upstream.write(chunk);
        cutNext = false;
        client.end();
      });
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const timed = new KeyvRedis<string>({ url: own.url, commandOptions: { timeout: 300 } });
    const offline = new KeyvRedis<string>({ url: own.url, disableOfflineQueue: true });
    const proxied = new KeyvRedis<string>(`redis://127.0.0.1:${(proxy.address() as AddressInfo).port}`);
    stores.push(timed, offline, proxied);
    const [timedCache, offlineCache, proxiedCache] = [new KeyvCache(timed), new KeyvCache(offline), new KeyvCache(proxied)];
    try {
      for (const cache of [timedCache, offlineCache, proxiedCache]) await cache.get('wechat:k');
      // The connection ends under a command sent: SocketClosedUnexpectedlyError.
      cutNext = true;
      const dropped = (await proxiedCache.get('wechat:k').catch((error: unknown) => error)) as CacheError;
      expect(dropped).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'disconnected' });
      expect((dropped.cause as Error).message).toBe('Socket closed unexpectedly');
      const reconnecting = [timed, offline].map((store) => new Promise((resolve) => (store.client as unknown as NodeJS.EventEmitter).once('reconnecting', resolve)));
      await own.stop();
      await Promise.all(reconnecting);
      // While the client reconnects, a command waits to be sent until commandOptions.timeout: node-redis's
      // TimeoutError, which has no message. (A command already sent has no timeout: node-redis bounds the
      // wait to be sent only.)
      const timedOut = (await timedCache.get('wechat:k').catch((error: unknown) => error)) as CacheError;
      expect(timedOut).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout' });
      expect([(timedOut.cause as Error).constructor.name, (timedOut.cause as Error).message]).toEqual(['TimeoutError', '']);
      // With the offline queue disabled, it fails at once: ClientOfflineError.
      const offlineError = (await offlineCache.set('wechat:k', 'v', 60).catch((error: unknown) => error)) as CacheError;
      expect(offlineError).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'disconnected' });
      expect((offlineError.cause as Error).message).toBe('The client is offline');
    } finally {
      await proxied.disconnect().catch(() => undefined);
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  it('with commandOptions.timeout, calls made while the first connection is made wait for it (disableOfflineQueue would fail them)', async () => {
    const store = new KeyvRedis<string>({ url: redis.url, commandOptions: { timeout: 2_000 } });
    stores.push(store);
    const cache = new KeyvCache(store);
    const reads = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => cache.get(`wechat:first-${i}`)));
    expect(reads.map((read) => read.status)).toEqual(Array(5).fill('fulfilled'));
  });
});

describe('KeyvCache on @keyv/memcache', () => {
  let memcached: StoreServer;
  beforeAll(async () => {
    memcached = await startMemcached();
  });
  afterAll(async () => {
    await memcached?.stop();
  });

  it('is refused with a ConfigError that names MemcachedCache: the store hands back parsed envelopes, and throws out of its driver on bytes that are no JSON', async () => {
    // What the store does with wxkit's bytes: a miss is an object, a value is JSON-parsed.
    const store = new KeyvMemcache(memcached.url);
    await memcachedSet(memcached.port, 'wechat:k', '{"access_token":":T"}', 60);
    expect(await store.get('wechat:absent')).toEqual({ value: undefined, expires: 0 });
    expect(await store.get('wechat:k')).toEqual({ access_token: 'T' });
    store.client.close();
    for (const given of [new KeyvMemcache(memcached.url), new Keyv(new KeyvMemcache(memcached.url), { namespace: undefined })]) {
      expect(() => new KeyvCache(given)).toThrow(expect.objectContaining({ code: 'ERR_WXKIT_INVALID_OPTION', message: expect.stringMatching(/@keyv\/memcache.*MemcachedCache from @wxkit\/memcached/) }));
      ((given as { store?: KeyvMemcache }).store ?? (given as KeyvMemcache)).client.close();
    }
  });
});
