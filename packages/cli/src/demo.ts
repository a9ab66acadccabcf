// The wxkit demo: several worker processes, each with its own OfficialAccount, share one WeChat
// access_token through one store. They send template messages from a cold cache, then another system
// refreshes the token behind their backs (as an old PHP app would), and they keep sending.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { ConfigError } from '@wxkit/core';
import type { MockWeChat } from '@wxkit/testing';
import { maskPasswords } from './args.js';
import { describeStore, openStore } from './stores.js';

const HELP = `usage: wxkit demo [--processes N] [--sends N] [--store URL] [--endpoint classic|stable] [--real]

  --processes N     worker processes sharing the token (default 3, from 2 to 32)
  --sends N         messages each process sends per phase, all at once (default 20)
  --store URL       where the token is shared: file:///dir, redis://[user:pass@]host:port[/db],
                    rediss://…, memcached://host:port (default: a FileCache in a new temporary directory)
  --endpoint E      WeChat token endpoint: classic (default, what most existing apps use) or stable
  --real            run against the account of WECHAT_APPID and WECHAT_SECRET instead of the mock

It runs against the mock WeChat server unless --real is given. With --real it runs against the real
WeChat API (WECHAT_BASE_URL for a proxy) on the stable endpoint, whose tokens are apart from those of
cgi-bin/token and which it never asks to refresh, so the tokens the account's programs hold stay valid;
it sends template messages only if WECHAT_OPENID and WECHAT_TEMPLATE_ID are set too (otherwise it calls
the harmless cgi-bin/get_api_domain_ip).`;

interface Report {
  sent: number;
  fetches: number;
  rejected: number;
  errors: string[];
}

