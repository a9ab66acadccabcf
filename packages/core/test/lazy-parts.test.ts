import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { ClientPool, MemoryCache, OfficialAccount, type TokenCache } from '../src/index.js';
import { invalidateUnproven } from '../src/internal.js';
import { newApp, rejection } from './helpers.js';

// The parts of an account's client made only where they are used (refresh-ahead, what the refresher
// learns of writers without the lock) or shared (the access token's report of a token no call went
// through with): each answers as the part it stands in for did.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/** The native entry for `token`, fetched `ageSeconds` ago with 7200 s of life, written by no one it names (a lockless peer). */
const entry = (token: string, ageSeconds = 0) => {
  const fetchedAt = Math.floor(Date.now() / 1000) - ageSeconds;
  return JSON.stringify({ access_token: token, expires_at: fetchedAt + 7200, fetched_at: fetchedAt });
};

/** One turn of timers: with no jitter, a background refresh a call started is on a 0 ms timer set before this one. */
const turn = () => new Promise((resolve) => setTimeout(resolve, 0));

/**
 * Reads `app`'s token, moves the clock (`later`) to 700 s before its end, where the memo still serves it,
 * and reads it three times more, a turn of timers after each: a refresh-ahead that is on has started by then.
 */
async function readsNearItsEnd(app: OfficialAccount, later: () => void): Promise<void> {
  const first = await app.accessToken.getToken();
  later();
  expect(await app.accessToken.getToken()).toBe(first);
  for (let i = 0; i < 3; i += 1) {
    await app.accessToken.getToken();
    await turn();
  }
}

describe('refresh-ahead, made only where it is on', () => {
  it.each([
    ['omitted', {}, 1, 0],
    ['0', { refreshAheadSeconds: 0 }, 1, 0],
    ['600', { refreshAheadSeconds: 600 }, 2, 1],
  ])('refreshAheadSeconds %s: background fetches as the option says', async (_name, options, fetches, ahead) => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), tokenEndpoint: 'classic', now: () => now, memoMs: 7_200_000, refreshAheadJitterMs: 0, logger: false, ...options });
    let aheadFetches = 0;
    app.on('access_token.fetched', (event) => (aheadFetches += event.ahead ? 1 : 0));
    await readsNearItsEnd(app, () => (now += 6_500_000));
    await app.close();
    expect(aheadFetches).toBe(ahead);
    expect(mock.counters(appId).classicTokenRequests).toBe(fetches);
  });

  it.each([
    ['off', {}, 1],
    ['on', { refreshAheadSeconds: 600 }, 2],
  ])("a pool's client, refresh-ahead %s at the pool", async (_name, options, fetches) => {
    const { appId, secret } = mock.createApp();
    let now = Date.now();
    const pool = new ClientPool({ kind: 'officialAccount', credentials: async () => ({ secret }), baseUrl: mock.url, cache: new MemoryCache(), tokenEndpoint: 'classic', now: () => now, memoMs: 7_200_000, refreshAheadJitterMs: 0, logger: false, ...options });
    const app = await pool.get(appId);
    await readsNearItsEnd(app, () => (now += 6_500_000));
    await pool.close();
    expect(mock.counters(appId).classicTokenRequests).toBe(fetches);
  });
});

describe('invalidateUnproven, a method of the access token', () => {
  it('reports the token, the entry deleted; after close() it rejects and deletes nothing', async () => {
    const { app, cache } = newApp(mock, { tokenEndpoint: 'classic' });
    const key = app.accessToken.cacheKey;
    const token = await app.accessToken.getToken();
    await invalidateUnproven(app.accessToken, token, 40001);
    expect(await cache.get(key)).toBeUndefined();
    const next = await app.accessToken.getToken();
    await app.close();
    const error = await rejection(invalidateUnproven(app.accessToken, next, 40001));
    expect(error.code).toBe('ERR_WXKIT_NO_TOKEN');
    expect(await cache.get(key)).toContain(next);
  });
});

/** As token-manager.test.ts's writesLate(): a lockless peer's write lands at the holder's read under the lock. */
function writesLate(cache: TokenCache, key: string, peer: string): void {
  let locked = false;
  let written = false;
  const add = cache.add!.bind(cache);
  cache.add = async (k, value, ttl) => {
    const ok = await add(k, value, ttl);
    if (k === `${key}:lock` && ok) locked = true;
    return ok;
  };
  const get = cache.get.bind(cache);
  cache.get = async (k) => {
    const value = await get(k);
    if (k !== key || !locked || written) return value;
    written = true;
    await cache.set(key, entry(peer), 6900);
    return value;
  };
}

describe('writers without the lock, learnt at the first rejection', () => {
  it('setCache() before any rejection: a lockless peer on the new store is learnt there, and its token waited for', async () => {
    const { app, appId } = newApp(mock, { tokenEndpoint: 'classic' });
    await app.accessToken.getToken();
    const other = new MemoryCache();
    app.setCache(other);
    const key = app.accessToken.cacheKey;
    const first = mock.issueClassicToken(appId);
    await other.set(key, entry(first), 6900);
    expect(await app.accessToken.getToken()).toBe(first);
    mock.issueClassicToken(appId);
    const peer = mock.issueClassicToken(appId);
    const fetchesBefore = mock.counters(appId).classicTokenRequests;
    writesLate(other, key, peer);
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(mock.counters(appId).classicTokenRequests).toBe(fetchesBefore);
    expect(await app.accessToken.getToken()).toBe(peer);
    await app.close();
  });
});
