import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { nativeSchema } from '@wxkit/core';
import { startMockWeChat, type MockWeChat } from './mock-wechat.js';
import { WorkerGroup, createStore, type StoreSpec, type WorkerConfig, type WorkerResult } from './processes.js';
import type { StoreServer } from './servers.js';

/** Options of {@link describeTokenSharing}. */
export interface DescribeTokenSharingOptions {
  /**
   * How every process (workers and the test itself) builds its own client of the shared store. A
   * function is called in `beforeAll`, for stores whose address is known only once they run.
   */
  store: StoreSpec | (() => StoreSpec | Promise<StoreSpec>);
  /** Worker processes per scenario. @default 4 */
  processes?: number;
}

/**
 * The token protocol across real processes on one shared store: each scenario forks worker processes,
 * each with its own OfficialAccount and its own client of the store, against the mock WeChat server,
 * and asserts counts (fetches, lost sends, winners), never durations. Every adapter whose store is
 * shared between processes runs it once.
 *
 * @example
 * ```ts
 * describeTokenSharing('FileCache', { store: { module: fileUrl, export: 'FileCache', args: [{ dir }] } });
 * ```
 */
export function describeTokenSharing(name: string, options: DescribeTokenSharingOptions): void {
  const processes = options.processes ?? 4;

  describe(`${name}: token sharing across ${processes} processes`, () => {
    let mock: MockWeChat;
    let store: StoreSpec;
    // One group for every scenario, each given its own app: the processes and their store connections
    // are made once (a worker killed by a scenario is replaced at the next).
    let group: WorkerGroup | undefined;

    beforeAll(async () => {
      mock = await startMockWeChat({ latencyMs: 20 });
      store = typeof options.store === 'function' ? await options.store() : options.store;
    });
    afterEach(async () => {
      // Every app closed before the next scenario: none of its background work reaches the next one.
      await group?.release();
    });
    afterAll(async () => {
      await group?.stop();
      await mock?.close();
    });

    async function workers(config: Partial<WorkerConfig> & { appId: string; secret: string }, count = processes) {
      const full: WorkerConfig = { baseUrl: mock.url, store, ...config };
      if (group) await group.configure(full, count);
      else group = await WorkerGroup.start(count, full);
      return group;
    }

    for (const tokenEndpoint of ['classic', 'stable'] as const) {
      it(`cold stampede (${tokenEndpoint} endpoint): ${processes} processes × 50 concurrent getToken() → exactly 1 upstream fetch`, async () => {
        const app = mock.createApp();
        const group = await workers({ ...app, tokenEndpoint });
        const results = await group.run('getToken', 50);

        const tokens = results.flatMap((result) => result.values);
        expect(results.flatMap((result) => result.errors)).toEqual([]);
        expect(tokens).toHaveLength(processes * 50);
        expect(new Set(tokens).size).toBe(1);
        expect(mock.isTokenValid(app.appId, tokens[0]!)).toBe(true);
        expect(mock.counters(app.appId).tokenRequests).toBe(1);
      });
    }

    it(`invalidation: every token killed upstream, ${processes} processes × 20 sends → 0 lost, 1 fetch`, async () => {
      const app = mock.createApp();
      const group = await workers({ ...app, tokenEndpoint: 'classic' });
      await group.run('getToken', 1);
      expect(mock.counters(app.appId).tokenRequests).toBe(1);

      mock.invalidateTokens(app.appId);
      const before = mock.counters(app.appId);
      const results = await group.run('send', 20);
      const after = mock.counters(app.appId);

      expect(results.flatMap((result) => result.errors)).toEqual([]);
      expect(results.reduce((sum, result) => sum + result.ok, 0)).toBe(processes * 20);
      expect(after.templateSends - before.templateSends).toBe(processes * 20);
      // Every process held the dead token, so the scenario really exercised recovery...
      expect(after.rejectedCalls - before.rejectedCalls).toBeGreaterThanOrEqual(processes);
      // ...and the whole group fetched exactly one replacement.
      expect(after.tokenRequests - before.tokenRequests).toBe(1);
    });

    it('a lock holder killed (SIGKILL) during its fetch: the others get a token after the lease, no deadlock', async () => {
      const app = mock.createApp();
      // Short deadlines make a short lease (2 × 1 s + 7 × 0.5 s + 1 s), so the test waits seconds, not the default 35 s.
      const clientOptions = { timeoutMs: 1000, cacheTimeoutMs: 500, memoMs: 0 };
      const group = await workers({ ...app, tokenEndpoint: 'classic', clientOptions });
      mock.injectFault({ kind: 'hang', path: 'cgi-bin/token', times: 1 });

      const holder = group.run('getToken', 1, [0]).catch(() => undefined);
      await waitFor(() => mock.counters(app.appId).classicTokenRequests === 1);
      await group.kill(0);
      await holder;

      const others = Array.from({ length: group.size - 1 }, (_, i) => i + 1);
      const results = await group.run('getToken', 10, others);
      const tokens = results.flatMap((result) => result.values);
      expect(results.flatMap((result) => result.errors)).toEqual([]);
      // On failure, what each process went through says which path fetched again.
      expect(new Set(tokens).size, JSON.stringify(results.map((result) => result.events))).toBe(1);
      expect(mock.isTokenValid(app.appId, tokens[0]!)).toBe(true);
      // The dead holder's request, then exactly one by whoever took over the expired lock.
      expect(mock.counters(app.appId).classicTokenRequests).toBe(2);
    });

    it(`refresh-ahead: ${processes} processes near the end of the entry's life make exactly one background fetch`, async () => {
      const app = mock.createApp();
      const clientOptions = { refreshAheadSeconds: 600, refreshAheadJitterMs: 200 };
      const group = await workers({ ...app, tokenEndpoint: 'classic', clientOptions, clockControl: true });
      const [first] = (await group.run('getToken', 1, [0])).flatMap((result) => result.values);
      await group.run('getToken', 1);
      expect(mock.counters(app.appId).tokenRequests).toBe(1);

      // 500 s left in the store (TTL 6,900 s): inside the 600 s window. Callers get the current token.
      await group.advance((6900 - 500) * 1000);
      const duringResults = await group.run('getToken', 5);
      const during = duringResults.flatMap((result) => result.values);
      expect(new Set(during)).toEqual(new Set([first]));
      // Every process's jittered attempt has ended: one fetched, each other found nothing to do.
      const ended = (results: WorkerResult[]) => results.map((result) => (result.events['access_token.fetched'] ?? 0) + (result.events['access_token.refresh_ahead_skipped'] ?? 0));
      const attempts = ended(duringResults);
      await waitFor(async () => {
        if (attempts.every((n) => n > 0)) return true;
        ended(await group.run('getToken', 1)).forEach((n, i) => (attempts[i]! += n));
        return false;
      }, () => `every process's refresh-ahead attempt ended (per process: ${attempts.join(', ')})`);
      expect(mock.counters(app.appId).tokenRequests).toBe(2);

      await group.advance(31_000); // past the memo: everyone reads the store again
      const after = (await group.run('getToken', 2)).flatMap((result) => result.values);
      expect(new Set(after).size).toBe(1);
      expect(after[0]).not.toBe(first);
      expect(mock.isTokenValid(app.appId, after[0]!)).toBe(true);
      expect(mock.counters(app.appId).tokenRequests).toBe(2);
    });

    it(`daily quota spent (45009): every send fails with 45009, and the ${processes} processes make at most one fetch each`, async () => {
      const limited = await startMockWeChat({ latencyMs: 20, quotas: { token: 1 } });
      try {
        const app = limited.createApp();
        const group = await workers({ ...app, baseUrl: limited.url, tokenEndpoint: 'classic' });
        await group.run('getToken', 1);
        limited.invalidateTokens(app.appId);
        const results = await group.run('send', 20);
        expect(results.flatMap((result) => result.errors)).toEqual(Array.from({ length: processes * 20 }, () => 'ERR_WXKIT_WECHAT_API:45009'));
        // One successful fetch before; after it, one attempt per process at most: 80 failing sends, no storm.
        const attempts = limited.counters(app.appId).classicTokenRequests - 1;
        expect(attempts).toBeGreaterThanOrEqual(1);
        expect(attempts).toBeLessThanOrEqual(processes);
      } finally {
        await limited.close();
      }
    });

    it('a corrupt entry in the store is treated as a miss and replaced, without a crash', async () => {
      const app = mock.createApp();
      const key = nativeSchema().accessTokenKey({ kind: 'official_account', appId: app.appId, endpoint: 'stable' });
      const cache = await createStore(store);
      try {
        await cache.set(key, '{"access_token":', 3600);
        const group = await workers({ ...app, tokenEndpoint: 'stable' }, 2);
        const results = await group.run('getToken', 5);
        const tokens = results.flatMap((result) => result.values);
        expect(results.flatMap((result) => result.errors)).toEqual([]);
        expect(new Set(tokens).size).toBe(1);
        expect(mock.counters(app.appId).tokenRequests).toBe(1);
        const stored = await cache.get(key);
        expect(nativeSchema().decode('access_token', stored ?? '')?.value).toBe(tokens[0]);
      } finally {
        await cache.close?.();
      }
    });
  });
}

