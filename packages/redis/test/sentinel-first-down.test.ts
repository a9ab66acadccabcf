import { describe, expect, it } from 'vitest';
import { redisCli, startRedisSentinel, type RedisSentinelServers } from '@wxkit/testing';
import { RedisCache, type RedisCacheOptions } from '../src/index.js';

const password = 'data-s3cret';
const optionsFor = (servers: RedisSentinelServers): RedisCacheOptions => ({
  sentinel: { sentinels: servers.urls, masterName: servers.masterName, password },
  connectTimeoutMs: 5000,
});
const data = (port: number, ...args: string[]) => redisCli(port, '-a', password, ...args);

describe('Redis Sentinel: a dead Sentinel first in the list', () => {
  it('connects through the next one', async () => {
    const servers = await startRedisSentinel({ password });
    await servers.sentinels[0]!.stop('SIGKILL');
    const cache = new RedisCache(optionsFor(servers));
    try {
      await cache.set('wechat:first-sentinel-dead', 'v', 60);
      expect(await cache.get('wechat:first-sentinel-dead')).toBe('v');
      expect(data(servers.primary.port, 'GET', 'wechat:first-sentinel-dead')).toBe('v');
    } finally {
      await cache.close();
      await servers.stop();
    }
  });

  it('connects through the next one when the first one hangs (it takes connections and answers nothing)', async () => {
    const servers = await startRedisSentinel({ password });
    await servers.sentinels[0]!.pause();
    const cache = new RedisCache({ sentinel: { sentinels: servers.urls, masterName: servers.masterName, password } });
    try {
      const outcomes: string[] = [];
      for (let i = 0; i < 3; i += 1) {
        outcomes.push(await cache.set('wechat:first-sentinel-hung', 'v', 60).then(() => 'ok', (error: unknown) => (error as Error).message));
      }
      expect(outcomes).toContain('ok');
      expect(data(servers.primary.port, 'GET', 'wechat:first-sentinel-hung')).toBe('v');
      // close() waits for no Sentinel: the first one still hangs.
      await cache.close();
    } finally {
      await servers.sentinels[0]!.resume();
      await cache.close();
      await servers.stop();
    }
  });
});
