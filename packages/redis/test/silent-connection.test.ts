import { createConnection, createServer, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createClient } from '@keyv/redis';
import { CacheError } from '@wxkit/core';
import { freePort, startRedis, type StoreServer } from '@wxkit/testing';
import { RedisCache } from '../src/index.js';

// A connection that goes silent (a NAT or firewall that lost its state, a failed-over address, a
// half-dead proxy) sends no error and no close: node-redis waits on it until the kernel gives it up,
// 15 minutes or more. These tests put a proxy between RedisCache and a real redis-server that can stop
// passing bytes on the connections it holds while new ones still go through.

let redis: StoreServer;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});

interface Proxy {
  port: number;
  /** Connections accepted so far. */
  connections(): number;
  /** Commands held back so far (see `swallow`). */
  swallowed(): number;
  /** The connections open now pass no byte any more, either way; their sockets stay open. */
  freeze(): void;
  /** From now on, each answer is passed on this many ms after it arrived. */
  delayAnswers(ms: number): void;
  /** Answers held back so far (see `delayAnswers`). */
  delayed(): number;
  close(): Promise<void>;
}

/** A TCP proxy to the Redis under test; `swallow` holds back every chunk a client sends that matches it. */
async function startProxy(swallow?: RegExp): Promise<Proxy> {
  const pairs: { client: Socket; upstream: Socket; frozen: boolean }[] = [];
  let swallowed = 0;
  let delayMs = 0;
  let delayed = 0;
  const server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: redis.port });
    const pair = { client, upstream, frozen: false };
    pairs.push(pair);
    client.on('data', (chunk: Buffer) => {
      if (swallow?.test(chunk.toString('latin1'))) swallowed += 1;
      else if (!pair.frozen) upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (pair.frozen) return;
      if (delayMs === 0) client.write(chunk);
      else {
        delayed += 1;
        setTimeout(() => client.write(chunk), delayMs);
      }
    });
    for (const socket of [client, upstream]) socket.on('error', () => undefined);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port,
    connections: () => pairs.length,
    swallowed: () => swallowed,
    delayed: () => delayed,
    freeze: () => {
      for (const pair of pairs) pair.frozen = true;
    },
    delayAnswers: (ms) => (delayMs = ms),
    close: () => {
      for (const pair of pairs) pair.client.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** `promise`, or a rejection naming `what` if it has not settled after 20 s (a hang, not a slow answer). */
function settles<T>(promise: Promise<T>, what: string): Promise<T> {
  return Promise.race([promise, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} never settled`)), 20_000).unref())]);
}

describe('RedisCache on a connection that goes silent', () => {
  it('a call on it fails instead of waiting for ever, and the next one connects anew and is answered', async () => {
    const proxy = await startProxy();
    const cache = new RedisCache({ url: `redis://127.0.0.1:${proxy.port}`, connectTimeoutMs: 500, stallTimeoutMs: 1000 });
    try {
      await cache.set('wxkit-silent:k', 'v', 60);
      expect(await cache.get('wxkit-silent:k')).toBe('v');
      proxy.freeze();
      const error = await settles(cache.get('wxkit-silent:k').then(() => undefined, (e: unknown) => e), 'a get on the silent connection');
      expect(error).toBeInstanceOf(CacheError);
      expect(error).toMatchObject({ reason: 'timeout', message: expect.stringMatching(/no answer .* within 1000 ms: the connection was given up as silent/) });
      expect(await settles(cache.get('wxkit-silent:k'), 'a get after it')).toBe('v');
      expect(proxy.connections()).toBe(2);
    } finally {
      await settles(cache.close(), 'close()');
      await proxy.close();
    }
  });

  it('a process too busy to read the answer in time keeps a healthy connection: it is looked at once more first', async () => {
    const proxy = await startProxy();
    const cache = new RedisCache({ url: `redis://127.0.0.1:${proxy.port}`, connectTimeoutMs: 500, stallTimeoutMs: 1000 });
    try {
      await cache.set('wxkit-silent:busy', 'v', 60);
      // The answer comes back shortly before stallTimeoutMs, while the event loop is held past it: when
      // the loop runs again, the stall's timer and the answer are both due.
      proxy.delayAnswers(900);
      const reading = cache.get('wxkit-silent:busy');
      // The proxy has the answer and holds it back: the stall's timer runs (it starts before the command
      // is sent), and the answer is due in 900 ms.
      await settles(
        (async () => {
          while (proxy.delayed() === 0) await new Promise((resolve) => setTimeout(resolve, 5));
        })(),
        'the answer reaching the proxy',
      );
      const until = performance.now() + 1300;
      while (performance.now() < until);
      expect(await settles(reading, 'the get')).toBe('v');
      expect(proxy.connections()).toBe(1);
    } finally {
      await settles(cache.close(), 'close()');
      await proxy.close();
    }
  });

  it('a connection given up as silent takes its subscriber along: the watchers hear writes again, through a new one', async () => {
    const proxy = await startProxy();
    const cache = new RedisCache({ url: `redis://127.0.0.1:${proxy.port}`, connectTimeoutMs: 500, stallTimeoutMs: 1000 });
    const writer = new RedisCache(redis.url);
    let told = 0;
    const toldAgain = (what: string) => {
      const before = told;
      return settles(
        (async () => {
          while (told === before) await new Promise((resolve) => setTimeout(resolve, 5));
        })(),
        what,
      );
    };
    try {
      const subscribed = toldAgain('the first subscription');
      const stop = cache.watch('wxkit-silent:watched', () => (told += 1));
      await subscribed;
      const heard = toldAgain('a write before the freeze');
      await writer.set('wxkit-silent:watched', 'v1', 60);
      await heard;
      // The command connection and the subscriber's both go silent, as behind a NAT that lost its state.
      proxy.freeze();
      const resubscribed = toldAgain('the new subscription');
      await expect(settles(cache.get('wxkit-silent:watched'), 'a get on the silent connection')).rejects.toMatchObject({ reason: 'timeout' });
      await resubscribed;
      const heardAgain = toldAgain('a write after the freeze');
      await writer.set('wxkit-silent:watched', 'v2', 60);
      await heardAgain;
      // The two frozen connections, then one new command connection and one new subscriber.
      expect(proxy.connections()).toBe(4);
      stop();
    } finally {
      await settles(Promise.all([cache.close(), writer.close()]), 'close()');
      await proxy.close();
    }
  });

  it('a connection given up as silent whose subscriber had closed itself ends that subscriber quietly: nothing escapes, and a new one is made', async () => {
    const proxy = await startProxy();
    // A reconnect strategy of the caller's that gives up at the first drop.
    let gaveUp = 0;
    const reconnectStrategy = () => {
      gaveUp += 1;
      return new Error('no reconnecting');
    };
    const cache = new RedisCache({ url: `redis://127.0.0.1:${proxy.port}`, connectTimeoutMs: 500, stallTimeoutMs: 1000, clientOptions: { socket: { reconnectStrategy } } });
    const admin = createClient({ url: redis.url });
    const escaped: unknown[] = [];
    const onUncaught = (error: unknown) => escaped.push(error);
    process.on('uncaughtException', onUncaught);
    try {
      await admin.connect();
      let told = 0;
      const stop = cache.watch('wxkit-silent:closed-subscriber', () => (told += 1));
      await vi.waitFor(() => expect(told).toBe(1), { timeout: 10_000, interval: 5 });
      // The subscriber's connection alone is dropped (a server's pub/sub buffer limit, a proxy's idle
      // timeout): it gives up reconnecting and closes itself, while the command connection stays.
      expect(await settles(cache.get('wxkit-silent:closed-subscriber'), 'a get before')).toBeUndefined();
      await admin.sendCommand(['CLIENT', 'KILL', 'TYPE', 'pubsub']);
      await vi.waitFor(() => expect(gaveUp).toBe(1), { timeout: 10_000, interval: 5 });
      // Then the command connection goes silent and is given up, with the subscriber made from it.
      proxy.freeze();
      await expect(settles(cache.get('wxkit-silent:closed-subscriber'), 'a get on the silent connection')).rejects.toMatchObject({ reason: 'timeout' });
      // Ending the closed subscriber threw nothing outside the call (it would have ended the process).
      expect(escaped).toEqual([]);
      // A new subscriber, once in place, has every watcher look once.
      await vi.waitFor(() => expect(told).toBe(2), { timeout: 10_000, interval: 5 });
      stop();
    } finally {
      process.off('uncaughtException', onUncaught);
      await settles(Promise.all([cache.close(), admin.destroy()]), 'close()');
      await proxy.close();
    }
  });

  it('close() ends at once while the subscriber connection waits for an answer to SUBSCRIBE', async () => {
    const proxy = await startProxy(/SUBSCRIBE/i);
    const cache = new RedisCache({ url: `redis://127.0.0.1:${proxy.port}`, connectTimeoutMs: 60_000 });
    try {
      await cache.set('wxkit-silent:w', 'v', 60);
      const stop = cache.watch('wxkit-silent:w', () => undefined);
      // The subscriber connection sent its SUBSCRIBE, which the proxy holds back.
      while (proxy.swallowed() === 0) await new Promise((resolve) => setTimeout(resolve, 5));
      stop();
      await settles(cache.close(), 'close()');
    } finally {
      await proxy.close();
    }
  });

  it("close() ends on a caller's client whose CONFIG GET, asked once the subscriber is in, is never answered", async () => {
    const proxy = await startProxy(/CONFIG/i);
    const client = createClient({ url: `redis://127.0.0.1:${proxy.port}` });
    client.on('error', () => undefined);
    await client.connect();
    // close() ends only what RedisCache made: the caller's client, asking CONFIG GET, stays open.
    const cache = new RedisCache({ client: client as never, connectTimeoutMs: 300 });
    try {
      await cache.set('wxkit-silent:c', 'v', 60);
      const stop = cache.watch('wxkit-silent:c', () => undefined);
      while (proxy.swallowed() === 0) await new Promise((resolve) => setTimeout(resolve, 5));
      stop();
      await settles(cache.close(), 'close()');
    } finally {
      await client.destroy();
      await proxy.close();
    }
  });

  it('a SUBSCRIBE never answered is given up after connectTimeoutMs: the waiters are told to look, and poll', async () => {
    const proxy = await startProxy(/SUBSCRIBE/i);
    const cache = new RedisCache({ url: `redis://127.0.0.1:${proxy.port}`, connectTimeoutMs: 300 });
    try {
      let told = 0;
      const stop = cache.watch('wxkit-silent:x', () => (told += 1));
      await settles(
        (async () => {
          while (told === 0) await new Promise((resolve) => setTimeout(resolve, 5));
        })(),
        'the waiters being told',
      );
      expect(proxy.swallowed()).toBeGreaterThan(0);
      stop();
    } finally {
      await settles(cache.close(), 'close()');
      await proxy.close();
    }
  });
});
