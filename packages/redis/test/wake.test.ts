import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createClient } from '@keyv/redis';
import { OfficialAccount, nativeSchema } from '@wxkit/core';
import { startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { RedisCache, WRITTEN_CHANNEL, writtenMessage } from '../src/index.js';

// Issue 14: watch() tells a waiting process that a key was written, through the channel wxkit's writers
// publish to, and through keyspace notifications when the server sends them. Counts, never time.

let redis: StoreServer;
let mock: MockWeChat;
beforeAll(async () => {
  [redis, mock] = await Promise.all([startRedis(), startMockWeChat()]);
});
afterAll(async () => {
  await Promise.all([redis?.stop(), mock?.close()]);
});

const key = () => `wechat:test:${randomBytes(6).toString('hex')}`;

/** A plain node-redis subscriber of the written channel, as a watcher in another language would be, keeping every message. */
async function listen() {
  const subscriber = createClient({ url: redis.url });
  await subscriber.connect();
  const messages: string[] = [];
  await subscriber.subscribe(WRITTEN_CHANNEL, (message) => messages.push(message));
  return { messages, subscriber };
}


/**
 * Watches a key on `cache`, has `kill` drop both of its connections, and waits until both gave up (the
 * reconnect strategy counted twice); then the next call answers, the new subscriber has the watcher look
 * once, and it hears the next write of `writer`.
 */
async function watchOutlivesGivingUp(cache: RedisCache, writer: RedisCache, gaveUp: () => number, kill: () => Promise<void>): Promise<void> {
  const k = key();
  let told = 0;
  const stop = cache.watch(k, () => (told += 1));
  await vi.waitFor(() => expect(told).toBe(1), { timeout: 10_000, interval: 5 });
  await kill();
  await vi.waitFor(() => expect(gaveUp()).toBe(2), { timeout: 10_000, interval: 5 });
  await expect(cache.get(k)).resolves.toBeUndefined();
  await vi.waitFor(() => expect(told).toBe(2), { timeout: 10_000, interval: 5 });
  await writer.set(k, 'v', 60);
  await vi.waitFor(() => expect(told).toBe(3), { timeout: 10_000, interval: 5 });
  stop();
}
describe('RedisCache.watch', () => {
  it('a write through another RedisCache calls onChange; a write to another key does not', async () => {
    const [writer, watcher] = [new RedisCache(redis.url), new RedisCache(redis.url)];
    const [watched, other] = [key(), key()];
    const calls: string[] = [];
    const stop = watcher.watch(watched, () => calls.push('watched'));
    watcher.watch(other, () => calls.push('other'));
    // Once subscribed, every watcher is told to look once (writes before the subscription went unseen).
    await vi.waitFor(() => expect(calls.filter((c) => c === 'watched')).toHaveLength(1));
    const before = calls.length;
    await writer.set(watched, 'v1', 60);
    await vi.waitFor(() => expect(calls.slice(before)).toEqual(['watched']));
    // Unwatched: a later write calls nobody; an add that loses writes nothing and publishes nothing.
    stop();
    expect(await writer.add(other, 'x', 60)).toBe(true);
    await vi.waitFor(() => expect(calls.slice(before)).toEqual(['watched', 'other']));
    expect(await writer.add(other, 'y', 60)).toBe(false);
    await writer.set(watched, 'v2', 60);
    // The loser's add and the unwatched write left no call: a marker write after them is the only new one.
    await writer.compareAndSet(other, 'x', 'z', 60);
    await vi.waitFor(() => expect(calls.slice(before)).toEqual(['watched', 'other', 'other']));
    await Promise.all([writer.close(), watcher.close()]);
  });

  it("wxkit writers publish the key's SHA-256 on the documented channel, never its name, for watchers in any language", async () => {
    const { messages, subscriber } = await listen();
    const writer = new RedisCache(redis.url);
    // An EasyWeChat 6 key holds the AppSecret itself.
    const secret = randomBytes(16).toString('hex');
    const k = `official_account.access_token.wx${randomBytes(8).toString('hex')}.${secret}.0`;
    await writer.set(k, 'v', 60);
    await writer.deleteIfEquals(k, 'v');
    const digest = createHash('sha256').update(k).digest('hex');
    expect(writtenMessage(k)).toBe(digest);
    await vi.waitFor(() => expect(messages.filter((m) => m === digest)).toHaveLength(2));
    expect(messages.filter((m) => m.includes(secret))).toEqual([]);
    expect(WRITTEN_CHANNEL).toBe('wxkit:written');
    await Promise.all([writer.close(), subscriber.close()]);
  });

  it('a won add, a compare-and-delete and a compare-and-set of another value notify from the server, with the write: the writer sends no PUBLISH of its own', async () => {
    const { messages, subscriber } = await listen();
    // The writer's own client cannot PUBLISH: whatever reaches the channel was published by the scripts.
    const client = createClient({ url: redis.url });
    await client.connect();
    let ownPublishes = 0;
    (client as unknown as { publish: () => Promise<number> }).publish = async () => {
      ownPublishes += 1;
      return 0;
    };
    const writer = new RedisCache({ client });
    const k = key();
    const digest = writtenMessage(k);
    expect(await writer.add(k, 'a', 60)).toBe(true);
    // A lost add writes nothing and tells nobody.
    expect(await writer.add(k, 'b', 60)).toBe(false);
    expect(await writer.compareAndSet(k, 'a', 'c', 60)).toBe(true);
    expect(await writer.compareAndSet(k, 'a', 'd', 60)).toBe(false);
    // The same value again (a lock's renewal) moves only the expiry: it tells nobody.
    expect(await writer.compareAndSet(k, 'c', 'c', 120)).toBe(true);
    expect(await writer.ttlMs(k)).toBeGreaterThan(60_000);
    expect(await writer.deleteIfEquals(k, 'c')).toBe(true);
    expect(await writer.deleteIfEquals(k, 'c')).toBe(false);
    // A marker published after the writes, on the same channel: once it is in, every message before it is.
    await client.sendCommand(['PUBLISH', WRITTEN_CHANNEL, 'end']);
    await vi.waitFor(() => expect(messages).toContain('end'));
    expect(messages.filter((m) => m === digest)).toHaveLength(3);
    expect(ownPublishes).toBe(0);
    await writer.close();
    await Promise.all([client.close(), subscriber.close()]);
  });

  it('a delete tells the watchers when it removed the key, and nobody when there was nothing to remove', async () => {
    const { messages, subscriber } = await listen();
    const writer = new RedisCache(redis.url);
    const [absent, present] = [key(), key()];
    await writer.delete(absent);
    await writer.set(present, 'v', 60);
    await writer.delete(present);
    await writer.delete(present);
    // A marker published after the deletes: once it is in, every message before it is.
    const client = createClient({ url: redis.url });
    await client.connect();
    await client.sendCommand(['PUBLISH', WRITTEN_CHANNEL, 'end']);
    await vi.waitFor(() => expect(messages).toContain('end'));
    expect(messages.filter((m) => m === writtenMessage(absent))).toHaveLength(0);
    // The set, then the one delete that removed it.
    expect(messages.filter((m) => m === writtenMessage(present))).toHaveLength(2);
    await writer.close();
    await Promise.all([client.close(), subscriber.close()]);
  });

  it('an ACL user without rights on the channel still adds, compares-and-sets and compares-and-deletes (only the notification is lost)', async () => {
    // Redis 7 ACL users start with no channel rights (acl-pubsub-default resetchannels).
    const server = await startRedis({ args: ['--user', 'writer', 'on', '>pw', '~*', '+@all', 'resetchannels'] });
    const url = `redis://writer:pw@127.0.0.1:${server.port}`;
    const writer = new RedisCache(url);
    try {
      const k = key();
      expect(await writer.add(k, 'a', 60)).toBe(true);
      expect(await writer.add(k, 'b', 60)).toBe(false);
      expect(await writer.compareAndSet(k, 'a', 'c', 60)).toBe(true);
      expect(await writer.get(k)).toBe('c');
      expect(await writer.deleteIfEquals(k, 'c')).toBe(true);
      expect(await writer.get(k)).toBeUndefined();
    } finally {
      await writer.close();
      await server.stop();
    }
  });

  it('an ACL user refused SUBSCRIBE is not asked again: later waits poll at the faster pace, never on a subscription that cannot come', async () => {
    const server = await startRedis({ args: ['--user', 'writer', 'on', '>pw', '~*', '+@all', 'resetchannels'] });
    const cache = new RedisCache(`redis://writer:pw@127.0.0.1:${server.port}`);
    const now = performance.now.bind(performance);
    try {
      let told = 0;
      const stop = cache.watch(key(), () => (told += 1));
      // The refused subscription tells its waiter to look: then it has failed.
      await vi.waitFor(() => expect(told).toBeGreaterThan(0), { timeout: 10_000, interval: 5 });
      stop();
      // Long after the refusal (a refresh comes every two hours), a new wait asks for no subscriber: its
      // watch() throws, so that it polls at the faster pace instead of waiting on a refusal to come.
      vi.spyOn(performance, 'now').mockImplementation(() => now() + 3_600_000);
      let error: unknown;
      try {
        cache.watch(key(), () => undefined)();
      } catch (thrown) {
        error = thrown;
      }
      vi.restoreAllMocks();
      expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'permission' });
    } finally {
      vi.restoreAllMocks();
      await cache.close();
      await server.stop();
    }
  });

  it('a refused subscription is said once per store (cache.watch_refused, a warning naming what to grant), and the waits poll', async () => {
    const server = await startRedis({ args: ['--user', 'writer', 'on', '>pw', '~*', '+@all', 'resetchannels'] });
    const cache = new RedisCache(`redis://writer:pw@127.0.0.1:${server.port}`);
    const lines: { fields: { event?: string; error?: string }; message: string }[] = [];
    const record = (fields: unknown, message: string) => void lines.push({ fields: fields as { event?: string }, message });
    const logger = { debug: () => undefined, info: () => undefined, warn: record, error: record };
    const refusals = () => lines.filter((line) => line.fields.event === 'cache.watch_refused');
    const apps: OfficialAccount[] = [];
    try {
      let told = 0;
      const stop = cache.watch(key(), () => (told += 1));
      await vi.waitFor(() => expect(told).toBeGreaterThan(0), { timeout: 10_000, interval: 5 });
      stop();
      for (let i = 0; i < 2; i += 1) {
        const { appId, secret } = mock.createApp();
        const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, tokenEndpoint: 'classic', fallbackDir: false });
        apps.push(app);
        const entryKey = app.accessToken.cacheKey;
        // Another process holds the refresh lock: this one waits for its write.
        expect(await cache.add(nativeSchema().lockKey(entryKey), 'another-process', 30)).toBe(true);
        let reads = 0;
        const get = cache.get.bind(cache);
        cache.get = async (k) => ((k === entryKey ? (reads += 1) : 0), get(k));
        const waiting = app.accessToken.getToken();
        // Past its watch: it reads the key again while it waits (a miss, then the read under the lock's refusal, then polls).
        await vi.waitFor(() => expect(reads).toBeGreaterThanOrEqual(3), { timeout: 10_000, interval: 5 });
        cache.get = get;
        const now = Math.floor(Date.now() / 1000);
        await cache.set(entryKey, JSON.stringify({ access_token: `TOKEN_OF_ANOTHER_PROCESS_${i}`, expires_at: now + 7200, fetched_at: now }), 7000);
        expect(await waiting).toBe(`TOKEN_OF_ANOTHER_PROCESS_${i}`);
        expect(mock.counters(appId).tokenRequests).toBe(0);
      }
      expect(refusals()).toHaveLength(1);
      expect(refusals()[0]!.fields.error).toMatch(/NOPERM\): grant the user &wxkit:written/);
      expect(JSON.stringify(lines)).not.toContain('pw@');
    } finally {
      await Promise.all(apps.map((app) => app.close()));
      await cache.close();
      await server.stop();
    }
  });

  it('a client whose reconnect strategy gave up is replaced without failing the call that finds it so: its subscriber, closed with it, is made anew', async () => {
    const server = await startRedis();
    // A reconnect strategy of the caller's that gives up at the first drop: the client and the subscriber
    // made from it (which shares its options) both close themselves.
    let gaveUp = 0;
    const reconnectStrategy = () => {
      gaveUp += 1;
      return new Error('no reconnecting');
    };
    const cache = new RedisCache({ url: server.url, clientOptions: { socket: { reconnectStrategy } } });
    const writer = new RedisCache(server.url);
    const admin = createClient({ url: server.url });
    try {
      await admin.connect();
      // Both of the cache's connections dropped by the server.
      await watchOutlivesGivingUp(cache, writer, () => gaveUp, async () => {
        await admin.sendCommand(['CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes']);
        await admin.sendCommand(['CLIENT', 'KILL', 'TYPE', 'pubsub']);
      });
    } finally {
      await Promise.all([cache.close(), writer.close(), admin.destroy()]);
      await server.stop();
    }
  });

  it("a caller's client whose reconnect strategy gave up, connected again by the next call, gets a new subscriber too: the one made from it closed for good", async () => {
    let gaveUp = 0;
    const client = createClient({
      url: redis.url,
      socket: {
        reconnectStrategy: () => {
          gaveUp += 1;
          return new Error('no reconnecting');
        },
      },
    });
    client.on('error', () => undefined);
    const cache = new RedisCache({ client });
    const writer = new RedisCache(redis.url);
    const admin = createClient({ url: redis.url });
    try {
      await admin.connect();
      // The client's connection and its subscriber's dropped by the server: both close themselves. The
      // next call connects the same client object again, as documented.
      await watchOutlivesGivingUp(cache, writer, () => gaveUp, async () => {
        await admin.sendCommand(['CLIENT', 'KILL', 'ID', String(await client.clientId())]);
        await admin.sendCommand(['CLIENT', 'KILL', 'TYPE', 'pubsub']);
      });
    } finally {
      await Promise.all([cache.close(), writer.close(), admin.destroy()]);
      if (client.isOpen) client.destroy();
    }
  });

  it('a write made while the subscriber connection was away (a restart, a failover, a dropped connection) has every watcher look once it is back', async () => {
    const watcher = new RedisCache(redis.url);
    const admin = createClient({ url: redis.url });
    const k = key();
    let told = 0;
    try {
      await admin.connect();
      watcher.watch(k, () => (told += 1));
      await vi.waitFor(() => expect(told).toBe(1), { timeout: 10_000, interval: 5 });
      // In one transaction: the subscriber's connection dropped, then the write and its notification,
      // which the subscriber cannot hear whatever its reconnect timing.
      const [killed] = await admin
        .multi()
        .addCommand(['CLIENT', 'KILL', 'TYPE', 'pubsub'])
        .set(k, 'v', { expiration: { type: 'PX', value: 60_000 } })
        .publish(WRITTEN_CHANNEL, writtenMessage(k))
        .exec();
      expect(killed).toBeGreaterThanOrEqual(1);
      // node-redis connects the subscriber again and subscribes anew on its own.
      await vi.waitFor(async () => expect(String(await admin.sendCommand(['CLIENT', 'LIST', 'TYPE', 'pubsub']))).toMatch(/id=/), { timeout: 10_000, interval: 10 });
      await vi.waitFor(() => expect(told).toBe(2), { timeout: 10_000, interval: 5 });
    } finally {
      await Promise.all([watcher.close(), admin.destroy()]);
    }
  });

  it('a subscriber given up while Redis is still paused is made anew once Redis answers again: the registered watchers hear writes, with no new watch()', async () => {
    const server = await startRedis();
    const cache = new RedisCache({ url: server.url, connectTimeoutMs: 300, stallTimeoutMs: 300 });
    const [admin, writer] = [createClient({ url: server.url }), createClient({ url: server.url })];
    const k = key();
    let told = 0;
    try {
      await Promise.all([admin.connect(), writer.connect()]);
      const stop = cache.watch(k, () => (told += 1));
      await vi.waitFor(() => expect(told).toBe(1), { timeout: 10_000, interval: 5 });
      // Every client's commands held, new connections' included, until the pause runs out.
      await admin.sendCommand(['CLIENT', 'PAUSE', '3000', 'ALL']);
      // A call unanswered: its connection is given up as silent, and the subscriber with it. The new
      // subscriber's handshake is held too: it fails, and the watcher is told to look.
      await expect(cache.get(k)).rejects.toMatchObject({ reason: 'timeout' });
      await vi.waitFor(() => expect(told).toBe(2), { timeout: 10_000, interval: 5 });
      // Answered once the pause is over.
      await admin.ping();
      // A call answered again (a waiter's next poll): a subscriber is made for the watcher still registered,
      // which looks once it is in, and hears the next write.
      await expect(cache.get(k)).resolves.toBeUndefined();
      await vi.waitFor(() => expect(told).toBe(3), { timeout: 10_000, interval: 5 });
      await writer.publish(WRITTEN_CHANNEL, writtenMessage(k));
      await vi.waitFor(() => expect(told).toBe(4), { timeout: 10_000, interval: 5 });
      stop();
    } finally {
      await Promise.all([cache.close(), admin.destroy(), writer.destroy()]);
      await server.stop();
    }
  });

  it("a writer that publishes the key's name, not its digest, still wakes the watcher", async () => {
    const watcher = new RedisCache(redis.url);
    const publisher = createClient({ url: redis.url });
    await publisher.connect();
    const k = key();
    let calls = 0;
    watcher.watch(k, () => (calls += 1));
    // Once subscribed, every watcher is told to look once.
    await vi.waitFor(() => expect(calls).toBe(1));
    await publisher.publish(WRITTEN_CHANNEL, k);
    await vi.waitFor(() => expect(calls).toBe(2));
    await Promise.all([watcher.close(), publisher.close()]);
  });

  it('with keyspace notifications on, a writer that does not publish wakes the watcher too', async () => {
    const admin = createClient({ url: redis.url });
    await admin.connect();
    await admin.configSet('notify-keyspace-events', 'KA');
    const watcher = new RedisCache(redis.url);
    const k = key();
    let calls = 0;
    watcher.watch(k, () => (calls += 1));
    await vi.waitFor(() => expect(calls).toBe(1)); // subscribed
    // The keyspace subscription follows the channel's; a plain SET that publishes nothing must wake it.
    await vi.waitFor(async () => {
      const before = calls;
      await admin.set(k, `v${before}`);
      await vi.waitFor(() => expect(calls).toBeGreaterThan(before), { timeout: 200 });
    });
    await admin.configSet('notify-keyspace-events', '');
    await Promise.all([watcher.close(), admin.close()]);
  });

  it('a cold waiter on another RedisCache wakes on the holder’s write: one token request, the same token', async () => {
    const { appId, secret } = mock.createApp();
    const [holderStore, waiterStore] = [new RedisCache(redis.url), new RedisCache(redis.url)];
    let woken = 0;
    const watch = waiterStore.watch.bind(waiterStore);
    waiterStore.watch = (k, onChange) => watch(k, () => ((woken += 1), onChange()));
    const options = { appId, secret, baseUrl: mock.url, logger: false as const, tokenEndpoint: 'classic' as const, fallbackDir: false as const };
    // The mock answers slowly enough that the waiter finds the lock taken; the count, not the time, is asserted.
    mock.setLatency(300);
    try {
      const holder = new OfficialAccount({ ...options, cache: holderStore });
      const waiter = new OfficialAccount({ ...options, cache: waiterStore });
      const held = holder.accessToken.getToken();
      await vi.waitFor(async () => expect(await waiterStore.get(`${holder.accessToken.cacheKey}:lock`)).toBeDefined());
      const [token, seen] = await Promise.all([held, waiter.accessToken.getToken()]);
      expect(seen).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(woken).toBeGreaterThanOrEqual(1);
      await Promise.all([holder.close(), waiter.close()]);
    } finally {
      mock.setLatency(0);
      await Promise.all([holderStore.close(), waiterStore.close()]);
    }
  });
});
