import { createServer } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from '@keyv/redis';
import { CacheError } from '@wxkit/core';
import { freePort, redisCli, startRedis, type StoreServer } from '@wxkit/testing';
import { childThatExitsByItself } from '@wxkit/testing/suite';
import { RedisCache } from '../src/index.js';

// Each store failure names its cause on the CacheError (`reason`) and in its message, against real
// redis-server processes set up to fail in that one way.
const PASSWORD = 'pw-4d1c9e0b7a';
let withPassword: StoreServer;
let twoDatabases: StoreServer;
let tls: StoreServer;
let replica: StoreServer;
let lostReplicas: StoreServer;
let acl: StoreServer;
beforeAll(async () => {
  [withPassword, twoDatabases, tls, replica, lostReplicas, acl] = await Promise.all([
    startRedis({ args: ['--requirepass', PASSWORD] }),
    startRedis({ args: ['--databases', '2'] }),
    startRedis({ tls: true }),
    // A replica of a primary that is not there: it serves reads and refuses writes (READONLY).
    freePort().then((port) => startRedis({ args: ['--replicaof', '127.0.0.1', String(port)] })),
    // A primary that lost its replicas: min-replicas-to-write refuses writes (NOREPLICAS).
    startRedis({ args: ['--min-replicas-to-write', '1'] }),
    // An ACL user that may read and not write (NOPERM).
    startRedis({ args: ['--user', 'reader', 'on', `>${PASSWORD}`, '~*', '+@read', '+@connection'] }),
  ]);
});
afterAll(async () => {
  await Promise.all([withPassword, twoDatabases, tls, replica, lostReplicas, acl].map((server) => server?.stop()));
});

async function failure(url: string | { url: string; connectTimeoutMs?: number }, op: 'get' | 'set' = 'get'): Promise<CacheError> {
  const cache = new RedisCache(url);
  try {
    if (op === 'get') await cache.get('wechat:reason-test');
    else await cache.set('wechat:reason-test', 'value', 60);
  } catch (error) {
    expect(error).toBeInstanceOf(CacheError);
    expect((error as Error).message).not.toContain(PASSWORD);
    return error as CacheError;
  } finally {
    await cache.close();
  }
  throw new Error(`${op} succeeded`);
}

