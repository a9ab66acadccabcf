import { afterEach, describe, expect, it } from 'vitest';
import { OfficialAccount, type TokenEvents } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';
import { redisCli } from '@wxkit/testing';
import { eventsOf, faultEnvironment, redisSpec } from './helpers.js';

// Issue 11: forced refreshes on the stable endpoint are scarce and spaced fleet-wide; a token killed from
// outside the fleet is reported with its last writer; the TTL margin scales with the token's life.

const env = faultEnvironment({ quotas: { forceRefresh: 2 } });
const DAY_MS = 86_400_000;
const BEIJING_OFFSET_MS = 8 * 3_600_000;
const pool = env.workers;
const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((client) => client.close()));
});

function client(app: { appId: string; secret: string }, options: Record<string, unknown> = {}) {
  const cache = new RedisCache(env.redis.url);
  const wechat = new OfficialAccount({ ...app, baseUrl: env.mock.url, cache, logger: false, ...options });
  open.push(wechat, cache);
  return wechat;
}

describe("stable_token's force_refresh is scarce", () => {
  it('two processes force a refresh within 30 s: one force_refresh is sent, the second gets its token', async () => {
    const app = env.mock.createApp();
    const [a, b] = [client(app), client(app)];
    const before = await a.accessToken.getToken();
    const forced = await a.accessToken.forceRefresh();
    expect(forced).not.toBe(before);
    expect(await b.accessToken.forceRefresh()).toBe(forced);
    expect(env.mock.counters(app.appId).forceRefreshes).toBe(1);
  });

  it('after a 45009 on force_refresh, no forced fetch is sent again before the quota day ends; normal fetches go on', async () => {
    const app = env.mock.createApp();
    // The mock's quota day ends at midnight, Beijing time; this test moves its clock on by 62 s. Run
    // within that of a midnight, a new day would hand out new force_refresh calls: start past it.
    const toMidnight = DAY_MS - ((env.mock.now() + BEIJING_OFFSET_MS) % DAY_MS);
    if (toMidnight < 5 * 60_000) env.mock.advanceClock(Math.ceil(toMidnight / 1000) + 60);
    let now = env.mock.now();
    const a = client(app, { now: () => now });
    await a.accessToken.getToken();
    await a.accessToken.forceRefresh();
    now += 31_000;
    env.mock.advanceClock(31);
    await a.accessToken.forceRefresh();
    now += 31_000;
    env.mock.advanceClock(31);
    // The mock allows 2 a day here: the third is WeChat's 45009, and the ones after it never leave.
    await expect(a.accessToken.forceRefresh()).rejects.toMatchObject({ errcode: 45009 });
    now += 31_000;
    await expect(a.accessToken.forceRefresh()).rejects.toMatchObject({ errcode: 45009 });
    expect(env.mock.counters(app.appId).forceRefreshes).toBe(3);
    expect(env.mock.isTokenValid(app.appId, await a.accessToken.getToken())).toBe(true);
  });

  it('no automatic path sends force_refresh: 40001 recovery on the stable endpoint uses a normal fetch', async () => {
    const app = env.mock.createApp();
    const a = client(app);
    await a.accessToken.getToken();
    env.mock.invalidateTokens(app.appId);
    await a.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(env.mock.counters(app.appId).forceRefreshes).toBe(0);
  });
});

describe('who refreshed my token?', () => {
  it('a 40001 on the token the store still holds is reported once for the fleet, naming its fetched_by', async () => {
    const app = env.mock.createApp();
    const group = await pool.start(4, { ...app, tokenEndpoint: 'classic', store: redisSpec(env.redis.url), clientOptions: { serviceName: 'order-service' } });
    await group.run('send', 1);
    // Something outside the fleet fetches twice: the fleet's token dies, and nothing newer is in the store.
    env.mock.issueClassicToken(app.appId);
    env.mock.issueClassicToken(app.appId);
    const results = await group.run('send', 5);
    expect(results.flatMap((result) => result.errors)).toEqual([]);
    expect(eventsOf(results, 'access_token.invalidated_externally')).toBe(1);
  });

  it('the event names the last writer the store knew, and counts', async () => {
    const app = env.mock.createApp();
    const writer = client(app, { tokenEndpoint: 'classic', serviceName: 'notify-worker' });
    const events: TokenEvents['access_token.invalidated_externally'][] = [];
    writer.on('access_token.invalidated_externally', (event) => events.push(event));
    await writer.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    env.mock.invalidateTokens(app.appId);
    await writer.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ level: 'warn', appId: app.appId, count: 1 });
    expect(String(events[0]!.fetchedBy)).toMatch(/^[^:]+:\d+:notify-worker$/);
  });
});

describe('the safety margin scales with the token', () => {
  it('a stable token handed out with 345 s left is cached (259 s) and used by every client, not fetched per call', async () => {
    const app = env.mock.createApp();
    const first = client(app);
    await first.accessToken.getToken();
    // The token now has 345 s left; a new client on an empty store gets it with expires_in 345.
    env.mock.advanceClock(7200 - 345);
    await env.redis.stop();
    await env.redis.start();
    const clients = [client(app, { memoMs: 0 }), client(app, { memoMs: 0 })];
    const token = await clients[0]!.accessToken.getToken();
    for (let i = 0; i < 10; i += 1) expect(await clients[i % 2]!.accessToken.getToken()).toBe(token);
    expect(env.mock.counters(app.appId).stableTokenRequests).toBe(2);
    const ttl = Number(redisCli(env.redis.port, 'TTL', first.accessToken.cacheKey));
    expect(ttl).toBeGreaterThan(250);
    expect(ttl).toBeLessThanOrEqual(259);
  });
});
