import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CacheError } from '@wxkit/core';
import { memcachedGet, memcachedSet, startMemcached, type StoreServer } from '@wxkit/testing';
import { MemcachedCache } from '../src/index.js';
import { framer } from './packets.js';

// Connections that fail half-way, through proxies in front of a real memcached: a failed SASL login, an
// answer cut off in the middle, a server that accepts and never answers. Each failure must stay with
// the calls it failed: no request of a failed call sent later, no later call read behind a broken one.

const OP_SASL_LIST = 0x20;
const OP_SASL_AUTH = 0x21;
const STATUS_AUTH_ERROR = 0x20;

let memcached: StoreServer;
beforeAll(async () => {
  memcached = await startMemcached();
});
afterAll(async () => {
  await memcached?.stop();
});

const key = (label: string) => `wxkit-test:${randomBytes(6).toString('hex')}:${label}`;

/** A binary-protocol answer to `packet` with `status` and `value`. */
function answer(packet: Buffer, status: number, value = ''): Buffer {
  const body = Buffer.from(value);
  const reply = Buffer.alloc(24 + body.length);
  reply.writeUInt8(0x81, 0);
  reply.writeUInt8(packet[1]!, 1);
  reply.writeUInt16BE(status, 6);
  reply.writeUInt32BE(body.length, 8);
  packet.copy(reply, 12, 12, 16);
  body.copy(reply, 24);
  return reply;
}

interface Proxy {
  url: string;
  connections: () => number;
  close(): Promise<void>;
}

