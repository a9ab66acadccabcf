import { hostname } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, switchableStore, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, nativeSchema, type TokenCache } from '../src/index.js';
import { newApp, nextEvent, rejection, slotWinnerLocksSecond } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

const schema = nativeSchema();
const stableKey = (appId: string) => schema.accessTokenKey({ kind: 'official_account', appId, endpoint: 'stable' });

/** A MemoryCache that records every write of an entry (set, add, compareAndSet), locks and markers aside. */
function recordingCache(now?: () => number): MemoryCache & { sets: { key: string; value: string; ttl: number }[] } {
  const cache = new MemoryCache(now ? { now } : {}) as MemoryCache & { sets: { key: string; value: string; ttl: number }[] };
  cache.sets = [];
  const record = (key: string, value: string, ttl: number) => {
    if (!/:(lock|failed)$/.test(key)) cache.sets.push({ key, value, ttl });
  };
  const [set, add, compareAndSet] = [cache.set.bind(cache), cache.add.bind(cache), cache.compareAndSet.bind(cache)];
  cache.set = async (key, value, ttl) => {
    record(key, value, ttl);
    return set(key, value, ttl);
  };
  cache.add = async (key, value, ttl) => {
    const added = await add(key, value, ttl);
    if (added) record(key, value, ttl);
    return added;
  };
  cache.compareAndSet = async (key, expected, value, ttl) => {
    const replaced = await compareAndSet(key, expected, value, ttl);
    if (replaced) record(key, value, ttl);
    return replaced;
  };
  return cache;
}

