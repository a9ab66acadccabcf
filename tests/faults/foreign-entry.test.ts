import { describe, expect, it } from 'vitest';
import { redisCli, type WorkerResult } from '@wxkit/testing';
import { errorsOf, faultEnvironment, okOf, redisSpec } from './helpers.js';

// A key the fleet cannot write (another program's value there: a Redis hash, a PHP value in an encoding
// the profile cannot read) is never replaced, and each process serves the token it fetched from memory.
// On the classic endpoint each fetch supersedes the one before: the processes must not take turns
// knocking each other offline.

const env = faultEnvironment({ latencyMs: 5 });
const pool = env.workers;

describe('a token key the fleet cannot write', () => {
  it('3 processes on the classic endpoint, a Redis hash at the token key: one token for the fleet, none rejected', async () => {
    const app = env.mock.createApp();
    redisCli(env.redis.port, 'HSET', `wechat:access_token:${app.appId}`, 'access_token', 'NOT_OURS');
    const group = await pool.start(3, { ...app, tokenEndpoint: 'classic', store: redisSpec(env.redis.url) });
    const results: WorkerResult[] = [];
    for (let round = 0; round < 10; round += 1) results.push(...(await group.run('send', 4, group.all, 2)));
    const counters = env.mock.counters(app.appId);
    expect(errorsOf(results)).toEqual([]);
    expect(okOf(results)).toBe(120);
    // One token for the fleet: without a place to share it, each process fetched its own, each fetch
    // superseded the token another process served from memory, and every round of sends cost a fetch.
    expect(counters.classicTokenRequests).toBe(1);
    expect(counters.rejectedCalls).toBe(0);
  });
});