/** A proxy whose connection number `n` (from 1) is handled by `handle`, which may pipe it to memcached. */
async function startProxy(handle: (client: Socket, n: number, pipe: () => void) => void): Promise<Proxy> {
  const sockets = new Set<Socket>();
  let connections = 0;
  const server: Server = createServer((client) => {
    connections += 1;
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    handle(client, connections, () => {
      const upstream = createConnection({ host: '127.0.0.1', port: memcached.port });
      sockets.add(upstream);
      upstream.on('error', () => undefined);
      upstream.on('close', () => {
        sockets.delete(upstream);
        client.destroy();
      });
      client.on('close', () => upstream.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `127.0.0.1:${port}`,
    connections: () => connections,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * A proxy that does SASL itself (memcached here has none): `login` answers each login (true: accepted),
 * at once or through `send` later; every other packet goes to memcached, its answers passed back through
 * `relay` (at once by default). Both are told the connection's number, from 1.
 */
function startSaslProxy(
  login: (send: (accepted: boolean) => void, connection: number) => void,
  relay: (forward: () => void, connection: number, client: Socket) => void = (forward) => forward(),
): Promise<Proxy> {
  return startProxy((client, n) => {
    let upstream: Socket | undefined;
    client.on(
      'data',
      framer((packet) => {
        const op = packet[1];
        if (op === OP_SASL_LIST) client.write(answer(packet, 0, 'PLAIN'));
        else if (op === OP_SASL_AUTH) login((accepted) => client.write(answer(packet, accepted ? 0 : STATUS_AUTH_ERROR, accepted ? 'Authenticated' : 'Auth failure')), n);
        else {
          if (!upstream) {
            upstream = createConnection({ host: '127.0.0.1', port: memcached.port });
            upstream.on('error', () => undefined);
            upstream.on('data', (chunk) => relay(() => client.write(chunk), n, client));
            client.on('close', () => upstream?.destroy());
          }
          upstream.write(packet);
        }
      }),
    );
  });
}

describe('MemcachedCache on connections that fail half-way', () => {
  it('a write whose SASL login failed is never sent later, when a login succeeds: a newer value written meanwhile stays', async () => {
    let loginsAccepted = false;
    // Logins are refused until told otherwise.
    const proxy = await startSaslProxy((send) => send(loginsAccepted));
    const cache = new MemcachedCache({ servers: proxy.url, username: 'wxkit', password: 'pw', timeoutMs: 1000 });
    const k = key('token');
    try {
      await expect(cache.set(k, 'OLD', 60)).rejects.toSatisfy((error) => error instanceof CacheError && error.reason === 'auth');
      // The message says where else memjs finds credentials: the environment, when the URL and options give none.
      await expect(cache.get(k)).rejects.toThrow(/SASL login was refused: .*MEMCACHIER_USERNAME/);
      await expect(cache.add(`${k}:lock`, 'owner-1', 60)).rejects.toSatisfy((error) => error instanceof CacheError && error.reason === 'auth');
      // Another process writes the newer value, then the logins work again.
      await memcachedSet(memcached.port, k, 'NEW', 60);
      loginsAccepted = true;
      // The first call after that logs in; requests queued on a connection are sent in order, so any
      // request left over from the failed calls would have reached memcached before this one's answer.
      expect(await cache.get(k)).toBe('NEW');
      expect(await memcachedGet(memcached.port, k)).toBe('NEW');
      expect(await memcachedGet(memcached.port, `${k}:lock`)).toBeUndefined();
    } finally {
      await cache.close();
      await proxy.close();
    }
  });

  it('a request that waits for its connection and SASL login has timeoutMs for each: a slow login then a slow answer, each within it, succeed', async () => {
    // Logins answered 300 ms late, and every answer of memcached 300 ms late: 600 ms in all, each part
    // within the 500 ms timeoutMs.
    const late = (fn: () => void) => void setTimeout(fn, 300);
    const proxy = await startSaslProxy((send) => late(() => send(true)), late);
    const cache = new MemcachedCache({ servers: proxy.url, username: 'wxkit', password: 'pw', timeoutMs: 500 });
    const k = key('slow-login');
    try {
      await cache.set(k, 'v', 60);
      expect(await memcachedGet(memcached.port, k)).toBe('v');
      expect(proxy.connections()).toBe(1);
    } finally {
      await cache.close();
      await proxy.close();
    }
  });

  it('after a connection fails, the request that must connect and log in again has timeoutMs for each too', async () => {
    // Connection 1 logs in and answers at once, then drops at the second request, as a server that
    // restarts would; every later connection logs in 300 ms late and answers 300 ms late: 600 ms in
    // all, each part within the 500 ms timeoutMs. The dropped request goes out again on connection 2.
    const late = (fn: () => void) => void setTimeout(fn, 300);
    let requests = 0;
    const proxy = await startSaslProxy(
      (send, n) => (n === 1 ? send(true) : late(() => send(true))),
      (forward, n, client) => {
        requests += 1;
        if (n > 1) late(forward);
        else if (requests === 1) forward();
        else client.destroy();
      },
    );
    const cache = new MemcachedCache({ servers: proxy.url, username: 'wxkit', password: 'pw', timeoutMs: 500 });
    const k = key('relogin');
    try {
      await cache.set(k, 'first', 60);
      await cache.set(k, 'second', 60);
      expect(await memcachedGet(memcached.port, k)).toBe('second');
      expect(proxy.connections()).toBe(2);
    } finally {
      await cache.close();
      await proxy.close();
    }
  });

  it('a conditional write whose connection the server closes (a restart) fails at once, reason disconnected', async () => {
    // Connection 1 is closed at its first request; the rest are memcached's. The ADD is not resent:
    // the key read back on connection 2 is absent, so the call rejects.
    const proxy = await startProxy((client, n, pipe) => (n > 1 ? pipe() : client.once('data', () => client.destroy())));
    const cache = new MemcachedCache({ servers: proxy.url, timeoutMs: 60_000 });
    try {
      await expect(cache.add(key('dropped'), 'owner-1', 60)).rejects.toSatisfy((error) => error instanceof CacheError && error.reason === 'disconnected');
      expect(proxy.connections()).toBe(2);
    } finally {
      await cache.close();
      await proxy.close();
    }
  });

  it('an answer cut off in the middle does not poison the calls after it: they are read on their own connection', async () => {
    // Connections 1 and 2 answer the first request with 10 bytes of a header and go silent; the
    // rest are memcached's.
    const proxy = await startProxy((client, n, pipe) => {
      if (n > 2) return pipe();
      client.once('data', () => client.write(Buffer.from([0x81, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00])));
    });
    const cache = new MemcachedCache({ servers: proxy.url, timeoutMs: 300 });
    const k = key('cut');
    try {
      // get may go out twice: both attempts meet a cut-off answer.
      await expect(cache.get(k)).rejects.toBeInstanceOf(CacheError);
      expect(proxy.connections()).toBe(2);
      const results = await Promise.allSettled([1, 2, 3].map((i) => cache.set(`${k}:${i}`, `v${i}`, 60)));
      expect(results.map((result) => result.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled']);
      expect(await cache.get(`${k}:2`)).toBe('v2');
    } finally {
      await cache.close();
      await proxy.close();
    }
  });

  it('a server that accepts and never answers: each call fails on its own deadline, however many calls follow it', async () => {
    // memjs alone times a request out when its socket has been idle that long: calls that keep coming
    // (waiters polling) keep every earlier one waiting. Here calls keep coming until the first settles;
    // without a deadline of its own it would never settle, and the test would time out.
    const proxy = await startProxy((client) => client.resume());
    const cache = new MemcachedCache({ servers: proxy.url, timeoutMs: 300 });
    const later: Promise<unknown>[] = [];
    let settled = false;
    const first = cache.get(key('silent')).finally(() => (settled = true));
    const more = setInterval(() => {
      if (!settled) later.push(cache.get(key('silent')).catch(() => undefined));
    }, 60);
    try {
      await expect(first).rejects.toBeInstanceOf(CacheError);
      expect(later.length).toBeGreaterThan(0);
    } finally {
      clearInterval(more);
      await Promise.all(later);
      await cache.close();
      await proxy.close();
    }
  }, 15_000);
});
