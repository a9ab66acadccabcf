// The open platform's benchmarks: many accounts in one process, and refresh-token rotation under
// faults. Each row carries its baseline from the same run and the ratio between the two.
//
//   WXKIT_BENCH_ACCOUNTS     accounts of `accounts` (default 10000); its sends scale with it (10 per account)
//   WXKIT_BENCH_AUTHORIZERS  authorizers of `refresh-kills` (default 1000)
// e.g. `WXKIT_BENCH_ACCOUNTS=1000 WXKIT_BENCH_AUTHORIZERS=100 pnpm bench -- accounts refresh-kills` for a quick run.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { round } from './lib/harness.mjs';
import { rotationUnderKills } from './lib/rotation.mjs';

const accountsWorker = fileURLToPath(new URL('./lib/accounts-worker.mjs', import.meta.url));
const fromEnv = (name, fallback) => {
  const value = Number(process.env[name]);
  return Number.isInteger(value) && value > 0 ? value : fallback;
};

/** Runs one subject in a worker of its own (heap and RSS are the worker's) and resolves its report. */
function runWorker(config) {
  return new Promise((resolve, reject) => {
    const child = fork(accountsWorker, [], { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let report;
    child.on('message', (message) => {
      if (message.ready) child.send(config);
      else report = message;
    });
    // 'close': the report, sent just before the worker exits, may still be in the channel at 'exit'.
    child.once('close', (code) => (report ? resolve(report) : reject(new Error(`the ${config.subject} worker exited with ${code} and no report`))));
  });
}

/**
 * Many accounts in one process on Redis: each sends one template message cold (its first token), then
 * 10 sends per account go to accounts picked at random. Subjects: an OpenPlatform's authorizers (all
 * held, and with the default maxClients), a ClientPool of plain official accounts, and the baseline,
 * one plain OfficialAccount per account with a connection pool of its own.
 */
export async function accounts(env, { count = fromEnv('WXKIT_BENCH_ACCOUNTS', 10_000), concurrency = 256 } = {}) {
  const sends = count * 10;
  const common = { baseUrl: env.mock.url, redisUrl: env.redis.url, sends, concurrency };
  const plainApps = () => Array.from({ length: count }, () => env.mock.createApp());
  const plainRequests = (apps) => apps.reduce((sum, app) => sum + env.mock.counters(app.appId).tokenRequests, 0);

  const measured = [];
  {
    const apps = plainApps();
    const report = await runWorker({ ...common, subject: 'plain', accounts: apps });
    measured.push({ subject: 'plain OfficialAccount per account, own connection pool (baseline)', report, tokenRequests: plainRequests(apps), tokenGoal: count });
  }
  {
    const apps = plainApps();
    const report = await runWorker({ ...common, subject: 'client-pool', accounts: apps, maxClients: count });
    measured.push({ subject: `ClientPool, plain official accounts (maxClients ${count})`, report, tokenRequests: plainRequests(apps), tokenGoal: count });
  }
  // All held, then (when there are more accounts than that) the default bound of 1000.
  for (const maxClients of count > 1000 ? [count, 1000] : [count]) {
    const component = env.mock.createComponent();
    const authorized = env.mock.authorizeMany(component.appId, count);
    const ticket = env.mock.issueVerifyTicket(component.appId);
    const report = await runWorker({ ...common, subject: 'open-platform', component, ticket, accounts: authorized, maxClients });
    const tokenRequests =
      env.mock.counters(component.appId).componentTokenRequests +
      authorized.reduce((sum, { authorizerAppId }) => sum + env.mock.counters(authorizerAppId).authorizerTokenRequests, 0);
    measured.push({ subject: `OpenPlatform authorizers (maxClients ${maxClients})`, report, tokenRequests, tokenGoal: count + 1 });
  }

  const base = measured[0].report;
  const perAccountKb = (report, field) => (report[`${field}After`] - report[`${field}Before`]) / count / 1024;
  const rows = measured.map(({ subject, report, tokenRequests, tokenGoal }) => ({
    subject,
    heapKbPerAccount: round(perAccountKb(report, 'heap'), 2),
    heapRatio: round(perAccountKb(report, 'heap') / perAccountKb(base, 'heap'), 3),
    rssKbPerAccount: round(perAccountKb(report, 'rss'), 2),
    rssRatio: round(perAccountKb(report, 'rss') / perAccountKb(base, 'rss'), 3),
    openSockets: report.sockets,
    socketRatio: round(report.sockets / base.sockets, 4),
    tokenRequests,
    tokenGoal,
    lostSends: report.cold.failed + report.warm.failed,
    closeMs: round(report.closeMs),
    closeRatio: round(report.closeMs / base.closeMs, 3),
    coldMs: round(report.cold.ms),
    warmSendsPerSecond: round(report.warm.ok / (report.warm.ms / 1000)),
    errors: mergeErrors(report.cold.errors, report.warm.errors),
  }));
  return {
    title: `Many accounts, one process, Redis: ${count.toLocaleString('en')} accounts each send once cold, then ${sends.toLocaleString('en')} sends spread over them (concurrency ${concurrency})`,
    baseline:
      'one plain OfficialAccount per account, each with a connection pool of its own, same traffic in the same run (ratios: subject / baseline). ' +
      'Heap and RSS per account: growth from before the accounts were touched to after the last send, after GC; sockets: open TCP sockets before close(), ' +
      'besides the Redis connection. Goals: ≤ 5 KB heap per account, sockets bounded by the shared pools of the process (128 per origin for API calls, 64 for token fetches), one token request per account (+1 component token), 0 lost',
    rows,
  };
}

function mergeErrors(...parts) {
  const out = {};
  for (const part of parts) for (const [label, n] of Object.entries(part)) out[label] = (out[label] ?? 0) + n;
  return out;
}

/**
 * Refresh-token rotation under faults: authorizers refreshed (WeChat rotates the refresh token at every
 * refresh) while holder processes are SIGKILLed at random and some answers never arrive. wxkit's
 * OpenPlatform beside the baseline, a naive read-call-write refresh, under the same faults.
 */
export async function refreshKills(env, { authorizers = fromEnv('WXKIT_BENCH_AUTHORIZERS', 1000), rounds = 3 } = {}) {
  const options = { authorizers, rounds, holders: 4, concurrency: 8, kills: 10, killEveryMs: [100, 300], lostAnswers: 5 };
  const rows = [];
  for (const mode of ['naive', 'wxkit']) {
    const figures = await rotationUnderKills({ mock: env.mock, redisUrl: env.redis.url, mode, ...options });
    rows.push({
      subject: mode === 'wxkit' ? 'wxkit OpenPlatform (write-ahead, recovery)' : 'naive read-call-write refresh (baseline)',
      authorizers,
      refreshes: figures.refreshes,
      kills: figures.kills,
      lostAnswers: figures.lostAnswers,
      rejected61023: figures.rejected61023,
      staleAfterRun: figures.staleAfterRun,
      lostRefreshTokens: figures.lostRefreshTokens,
      lostGoal: 0,
      reauthorizationNeeded: figures.reauthorizationNeeded,
      reauthorizationGoal: 0,
      sendsGivenUp: figures.sendsGivenUp,
      wallMs: round(figures.wallMs),
      errors: figures.errors,
    });
  }
  return {
    title: `Refresh-token rotation under faults: ${authorizers.toLocaleString('en')} authorizers × ${rounds} rounds, 4 holder processes, ${options.kills} random SIGKILLs and ${options.lostAnswers} lost answers a round`,
    baseline:
      'a naive refresh (read the refresh token, call api_authorizer_token, write what WeChat handed back) under the same faults in the same run; ' +
      'goals: 0 refresh tokens lost, 0 accounts needing re-authorization. staleAfterRun: stored refresh tokens WeChat had replaced when the faults ended; ' +
      'lostRefreshTokens and reauthorizationNeeded: after a fresh process refreshed every authorizer from the store',
    rows,
  };
}

export const OPEN_PLATFORM = { accounts, 'refresh-kills': refreshKills };
