// The seed scenario, end to end: the order service and the notification worker run as two separate
// processes, each with its own OfficialAccount and RedisCache, against a mock of WeChat's API. They
// share one token through Redis; then the PHP app next to them refreshes the token, and they recover
// with one fetch between them.
//
//   node dist/scenario.js            (starts a redis-server of its own; or set REDIS_URL)
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startMockWeChat, startRedis, type StoreServer } from '@wxkit/testing';

interface ProgramReport {
  program: string;
  sent: number;
  errors: string[];
  token: string;
}

const mock = await startMockWeChat({ latencyMs: 20 });
const { appId, secret } = mock.createApp();
let redis: StoreServer | undefined;
const redisUrl = process.env.REDIS_URL || (redis = await startRedis()).url;
const env = { ...process.env, WECHAT_APPID: appId, WECHAT_SECRET: secret, WECHAT_BASE_URL: mock.url, REDIS_URL: redisUrl };

function runProgram(name: string, messages: number): Promise<ProgramReport> {
  const child = spawn(process.execPath, [fileURLToPath(new URL(`./${name}.js`, import.meta.url)), String(messages)], { env });
  let out = '';
  let err = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  return new Promise((resolve, reject) =>
    // 'close': the report line is read to its end (at 'exit' it may still be in the pipe).
    child.once('close', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!) as ProgramReport) : reject(new Error(`${name} exited ${code}: ${err}`)))),
  );
}

try {
  console.log(`Two programs, one official account (${appId}), one Redis (${redisUrl}).\n`);
  const first = await Promise.all([runProgram('order-service', 5), runProgram('notify-worker', 5)]);
  const fetchesBefore = mock.counters(appId).tokenRequests;
  console.log('1. Both programs start on an empty Redis and send at once:');
  for (const r of first) console.log(`   ${r.program.padEnd(14)} sent ${r.sent}, token ${r.token}`);

  // The PHP app (EasyWeChat 4) fetches a token on cgi-bin/token; five minutes later ours is dead.
  mock.issueClassicToken(appId);
  mock.advanceClock(301);
  console.log('2. The PHP app refreshes the token; five minutes later the shared one is dead.');

  const second = await Promise.all([runProgram('order-service', 5), runProgram('notify-worker', 5)]);
  console.log('3. Both programs send again:');
  for (const r of second) console.log(`   ${r.program.padEnd(14)} sent ${r.sent}, token ${r.token}`);

  const counters = mock.counters(appId);
  const all = [...first, ...second];
  const lost = 20 - all.reduce((n, r) => n + r.sent, 0);
  const summary = {
    sent: all.reduce((n, r) => n + r.sent, 0),
    lost,
    upstreamFetches: counters.tokenRequests,
    fetchesAtStart: fetchesBefore,
    rejectedByWeChat: counters.rejectedCalls,
    sameTokenAtStart: first[0]!.token === first[1]!.token,
    sameTokenAfter: second[0]!.token === second[1]!.token,
    errors: all.flatMap((r) => r.errors),
  };
  console.log(`\n${JSON.stringify(summary)}`);
  process.exitCode = lost === 0 && summary.sameTokenAtStart && summary.sameTokenAfter ? 0 : 1;
} finally {
  await mock.close();
  await redis?.stop();
}