/** Options of {@link describeStoreOutage}. */
export interface DescribeStoreOutageOptions {
  /** How each worker builds its client of the store; called once the server runs. */
  store: () => StoreSpec | Promise<StoreSpec>;
  /** The running server the test stops and starts again. */
  server: () => StoreServer;
  /** Worker processes. @default 3 */
  processes?: number;
}

const sumOf = (results: WorkerResult[], event: string) => results.map((result) => result.events[event] ?? 0);

/**
 * A shared store that goes away and comes back, with real processes: the server is stopped while the
 * workers keep sending (and while WeChat invalidates the token), then started again, empty. Sends keep
 * succeeding on the tokens each process holds, each process warns once per outage, and once the server
 * is back the processes share one token through it again. Workers started while the store is down
 * fall back the same way instead of failing.
 */
export function describeStoreOutage(name: string, options: DescribeStoreOutageOptions): void {
  const processes = options.processes ?? 3;

  describe(`${name}: the store goes down and comes back`, () => {
    let mock: MockWeChat;
    let groups: WorkerGroup[] = [];
    beforeAll(async () => {
      mock = await startMockWeChat({ latencyMs: 5 });
    });
    afterEach(async () => {
      await Promise.all(groups.map((group) => group.stop()));
      groups = [];
      await options.server().start();
    });
    afterAll(async () => {
      await mock?.close();
    });

    async function workers(app: { appId: string; secret: string }) {
      // memoMs 0 makes every call touch the store, so the outage is met at once rather than after 30 s.
      const clientOptions = { memoMs: 0, cacheTimeoutMs: 1500, timeoutMs: 3000 };
      const group = await WorkerGroup.start(processes, { baseUrl: mock.url, store: await options.store(), ...app, clientOptions });
      groups.push(group);
      return group;
    }
    const expectAllSent = (results: WorkerResult[], each: number) => {
      expect(results.flatMap((result) => result.errors)).toEqual([]);
      expect(results.map((result) => result.ok)).toEqual(results.map(() => each));
    };

    it(`stopped while ${processes} processes send, then restarted: no send lost, one warning per process, shared again after`, async () => {
      const app = mock.createApp();
      const group = await workers(app);
      expectAllSent(await group.run('send', 10), 10);

      await options.server().stop('SIGKILL');
      const down = await group.run('send', 10);
      mock.invalidateTokens(app.appId); // another system refreshed while the store was away
      const downAndInvalidated = await group.run('send', 10);
      expectAllSent(down, 10);
      expectAllSent(downAndInvalidated, 10);
      const warnings = sumOf(down, 'cache.unavailable').map((n, i) => n + sumOf(downAndInvalidated, 'cache.unavailable')[i]!);
      expect(warnings).toEqual(down.map(() => 1));

      await options.server().start();
      // Clients reconnect on their own backoff; keep sending until every process has noticed.
      const recovered = Array.from({ length: processes }, () => 0);
      for (let round = 0; round < 100 && recovered.some((n) => n === 0); round += 1) {
        const back = await group.run('send', 5);
        expectAllSent(back, 5);
        sumOf(back, 'cache.recovered').forEach((n, i) => (recovered[i]! += n));
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(recovered.every((n) => n >= 1)).toBe(true);

      // Shared again: every process reads the one token the store now holds.
      const tokens = (await group.run('getToken', 3)).flatMap((result) => result.values);
      expect(new Set(tokens).size).toBe(1);
      expect(mock.isTokenValid(app.appId, tokens[0]!)).toBe(true);
      const cache = await createStore(await options.store());
      try {
        const key = nativeSchema().accessTokenKey({ kind: 'official_account', appId: app.appId, endpoint: 'stable' });
        expect(nativeSchema().decode('access_token', (await cache.get(key)) ?? '')?.value).toBe(tokens[0]);
      } finally {
        await cache.close?.();
      }
    });

    it('SIGKILLed in the middle of a run and restarted on the same port: 0 lost sends, workers never restarted', async () => {
      const app = mock.createApp();
      const group = await workers(app);
      mock.setLatency(20);
      try {
        // 150 sends per process, 3 at a time: about a second of steady traffic, cut in the middle.
        const running = group.run('send', 150, group.all, 3);
        let ended = false;
        running.then(
          () => (ended = true),
          () => (ended = true),
        );
        // Cut in the middle: once the run is under way (10 sends a process on average), and restarted
        // once the processes have sent 40 more each on average with the store gone (about a quarter of
        // the run), or the run is over.
        const sends = () => mock.counters(app.appId).templateSends;
        await waitFor(() => ended || sends() >= processes * 10);
        await options.server().stop('SIGKILL');
        const atStop = sends();
        await waitFor(() => ended || sends() >= atStop + processes * 40);
        await options.server().start();
        const results = await running;
        expectAllSent(results, 150);
        expect(mock.counters(app.appId).templateSends).toBe(processes * 150);
        expect(sumOf(results, 'cache.unavailable').every((n) => n === 1)).toBe(true);
      } finally {
        mock.setLatency(5);
      }
      // Still the same worker processes: they share through the restarted server again.
      let shared = false;
      for (let round = 0; round < 50 && !shared; round += 1) {
        const tokens = (await group.run('getToken', 1)).flatMap((result) => result.values);
        const cache = await createStore(await options.store());
        try {
          const key = nativeSchema().accessTokenKey({ kind: 'official_account', appId: app.appId, endpoint: 'stable' });
          const stored = nativeSchema().decode('access_token', (await cache.get(key)) ?? '')?.value;
          shared = stored !== undefined && tokens.every((token) => token === stored);
        } finally {
          await cache.close?.();
        }
        if (!shared) await new Promise((resolve) => setTimeout(resolve, 200));
      }
      expect(shared).toBe(true);
    });

    it('down at start-up: the processes still send, each warns once, no crash', async () => {
      await options.server().stop();
      const app = mock.createApp();
      const group = await workers(app);
      const results = await group.run('send', 10);
      expectAllSent(results, 10);
      expect(sumOf(results, 'cache.unavailable')).toEqual(results.map(() => 1));
    });
  });
}

async function waitFor(condition: () => boolean | Promise<boolean>, what: () => string = () => 'condition', timeoutMs = 10_000): Promise<void> {
  const started = Date.now();
  while (!(await condition())) {
    if (Date.now() - started > timeoutMs) throw new Error(`${what()} not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
