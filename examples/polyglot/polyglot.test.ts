import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfficialAccount, easyWeChat4, wechatpy, type KeySchema, type TokenCache } from '@wxkit/core';
import { MemcachedCache } from '@wxkit/memcached';
import { RedisCache } from '@wxkit/redis';
import { WorkerGroup, startMemcached, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';

// The programs a PHP or Python developer writes from docs/key-schema.md alone, run as child processes
// against the same Redis and Memcached as wxkit. Debian's php-cli, php-redis, php-memcached,
// python3-redis and python3-pymemcache; Debian's own python3 (the one those modules are built for).
const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));
const PYTHON = '/usr/bin/python3';

function run(command: string, args: string[]): { code: number | null; out: string; err: string } {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: 30_000 });
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

function client(cache: TokenCache, app: { appId: string; secret: string }, schema?: KeySchema): OfficialAccount {
  return new OfficialAccount({ ...app, baseUrl: mock.url, cache, logger: false, ...(schema ? { schema } : {}) });
}

describe.each([
  ['Redis', 'redis', () => `127.0.0.1:${redis.port}`, () => new RedisCache(redis.url)],
  ['Memcached', 'memcached', () => memcached.url, () => new MemcachedCache(memcached.url)],
] as const)('native schema on %s', (_name, kind, address, open) => {
  it('PHP and Python read the token wxkit wrote', async () => {
    const app = mock.createApp();
    const cache = open();
    const token = await client(cache, app).accessToken.getToken();
    expect(php('native.php', 'read', kind, address(), app.appId)).toMatchObject({ code: 0, out: token });
    expect(python('native.py', 'read', kind, address(), app.appId)).toMatchObject({ code: 0, out: token });
    await cache.close?.();
  });

  it('wxkit uses a token PHP or Python wrote, without an upstream fetch', async () => {
    for (const [writer, write] of [
      ['php', (appId: string, token: string) => php('native.php', 'write', kind, address(), appId, token, '7200')],
      ['python', (appId: string, token: string) => python('native.py', 'write', kind, address(), appId, token, '7200')],
    ] as const) {
      const app = mock.createApp();
      const token = `FROM_${writer.toUpperCase()}_${app.appId}`;
      expect(write(app.appId, token).code, writer).toBe(0);
      const cache = open();
      expect(await client(cache, app).accessToken.getToken()).toBe(token);
      expect(mock.counters(app.appId).tokenRequests).toBe(0);
      await cache.close?.();
    }
  });
});

describe('joining an existing deployment', () => {
  it('EasyWeChat 4 on ThinkPHP (PHP’s own serialize, md5 and json_encode): wxkit reads it, refreshes it, PHP reads the new one', async () => {
    const app = mock.createApp();
    const address = `127.0.0.1:${redis.port}`;
    expect(php('easywechat4_thinkphp.php', 'write', address, 'think:', app.appId, app.secret, 'PHP_TOKEN_1', '7200').code).toBe(0);
    const cache = new RedisCache(redis.url);
    const node = client(cache, app, easyWeChat4({ prefix: 'think:' }));
    expect(await node.accessToken.getToken()).toBe('PHP_TOKEN_1');
    expect(mock.counters(app.appId).tokenRequests).toBe(0);

    const fresh = await node.accessToken.forceRefresh();
    expect(mock.counters(app.appId).classicTokenRequests).toBe(1);
    expect(php('easywechat4_thinkphp.php', 'read', address, 'think:', app.appId, app.secret)).toMatchObject({ code: 0, out: fresh });
    await cache.close();
  });

  it('wechatpy’s RedisStorage: wxkit reads it, refreshes it, Python reads the new one', async () => {
    const app = mock.createApp();
    const address = `127.0.0.1:${redis.port}`;
    expect(python('wechatpy_redis.py', 'write', address, app.appId, 'PY_TOKEN_1', '7200').code).toBe(0);
    const cache = new RedisCache(redis.url);
    const node = client(cache, app, wechatpy());
    expect(await node.accessToken.getToken()).toBe('PY_TOKEN_1');
    expect(mock.counters(app.appId).tokenRequests).toBe(0);
    const fresh = await node.accessToken.forceRefresh();
    expect(python('wechatpy_redis.py', 'read', address, app.appId)).toMatchObject({ code: 0, out: fresh });
    await cache.close();
  });

  it('a mixed fleet: one PHP app, two Node processes, one Redis, tokens killed upstream: 0 lost on the Node side, ≤ 1 Node fetch per invalidation', async () => {
    const app = mock.createApp();
    const address = `127.0.0.1:${redis.port}`;
    // Asynchronous: the PHP app calls the mock server, which runs in this process's event loop.
    const phpApp = async (sends: number) => {
      const child = spawn('php', [here('./php/mixed_fleet_app.php'), address, 'think:', mock.url, app.appId, app.secret, String(sends)]);
      let out = '';
      let err = '';
      child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
      expect(code, err).toBe(0);
      return JSON.parse(out) as { sent: number; failed: number; fetches: number; rejected: number };
    };
    const group = await WorkerGroup.start(2, {
      baseUrl: mock.url,
      ...app,
      tokenEndpoint: 'classic',
      store: { module: new URL('../../packages/redis/dist/index.js', import.meta.url).href, export: 'RedisCache', args: [redis.url] },
      schema: { name: 'easyWeChat4', options: { prefix: 'think:' } },
    });
    const nodeFetches = (results: { events: Record<string, number> }[]) => results.reduce((n, r) => n + (r.events['access_token.fetched'] ?? 0), 0);
    const expectAllSent = (results: { errors: string[]; ok: number }[], each: number) => {
      expect(results.flatMap((r) => r.errors)).toEqual([]);
      expect(results.map((r) => r.ok)).toEqual(results.map(() => each));
    };
    try {
      // The PHP app starts first and fetches; the Node processes use its token.
      expect(await phpApp(5)).toMatchObject({ sent: 5, failed: 0, fetches: 1 });
      const warm = await group.run('send', 10);
      expectAllSent(warm, 10);
      expect(nodeFetches(warm)).toBe(0);

      // 1. Killed upstream while Node sends: one Node process refreshes for both; PHP then reads it.
      mock.invalidateTokens(app.appId);
      const first = await group.run('send', 20);
      expectAllSent(first, 20);
      expect(nodeFetches(first)).toBe(1);
      expect(await phpApp(5)).toMatchObject({ sent: 5, failed: 0, fetches: 0 });

      // 2. Killed again, and the PHP app meets it first: it refreshes on its own (no lock), and the
      // Node processes pick up its token after one rejection each, without fetching.
      mock.invalidateTokens(app.appId);
      expect(await phpApp(5)).toMatchObject({ sent: 5, failed: 0, fetches: 1, rejected: 1 });
      const second = await group.run('send', 20);
      expectAllSent(second, 20);
      expect(nodeFetches(second)).toBe(0);
    } finally {
      await group.stop();
    }
  });
});
