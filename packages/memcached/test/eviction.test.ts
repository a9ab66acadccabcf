import { createConnection } from 'node:net';
import { memcachedGetBytes, startMemcached, startMockWeChat, WorkerGroup, type MockWeChat, type StoreServer, type WorkerConfig } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// A memcached with 2 MB (the least memcached takes with its default item size limit) that runs out of
// memory: its LRU drops the fleet's token entry before its TTL. The fleet notices at its next read and
// fetches once, under the lock, as on a cold start, and no send is lost on the classic endpoint, where
// each fetch ends the token before it.
let memcached: StoreServer;
let mock: MockWeChat;
let group: WorkerGroup | undefined;
beforeAll(async () => {
  [memcached, mock] = await Promise.all([startMemcached({ args: ['-m', '2'] }), startMockWeChat({ latencyMs: 20 })]);
});
afterAll(async () => {
  await group?.stop();
  await Promise.all([memcached?.stop(), mock?.close()]);
});

/**
 * Writes items as large as `key`'s (the same slab class, so the same LRU) until memcached has dropped `key`.
 * The key is looked at only after each 4 MB written (twice the memory): a `get` marks it active, and one
 * looked at after every batch would be bumped back up its LRU before it ever reached the tail.
 */
async function evict(port: number, key: string): Promise<number> {
  const size = key.length + (await memcachedGetBytes(port, key))!.length;
  const perLook = Math.ceil((4 << 20) / size);
  const socket = createConnection({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  let written = 0;
  try {
    do {
      let batch = '';
      for (let i = 0; i < perLook; i += 1, written += 1) {
        const name = `filler:${written}:`;
        const value = 'x'.repeat(Math.max(1, size - name.length));
        batch += `set ${name} 0 3600 ${value.length} noreply\r\n${value}\r\n`;
      }
      await new Promise<void>((resolve, reject) => socket.write(batch, (error) => (error ? reject(error) : resolve())));
      // A `get` on the same connection is answered after every `set` before it.
      await new Promise<void>((resolve) => {
        socket.once('data', () => resolve());
        socket.write('get filler:0:\r\n');
      });
    } while ((await memcachedGetBytes(port, key)) !== undefined);
  } finally {
    socket.destroy();
  }
  return written;
}

describe('MemcachedCache: the token entry evicted under memory pressure', () => {
  it('3 processes on the classic endpoint fetch once again after the eviction, and lose no send', async () => {
    const app = mock.createApp();
    const store = { module: new URL('../dist/index.js', import.meta.url).href, export: 'MemcachedCache', args: [memcached.url] };
    const config: WorkerConfig = { baseUrl: mock.url, ...app, tokenEndpoint: 'classic', store, clientOptions: { memoMs: 0 } };
    group = await WorkerGroup.start(3, config);
    const first = await group.run('send', 10);
    expect(first.flatMap((result) => result.errors)).toEqual([]);
    expect(mock.counters(app.appId).tokenRequests).toBe(1);

    const key = `wechat:access_token:${app.appId}`;
    expect(await evict(memcached.port, key)).toBeGreaterThan(0);
    expect(await memcachedGetBytes(memcached.port, key)).toBeUndefined();

    const before = mock.counters(app.appId);
    const results = await group.run('send', 20);
    const after = mock.counters(app.appId);
    expect(results.flatMap((result) => result.errors)).toEqual([]);
    expect(after.templateSends - before.templateSends).toBe(3 * 20);
    // One refetch for the fleet (the lock), not one per process: each would end the token before it.
    expect(after.tokenRequests - before.tokenRequests).toBe(1);
    expect(await memcachedGetBytes(memcached.port, key)).toBeDefined();
  });
});