describe('getToken', () => {
  it('fetches once from the stable endpoint, without force_refresh, and answers later calls from memory', async () => {
    const { app, appId } = newApp(mock);
    const first = await app.accessToken.getToken();
    expect(await app.accessToken.getToken()).toBe(first);
    expect(await app.accessToken.getToken()).toBe(first);
    const counters = mock.counters(appId);
    expect(counters.stableTokenRequests).toBe(1);
    expect(counters.classicTokenRequests).toBe(0);
    expect(counters.forceRefreshes).toBe(0);
    expect(mock.isTokenValid(appId, first)).toBe(true);
  });

  it('50 concurrent calls in one process share a single fetch', async () => {
    const { app, appId } = newApp(mock);
    const tokens = await Promise.all(Array.from({ length: 50 }, () => app.accessToken.getToken()));
    expect(new Set(tokens).size).toBe(1);
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it('two clients on one store share the entry: the second one does not fetch', async () => {
    const { app, appId, secret, cache } = newApp(mock);
    const other = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const token = await app.accessToken.getToken();
    expect(await other.accessToken.getToken()).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await other.close();
  });

  it('stores the documented key, value and TTL (expires_in − 300 s)', async () => {
    const cache = recordingCache();
    const { app, appId } = newApp(mock, { cache });
    const before = Math.floor(Date.now() / 1000);
    const token = await app.accessToken.getToken();
    const after = Math.floor(Date.now() / 1000);
    expect(cache.sets).toHaveLength(1);
    const [{ key, value, ttl }] = cache.sets as [{ key: string; value: string; ttl: number }];
    expect(key).toBe(`wechat:stable_access_token:${appId}`);
    expect(app.accessToken.cacheKey).toBe(key);
    expect(ttl).toBe(7200 - 300);
    const parsed = JSON.parse(value) as { access_token: string; expires_at: number; fetched_at: number; fetched_by: string };
    expect(Object.keys(parsed)).toEqual(['access_token', 'expires_at', 'fetched_at', 'fetched_by']);
    expect(parsed.fetched_by).toBe(`${hostname()}:${process.pid}`);
    expect(parsed.access_token).toBe(token);
    expect(parsed.fetched_at).toBeGreaterThanOrEqual(before);
    expect(parsed.fetched_at).toBeLessThanOrEqual(after);
    expect(parsed.expires_at).toBe(parsed.fetched_at + 7200);
    expect(value).toBe(
      `{"access_token":"${token}","expires_at":${parsed.expires_at},"fetched_at":${parsed.fetched_at},"fetched_by":"${hostname()}:${process.pid}"}`,
    );
  });

  it('uses an entry another program wrote, without fetching', async () => {
    const { app, appId, cache } = newApp(mock);
    const now = Math.floor(Date.now() / 1000);
    await cache.set(stableKey(appId), `{"access_token":"WRITTEN_BY_PHP","expires_at":${now + 3600},"fetched_at":${now},"by":"php"}`, 3300);
    expect(await app.accessToken.getToken()).toBe('WRITTEN_BY_PHP');
    expect(mock.counters(appId).tokenRequests).toBe(0);
  });

  it('refreshes an entry that is about to expire', async () => {
    const { app, appId, cache } = newApp(mock);
    const now = Math.floor(Date.now() / 1000);
    await cache.set(stableKey(appId), `{"access_token":"ALMOST_GONE","expires_at":${now + 5},"fetched_at":${now - 7195}}`, 5);
    const token = await app.accessToken.getToken();
    expect(token).not.toBe('ALMOST_GONE');
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it('serves from memory for memoMs, then reads the store again and sees a token another process wrote', async () => {
    let clock = Date.now();
    const now = () => clock;
    const cache = new MemoryCache({ now });
    const { app, appId } = newApp(mock, { cache, now, memoMs: 30_000 });
    const seconds = Math.floor(clock / 1000);
    const entry = (token: string) => `{"access_token":"${token}","expires_at":${seconds + 7200},"fetched_at":${seconds}}`;
    await cache.set(stableKey(appId), entry('FIRST'), 6900);
    expect(await app.accessToken.getToken()).toBe('FIRST');
    await cache.set(stableKey(appId), entry('SECOND'), 6900);
    expect(await app.accessToken.getToken()).toBe('FIRST');
    clock += 30_001;
    expect(await app.accessToken.getToken()).toBe('SECOND');
  });

  it('memoMs 0 reads the store on every call, even calls made the moment the last one returned', async () => {
    const inner = new MemoryCache();
    let reads = 0;
    const counting: TokenCache = {
      get: (key) => {
        reads += 1;
        return inner.get(key);
      },
      set: (key, value, ttl) => inner.set(key, value, ttl),
      delete: (key) => inner.delete(key),
      add: (key, value, ttl) => inner.add(key, value, ttl),
      deleteIfEquals: (key, expected) => inner.deleteIfEquals(key, expected),
    };
    const { app } = newApp(mock, { cache: counting, memoMs: 0 });
    await app.accessToken.getToken();
    const before = reads;
    for (let i = 0; i < 20; i += 1) await app.accessToken.getToken();
    expect(reads - before).toBe(20);
  });

  it('tokenEndpoint classic uses cgi-bin/token and its own key', async () => {
    const cache = recordingCache();
    const { app, appId } = newApp(mock, { cache, tokenEndpoint: 'classic' });
    const token = await app.accessToken.getToken();
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    expect(mock.counters(appId).stableTokenRequests).toBe(0);
    expect(cache.sets[0]?.key).toBe(`wechat:access_token:${appId}`);
    expect(mock.isTokenValid(appId, token)).toBe(true);
  });

  it('forceRefresh() sends force_refresh once and shares the new token', async () => {
    const { app, appId } = newApp(mock);
    const first = await app.accessToken.getToken();
    const second = await app.accessToken.forceRefresh();
    expect(second).not.toBe(first);
    expect(mock.counters(appId).forceRefreshes).toBe(1);
    expect(await app.accessToken.getToken()).toBe(second);
  });

  it('two clients force a refresh at once, the one without the 30 s slot taking the lock first: one force_refresh, and neither hands out the token it replaced', async () => {
    // The first client takes the slot, then is slow to take the lock: the second gets the lock first.
    const { appId, winner, loser, slotWritten, arm } = slotWinnerLocksSecond(mock);
    const before = await winner.accessToken.getToken();
    expect(await loser.accessToken.getToken()).toBe(before);
    arm();
    const first = winner.accessToken.forceRefresh();
    await slotWritten;
    const second = await loser.accessToken.forceRefresh();
    const forced = await first;
    expect(mock.counters(appId).forceRefreshes).toBe(1);
    // The loser does not hand out the token the force_refresh ends (the one its caller wants rid of).
    expect([forced === before, second === before]).toEqual([false, false]);
    expect(second).toBe(forced);
    await Promise.all([winner.close(), loser.close()]);
  });

  it("the one without the 30 s slot that took the lock first fails as the winner did when WeChat refuses the winner's force_refresh (45009): it does not hand out the token its caller wants rid of", async () => {
    const { appId, winner, loser, slotWritten, arm } = slotWinnerLocksSecond(mock, { winner: { lockWaitMs: 3_000 }, loser: { lockWaitMs: 3_000 } });
    const before = await winner.accessToken.getToken();
    expect(await loser.accessToken.getToken()).toBe(before);
    arm();
    mock.injectFault({ kind: 'errcode', errcode: 45009, path: 'cgi-bin/stable_token', times: 1 });
    const first = rejection(winner.accessToken.forceRefresh());
    await slotWritten;
    const second = rejection(loser.accessToken.forceRefresh());
    expect(await first).toMatchObject({ errcode: 45009 });
    // As a forced refresh that finds the fleet's quota spent fails (see ForcedRefreshes.space), not with the old token.
    expect(await second).toMatchObject({ errcode: 45009 });
    await Promise.all([winner.close(), loser.close()]);
  });

  it('an AbortSignal stops one caller without cancelling the shared fetch', async () => {
    const { app, appId } = newApp(mock);
    mock.setLatency(200);
    try {
      const controller = new AbortController();
      const aborted = app.accessToken.getToken({ signal: controller.signal });
      const patient = app.accessToken.getToken();
      controller.abort(new Error('caller gave up'));
      await expect(aborted).rejects.toThrow('caller gave up');
      expect(mock.isTokenValid(appId, await patient)).toBe(true);
      expect(mock.counters(appId).tokenRequests).toBe(1);
    } finally {
      mock.setLatency(0);
    }
  });

  it("a call's AbortSignal ends its wait while the rejected token is being reported, with the signal's reason", async () => {
    const { appId } = mock.createApp();
    const token = mock.issueClassicToken(appId);
    let reported!: () => void;
    const reporting = new Promise<void>((resolve) => (reported = resolve));
    let answer!: () => void;
    // A token service that takes its time to answer a report of a rejected token.
    const app = new OfficialAccount({
      appId,
      logger: false,
      baseUrl: mock.url,
      timeoutMs: 1_000,
      tokenSource: {
        fetch: async () => ({ value: token, expiresIn: 7200 }),
        invalidate: () => {
          reported();
          return new Promise<void>((resolve) => (answer = resolve));
        },
      },
    });
    try {
      await app.accessToken.getToken();
      mock.invalidateTokens(appId);
      const controller = new AbortController();
      const reason = new Error('caller gave up');
      const call = rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }, { signal: controller.signal }));
      await reporting;
      controller.abort(reason);
      expect(await call).toBe(reason);
      expect(mock.counters(appId).templateSends).toBe(0);
    } finally {
      answer?.();
      await app.close();
    }
  });
});

describe('token-scoped invalidation', () => {
  it('a token WeChat rejects is replaced once and the call resent; force_refresh is never sent', async () => {
    const { app, appId, cache } = newApp(mock);
    const old = await app.accessToken.getToken();
    mock.invalidateTokens(appId);
    const result = await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: { a: { value: 'x' } } });
    expect(result.errcode).toBe(0);
    const counters = mock.counters(appId);
    expect(counters.rejectedCalls).toBe(1);
    expect(counters.tokenRequests).toBe(2);
    expect(counters.forceRefreshes).toBe(0);
    const stored = schema.decode('access_token', (await cache.get(stableKey(appId))) ?? '');
    expect(stored?.value).not.toBe(old);
    expect(mock.isTokenValid(appId, stored!.value)).toBe(true);
  });

  it('20 concurrent sends on a dead token cause one fetch, and all 20 arrive', async () => {
    const { app, appId } = newApp(mock, { tokenEndpoint: 'classic' });
    await app.accessToken.getToken();
    mock.invalidateTokens(appId);
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        app.templateMessage.send({ touser: `o${i}`, template_id: 'T', data: { a: { value: 'x' } } }),
      ),
    );
    expect(results.every((r) => r.errcode === 0)).toBe(true);
    expect(mock.counters(appId).templateSends).toBe(20);
    expect(mock.counters(appId).tokenRequests).toBe(2);
  });

  it("forceRefresh() in one process ends at once the token another holds in memory: its 20 sends are resent with the forced token, none lost, no fetch more", async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const [forcer, holder] = [0, 1].map(() => new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false }));
    const old = await holder!.accessToken.getToken();
    const forced = await forcer!.accessToken.forceRefresh();
    // WeChat's forced refresh leaves the earlier token no grace window (only normal mode's rotation has one).
    expect(mock.isTokenValid(appId, old)).toBe(false);
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => holder!.templateMessage.send({ touser: `o${i}`, template_id: 'T', data: { a: { value: 'x' } } })),
    );
    expect(results.every((r) => r.errcode === 0)).toBe(true);
    expect(await holder!.accessToken.getToken()).toBe(forced);
    expect(mock.counters(appId)).toMatchObject({ templateSends: 20, forceRefreshes: 1, tokenRequests: 2 });
    await Promise.all([forcer!.close(), holder!.close()]);
  });

  it('a second rejection is thrown, not retried in a loop', async () => {
    const { app, appId } = newApp(mock);
    await app.accessToken.getToken();
    const before = mock.counters();
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
    try {
      const error = await rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: { a: { value: 'x' } } }));
      expect(error.code).toBe('ERR_WXKIT_WECHAT_API');
      expect(error.errcode).toBe(40001);
      expect(error.path).toBe('cgi-bin/message/template/send');
      expect(String(error.message)).toContain('WeChat rejected the newer token too');
    } finally {
      mock.clearFaults();
    }
    const after = mock.counters();
    expect((after.errcodes['40001'] ?? 0) - (before.errcodes['40001'] ?? 0)).toBe(2);
    expect(mock.counters(appId).tokenRequests).toBe(2);
  });

  it('invalidate() deletes the entry only while it holds the failed token', async () => {
    const { app, appId, cache } = newApp(mock);
    const now = Math.floor(Date.now() / 1000);
    const newer = `{"access_token":"NEWER","expires_at":${now + 7200},"fetched_at":${now}}`;
    await cache.set(stableKey(appId), newer, 6900);
    await app.accessToken.invalidate('OLDER');
    expect(await cache.get(stableKey(appId))).toBe(newer);
    await app.accessToken.invalidate('NEWER');
    expect(await cache.get(stableKey(appId))).toBeUndefined();
  });
});

