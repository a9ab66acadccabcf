// The scenarios of the faults benchmark: the edges of the token protocol (issue 11's numbered items),
// each run on wxkit and, where the scenario applies to them, on node-easywechat and co-wechat-api, in
// the same run and against the same mock. Each function returns its rows for the one faults table, and
// its legend: what each of its short scenario ids (`1`, `2a`…) stands for.
import { randomBytes } from 'node:crypto';
import { RedisCache } from '@wxkit/redis';
import { startLocklessPeer, startMockWeChat, startRedis } from '@wxkit/testing';
import { LATENCY_MS, round, startHungServer, startWorkers, totals } from './harness.mjs';

const PEERS = ['node-easywechat', 'co-wechat-api'];

/** Where the Keyv scenario finds PostgreSQL (the machine's, trust auth); override with WXKIT_BENCH_POSTGRES. */
const POSTGRES = process.env.WXKIT_BENCH_POSTGRES ?? 'postgresql://postgres@127.0.0.1:5432/test';

/** A worker's config: wxkit or a peer, on the classic endpoint, against `mock`. */
function subjectConfig(mock, app, library, store, extra = {}) {
  return { library, ...app, baseUrl: mock.url, store, endpoint: 'classic', ...extra };
}

/**
 * One row: the subject's upstream token requests beside the scenario's goal (and their ratio), its
 * lost sends out of the sends it made, and WeChat's rejections. A goal of `null` is none (an empty cell).
 */
function row(scenario, subject, { mockMs, requests, requestGoal, sent, lostGoal = 0, rejected, wallMs, ...rest }) {
  return {
    scenario,
    subject,
    mockMs,
    tokenRequests: requests,
    requestGoal,
    requestRatio: requestGoal ? round(requests / requestGoal, 2) : null,
    sends: sent.sent,
    lostSends: sent.failed,
    lostGoal,
    rejectedByWeChat: rejected,
    wallMs: wallMs === undefined ? undefined : round(wallMs, 0),
    ...rest,
    errors: sent.errors,
  };
}

const delta = (after, before, field) => after[field] - before[field];

/**
 * 1. The shared Redis is SIGKILLed, then every token is killed upstream, twice: each process sends.
 * wxkit's processes share one fetch per host per back-off step through the host's fallback directory;
 * "hosts" are simulated by giving processes different fallback directories.
 */
export async function storeDown(env, { processes = 6, hostsApart = 3, sends = 20, concurrency = 4, kills = 2, deadlineMs = 4000 } = {}) {
  const scenario = '1';
  const legend = {
    [scenario]:
      `the shared Redis is SIGKILLed, then every token is killed upstream, ${kills} times in a row; after each kill every one of ` +
      `${processes} processes sends ${sends} (${concurrency} at a time). Goal: 1 fetch per host per kill, 0 lost. A send unanswered ` +
      `after ${deadlineMs / 1000} s counts as lost. Hosts are simulated by giving processes different fallback directories`,
  };
  const redis = await startRedis();
  const rows = [];
  const subjects = [
    { library: 'wxkit', hosts: 1 },
    { library: 'wxkit', hosts: hostsApart },
    ...PEERS.map((library) => ({ library, hosts: 1 })),
  ];
  try {
    for (const { library, hosts } of subjects) {
      await redis.start();
      const app = env.mock.createApp();
      const dirs = Array.from({ length: hosts }, () => env.tempDir());
      const workers = await startWorkers(processes, (i) =>
        subjectConfig(env.mock, app, library, { kind: 'redis', url: redis.url }, { clientOptions: { fallbackDir: dirs[i % hosts] } }),
      );
      // Warm: a token shared through Redis, in every process's memory too.
      await workers.all({ op: 'send', count: 2, concurrency: 1 });
      const before = env.mock.counters(app.appId);
      await redis.stop('SIGKILL');
      const results = [];
      let wallMs = 0;
      for (let kill = 0; kill < kills; kill += 1) {
        env.mock.invalidateTokens(app.appId);
        const run = await workers.all({ op: 'send', count: sends, concurrency, deadlineMs });
        results.push(...run.results);
        wallMs += run.wallMs;
      }
      const after = env.mock.counters(app.appId);
      await workers.stop();
      const label = library === 'wxkit' ? `wxkit (redis), ${hosts} host${hosts > 1 ? 's' : ''} × ${processes / hosts} processes` : `${library} (redis), 1 host × ${processes} processes`;
      rows.push(
        row(scenario, label, {
          mockMs: LATENCY_MS,
          requests: delta(after, before, 'tokenRequests'),
          // One fetch per host per kill: a kill within a back-off step of the last fetch waits for the
          // step to end, and costs one fetch all the same.
          requestGoal: hosts * kills,
          sent: totals(results),
          rejected: delta(after, before, 'rejectedCalls'),
          wallMs,
        }),
      );
    }
  } finally {
    await redis.stop();
  }
  return { legend, rows };
}

