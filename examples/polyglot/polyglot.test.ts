import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfficialAccount, type TokenCache } from '@wxkit/core';
import { MemcachedCache } from '@wxkit/memcached';
import { RedisCache } from '@wxkit/redis';
import { startMemcached, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { runChild } from '../child-process.js';

// The programs a PHP or Python developer writes from docs/key-schema.md alone, run as child processes
// against the same Redis and Memcached as wxkit. Debian's php-cli, php-redis, php-memcached,
// python3-redis and python3-pymemcache; Debian's own python3 (the one those modules are built for).
const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));
const PYTHON = '/usr/bin/python3';

async function run(command: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const result = await runChild(command, args, { timeoutMs: 30_000 });
  return { code: result.status, out: result.stdout.trim(), err: result.stderr.trim() };
}
const php = (script: string, ...args: string[]) => run('php', [here(`./php/${script}`), ...args]);
const python = (script: string, ...args: string[]) => run(PYTHON, [here(`./python/${script}`), ...args]);

let mock: MockWeChat;
let redis: StoreServer;
let memcached: StoreServer;
beforeAll(async () => {
  [mock, redis, memcached] = await Promise.all([startMockWeChat(), startRedis(), startMemcached()]);
});
afterAll(async () => {
  await Promise.all([mock?.close(), redis?.stop(), memcached?.stop()]);
});

function client(cache: TokenCache, app: { appId: string; secret: string }): OfficialAccount {
  return new OfficialAccount({ ...app, baseUrl: mock.url, cache, logger: false });
}

describe.each([
  ['Redis', 'redis', () => `127.0.0.1:${redis.port}`, () => new RedisCache(redis.url)],
  ['Memcached', 'memcached', () => memcached.url, () => new MemcachedCache(memcached.url)],
] as const)('native schema on %s', (_name, kind, address, open) => {
  it('PHP and Python read the token wxkit wrote', async () => {
    const app = mock.createApp();
    const cache = open();
    const token = await client(cache, app).accessToken.getToken();
    expect(await php('native.php', 'read', kind, address(), app.appId)).toMatchObject({ code: 0, out: token });
    expect(await python('native.py', 'read', kind, address(), app.appId)).toMatchObject({ code: 0, out: token });
    await cache.close?.();
  });

  it('wxkit uses a token PHP or Python wrote, without an upstream fetch', async () => {
    for (const [writer, write] of [
      ['php', (appId: string, token: string) => php('native.php', 'write', kind, address(), appId, token, '7200')],
      ['python', (appId: string, token: string) => python('native.py', 'write', kind, address(), appId, token, '7200')],
    ] as const) {
      const app = mock.createApp();
      const token = `FROM_${writer.toUpperCase()}_${app.appId}`;
      expect((await write(app.appId, token)).code, writer).toBe(0);
      const cache = open();
      expect(await client(cache, app).accessToken.getToken()).toBe(token);
      expect(mock.counters(app.appId).tokenRequests).toBe(0);
      await cache.close?.();
    }
  });
});