async function options(args: string[]) {
  let values;
  try {
    ({ values } = parseArgs({
      args: args.filter((arg) => arg !== '--'),
      options: {
        processes: { type: 'string', default: '3' },
        sends: { type: 'string', default: '20' },
        store: { type: 'string' },
        endpoint: { type: 'string' },
        real: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
    }));
  } catch (error) {
    // The parser quotes what it refused: a store URL given without --store, password and all.
    throw new ConfigError(`${maskPasswords((error as Error).message)}\n\n${HELP}`, 'args');
  }
  const processes = Number(values.processes);
  const sends = Number(values.sends);
  const fail = (message: string) => new ConfigError(`${message}\n\n${HELP}`, 'args');
  if (!Number.isInteger(processes) || processes < 2 || processes > 32) throw fail('--processes must be an integer from 2 to 32');
  if (!Number.isInteger(sends) || sends < 1 || sends > 1000) throw fail('--sends must be an integer from 1 to 1000');
  if (values.endpoint !== undefined && values.endpoint !== 'classic' && values.endpoint !== 'stable') throw fail('--endpoint must be classic or stable');
  if (values.real) {
    if (!process.env.WECHAT_APPID || !process.env.WECHAT_SECRET) throw fail('--real needs WECHAT_APPID and WECHAT_SECRET in the environment');
    // A classic fetch ends the token every other program of the account holds (after WeChat's grace).
    if (values.endpoint === 'classic') throw fail("--real runs on the stable endpoint only: a fetch on the classic one would replace the token the account's other programs hold");
  }
  if (values.store) {
    // Opened once here so a bad URL is a usage error before any process starts.
    void (await openStore(values.store)).close?.();
  }
  const endpoint = (values.endpoint ?? (values.real ? 'stable' : 'classic')) as 'classic' | 'stable';
  return { processes, sends, store: values.store, endpoint, real: values.real, help: values.help };
}

function startWorker(config: object): Promise<ChildProcess> {
  const child = fork(fileURLToPath(new URL('./demo-worker.js', import.meta.url)), [], {
    env: { ...process.env, WXKIT_DEMO: JSON.stringify(config) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    child.once('message', () => resolve(child));
    child.once('exit', (code) => reject(new Error(`a worker exited with code ${code} before it was ready`)));
  });
}

function phase(workers: ChildProcess[], count: number): Promise<Report[]> {
  return Promise.all(
    workers.map(
      (child) =>
        new Promise<Report>((resolve) => {
          child.once('message', (report: Report) => resolve(report));
          child.send({ type: 'send', count });
        }),
    ),
  );
}

const sum = (reports: Report[], field: 'sent' | 'fetches' | 'rejected') => reports.reduce((total, report) => total + report[field], 0);
const row = (label: string, value: number, note = '') => console.log(`  ${label.padEnd(26)}${String(value).padStart(6)}${note ? `   ${note}` : ''}`);

/** `wxkit demo`: resolves the exit code (0 when no message was lost). */
export async function runDemo(args: string[]): Promise<number> {
  const opts = await options(args);
  if (opts.help) {
    console.log(HELP);
    return 0;
  }
  const cleanup: (() => unknown)[] = [];
  const real = opts.real;
  let mock: MockWeChat | undefined;
  let app: { appId: string; secret: string };
  let baseUrl: string | undefined;
  if (real) {
    app = { appId: process.env.WECHAT_APPID!, secret: process.env.WECHAT_SECRET! };
    baseUrl = process.env.WECHAT_BASE_URL || undefined;
  } else {
    const { startMockWeChat } = await import('@wxkit/testing');
    mock = await startMockWeChat({ latencyMs: 20 });
    app = mock.createApp();
    baseUrl = mock.url;
    cleanup.push(() => mock!.close());
  }
  let store = opts.store;
  if (!store) {
    const dir = mkdtempSync(join(tmpdir(), 'wxkit-demo-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    store = pathToFileURL(dir).href;
  }
  const label = store.startsWith('file:') ? `FileCache in ${fileURLToPath(store)}` : store.startsWith('memcached:') ? `MemcachedCache at ${describeStore(store)}` : `RedisCache at ${describeStore(store)}`;

  console.log(`\nwxkit demo: ${opts.processes} worker processes share one WeChat access_token through one store\n`);
  console.log(`  WeChat   ${real ? `${baseUrl ?? 'the real API'}, appid ${app.appId}` : `mock server at ${mock!.url} (20 ms per call), appid ${app.appId}`}`);
  console.log(`  token    ${opts.endpoint} endpoint (${opts.endpoint === 'classic' ? 'GET cgi-bin/token' : 'POST cgi-bin/stable_token'})`);
  console.log(`  store    ${label}\n`);

  const config = {
    appId: app.appId,
    secret: app.secret,
    baseUrl,
    endpoint: opts.endpoint,
    store,
    template: real ? { openid: process.env.WECHAT_OPENID, templateId: process.env.WECHAT_TEMPLATE_ID } : { openid: 'oDemoUser', templateId: 'TPL_ORDER_PAID' },
    otherSystem: mock !== undefined,
  };
  const workers = await Promise.all(Array.from({ length: opts.processes }, () => startWorker(config)));
  try {
    console.log(`  1. Cold start: each process sends ${opts.sends} messages at once, on an empty store.`);
    const first = await phase(workers, opts.sends);
    console.log(`     ${sum(first, 'sent')} sent.`);
    let killedByOther = false;
    if (mock) {
      // Another program fetches a token on the classic endpoint. Ours stays valid for the grace window
      // (300 s at WeChat); the mock's clock jumps past it, so from now on our token is dead.
      mock.issueClassicToken(app.appId);
      mock.advanceClock(301);
      killedByOther = true;
      console.log('  2. Another system calls cgi-bin/token, and its grace window runs out: the shared token is dead.');
    } else {
      console.log("  2. (real account: nothing replaces its token; the stable endpoint's tokens are apart from cgi-bin/token's)");
    }
    console.log(`  3. Each process sends ${opts.sends} more at once.`);
    const second = await phase(workers, opts.sends);
    console.log(`     ${sum(second, 'sent')} sent.\n`);

    const reports = [...first, ...second];
    const attempted = opts.processes * opts.sends * 2;
    const sent = sum(reports, 'sent');
    const lost = attempted - sent;
    const counters = mock?.counters(app.appId);
    const fetches = counters ? counters.tokenRequests : sum(reports, 'fetches');
    const rejected = counters ? counters.rejectedCalls : sum(reports, 'rejected');
    const phaseOneFetches = sum(first, 'fetches');

    row('processes', opts.processes);
    row('messages sent', sent, `of ${attempted}`);
    row('upstream token fetches', fetches, mock ? `${phaseOneFetches} at cold start, ${fetches - phaseOneFetches} after the other system's refresh` : '');
    row('sends rejected by WeChat', rejected, rejected ? 'on the dead token; each was resent once with the new one' : '');
    row('messages lost', lost);
    const errors = [...new Set(reports.flatMap((report) => report.errors))];
    if (errors.length) console.log(`\n  errors: ${errors.join(', ')}`);
    console.log(`\n  ${story({ processes: opts.processes, fetches, phaseOneFetches, rejected, lost, killedByOther, endpoint: opts.endpoint })}\n`);
    return lost === 0 ? 0 : 1;
  } finally {
    for (const child of workers) child.send({ type: 'exit' });
    await Promise.all(workers.map((child) => new Promise((resolve) => (child.exitCode !== null ? resolve(undefined) : child.once('exit', resolve)))));
    for (const step of cleanup.reverse()) await step();
  }
}

function story(figures: { processes: number; fetches: number; phaseOneFetches: number; rejected: number; lost: number; killedByOther: boolean; endpoint: string }): string {
  const { processes, fetches, phaseOneFetches, rejected, lost, killedByOther, endpoint } = figures;
  if (lost > 0) return `What happened: ${lost} message(s) were lost; see the errors above.`;
  const start =
    phaseOneFetches === 1
      ? `the ${processes} processes fetched one token between them at cold start (one fetched it, the others waited for it in the store)`
      : `the ${processes} processes fetched ${phaseOneFetches} tokens at cold start`;
  if (!killedByOther) return `What happened: ${start}, and every message arrived.`;
  const after = fetches - phaseOneFetches;
  if (rejected === 0) {
    return `What happened: ${start}; the other system's refresh did not touch the ${endpoint} token, so nothing was rejected and every message arrived.`;
  }
  return `What happened: ${start}; when another system's refresh killed it, WeChat rejected ${rejected} send(s), ${after === 1 ? 'one process fetched the replacement while the others waited for it' : `${after} replacement fetches followed`}, each rejected send was resent once, and every message arrived.`;
}
