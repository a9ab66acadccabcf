import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { OfficialAccount, type TokenEvents } from '@wxkit/core';
import { memcachedGet, startMemcached, startMockWeChat } from '@wxkit/testing';
import { MemcachedCache } from '../src/index.js';

// Several servers fail one at a time: a process takes only the server whose call failed for down, and the
// apps whose entries live on the others go on sharing their tokens through them.
describe('MemcachedCache with one of two servers down', () => {
  it('an app on the live server still shares one token between hosts while the process also serves an app on the down one', async () => {
    const servers = await Promise.all([startMemcached(), startMemcached()]);
    const mock = await startMockWeChat();
    const urls = servers.map((server) => server.url);
    // Which server each app's entry lives on, as the cache places it.
    const probe = new MemcachedCache({ servers: urls });
    const apps = Array.from({ length: 24 }, () => mock.createApp());
    const where: (typeof apps)[] = [[], []];
    for (const app of apps) {
      const key = `wechat:access_token:${app.appId}`;
      await probe.set(key, 'where', 60);
      where[(await memcachedGet(servers[0]!.port, key)) === 'where' ? 0 : 1]!.push(app);
      await probe.delete(key);
    }
    await probe.close();
    const live = where[0]![0]!;
    const onDown = where[1]![0]!;
    expect(probe.partition(`wechat:access_token:${live.appId}`)).not.toBe(probe.partition(`wechat:access_token:${onDown.appId}`));
    // Its companions are on its server.
    for (const companion of [':lock', ':failed', ':refetch', ':forced', ':end', ':wxkit', ':wxkit:lock']) {
      expect(probe.partition(`wechat:access_token:${live.appId}${companion}`)).toBe(probe.partition(`wechat:access_token:${live.appId}`));
    }
    await servers[1]!.stop();
    // Two hosts, each with one MemcachedCache for all its apps, as a process holds one store.
    const unavailable: string[] = [];
    const hosts = [0, 1].map(() => {
      const cache = new MemcachedCache({ servers: urls });
      const fallbackDir = mkdtempSync(join(tmpdir(), 'wxkit-mc-host-'));
      const app = (account: typeof live) => {
        const client = new OfficialAccount({ appId: account.appId, secret: account.secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', fallbackDir, logger: false });
        client.on('cache.unavailable', (event: TokenEvents['cache.unavailable']) => unavailable.push(event.appId ?? ''));
        return client;
      };
      return { cache, down: app(onDown), live: app(live) };
    });
    try {
      // The app on the down server serves from each host's fallback: one fetch per host.
      for (const host of hosts) await host.down.accessToken.getToken();
      expect(mock.counters(onDown.appId).tokenRequests).toBe(2);
      const tokens: string[] = [];
      for (const host of hosts) tokens.push(await host.live.accessToken.getToken());
      // The app on the live server shares through it: one fetch for both hosts, the same token.
      expect(mock.counters(live.appId).tokenRequests).toBe(1);
      expect(tokens[0]).toBe(tokens[1]);
      expect(await memcachedGet(servers[0]!.port, `wechat:access_token:${live.appId}`)).toContain(tokens[0]!);
      // Only the clients whose entries the down server held heard of an outage.
      expect(unavailable.length).toBeGreaterThan(0);
      expect(unavailable.every((appId) => appId === onDown.appId)).toBe(true);
    } finally {
      for (const host of hosts) {
        await host.down.close();
        await host.live.close();
        await host.cache.close();
      }
      await Promise.all([...servers.map((server) => server.stop()), mock.close()]);
    }
  });
});
