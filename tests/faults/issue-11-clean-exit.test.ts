import { fork, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startMemcached, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { FileCache } from '@wxkit/core';
import { built } from './helpers.js';

// Issue 11, item 11: after close() of a client and its store, the process exits on its own, whether the
// store answered, refused, or never answered at all.

let mock: MockWeChat;
let redis: StoreServer;
let memcached: StoreServer;
let silent: Server;
let silentPort: number;
let closedPort: number;
const sockets = new Set<Socket>();
const dir = mkdtempSync(join(tmpdir(), 'wxkit-exit-'));

beforeAll(async () => {
  [mock, redis, memcached, closedPort] = await Promise.all([startMockWeChat(), startRedis(), startMemcached(), freePort()]);
  // Accepts connections and never sends a byte.
  silent = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // A process that exits may reset its connection: no failure of the test.
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  silentPort = (silent.address() as { port: number }).port;
});
afterAll(async () => {
  for (const socket of sockets) socket.destroy();
  await Promise.all([mock?.close(), redis?.stop(), memcached?.stop(), new Promise((resolve) => silent?.close(resolve))]);
  rmSync(dir, { recursive: true, force: true });
});

function runChild(store: { module: string; export: string; args: unknown[] }) {
  const { appId, secret } = mock.createApp();
  const script = fileURLToPath(new URL('./fixtures/client-exit.mjs', import.meta.url));
  const child = fork(script, [JSON.stringify({ baseUrl: mock.url, appId, secret, store })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let report: { outcomes: string[]; heldOpenBy?: string[] } | undefined;
  child.on('message', (message: NonNullable<typeof report>) => (report = { ...report, ...message }));
  return new Promise<{ code: number | null; report: typeof report }>((resolve) => {
    // A bound on a failure, not a measurement: a child still running this long after its work is held open.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve({ code: null, report });
    }, 20_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, report });
    });
  });
}

const stores: Record<string, () => { module: string; export: string; args: unknown[] }> = {
  'RedisCache, server up': () => ({ module: built.redis, export: 'RedisCache', args: [redis.url] }),
  'RedisCache, nothing listening': () => ({ module: built.redis, export: 'RedisCache', args: [`redis://127.0.0.1:${closedPort}`] }),
  'RedisCache, a server that never answers': () => ({ module: built.redis, export: 'RedisCache', args: [`redis://127.0.0.1:${silentPort}`] }),
  'MemcachedCache, server up': () => ({ module: built.memcached, export: 'MemcachedCache', args: [memcached.url] }),
  'MemcachedCache, nothing listening': () => ({ module: built.memcached, export: 'MemcachedCache', args: [`127.0.0.1:${closedPort}`] }),
  'MemcachedCache, a server that never answers': () => ({ module: built.memcached, export: 'MemcachedCache', args: [`127.0.0.1:${silentPort}`] }),
  FileCache: () => ({ module: built.file, export: 'FileCache', args: [{ dir }] }),
  'KeyvCache on @keyv/redis, server up': () => ({ module: keyvFixture, export: 'KeyvRedisCache', args: [redis.url] }),
  'KeyvCache on @keyv/redis, nothing listening': () => ({ module: keyvFixture, export: 'KeyvRedisCache', args: [`redis://127.0.0.1:${closedPort}`] }),
};
const keyvFixture = fileURLToPath(new URL('./fixtures/keyv-redis-cache.mjs', import.meta.url));

describe('item 11: a process exits on its own after close()', () => {
  it.each(Object.keys(stores))('%s', async (what) => {
    const { code, report } = await runChild(stores[what]!());
    // The calls worked (through the fallback when the store was away), and the process ended by itself,
    // not held open by a keep-alive socket or a retry timer (heldOpenBy names what was).
    expect({ code, outcomes: report?.outcomes, heldOpenBy: report?.heldOpenBy }).toEqual({ code: 0, outcomes: ['ok', 'ok'], heldOpenBy: undefined });
  });
});

describe('a process whose call gave up on a wait for another process', () => {
  it('exits on its own, without close(), on a store that holds nothing open (FileCache)', async () => {
    const { appId, secret } = mock.createApp();
    // Another process holds the refresh lock for ten minutes and writes nothing.
    const holder = new FileCache({ dir });
    await holder.set(`wechat:stable_access_token:${appId}:lock`, 'other-host:4242:abcdef123456', 600);
    const script = fileURLToPath(new URL('./fixtures/abandoned-wait.mjs', import.meta.url));
    const store = { module: built.file, export: 'FileCache', args: [{ dir }] };
    const child = fork(script, [JSON.stringify({ baseUrl: mock.url, appId, secret, store })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    // The wait it gave up on would have gone on for 10 minutes.
    expect(await givenUpExit(child)).toEqual({ code: 0, outcome: 'gave up' });
    expect(mock.counters(appId).tokenRequests).toBe(0);
  });
});

describe('a process whose call gave up on its token service', () => {
  it('exits on its own, without close(): the request to the service is let go, not held open until timeoutMs', async () => {
    // The service takes the request and never answers (it waits for its own lock, or hangs).
    let received!: () => void;
    const asked = new Promise<void>((resolve) => (received = resolve));
    const open = new Set<Socket>();
    const service = createServer((socket) => {
      open.add(socket);
      socket.on('close', () => open.delete(socket));
      socket.on('error', () => undefined);
      socket.once('data', () => received());
    });
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    try {
      const sourceUrl = `http://127.0.0.1:${(service.address() as { port: number }).port}`;
      const script = fileURLToPath(new URL('./fixtures/abandoned-source.mjs', import.meta.url));
      const child = fork(script, [JSON.stringify({ appId: 'wx0123456789abcdef', sourceUrl })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      void asked.then(() => child.connected && child.send('give up'));
      // The request it gave up on would have been held for 10 minutes.
      expect(await givenUpExit(child)).toEqual({ code: 0, outcome: 'gave up' });
    } finally {
      for (const socket of open) socket.destroy();
      await new Promise((resolve) => service.close(resolve));
    }
  });
});

/**
 * The exit code of a fixture that gave up on a call (tests/faults/fixtures/report-exit.mjs), with what it
 * reported: how its call ended and, had it stayed alive, what held it open. Killed after 20 s: a bound on
 * a failure, not a measurement.
 */
async function givenUpExit(child: ChildProcess): Promise<{ code: number | null; outcome?: string; heldOpenBy?: string[] }> {
  let report: { outcome?: string; heldOpenBy?: string[] } = {};
  child.on('message', (message: typeof report) => (report = { ...report, ...message }));
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(null);
    }, 20_000);
    child.once('exit', (exitCode) => {
      clearTimeout(timer);
      resolve(exitCode);
    });
  });
  return { code, ...report };
}