/**
 * 2. The token endpoint answers errcode -1 for `windowMs` while every process keeps sending from a
 * cold store; then it answers again, and the sends go on for `afterMs`. wxkit backs off the whole fleet
 * (1 s, 2 s, 4 s…, ±20 %): 3 requests fit in 5 s (at 0, about 1 and about 3 s).
 */
export async function failingEndpoint(env, { processes = 4, lanes = 2, intervalMs = 50, windowMs = 5000, afterMs = 5000, windowGoal = 3 } = {}) {
  const rows = [];
  const rate = Math.round((processes * lanes * 1000) / intervalMs);
  const [during, after] = ['2a', '2b'];
  const legend = {
    [during]:
      `the token endpoint answers errcode -1 for ${windowMs / 1000} s while ${processes} processes send from a cold store ` +
      `(${lanes} lanes each, one send per ${intervalMs} ms per lane: up to ${rate} a second). Goal: ${windowGoal} requests, the ` +
      `fleet's back-off steps in ${windowMs / 1000} s (at 0, about 1 and about 3 s); every send is lost, for every library`,
    [after]: `the ${afterMs / 1000} s after that, WeChat answering again, the same traffic. Goal: 1 request, 0 lost`,
  };
  for (const library of ['wxkit', ...PEERS]) {
    const app = env.mock.createApp();
    const workers = await startWorkers(processes, subjectConfig(env.mock, app, library, env.store('redis')));
    const t0 = env.mock.counters(app.appId);
    env.mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/token', times: Infinity });
    const first = await workers.all({ op: 'send', durationMs: windowMs, intervalMs, concurrency: lanes });
    const t1 = env.mock.counters(app.appId);
    env.mock.clearFaults();
    const second = await workers.all({ op: 'send', durationMs: afterMs, intervalMs, concurrency: lanes });
    const t2 = env.mock.counters(app.appId);
    await workers.stop();
    const subject = `${library} (redis)`;
    const firstSent = totals(first.results);
    rows.push(
      row(during, subject, {
        mockMs: LATENCY_MS,
        requests: delta(t1, t0, 'tokenRequests'),
        requestGoal: windowGoal,
        sent: firstSent,
        // WeChat hands out no token in the window: no library can send.
        lostGoal: firstSent.sent,
        rejected: delta(t1, t0, 'rejectedCalls'),
      }),
      row(after, subject, {
        mockMs: LATENCY_MS,
        requests: delta(t2, t1, 'tokenRequests'),
        requestGoal: 1,
        sent: totals(second.results),
        rejected: delta(t2, t1, 'rejectedCalls'),
      }),
    );
  }
  return { legend, rows };
}

/**
 * R. WeChat rejects every send with 40001 for `windowMs` (another program fetching in a loop, or an
 * account WeChat refuses) while warm processes keep sending. Each call may fetch once; what counts is
 * what the rounds of calls cost together. The token the warm processes sent with carried calls: its
 * rejection is refetched at once. wxkit spaces the fetches that follow the rejection of a token no call
 * went through with fleet-wide (at once, then 1 s, 2 s, 4 s … apart): 4 fit in 10 s (at 0, 1, 3 and
 * 7 s), so the goal is 5 for the whole fleet.
 */
