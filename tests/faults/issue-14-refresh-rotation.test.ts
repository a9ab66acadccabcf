import { startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// The benchmark's driver, at a small scale: the test asserts the counts the benchmark reports.
// @ts-expect-error: a plain .mjs module of the benchmarks, without types
import { rotationUnderKills } from '../../bench/lib/rotation.mjs';

// Issue 14: authorizers refreshed (refresh tokens rotated by WeChat at every refresh) while holder
// processes are SIGKILLed at random and some of WeChat's answers never arrive (WeChat rotated the
// refresh token, the holder never hears the new one). No refresh token is lost; no account needs its
// admin to authorize again.

let mock: MockWeChat;
let redis: StoreServer;
beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat({ latencyMs: 20 }), startRedis()]);
});
afterAll(async () => {
  await Promise.all([mock?.close(), redis?.stop()]);
});

describe('issue 14: refresh-token rotation under faults', () => {
  it('50 authorizers, holders SIGKILLed and answers lost: 0 refresh tokens lost, 0 accounts to authorize again', async () => {
    const figures = await rotationUnderKills({
      mock,
      redisUrl: redis.url,
      mode: 'wxkit',
      authorizers: 50,
      rounds: 1,
      holders: 2,
      concurrency: 4,
      kills: 3,
      killEveryMs: [80, 200],
      lostAnswers: 2,
      // Short deadlines keep a dead holder's lease (computed from them) at about 5 s.
      timeoutMs: 400,
      cacheTimeoutMs: 250,
    });
    expect(figures).toMatchObject({ lostAnswers: 2, sendsGivenUp: 0, lostRefreshTokens: 0, reauthorizationNeeded: 0 });
    expect(figures.kills).toBeGreaterThanOrEqual(1);
    // Each lost answer left a refresh token WeChat had replaced: the next refresh met 61023 and took
    // the current one from WeChat. Without the recovery these accounts would need their admins.
    expect(figures.rejected61023).toBeGreaterThanOrEqual(figures.lostAnswers);
    // Every authorizer was refreshed in every round.
    expect(figures.refreshes).toBeGreaterThanOrEqual(50);
  });
});