describe('RedisCache failures name their cause', () => {
  it('auth: no password (NOAUTH), a wrong password, an unknown user (WRONGPASS)', async () => {
    const url = new URL(withPassword.url);
    const none = await failure(withPassword.url);
    expect(none.reason).toBe('auth');
    expect(none.message).toMatch(/authentication failed/);
    url.password = 'not-the-password';
    expect((await failure(url.href)).reason).toBe('auth');
    url.username = 'nobody';
    expect((await failure(url.href)).reason).toBe('auth');
    // The password alone where the user name goes (redis-cli's `-u redis://secret@host`): node-redis sends
    // it as a user name, the server refuses it, and the message shows neither (failure() checks).
    url.username = PASSWORD;
    url.password = '';
    const userinfo = await failure(url.href);
    expect(userinfo.reason).toBe('auth');
    expect(userinfo.message).toContain('redis://***@127.0.0.1:');
    url.username = '';
    url.password = PASSWORD;
    const cache = new RedisCache(url.href);
    await expect(cache.get('wechat:reason-test')).resolves.toBeUndefined();
    await cache.close();
  });

  it('refused: nothing listens on the port', async () => {
    const error = await failure(`redis://127.0.0.1:${await freePort()}`);
    expect(error.reason).toBe('refused');
    expect(error.message).toMatch(/connection refused/);
  });

  it('tls: a certificate nobody said to trust, and TLS against a plain server', async () => {
    const untrusted = await failure(tls.url);
    expect(untrusted.reason).toBe('tls');
    expect(untrusted.message).toMatch(/TLS handshake failed/);
    // A plain server reads the TLS hello as a command and never answers it.
    const plain = await failure({ url: twoDatabases.url.replace('redis:', 'rediss:'), connectTimeoutMs: 300 });
    expect(plain.reason).toBe('timeout');
    // The message names the scheme, as it does for the reverse mistake below.
    expect(plain.message).toMatch(/a server without TLS asked with rediss:\/\/ never answers/);
    // Plain text against a TLS-only server: it closes the connection at once.
    const reset = await failure(tls.url.replace('rediss:', 'redis:'));
    expect(reset.reason).toBe('disconnected');
    expect(reset.message).toMatch(/rediss:\/\//);
  });

  it('database: /5 on a server with 2 databases', async () => {
    const error = await failure(`${twoDatabases.url}/5`);
    expect(error.reason).toBe('database');
    expect(error.message).toMatch(/no such database/);
    const cache = new RedisCache(`${twoDatabases.url}/1`);
    await expect(cache.get('wechat:reason-test')).resolves.toBeUndefined();
    await cache.close();
  });

  it('readonly: a replica (READONLY) and a primary without its replicas (NOREPLICAS) read, and refuse writes', async () => {
    for (const server of [replica, lostReplicas]) {
      const cache = new RedisCache(server.url);
      await expect(cache.get('wechat:reason-test')).resolves.toBeUndefined();
      await cache.close();
      const error = await failure(server.url, 'set');
      expect(error.reason, server.url).toBe('readonly');
      expect(error.message).toMatch(/refuses writes/);
    }
  });

  it('readonly: a full server (maxmemory with noeviction: OOM) reads, and refuses writes, the lock included', async () => {
    redisCli(twoDatabases.port, 'CONFIG', 'SET', 'maxmemory', '1');
    try {
      const cache = new RedisCache(twoDatabases.url);
      try {
        await expect(cache.get('wechat:reason-test')).resolves.toBeUndefined();
        await expect(cache.add('wechat:reason-test:lock', 'owner', 60)).rejects.toMatchObject({ reason: 'readonly' });
      } finally {
        await cache.close();
      }
      const error = await failure(twoDatabases.url, 'set');
      expect(error.reason).toBe('readonly');
      expect(error.message).toMatch(/memory full.*give Redis memory/);
    } finally {
      redisCli(twoDatabases.port, 'CONFIG', 'SET', 'maxmemory', '0');
    }
  });

  it('permission: an ACL user without write rights (NOPERM)', async () => {
    const url = acl.url.replace('redis://', `redis://reader:${PASSWORD}@`);
    const cache = new RedisCache(url);
    await expect(cache.get('wechat:reason-test')).resolves.toBeUndefined();
    await cache.close();
    const error = await failure(url, 'set');
    expect(error.reason).toBe('permission');
    expect(error.message).toContain('reader:***@');
  });

  it('protocol: an HTTP server on the port; a process that closed the cache exits by itself', async () => {
    const http = createServer((_, response) => response.end('not redis'));
    const port = await freePort();
    await new Promise<void>((resolve) => http.listen(port, '127.0.0.1', resolve));
    const url = `redis://127.0.0.1:${port}`;
    try {
      const error = await failure(url);
      expect(error).toMatchObject({
        reason: 'protocol',
        message: `RedisCache get failed: the server at ${url} does not speak the Redis protocol (an HTTP server?); check the host and port: they lead to another kind of server`,
      });
      // No reconnect loop, timer or socket left behind once close() is done.
      const spec = { module: new URL('../dist/index.js', import.meta.url).href, export: 'RedisCache', args: [url] };
      const { code, results, resources } = await childThatExitsByItself(spec, [{ op: 'get', key: 'wechat:reason-test' }]);
      expect(results).toEqual([{ error: 'ERR_WXKIT_CACHE' }]);
      expect({ code, resources: code === 0 ? [] : resources }).toEqual({ code: 0, resources: [] });
    } finally {
      http.closeAllConnections();
      await new Promise((resolve) => http.close(resolve));
    }
  });

  it("timeout and disconnected: on a caller's client that reconnects, a command past commandOptions.timeout (TimeoutError), and one with the offline queue disabled", async () => {
    const own = await startRedis();
    const timed = createClient({ url: own.url, commandOptions: { timeout: 300 } });
    const offline = createClient({ url: own.url, disableOfflineQueue: true });
    const clients = [timed, offline];
    for (const client of clients) client.on('error', () => undefined);
    await Promise.all(clients.map((client) => client.connect()));
    const [timedCache, offlineCache] = clients.map((client) => new RedisCache({ client }));
    try {
      const reconnecting = clients.map((client) => new Promise((resolve) => (client as unknown as NodeJS.EventEmitter).once('reconnecting', resolve)));
      await own.stop();
      await Promise.all(reconnecting);
      // node-redis holds the command while it reconnects, then fails it with its TimeoutError, which has
      // no message (a command already sent has no timeout: node-redis bounds the wait to be sent only).
      const timedOut = (await timedCache!.get('wechat:reason-test').catch((error: unknown) => error)) as CacheError;
      expect(timedOut).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout', message: expect.stringMatching(/no answer in time/) });
      expect([(timedOut.cause as Error).constructor.name, (timedOut.cause as Error).message]).toEqual(['TimeoutError', '']);
      const offlineError = (await offlineCache!.get('wechat:reason-test').catch((error: unknown) => error)) as CacheError;
      expect(offlineError).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'disconnected' });
      expect((offlineError.cause as Error).message).toBe('The client is offline');
    } finally {
      await Promise.all([timedCache!.close(), offlineCache!.close()]);
      clients.forEach((client) => client.destroy());
      await own.stop();
    }
  });

  it('closed: a call after close()', async () => {
    const cache = new RedisCache(twoDatabases.url);
    await cache.close();
    await expect(cache.get('wechat:reason-test')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'closed' });
  });
});
