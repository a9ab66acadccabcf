import { spawn } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, memcachedGet, startMemcached, type StoreServer } from '@wxkit/testing';
import { childThatExitsByItself, type CacheChildOp } from '@wxkit/testing/suite';

// A process that used a MemcachedCache and closed it must end by itself, whatever state the servers
// were in: a process kept alive by a forgotten socket never ends its job or restarts cleanly.
const built = new URL('../dist/index.js', import.meta.url).href;
const spec = (servers: string[]) => ({ module: built, export: 'MemcachedCache', args: [{ servers, timeoutMs: 200 }] });

/** A server that accepts connections and never answers nor closes them, as a hung memcached would. */
interface HungServer {
  readonly url: string;
  /** Binary-protocol requests it has received. */
  readonly requests: () => number;
  close(): Promise<void>;
}

async function startHungServer(): Promise<HungServer> {
  const sockets = new Set<Socket>();
  let requests = 0;
  // allowHalfOpen: the client's FIN does not make it close its side; only the client can end the socket.
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let pending = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 24 && pending.length >= 24 + pending.readUInt32BE(8)) {
        requests += 1;
        pending = pending.subarray(24 + pending.readUInt32BE(8));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `127.0.0.1:${(server.address() as { port: number }).port}`,
    requests: () => requests,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

const everyOp = (k: string): CacheChildOp[] => [
  { op: 'set', key: k, value: 'v', ttlSeconds: 60 },
  { op: 'get', key: k },
  { op: 'add', key: `${k}:lock`, value: 'owner', ttlSeconds: 60 },
  { op: 'deleteIfEquals', key: `${k}:lock`, value: 'owner' },
  { op: 'compareAndSet', key: k, expected: 'v', value: 'w', ttlSeconds: 60 },
];

let memcached: StoreServer;
let hung: HungServer;
beforeAll(async () => {
  [memcached, hung] = await Promise.all([startMemcached(), startHungServer()]);
});
afterAll(async () => {
  await Promise.all([memcached?.stop(), hung?.close()]);
});

describe('a process that closed its MemcachedCache exits by itself, and close() leaves nothing open', () => {
  it('nothing listens on the port', async () => {
    const { code, results, resources } = await childThatExitsByItself(spec([`127.0.0.1:${await freePort()}`]), everyOp('wxkit-test:exit-refused'));
    expect(results.map((r) => r.error)).toEqual(everyOp('').map(() => 'ERR_WXKIT_CACHE'));
    expect({ code, resources }).toEqual({ code: 0, resources: [] });
  });

  it('a server that accepts and never answers', async () => {
    const { code, results, resources } = await childThatExitsByItself(spec([hung.url]), everyOp('wxkit-test:exit-hung'));
    expect(results.map((r) => r.error)).toEqual(everyOp('').map(() => 'ERR_WXKIT_CACHE'));
    expect({ code, resources }).toEqual({ code: 0, resources: [] });
  });

  it('several servers: one refuses, one hangs, two answer (and stay connected until close())', async () => {
    const second = await startMemcached();
    try {
      const servers = [`127.0.0.1:${await freePort()}`, hung.url, memcached.url, second.url];
      const keys = Array.from({ length: 16 }, (_, i) => `wxkit-test:exit-several:${i}`);
      const ops = keys.map((key): CacheChildOp => ({ op: 'set', key, value: 'v', ttlSeconds: 60 }));
      const { code, results, resources } = await childThatExitsByItself(spec(servers), ops);
      // Keys hash over the four servers: writes land on both answering servers, the others fail; none hangs.
      const landed = await Promise.all([memcached, second].map(async (server) => (await Promise.all(keys.map((key) => memcachedGet(server.port, key)))).filter(Boolean).length));
      expect(landed.every((count) => count > 0)).toBe(true);
      expect(results.filter((r) => r.error === undefined)).toHaveLength(landed[0]! + landed[1]!);
      expect(results.filter((r) => r.error !== undefined).map((r) => r.error)).toEqual(Array(keys.length - landed[0]! - landed[1]!).fill('ERR_WXKIT_CACHE'));
      expect({ code, resources }).toEqual({ code: 0, resources: [] });
    } finally {
      await second.stop();
    }
  });

  it('close() while requests wait on a server that never answers: they reject with ERR_WXKIT_CACHE', async () => {
    // The child starts five calls with a long timeout, tells us, and closes the cache when we say so:
    // once the hung server holds all five requests.
    const child = spawn(process.execPath, ['--input-type=module', '-e', CLOSE_WHILE_PENDING], {
      env: { ...process.env, WXKIT_MODULE: built, WXKIT_SERVERS: hung.url },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    // 'close', not 'exit': the report, sent just before the child exits, may still be in the channel at 'exit'.
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    const before = hung.requests();
    const report = new Promise<{ settled: string[]; resources: string[] } | undefined>((resolve) => {
      child.on('message', (message: { started?: boolean; settled?: string[]; resources?: string[] }) => {
        if (message.started) {
          const poll = setInterval(() => {
            if (hung.requests() - before < 5) return;
            clearInterval(poll);
            child.send('close');
          }, 20);
        } else resolve(message as { settled: string[]; resources: string[] });
      });
      void exited.then(() => resolve(undefined));
    });
    let timer: NodeJS.Timeout | undefined;
    // A bound on a failure, not a measurement: the calls would otherwise wait for their 60 s timeout.
    const bound = new Promise<'no report'>((resolve) => (timer = setTimeout(() => resolve('no report'), 15_000)));
    const reported = await Promise.race([report, bound]);
    const code = reported === 'no report' ? null : await Promise.race([exited, bound.then(() => null)]);
    clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    expect(reported).toEqual({ settled: Array(5).fill('ERR_WXKIT_CACHE'), resources: [] });
    expect(code).toBe(0);
  });
});

const CLOSE_WHILE_PENDING = `
const { MemcachedCache } = await import(process.env.WXKIT_MODULE);
const cache = new MemcachedCache({ servers: process.env.WXKIT_SERVERS, timeoutMs: 60000 });
const calls = [
  cache.get('wxkit-test:pending:a'),
  cache.set('wxkit-test:pending:b', 'v', 60),
  cache.add('wxkit-test:pending:c', 'v', 60),
  cache.deleteIfEquals('wxkit-test:pending:d', 'v'),
  cache.compareAndSet('wxkit-test:pending:e', 'v', 'w', 60),
];
// Handled from the start: close() is what makes them reject.
const settling = Promise.allSettled(calls);
await new Promise((resolve) => {
  process.once('message', resolve);
  process.send({ started: true });
});
await cache.close();
const settled = (await settling).map((call) => call.status === 'rejected' ? call.reason?.code ?? String(call.reason) : 'resolved');
await new Promise((resolve) => setImmediate(resolve));
const resources = process.getActiveResourcesInfo().filter((name) => name !== 'PipeWrap' && name !== 'TTYWrap');
process.send({ settled, resources }, () => process.disconnect());
`;
