import { redisCli } from '@wxkit/testing';
import { describe, expect, it } from 'vitest';
import { errorsOf, eventually, faultEnvironment, okOf, redisSpec } from './helpers.js';

// Issue 11, item 4: the lock's lease covers the whole critical section it guards (every upstream and
// store call in it, with their deadlines), so no second process fetches while the holder still works.

const env = faultEnvironment();
const pool = env.workers;

describe('item 4: the lease covers the critical section', () => {
  it('a cold ticket refresh in 4 processes (token fetch, then getticket, each 900 ms): 1 token fetch and 1 getticket', async () => {
    const app = env.mock.createApp();
    env.mock.setLatency(900);
    // Short deadlines make a short lease (2 × 1.5 s + 7 × 0.3 s + 1 s = 6.1 s): a lease that left out the
    // getticket call, or the token fetch in front of it (0.9 s each, plus the store calls), would end
    // while the holder still waits for WeChat. The request deadline keeps 0.6 s above WeChat's latency
    // so a loaded machine does not turn a slow answer into a timeout.
    const group = await pool.start(4, {
      ...app,
      tokenEndpoint: 'classic',
      store: redisSpec(env.redis.url),
      clientOptions: { timeoutMs: 1500, cacheTimeoutMs: 300 },
    });
    const results = await group.run('ticket', 5);
    expect(errorsOf(results)).toEqual([]);
    expect(new Set(results.flatMap((result) => result.values)).size).toBe(1);
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(1);
    expect(env.mock.counters(app.appId).ticketRequests).toBe(1);
  });

  it('a slow store (every call 250 ms late): 4 processes, cold, classic endpoint: 1 fetch', async () => {
    const app = env.mock.createApp();
    env.mock.setLatency(300);
    const group = await pool.start(4, {
      ...app,
      tokenEndpoint: 'classic',
      store: redisSpec(env.redis.url),
      storeDelayMs: 250,
      // The store's deadline keeps 0.45 s above its delay, so a loaded machine does not turn a slow
      // answer into an outage (which would rightly cost a fetch per process).
      clientOptions: { timeoutMs: 1000, cacheTimeoutMs: 700 },
    });
    const results = await group.run('send', 5);
    expect(errorsOf(results)).toEqual([]);
    expect(okOf(results)).toBe(20);
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(1);
    expect(env.mock.counters(app.appId).rejectedCalls).toBe(0);
  });

  it('a holder SIGKILLed during its fetch holds the others up for its short lease, not the whole one: they fetch once and lose nothing', async () => {
    const app = env.mock.createApp();
    // The holder's request is never answered, and its deadline is long: its whole lease is 2 × 60 s +
    // 7 × 2 s + 1 s = 135 s, its short lease 3 × 2 s + 1 s = 7 s. The others wait for it 30 s at most, so
    // only a lock that ends soon after its holder died lets them in.
    env.mock.injectFault({ kind: 'hang', path: 'cgi-bin/token', times: 1 });
    const config = { ...app, tokenEndpoint: 'classic' as const, store: redisSpec(env.redis.url), clientOptions: { timeoutMs: 60_000, lockWaitMs: 30_000 } };
    const holder = await pool.start(1, config);
    const dying = holder.run('send', 1).catch(() => 'killed');
    await eventually(() => env.mock.counters(app.appId).classicTokenRequests === 1, 'the holder asked WeChat');
    await holder.kill(0);
    expect(await dying).toBe('killed');
    const others = await pool.start(3, config);
    const results = await others.run('send', 5);
    expect(errorsOf(results)).toEqual([]);
    expect(okOf(results)).toBe(15);
    // The dead holder's request, then one fetch for the fleet.
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(2);
  }, 60_000);

  it('a holder SIGKILLed during its fetch while the others already wait for it: they take the lock at its short lease, fetch once and lose nothing', async () => {
    const app = env.mock.createApp();
    // As above, but the others are waiting when the holder dies: their wait, not a fresh start, must
    // find the lock gone once its short lease ends (7 s), well within their lockWaitMs (30 s).
    env.mock.injectFault({ kind: 'hang', path: 'cgi-bin/token', times: 1 });
    const config = { ...app, tokenEndpoint: 'classic' as const, store: redisSpec(env.redis.url), clientOptions: { timeoutMs: 60_000, lockWaitMs: 30_000 } };
    const holder = await pool.start(1, config);
    const others = await pool.start(3, config);
    const dying = holder.run('send', 1).catch(() => 'killed');
    await eventually(() => env.mock.counters(app.appId).classicTokenRequests === 1, 'the holder asked WeChat');
    const waiting = others.run('send', 5);
    // Each waiting process listens for the holder's write on the store's channel.
    await eventually(() => Number(redisCli(env.redis.port, 'PUBSUB', 'NUMSUB', 'wxkit:written').trim().split('\n').pop()) >= 3, 'the others wait for the holder');
    await holder.kill(0);
    expect(await dying).toBe('killed');
    const results = await waiting;
    expect(errorsOf(results)).toEqual([]);
    expect(okOf(results)).toBe(15);
    expect(env.mock.counters(app.appId).classicTokenRequests).toBe(2);
  }, 60_000);
});
