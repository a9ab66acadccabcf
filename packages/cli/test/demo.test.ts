import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { memcachedGet, redisCli, startMemcached, startMockWeChat, startRedis } from '@wxkit/testing';

// The demo as a user runs it: the built `wxkit` binary.
const bin = fileURLToPath(new URL('../bin/wxkit.mjs', import.meta.url));

/** Runs the demo and returns its exit code, its output, and the figures of its table. */
async function runDemo(args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [bin, 'demo', ...args], {
    env: { ...process.env, WECHAT_APPID: '', WECHAT_SECRET: '', ...env },
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  // 'close': the output is read to its end (at 'exit' the last lines may still be in the pipe).
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  const figure = (label: string) => Number(new RegExp(`^\\s+${label}\\s+(\\d+)`, 'm').exec(output)?.[1]);
  return {
    code,
    output,
    sent: figure('messages sent'),
    fetches: figure('upstream token fetches'),
    rejected: figure('sends rejected by WeChat'),
    lost: figure('messages lost'),
  };
}

describe('the demo', () => {
  it('3 processes, cold start then another system’s refresh: 2 fetches, rejected sends resent, 0 lost', async () => {
    const run = await runDemo(['--processes', '3', '--sends', '10']);
    expect(run.code, run.output).toBe(0);
    expect(run.sent).toBe(60);
    expect(run.lost).toBe(0);
    expect(run.fetches).toBe(2);
    expect(run.rejected).toBeGreaterThanOrEqual(3);
    expect(run.output).toMatch(/What happened: the 3 processes fetched one token between them/);
    // The warning names the worker that wrote the rejected token as its writer, not as the outsider,
    // and the demo says it is the one step 2 sets out to show.
    expect(run.output).toMatch(
      /\[worker \d+\] expected here, step 2's other system refreshed the token: .*the rejected token was last written by [^;]+:\d+; whoever fetched its replacement does not write to this store/,
    );
  });

  it('on the stable endpoint, the other system’s classic refresh rejects nothing', async () => {
    const run = await runDemo(['--processes', '2', '--sends', '5', '--endpoint', 'stable']);
    expect(run.code, run.output).toBe(0);
    expect(run).toMatchObject({ sent: 20, lost: 0, fetches: 1, rejected: 0 });
  });

  it('--real talks to the account of WECHAT_APPID and WECHAT_SECRET (here a mock behind WECHAT_BASE_URL) on the stable endpoint, and the token its other programs hold stays valid', async () => {
    const mock = await startMockWeChat();
    try {
      const { appId, secret } = mock.createApp();
      const env = { WECHAT_APPID: appId, WECHAT_SECRET: secret, WECHAT_BASE_URL: mock.url };
      // The account's production program holds a classic token.
      const production = mock.issueClassicToken(appId);
      const run = await runDemo(['--real', '--processes', '2', '--sends', '5'], env);
      expect(run.code, run.output).toBe(0);
      expect(run).toMatchObject({ sent: 20, lost: 0, fetches: 1 });
      expect(mock.counters(appId)).toMatchObject({ tokenRequests: 1, classicTokenRequests: 0, rejectedCalls: 0 });
      // Past WeChat's grace for a replaced token, production's still works.
      mock.advanceClock(301);
      expect(mock.isTokenValid(appId, production)).toBe(true);
      // A classic endpoint would replace it: refused before anything is asked.
      const classic = await runDemo(['--real', '--endpoint', 'classic'], env);
      expect(classic.code, classic.output).toBe(2);
      expect(classic.output).toMatch(/--real runs on the stable endpoint only/);
      expect(mock.counters(appId).tokenRequests).toBe(1);
    } finally {
      await mock.close();
    }
  });

  it('without --real it runs on its own mock, even with WECHAT_APPID and WECHAT_SECRET set; --real without them is a usage error', async () => {
    const mock = await startMockWeChat();
    try {
      const { appId, secret } = mock.createApp();
      const run = await runDemo(['--processes', '2', '--sends', '5'], { WECHAT_APPID: appId, WECHAT_SECRET: secret, WECHAT_BASE_URL: mock.url });
      expect(run.code, run.output).toBe(0);
      expect(run.output).toMatch(/mock server at/);
      expect(mock.counters(appId).tokenRequests + mock.counters(appId).requests).toBe(0);
      const bare = await runDemo(['--real']);
      expect(bare.code, bare.output).toBe(2);
      expect(bare.output).toMatch(/--real needs WECHAT_APPID and WECHAT_SECRET/);
    } finally {
      await mock.close();
    }
  });

  it('--store redis://… shares the token through Redis', async () => {
    const redis = await startRedis();
    try {
      const run = await runDemo(['--processes', '3', '--sends', '5', '--store', redis.url]);
      expect(run.code, run.output).toBe(0);
      expect(run).toMatchObject({ sent: 30, lost: 0, fetches: 2 });
      expect(run.output).toContain(`RedisCache at ${redis.url}`);
      // The demo's app left its token in the documented key (read by its name: a process of another test
      // that lost its own server may reach this one on a port reused meanwhile).
      const appId = /appid (wx[0-9a-f]{16})/.exec(run.output)?.[1];
      expect(redisCli(redis.port, 'GET', `wechat:access_token:${appId}`)).toMatch(/^\{"access_token":"[^"]+","expires_at":\d+,"fetched_at":\d+,"fetched_by":"[^"]+:\d+"\}$/);
    } finally {
      await redis.stop();
    }
  });

  it('--store memcached://… shares the token through Memcached', async () => {
    const memcached = await startMemcached();
    try {
      const run = await runDemo(['--processes', '3', '--sends', '5', '--store', `memcached://${memcached.url}`]);
      expect(run.code, run.output).toBe(0);
      expect(run).toMatchObject({ sent: 30, lost: 0, fetches: 2 });
      expect(run.output).toContain(`MemcachedCache at memcached://${memcached.url}`);
      const appId = /appid (wx[0-9a-f]{16})/.exec(run.output)?.[1];
      expect(await memcachedGet(memcached.port, `wechat:access_token:${appId}`)).toMatch(/^\{"access_token":"[^"]+","expires_at":\d+,"fetched_at":\d+,"fetched_by":"[^"]+:\d+"\}$/);
    } finally {
      await memcached.stop();
    }
  });

  it('refuses bad flags with exit code 2', async () => {
    const run = await runDemo(['--processes', '1']);
    expect(run.code).toBe(2);
    expect(run.output).toContain('--processes must be an integer from 2 to 32');
    const store = await runDemo(['--store', 'mongodb://127.0.0.1']);
    expect(store.code).toBe(2);
    expect(store.output).toContain('--store mongodb:// is not a store wxkit knows');
  });
});