export async function rejectedEverything(env, { processes = 4, lanes = 2, intervalMs = 50, windowMs = 10_000, windowGoal = 5 } = {}) {
  const rows = [];
  const rate = Math.round((processes * lanes * 1000) / intervalMs);
  const scenario = 'R';
  const legend = {
    [scenario]:
      `WeChat answers every send with 40001 for ${windowMs / 1000} s while ${processes} warm processes keep sending (${lanes} lanes ` +
      `each, one send per ${intervalMs} ms per lane: up to ${rate} a second); the token endpoint works. Goal: ${windowGoal} requests at ` +
      `most (the token the warm sends went through with is refetched at once; wxkit then spaces the fleet's fetches after tokens no call went through with: at 0, 1, 3 and 7 s); every send is lost, for every library. On the classic ` +
      'endpoint a day allows 2,000 requests',
  };
  for (const library of ['wxkit', ...PEERS]) {
    const app = env.mock.createApp();
    const workers = await startWorkers(processes, subjectConfig(env.mock, app, library, env.store('redis')));
    for (let i = 0; i < processes; i += 1) await workers.one({ op: 'send', count: 1, concurrency: 1 }, i);
    const t0 = env.mock.counters(app.appId);
    env.mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
    const run = await workers.all({ op: 'send', durationMs: windowMs, intervalMs, concurrency: lanes });
    const t1 = env.mock.counters(app.appId);
    env.mock.clearFaults();
    await workers.stop();
    const sent = totals(run.results);
    rows.push(
      row(scenario, `${library} (redis)`, {
        mockMs: LATENCY_MS,
        requests: delta(t1, t0, 'tokenRequests'),
        requestGoal: windowGoal,
        sent,
        // Every token is rejected in the window: no library can send.
        lostGoal: sent.sent,
        rejected: delta(t1, t0, 'rejectedCalls'),
      }),
    );
  }
  return { legend, rows };
}

/**
 * 3. A cold fleet whose first token request fails while the others wait for it: (a) it hangs (wxkit's
 * HTTP deadline 1.5 s), (b) it answers -1 after 400 ms. The goal: 1 request, and the waiters return
 * the holder's error within its deadline instead of fetching beside it.
 */
export async function failedHolder(env, { processes = 6, sends = 3, timeoutMs = 1500, deadlineMs = 5000 } = {}) {
  const rows = [];
  const variants = [
    { scenario: '3a', latency: LATENCY_MS, fault: { kind: 'hang', path: 'cgi-bin/token', times: 1 } },
    { scenario: '3b', latency: 400, fault: { kind: 'errcode', errcode: -1, path: 'cgi-bin/token', times: 1 } },
  ];
  const burst = `${processes} processes each send ${sends} at once from a cold store`;
  const legend = {
    '3a':
      `${burst}; the first token request hangs (wxkit: timeoutMs ${timeoutMs}), later ones are answered. Goal: 1 request, every ` +
      `send failed within one HTTP deadline (wallMs). No lost-send goal: the holder's error is every waiter's. A send unanswered ` +
      `after ${deadlineMs / 1000} s counts as lost`,
    '3b': `${burst}; the mock answers in 400 ms, and the first token request gets errcode -1. Goal: 1 request`,
  };
  try {
    for (const { scenario, latency, fault } of variants) {
      for (const library of ['wxkit', ...PEERS]) {
        const app = env.mock.createApp();
        const workers = await startWorkers(processes, subjectConfig(env.mock, app, library, env.store('redis'), { clientOptions: { timeoutMs } }));
        env.mock.setLatency(latency);
        env.mock.injectFault(fault);
        const before = env.mock.counters(app.appId);
        const run = await workers.all({ op: 'send', count: sends, concurrency: sends, deadlineMs });
        const after = env.mock.counters(app.appId);
        env.mock.clearFaults();
        env.mock.setLatency(LATENCY_MS);
        await workers.stop();
        const sent = totals(run.results);
        rows.push(
          row(scenario, `${library} (redis)`, {
            mockMs: latency,
            requests: delta(after, before, 'tokenRequests'),
            requestGoal: 1,
            sent,
            // No goal: the only fetch failed, and wxkit does not fetch beside it, so every send of the
            // burst fails; the peers fetch beside it and save some, at many requests.
            lostGoal: null,
            rejected: delta(after, before, 'rejectedCalls'),
            wallMs: run.wallMs,
          }),
        );
      }
    }
  } finally {
    env.mock.clearFaults();
    env.mock.setLatency(LATENCY_MS);
  }
  return { legend, rows };
}

/**
 * 3c. The process that took the refresh lock is SIGKILLed while WeChat holds its token request: the
 * others wait for its lock to end, then one fetches. What the dead holder costs them is time: wxkit's
 * holder renews a short lease (3 store deadlines + 1 s) while it works, so its lock ends that long after
 * it died, not at the end of the whole lease.
 */
