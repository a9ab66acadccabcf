import { describe, expect, it } from 'vitest';
import { errorsOf, faultEnvironment, redisSpec } from './helpers.js';

// A ticket refresh whose access token WeChat rejects (another program refreshed it), in many processes
// at once: the holder of the ticket's lock reports the token before it lets the lock go, and a process
// that takes the lock after it fetches with the token the store holds now, or starts over with a fresh
// one: WeChat sees the dead token once, not once per process that took the lock in turn.

const env = faultEnvironment();
const pool = env.workers;

describe('a ticket refresh on a token another program replaced', () => {
  // With a memo, the process that fetched the dead token moments before has not read it from the store
  // since: it cannot tell the report's deletion from a store that dropped its write, and may send it once.
  for (const [memoMs, rejected] of [
    [0, 1],
    [30_000, 2],
  ] as const) {
    it(`8 processes (memoMs ${memoMs}) on one redis-server: ${rejected === 1 ? 'one getticket' : 'two getticket calls at most'} with the dead token, one token fetch, one ticket`, async () => {
      const app = env.mock.createApp();
      const group = await pool.start(8, { ...app, tokenEndpoint: 'classic', store: redisSpec(env.redis.url), clientOptions: { memoMs } });
      // Every process holds the token (the first fetched it, the others read it from the store).
      expect(errorsOf(await group.run('getToken', 1))).toEqual([]);
      env.mock.resetCounters();
      env.mock.invalidateTokens(app.appId);
      const results = await group.run('ticket', 1);
      expect(errorsOf(results)).toEqual([]);
      expect(new Set(results.flatMap((result) => result.values)).size).toBe(1);
      const counters = env.mock.counters(app.appId);
      expect({ tickets: counters.ticketRequests, tokens: counters.classicTokenRequests }).toEqual({ tickets: 1, tokens: 1 });
      expect(counters.rejectedCalls).toBeLessThanOrEqual(rejected);
    });
  }
});
