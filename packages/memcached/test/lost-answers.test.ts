import { createConnection, createServer, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memcachedGet, memcachedSet, startMemcached, type StoreServer } from '@wxkit/testing';
import { MemcachedCache } from '../src/index.js';
import { framer } from './packets.js';

const OP_SET = 0x01;
const OP_ADD = 0x02;
const OP_DELETE = 0x04;

/** A TCP proxy to memcached that loses one binary-protocol packet of a given opcode on its way. */
interface LossyProxy {
  readonly url: string;
  /** Requests that reached the proxy, by opcode (dropped ones included). */
  readonly requests: Map<number, number>;
  /** Packets it lost so far. */
  readonly lost: () => number;
  close(): Promise<void>;
}

/**
 * Forwards every connection to memcached on `targetPort`, packet by packet, but loses the first
 * request (`lose: 'request'`: memcached never sees it) or the first reply (`lose: 'reply'`: memcached
 * acted on it, the client never hears) with opcode `opcode`.
 */
async function startLossyProxy(targetPort: number, lose: 'request' | 'reply', opcode: number): Promise<LossyProxy> {
  const requests = new Map<number, number>();
  const sockets = new Set<Socket>();
  let lost = 0;
  const server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    client.on('data', framer((packet) => {
      const op = packet[1]!;
      requests.set(op, (requests.get(op) ?? 0) + 1);
      if (lose === 'request' && op === opcode && lost === 0) lost += 1;
      else upstream.write(packet);
    }));
    upstream.on('data', framer((packet) => {
      if (lose === 'reply' && packet[1] === opcode && lost === 0) lost += 1;
      else client.write(packet);
    }));
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `127.0.0.1:${port}`,
    requests,
    lost: () => lost,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A TCP proxy to memcached that holds back the first request of an opcode until `release()`. */
interface HoldingProxy {
  readonly url: string;
  /** Requests that reached the proxy, by opcode (the held one included). */
  readonly requests: Map<number, number>;
  /** Resolves memcached's status for the held request once it has answered it (after `release()`). */
  readonly landed: Promise<number>;
  release(): void;
  close(): Promise<void>;
}

/**
 * Forwards every connection to memcached on `targetPort`, packet by packet, but holds back the first
 * request with opcode `opcode`, and what follows it on its connection, until `release()`: a request
 * delayed on its way (retransmitted after a loss), which TCP still delivers after its sender gave up on
 * it and closed the connection. The client closing its side ends the connection to memcached only after
 * the held request has gone.
 */
async function startHoldingProxy(targetPort: number, opcode: number): Promise<HoldingProxy> {
  const requests = new Map<number, number>();
  const sockets = new Set<Socket>();
  let onLanded!: (status: number) => void;
  const landed = new Promise<number>((resolve) => (onLanded = resolve));
  let release: (() => void) | undefined;
  let holding = false;
  const server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    let held: Buffer[] | undefined;
    let heldSeq: number | undefined;
    let clientGone = false;
    client.on('data', framer((packet) => {
      const op = packet[1]!;
      requests.set(op, (requests.get(op) ?? 0) + 1);
      if (held) return void held.push(packet);
      if (op !== opcode || holding) return void upstream.write(packet);
      holding = true;
      held = [packet];
      heldSeq = packet.readUInt32BE(12);
      release = () => {
        for (const each of held!) upstream.write(each);
        held = undefined;
        if (clientGone) upstream.end();
      };
    }));
    upstream.on('data', framer((packet) => {
      // The status of the answer to the held request (matched by its opaque), whoever still listens.
      if (packet[1] === opcode && packet.readUInt32BE(12) === heldSeq) onLanded(packet.readUInt16BE(6));
      if (!client.destroyed) client.write(packet);
    }));
    client.on('close', () => {
      clientGone = true;
      if (!held) upstream.end();
    });
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `127.0.0.1:${port}`,
    requests,
    landed,
    release: () => {
      if (!release) throw new Error('no request held');
      release();
    },
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

let memcached: StoreServer;
beforeAll(async () => {
  memcached = await startMemcached();
});
afterAll(async () => {
  await memcached?.stop();
});

const key = (label: string) => `wxkit-test:${randomBytes(6).toString('hex')}:${label}:lock`;

describe('MemcachedCache add when its answer is lost', () => {
  it('stored, answer lost: resolves true and the key holds our value; the ADD is not sent again', async () => {
    const proxy = await startLossyProxy(memcached.port, 'reply', OP_ADD);
    const cache = new MemcachedCache({ servers: proxy.url, timeoutMs: 300 });
    try {
      const k = key('stored');
      // A resent ADD would meet our own value and answer EXISTS: the caller would think another holds the lock.
      expect(await cache.add(k, 'owner-1', 60)).toBe(true);
      expect(await memcachedGet(memcached.port, k)).toBe('owner-1');
      expect({ lost: proxy.lost(), adds: proxy.requests.get(OP_ADD) }).toEqual({ lost: 1, adds: 1 });
    } finally {
      await cache.close();
      await proxy.close();
    }
  });

  it('another value there, answer lost: resolves false and leaves it', async () => {
    const proxy = await startLossyProxy(memcached.port, 'reply', OP_ADD);
    const cache = new MemcachedCache({ servers: proxy.url, timeoutMs: 300 });
    try {
      const k = key('taken');
      await memcachedSet(memcached.port, k, 'owner-other', 60);
      expect(await cache.add(k, 'owner-1', 60)).toBe(false);
      expect(await memcachedGet(memcached.port, k)).toBe('owner-other');
      expect({ lost: proxy.lost(), adds: proxy.requests.get(OP_ADD) }).toEqual({ lost: 1, adds: 1 });
    } finally {
      await cache.close();
      await proxy.close();
    }
  });

  it('request lost, the server lacks the key: rejects with ERR_WXKIT_CACHE and stores nothing', async () => {
    const proxy = await startLossyProxy(memcached.port, 'request', OP_ADD);
    const cache = new MemcachedCache({ servers: proxy.url, timeoutMs: 300 });
    try {
      const k = key('absent');
      await expect(cache.add(k, 'owner-1', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
      expect(await memcachedGet(memcached.port, k)).toBeUndefined();
      expect({ lost: proxy.lost(), adds: proxy.requests.get(OP_ADD) }).toEqual({ lost: 1, adds: 1 });
    } finally {
      await cache.close();
      await proxy.close();
    }
  });
});

describe('MemcachedCache compare-and-write when its answer is lost', () => {
  it('deleteIfEquals: the CAS DELETE is sent once; a lost answer rejects rather than guess', async () => {
    const proxy = await startLossyProxy(memcached.port, 'reply', OP_DELETE);
    const cache = new MemcachedCache({ servers: proxy.url, timeoutMs: 300 });
    try {
      const k = key('die');
      await memcachedSet(memcached.port, k, 'owner-1', 60);
      // A resend would find the key gone and answer false, though this call deleted it.
      await expect(cache.deleteIfEquals(k, 'owner-1')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
      expect(await memcachedGet(memcached.port, k)).toBeUndefined();
      expect({ lost: proxy.lost(), deletes: proxy.requests.get(OP_DELETE) }).toEqual({ lost: 1, deletes: 1 });
    } finally {
      await cache.close();
      await proxy.close();
    }
  });

  it('compareAndSet: the CAS SET is sent once; a lost answer rejects rather than guess', async () => {
    const proxy = await startLossyProxy(memcached.port, 'reply', OP_SET);
    const cache = new MemcachedCache({ servers: proxy.url, timeoutMs: 300 });
    try {
      const k = key('cas');
      await memcachedSet(memcached.port, k, 'old-token', 60);
      // A resend would meet our own write and answer false, though this call wrote.
      await expect(cache.compareAndSet(k, 'old-token', 'new-token', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
      expect(await memcachedGet(memcached.port, k)).toBe('new-token');
      expect({ lost: proxy.lost(), sets: proxy.requests.get(OP_SET) }).toEqual({ lost: 1, sets: 1 });
    } finally {
      await cache.close();
      await proxy.close();
    }
  });
});

describe('MemcachedCache conditional writes delivered late', () => {
  // memcached's statuses for the late request: stored or deleted (0), or refused (2, EXISTS / NOT_STORED).
  const EXISTS = 2;

  // Each: the write that times out (its first copy held by the proxy), what the key held before it, and
  // the newer value another process writes before the held copy arrives.
  const cases: [string, number, (cache: MemcachedCache, k: string) => Promise<unknown>, string | undefined, string][] = [
    ['compareAndSet: a CAS SET that times out and reaches memcached after a newer write is refused; the newer value stays', OP_SET, (cache, k) => cache.compareAndSet(k, 'old-token', 'new-token', 60), 'old-token', 'newest-token'],
    ['deleteIfEquals: a CAS DELETE that times out and reaches memcached after another process took the lock leaves that lock', OP_DELETE, (cache, k) => cache.deleteIfEquals(k, 'owner-1'), 'owner-1', 'owner-2'],
    ['add: an ADD that times out and reaches memcached after another process took the lock leaves that lock', OP_ADD, (cache, k) => cache.add(k, 'owner-1', 60), undefined, 'owner-2'],
  ];

  it.each(cases)('%s', async (_, op, write, before, newer) => {
    const proxy = await startHoldingProxy(memcached.port, op);
    const cache = new MemcachedCache({ servers: proxy.url, timeoutMs: 200 });
    try {
      const k = key(`late-${op}`);
      if (before !== undefined) await memcachedSet(memcached.port, k, before, 60);
      await expect(write(cache, k)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout' });
      // Another process writes a newer value; then the held write arrives, and memcached refuses it.
      await memcachedSet(memcached.port, k, newer, 60);
      proxy.release();
      expect(await proxy.landed).toBe(EXISTS);
      expect(await memcachedGet(memcached.port, k)).toBe(newer);
      expect(proxy.requests.get(op)).toBe(1);
    } finally {
      await cache.close();
      await proxy.close();
    }
  });
});