export async function killedHolder(env, { processes = 6, sends = 3, deadlineMs = 60_000 } = {}) {
  const rows = [];
  const legend = {
    '3c':
      `${processes} processes from a cold store, default deadlines: the first sends once and is SIGKILLed as soon as its token ` +
      `request reached WeChat (which never answers it); then the other ${processes - 1} each send ${sends} at once. Goal: 2 requests ` +
      `(the dead holder's, then one), 0 lost. wallMs: the others' burst, how long the dead holder held them up (wxkit's whole ` +
      `lease is 35 s, the short lease its holder renews 7 s). A send unanswered after ${deadlineMs / 1000} s counts as lost`,
  };
  const others = Array.from({ length: processes - 1 }, (_, i) => i + 1);
  try {
    for (const library of ['wxkit', ...PEERS]) {
      const app = env.mock.createApp();
      const workers = await startWorkers(processes, subjectConfig(env.mock, app, library, env.store('redis')));
      const before = env.mock.counters(app.appId);
      env.mock.injectFault({ kind: 'hang', path: 'cgi-bin/token', times: 1 });
      // Its answer never comes: the worker dies first.
      void workers.one({ op: 'send', count: 1, concurrency: 1, deadlineMs }, 0);
      await until(() => delta(env.mock.counters(app.appId), before, 'tokenRequests') === 1, 'the holder asked WeChat');
      await workers.kill(0);
      const run = await workers.some({ op: 'send', count: sends, concurrency: sends, deadlineMs }, others);
      const after = env.mock.counters(app.appId);
      env.mock.clearFaults();
      await workers.stop();
      rows.push(
        row('3c', `${library} (redis)`, {
          mockMs: LATENCY_MS,
          requests: delta(after, before, 'tokenRequests'),
          requestGoal: 2,
          sent: totals(run.results),
          rejected: delta(after, before, 'rejectedCalls'),
          wallMs: run.wallMs,
        }),
      );
    }
  } finally {
    env.mock.clearFaults();
  }
  return { legend, rows };
}

