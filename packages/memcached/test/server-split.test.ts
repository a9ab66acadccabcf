import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { OfficialAccount, wxJava } from '@wxkit/core';
import { startMemcached, startMockWeChat } from '@wxkit/testing';
import { MemcachedCache } from '../src/index.js';

// A peer's key schema may put an entry's refresh lock under a key of its own (WxJava's
// `wx:lock:{appId}:accessTokenLock`), which MemcachedCache places by its own hash.
describe('MemcachedCache with the server of an entry\'s lock down, not the entry\'s', () => {
  it('the hosts serve the token from their fallbacks, as when the entry\'s own server is down', async () => {
    const servers = await Promise.all([startMemcached(), startMemcached(), startMemcached()]);
    const mock = await startMockWeChat();
    const urls = servers.map((server) => server.url);
    const schema = wxJava();
    const probe = new MemcachedCache({ servers: urls });
    let app = mock.createApp();
    const entryKey = () => schema.accessTokenKey({ kind: 'app', appId: app.appId, endpoint: 'classic' } as never);
    for (let i = 0; probe.partition(schema.lockKey(entryKey())) === probe.partition(entryKey()); i += 1) {
      if (i > 200) throw new Error('no app whose lock is on another server');
      app = mock.createApp();
    }
    const lockServer = servers.find((server) => probe.partition(schema.lockKey(entryKey())).endsWith(`:${server.port}`))!;
    await probe.close();
    await lockServer.stop();
    const hosts = [0, 1].map(() => {
      const cache = new MemcachedCache({ servers: urls });
      const fallbackDir = mkdtempSync(join(tmpdir(), 'wxkit-mc-lock-'));
      return { cache, client: new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, schema, tokenEndpoint: 'classic', fallbackDir, logger: false }) };
    });
    try {
      for (const host of hosts) await expect(host.client.accessToken.getToken()).resolves.toEqual(expect.any(String));
      // One fetch per host, as for a store that is down.
      expect(mock.counters(app.appId).tokenRequests).toBe(2);
    } finally {
      for (const host of hosts) {
        await host.client.close();
        await host.cache.close();
      }
      await Promise.all([...servers.map((server) => server.stop()), mock.close()]);
    }
  });
});
