import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { CacheError, OfficialAccount, nativeSchema } from '@wxkit/core';
import { redisCli, startMockWeChat, startRedisSentinel, type MockWeChat, type RedisSentinelServers } from '@wxkit/testing';
import { RedisCache, type RedisCacheOptions } from '../src/index.js';

const password = 'data-s3cret';
const optionsFor = (servers: RedisSentinelServers): RedisCacheOptions => ({
  sentinel: { sentinels: servers.urls, masterName: servers.masterName, password },
  connectTimeoutMs: 5000,
});
const data = (port: number, ...args: string[]) => redisCli(port, '-a', password, ...args);
/** The port of the primary a Sentinel names now. */
const namedPrimary = (servers: RedisSentinelServers) =>
  Number(redisCli(servers.sentinels[1]!.port, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', servers.masterName).split('\n')[1]);

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock?.close();
});

/**
 * A proxy to the mock that passes each request on at once and holds the answers to cgi-bin/token until
 * release(): WeChat has issued the token, the process that asked has not got it yet.
 */
async function answerGate(target: string): Promise<{ url: string; arrived: Promise<void>; release(): void; close(): Promise<void> }> {
  let arrive: () => void = () => undefined;
  const arrived = new Promise<void>((resolve) => (arrive = resolve));
  let open: () => void = () => undefined;
  const released = new Promise<void>((resolve) => (open = resolve));
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const forwarded = request(new URL(req.url!, target), { method: req.method, headers: req.headers }, (answer) => {
        const body: Buffer[] = [];
        answer.on('data', (chunk: Buffer) => body.push(chunk));
        answer.on('end', () => {
          const send = () => res.writeHead(answer.statusCode!, answer.headers).end(Buffer.concat(body));
          if (!req.url!.includes('cgi-bin/token')) return send();
          arrive();
          void released.then(send);
        });
      });
      forwarded.end(Buffer.concat(chunks));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    arrived,
    release: open,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('Redis Sentinel: a refresh lock lost in a failover', () => {
  it('a second process takes the lock on the promoted replica and fetches too; the first one, answered later, keeps the newer token of the second: 2 fetches, and the fleet keeps a live token', async () => {
    const servers = await startRedisSentinel({ password });
    const { appId, secret } = mock.createApp();
    const gate = await answerGate(mock.url);
    const [cacheA, cacheB] = [new RedisCache(optionsFor(servers)), new RedisCache(optionsFor(servers))];
    const common = { appId, secret, tokenEndpoint: 'classic' as const, fallbackDir: false as const, logger: false as const, cacheTimeoutMs: 10_000 };
    const a = new OfficialAccount({ ...common, baseUrl: gate.url, cache: cacheA });
    const b = new OfficialAccount({ ...common, baseUrl: mock.url, cache: cacheB });
    const key = a.accessToken.cacheKey;
    const lockKey = nativeSchema().lockKey(key);
    try {
      // A holds the lock, WeChat has issued its token, and its answer is on the way.
      const first = a.accessToken.getToken();
      await gate.arrived;
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(data(servers.primary.port, 'EXISTS', lockKey)).toBe('1');
      const { promoted } = await servers.failover();
      // The lock's SET NX had not reached the replica when its primary died (asynchronous replication).
      data(promoted.port, 'DEL', lockKey);
      // B finds no token and a free lock on the new primary: it fetches too.
      const tokenB = await b.accessToken.getToken();
      expect(mock.counters(appId).tokenRequests).toBe(2);
      // A's answer arrives: its token is the older one (asked for first), B's is kept.
      gate.release();
      const tokenA = await first;
      const stored = JSON.parse(data(promoted.port, 'GET', key)) as { access_token: string };
      expect(stored.access_token).toBe(tokenB);
      expect(tokenA).toBe(tokenB);
      // Past the classic endpoint's grace window, the older token is dead and the fleet's still lives.
      mock.advanceClock(301);
      expect(mock.isTokenValid(appId, tokenB)).toBe(true);
      expect(await a.accessToken.getToken()).toBe(tokenB);
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      gate.release();
      await Promise.all([a.close(), b.close()]);
      await Promise.all([cacheA.close(), cacheB.close(), gate.close()]);
      await servers.stop();
    }
  });
});

describe('Redis Sentinel: while no primary is elected', () => {
  it('calls fail as CacheErrors, two processes of one host serve their token and fetch a rejected one once, then share through the new primary without a restart', async () => {
    const servers = await startRedisSentinel({ password });
    const { appId, secret } = mock.createApp();
    const fallbackDir = mkdtempSync(join(tmpdir(), 'wxkit-sentinel-fallback-'));
    const caches = [new RedisCache({ ...optionsFor(servers), stallTimeoutMs: 500 }), new RedisCache({ ...optionsFor(servers), stallTimeoutMs: 500 })];
    const apps = caches.map(
      (cache) => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', fallbackDir, logger: false, cacheTimeoutMs: 300 }),
    );
    const key = apps[0]!.accessToken.cacheKey;
    try {
      // Each client's connection made (the Sentinels asked, the primary reached) before the clients'
      // 300 ms deadline applies: on a busy machine a first call that connects can take longer, and a
      // process that took the store for down then would fetch its own token before the outage begins.
      await Promise.all(caches.map((cache) => cache.get(key)));
      const token = await apps[0]!.accessToken.getToken();
      expect(await apps[1]!.accessToken.getToken()).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(1);

      const old = servers.primary.port;
      await servers.primary.stop('SIGKILL');
      // No Sentinel has named another primary yet (a primary is declared down after 1 s).
      expect(namedPrimary(servers)).toBe(old);
      const outcome = await caches[0]!.get(key).then(
        (value) => ({ value }),
        (error: unknown) => ({ error }),
      );
      expect(namedPrimary(servers)).toBe(old);
      expect('error' in outcome && outcome.error).toBeInstanceOf(CacheError);
      // Served from memory while the store is away.
      expect(await Promise.all(apps.map((app) => app.accessToken.getToken()))).toEqual([token, token]);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      // WeChat rejects the token: the two processes share one fetch through the host's fallback.
      mock.invalidateTokens(appId);
      await Promise.all(apps.map((app) => app.accessToken.invalidate(token, 40001)));
      const fresh = await Promise.all(apps.map((app) => app.accessToken.getToken()));
      expect(fresh[0]).toBe(fresh[1]);
      expect(mock.counters(appId).tokenRequests).toBe(2);

      // The replica is promoted; the same caches reach it.
      await vi.waitFor(() => expect(namedPrimary(servers)).toBe(servers.replica.port), { timeout: 30_000, interval: 50 });
      await vi.waitFor(async () => expect(await caches[0]!.set(`${key}:probe`, 'x', 60)).toBeUndefined(), { timeout: 30_000, interval: 50 });
      await vi.waitFor(async () => expect(await caches[1]!.get(`${key}:probe`)).toBe('x'), { timeout: 30_000, interval: 50 });
    } finally {
      await Promise.all(apps.map((app) => app.close()));
      await Promise.all(caches.map((cache) => cache.close()));
      await servers.stop();
      rmSync(fallbackDir, { recursive: true, force: true });
    }
  });
});