describe('the store', () => {
  /** A store that is down: every call rejects like a refused connection. */
  const downCache = (): TokenCache => {
    const refuse = async () => {
      throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6390'), { code: 'ECONNREFUSED' });
    };
    return { get: refuse, set: refuse, delete: refuse, add: refuse, deleteIfEquals: refuse };
  };

  it('a store that is down: tokens come from this process, with one warning, not one per call', async () => {
    const warnings: unknown[] = [];
    const logger = { warn: (fields: unknown) => warnings.push(fields) };
    const { app, appId } = newApp(mock, { cache: downCache(), logger, memoMs: 0 });
    const tokens = await Promise.all(Array.from({ length: 10 }, () => app.accessToken.getToken()));
    for (let i = 0; i < 10; i += 1) tokens.push(await app.accessToken.getToken());
    expect(new Set(tokens).size).toBe(1);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ event: 'cache.unavailable', appId });
  });

  it('a store that never answers is bounded by cacheTimeoutMs', async () => {
    const never = () => new Promise<never>(() => {});
    const hanging: TokenCache = { get: never, set: never, delete: never, add: never, deleteIfEquals: never };
    const { app, appId } = newApp(mock, { cache: hanging, cacheTimeoutMs: 50 });
    expect(mock.isTokenValid(appId, await app.accessToken.getToken())).toBe(true);
  });

  it('a store without atomic add still works, with single-flight inside the process', async () => {
    const inner = new MemoryCache();
    const plain: TokenCache = {
      get: (key) => inner.get(key),
      set: (key, value, ttl) => inner.set(key, value, ttl),
      delete: (key) => inner.delete(key),
    };
    const { app, appId } = newApp(mock, { cache: plain });
    const tokens = await Promise.all(Array.from({ length: 20 }, () => app.accessToken.getToken()));
    expect(new Set(tokens).size).toBe(1);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(schema.decode('access_token', (await inner.get(stableKey(appId))) ?? '')?.value).toBe(tokens[0]);
  });

  it('once the store answers again, the token is shared through it and the recovery is logged', async () => {
    const store = switchableStore({ up: false });
    const { inner } = store;
    const events: string[] = [];
    const logger = { warn: (f: { event: string }) => events.push(f.event), info: (f: { event: string }) => events.push(f.event) };
    const { app, appId } = newApp(mock, { cache: store.cache, logger, memoMs: 0 });
    const token = await app.accessToken.getToken();
    const recovered = nextEvent(app, 'cache.recovered');
    store.up();
    // A probe in the background notices the store is back; no caller waits on a store that is down.
    await recovered;
    mock.invalidateTokens(appId);
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: { a: { value: 'x' } } });
    const stored = schema.decode('access_token', (await inner.get(stableKey(appId))) ?? '');
    expect(stored?.value).not.toBe(token);
    expect(mock.isTokenValid(appId, stored!.value)).toBe(true);
    expect(events).toContain('cache.unavailable');
    expect(events).toContain('cache.recovered');
  });

  it('warns once per process, in production, when no store was set', async () => {
    const previous = process.env.NODE_ENV;
    process.env.NODE_ENV = 'production';
    try {
      const warnings: { event: string }[] = [];
      const logger = { warn: (fields: { event: string }) => warnings.push(fields) };
      for (let i = 0; i < 2; i += 1) {
        const { appId, secret } = mock.createApp();
        const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, logger });
        await app.accessToken.getToken();
        await app.close();
      }
      const withStore = newApp(mock, { logger });
      await withStore.app.accessToken.getToken();
      expect(warnings.map((w) => w.event)).toEqual(['cache.process_local']);
    } finally {
      process.env.NODE_ENV = previous;
    }
  });
});