/** Resolves once `condition` holds; throws after 10 s. */
async function until(condition, what) {
  const started = performance.now();
  while (!condition()) {
    if (performance.now() - started > 10_000) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The key and bytes each subject reads, so a lockless peer loop writes where the subject looks. */
function peerEntry(library, app) {
  if (library === 'node-easywechat') {
    // node-easywechat 3.6.2's key (OfficialAccount/AccessToken.js getKey), a JSON string in the glue.
    return { key: `official_account.access_token.${app.appId}.${app.secret}.0`, encode: (token) => JSON.stringify(token) };
  }
  if (library === 'co-wechat-api') {
    // The glue's key; co-wechat-api keeps expireTime in ms, 10 s short of expires_in.
    return {
      key: `co-wechat-api:access_token:${app.appId}`,
      encode: (token, expiresIn) => JSON.stringify({ accessToken: token, expireTime: Date.now() + (expiresIn - 10) * 1000 }),
    };
  }
  return {}; // wxkit's native classic key and value, startLocklessPeer's default
}

/**
 * 5. Two lockless peers (each round: two classic fetches in a row, each written with a plain set as it comes,
 * then 150 ms) refresh while the subject's processes send. Run on a mock that keeps the superseded
 * token for 300 s (WeChat's documented grace), on one that kills it at once (graceSeconds 0), and with
 * the peers' writes reaching the store 40 ms after their fetches (5c).
 */
export async function locklessPeers(
  env,
  { processes = 3, lanes = 4, intervalMs = 20, durationMs = 2000, latencies = [0, LATENCY_MS], variants = [{ grace: 300 }, { grace: 0 }, { grace: 300, writeLagMs: 40 }] } = {},
) {
  const rows = [];
  const legend = {};
  for (const [index, { grace, writeLagMs = 0 }] of variants.entries()) {
    const mock = grace === 300 ? env.mock : await startMockWeChat({ graceSeconds: grace, latencyMs: LATENCY_MS });
    const scenario = `5${'abcdefgh'[index]}`;
    const graceText = `the mock keeps a superseded token valid for ${grace} s${grace === 0 ? ' (strict: a fetch kills the previous token at once)' : ' (WeChat documents up to 5 minutes)'}`;
    legend[scenario] =
      index === 0
        ? `two lockless peer loops share the subject's Redis key (each round: two classic fetches in a row, each one written ` +
          `with a plain SET as it comes, then 150 ms) while ${processes} processes send for ${durationMs / 1000} s (${lanes} lanes each, one send ` +
          `per ${intervalMs} ms per lane); ${graceText}. Goal: 0 lost. tokenRequests are the subject's own, peerFetches the loops'`
        : writeLagMs > 0
          ? `as 5a, but each loop's write reaches Redis ${writeLagMs} ms after its fetch's answer (a peer far from its store, or busy): the store holds a token already dead for a moment each round. No lost-send goal: a send can spend its resends on such tokens`
          : `as 5a, but ${graceText}`;
    try {
      for (const latency of latencies) {
        mock.setLatency(latency);
        for (const library of ['wxkit', ...PEERS]) {
          const app = mock.createApp();
          const workers = await startWorkers(processes, subjectConfig(mock, app, library, env.store('redis')));
          await workers.all({ op: 'send', count: 1, concurrency: 1 });
          const caches = [new RedisCache(env.redis.url), new RedisCache(env.redis.url)];
          const loops = caches.map((cache) => startLocklessPeer({ baseUrl: mock.url, ...app, cache, intervalMs: 150, writeLagMs, ...peerEntry(library, app) }));
          // The peers are under way before the sends start, and still going when they end.
          await Promise.all(loops.map((loop) => loop.roundsDone(2)));
          const before = mock.counters(app.appId);
          const fetchesBefore = loops.reduce((sum, loop) => sum + loop.fetches, 0);
          // Sends for a fixed time, so the peers refresh as often beside every subject, fast or slow.
          const run = await workers.all({ op: 'send', durationMs, intervalMs, concurrency: lanes });
          // Stopped before counting: a peer fetch in flight is then in both counts.
          await Promise.all(loops.map((loop) => loop.stop()));
          const after = mock.counters(app.appId);
          const peerFetches = loops.reduce((sum, loop) => sum + loop.fetches, 0) - fetchesBefore;
          await Promise.all(caches.map((cache) => cache.close()));
          await workers.stop();
          rows.push(
            row(scenario, `${library} (redis)`, {
              mockMs: latency,
              requests: delta(after, before, 'tokenRequests') - peerFetches,
              requestGoal: null,
              sent: totals(run.results),
              ...(writeLagMs > 0 ? { lostGoal: null } : {}),
              rejected: delta(after, before, 'rejectedCalls'),
              wallMs: run.wallMs,
              peerFetches,
            }),
          );
        }
      }
    } finally {
      if (mock === env.mock) mock.setLatency(LATENCY_MS);
      else await mock.close();
    }
  }
  return { legend, rows };
}

/**
 * 6. The store URL points at a server that accepts connections and never answers. wxkit waits one
 * store timeout (cacheTimeoutMs, 2 s), counts the store as down, and the host's processes share one
 * fetch. The peers' glue connects in the background (node-redis's connect() would wait forever).
 */
export async function hungStore(env, { processes = 4, sends = 25, concurrency = 5, deadlineMs = 3000 } = {}) {
  const scenario = '6';
  const legend = {
    [scenario]:
      `the store URL points at a server that accepts connections and never answers; ${processes} processes on one host each ` +
      `send ${sends} (${concurrency} at a time) from a cold start. Goal: 1 request, 0 lost; wxkit's first calls wait at most one ` +
      `store timeout (cacheTimeoutMs, 2 s). The peers' Redis glue connects in the background (node-redis's connect() never ` +
      `returns against such a server). A send unanswered after ${deadlineMs / 1000} s counts as lost`,
  };
  const hung = await startHungServer();
  const rows = [];
  try {
    for (const library of ['wxkit', ...PEERS]) {
      const app = env.mock.createApp();
      const workers = await startWorkers(
        processes,
        subjectConfig(env.mock, app, library, { kind: 'redis', url: hung.url }, { connectInBackground: true, clientOptions: { fallbackDir: env.tempDir() } }),
      );
      const before = env.mock.counters(app.appId);
      const run = await workers.all({ op: 'send', count: sends, concurrency, deadlineMs });
      const after = env.mock.counters(app.appId);
      await workers.stop();
      rows.push(
        row(scenario, `${library} (hung redis)`, {
          mockMs: LATENCY_MS,
          requests: delta(after, before, 'tokenRequests'),
          requestGoal: 1,
          sent: totals(run.results),
          rejected: delta(after, before, 'rejectedCalls'),
          wallMs: run.wallMs,
        }),
      );
    }
  } finally {
    await hung.close();
  }
  return { legend, rows };
}

/**
 * Keyv: `invalidations` times, every token is killed upstream, then each of `processes` processes sends
 * `sends` at once. KeyvCache on @keyv/redis has no atomic operation: its processes share a lock only
 * through their host's fallback directory, so the figure is given for one host and for one process per
 * host. KeyvCache on @keyv/postgres holds the lock in its table, whatever the hosts.
 */
export async function keyvInvalidations(env, { processes = 4, invalidations = 66, sends = 5, latencies = [0, LATENCY_MS] } = {}) {
  const scenario = 'K';
  const legend = {
    [scenario]:
      `${invalidations} times in a row every token is killed upstream (an external refresh), then each of ${processes} processes ` +
      `sends ${sends} at once; wxkit through KeyvCache. Goal: ${invalidations} requests (one per invalidation), 0 lost. ` +
      '"hosts": processes with fallback directories of their own, so no lock is shared through the host',
  };
  const rows = [];
  const table = `wxkit_bench_${randomBytes(5).toString('hex')}`;
  const postgres = await preparePostgres(table);
  const subjects = [
    { label: 'wxkit KeyvCache (@keyv/redis, no atomic ops), 1 host', store: { kind: 'keyv-redis', url: env.redis.url }, hosts: 1 },
    { label: `wxkit KeyvCache (@keyv/redis, no atomic ops), ${processes} hosts`, store: { kind: 'keyv-redis', url: env.redis.url }, hosts: processes },
    { label: `wxkit KeyvCache (@keyv/postgres, atomic ops), ${processes} hosts`, store: { kind: 'keyv-postgres', uri: POSTGRES, table }, hosts: processes, postgres: true },
  ];
  try {
    for (const latency of latencies) {
      env.mock.setLatency(latency);
      for (const { label, store, hosts, postgres: needsPostgres } of subjects) {
        if (needsPostgres && !postgres.ok) {
          rows.push({ scenario, subject: `${label}: not run, no PostgreSQL at ${redact(POSTGRES)} (${postgres.reason})`, mockMs: latency });
          continue;
        }
        const app = env.mock.createApp();
        const dirs = Array.from({ length: hosts }, () => env.tempDir());
        const workers = await startWorkers(processes, (i) => subjectConfig(env.mock, app, 'wxkit', store, { clientOptions: { fallbackDir: dirs[i % hosts] } }));
        // Warm, one process after the other: the cold start is the stampede benchmark's, not this one's.
        for (let i = 0; i < processes; i += 1) await workers.one({ op: 'send', count: 1, concurrency: 1 }, i);
        const before = env.mock.counters(app.appId);
        const results = [];
        let wallMs = 0;
        for (let n = 0; n < invalidations; n += 1) {
          env.mock.invalidateTokens(app.appId);
          const run = await workers.all({ op: 'send', count: sends, concurrency: sends });
          results.push(...run.results);
          wallMs += run.wallMs;
        }
        const after = env.mock.counters(app.appId);
        await workers.stop();
        rows.push(
          row(scenario, label, {
            mockMs: latency,
            requests: delta(after, before, 'tokenRequests'),
            requestGoal: invalidations,
            sent: totals(results),
            rejected: delta(after, before, 'rejectedCalls'),
            wallMs,
          }),
        );
      }
    }
  } finally {
    env.mock.setLatency(LATENCY_MS);
    await dropTable(table).catch(() => undefined);
  }
  return { legend, rows };
}

const redact = (uri) => uri.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');

/**
 * Makes the scenario's table with KeyvCache's `expires` column before the workers start, so four
 * processes do not race to create it; or says why PostgreSQL cannot be used.
 */
async function preparePostgres(table) {
  const KeyvPostgres = (await import('@keyv/postgres')).default;
  const { KeyvCache } = await import('@wxkit/keyv');
  const store = new KeyvPostgres({ uri: POSTGRES, table });
  try {
    await new KeyvCache(store).get('wxkit-bench-probe');
    return { ok: true };
  } catch (error) {
    const cause = error?.cause ?? error;
    return { ok: false, reason: cause?.code ?? cause?.message ?? String(cause) };
  } finally {
    await store.disconnect().catch(() => undefined);
  }
}

async function dropTable(table) {
  const KeyvPostgres = (await import('@keyv/postgres')).default;
  const store = new KeyvPostgres({ uri: POSTGRES, table });
  try {
    await store.query(`DROP TABLE IF EXISTS ${table}`);
  } finally {
    await store.disconnect().catch(() => undefined);
  }
}
