import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memcachedGet, redisCli, startMemcached, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { bin, wxkit, wxkitProcess } from './run-cli.js';

// The `wxkit` command against real stores and the mock server: in this process as the binary runs it
// (run-cli.ts), and the binary itself where its process is the point.

let mock: MockWeChat;
let redis: StoreServer;
let memcached: StoreServer;
const dir = mkdtempSync(join(tmpdir(), 'wxkit-cli-'));
beforeAll(async () => {
  [mock, redis, memcached] = await Promise.all([startMockWeChat(), startRedis(), startMemcached()]);
});
afterAll(async () => {
  await Promise.all([mock?.close(), redis?.stop(), memcached?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

describe('wxkit token', () => {
  it('get fetches once through the store, masks the token, and never prints the secret', async () => {
    const { appId, secret } = mock.createApp();
    const args = ['token', 'get', '--store', redis.url, '--app', `official_account:${appId}`, '--base-url', mock.url, '--json'];
    const run = await wxkit(args, { WECHAT_SECRET: secret });
    expect(run.code, run.stderr).toBe(0);
    const key = `wechat:stable_access_token:${appId}`;
    const stored = JSON.parse(redisCli(redis.port, 'GET', key)) as { access_token: string };
    expect(run.json).toMatchObject({ ok: true, key, remaining_seconds: expect.any(Number) });
    expect(run.json.token).toMatch(/^.{5}….{4} \(\d+ chars\)$/);
    expect(run.stdout).not.toContain(stored.access_token);
    expect(run.stdout + run.stderr).not.toContain(secret);

    const again = await wxkit([...args, '--show-token'], { WECHAT_SECRET: secret });
    expect(again.json.token).toBe(stored.access_token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it('inspect shows key, remaining life, fetched_at, and the lock holder with its lease', async () => {
    const { appId, secret } = mock.createApp();
    await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url], { WECHAT_SECRET: secret });
    const key = `wechat:stable_access_token:${appId}`;
    // A lease far longer than a child process takes to start on a loaded machine: what is shown is what is left.
    redisCli(redis.port, 'SET', `${key}:lock`, 'build-host:4242:abcdef123456', 'PX', '600000');
    const run = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--json']);
    expect(run.code).toBe(0);
    expect(run.json).toMatchObject({ state: 'present', key, lock: { holder: 'build-host:4242:abcdef123456' } });
    const { lease_ms } = run.json.lock as { lease_ms: number };
    expect(lease_ms).toBeGreaterThan(60_000);
    expect(lease_ms).toBeLessThanOrEqual(600_000);
    expect(run.json.remaining_seconds).toBeGreaterThan(7100);
    expect(run.json.store_ttl_ms).toBeGreaterThan(6_800_000);
    expect(run.json.fetched_at).toBeGreaterThan(1_700_000_000);
    const text = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`]);
    expect(text.stdout).toMatch(/lock\s+held by build-host:4242:abcdef123456, lease \d+\.\d s left/);
    expect(text.stdout).toMatch(/state\s+present/);
  });

  it('inspect: an absent entry exits 5, a corrupt one says so and exits 5', async () => {
    const { appId } = mock.createApp();
    const absent = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--json']);
    expect(absent.code).toBe(5);
    // A failure as every --json failure prints it, with what inspect found beside it.
    expect(absent.json).toMatchObject({
      ok: false,
      state: 'absent',
      error: { code: 'ERR_WXKIT_NO_TOKEN', message: `No token is stored under wechat:stable_access_token:${appId}`, exit: 5 },
    });
    redisCli(redis.port, 'SET', `wechat:stable_access_token:${appId}`, 'not json');
    const corrupt = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`]);
    expect(corrupt.code).toBe(5);
    expect(corrupt.stdout).toMatch(/state\s+corrupt/);
    const corruptJson = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--json']);
    expect(corruptJson.code).toBe(5);
    expect(corruptJson.json).toMatchObject({ ok: false, state: 'corrupt', bytes: 8, error: { code: 'ERR_WXKIT_NO_TOKEN', exit: 5 } });
    expect((corruptJson.json.error as { message: string }).message).toContain('holds 8 bytes that are not a native-v1 entry');
  });

  it('refresh fetches a new token (classic) and force-refreshes (stable); clear removes entry and lock', async () => {
    const { appId, secret } = mock.createApp();
    const common = ['--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--json', '--show-token'];
    const first = await wxkit(['token', 'get', '--endpoint', 'classic', ...common], { WECHAT_SECRET: secret });
    // The first get fetched (the store held none); a second one reads the stored token.
    expect(first.json).toMatchObject({ ok: true, fetched: true, refreshed: false });
    expect((await wxkit(['token', 'get', '--endpoint', 'classic', ...common], { WECHAT_SECRET: secret })).json).toMatchObject({ ok: true, fetched: false, token: first.json.token });
    const refreshed = await wxkit(['token', 'refresh', '--endpoint', 'classic', ...common], { WECHAT_SECRET: secret });
    expect(refreshed.code).toBe(0);
    expect(refreshed.json).toMatchObject({ fetched: true, refreshed: true });
    expect(refreshed.json.token).not.toBe(first.json.token);
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    await wxkit(['token', 'refresh', ...common], { WECHAT_SECRET: secret });
    expect(mock.counters(appId).forceRefreshes).toBe(1);

    const key = `wechat:access_token:${appId}`;
    redisCli(redis.port, 'SET', `${key}:lock`, 'someone', 'PX', '60000');
    const cleared = await wxkit(['token', 'clear', '--endpoint', 'classic', '--store', redis.url, '--app', `oa:${appId}`, '--lock', '--json']);
    expect(cleared.json).toMatchObject({ ok: true, key, removed: true, lock_removed: true });
    expect(redisCli(redis.port, 'EXISTS', key)).toBe('0');
    expect(redisCli(redis.port, 'EXISTS', `${key}:lock`)).toBe('0');
    // Said as it was: nothing left to remove now, the lock included.
    const again = await wxkit(['token', 'clear', '--endpoint', 'classic', '--store', redis.url, '--app', `oa:${appId}`, '--lock', '--json']);
    expect(again.json).toMatchObject({ ok: true, removed: false, lock_removed: false });
    const text = await wxkit(['token', 'clear', '--endpoint', 'classic', '--store', redis.url, '--app', `oa:${appId}`, '--lock']);
    expect(text.stdout).toContain('no refresh lock was held');
  });

  it('refresh over an entry past its use, or no entry, fetches once: the forced fetch alone', async () => {
    const common = ['--endpoint', 'classic', '--store', redis.url, '--base-url', mock.url, '--json'];
    const now = Math.floor(Date.now() / 1000);
    // A peer's entry the store keeps for an hour past its expiry, then bytes that are no entry.
    // And one within its last 5 minutes, which the native schema's TTL (expires_in - 300) has ended.
    for (const stored of [
      JSON.stringify({ access_token: 'EXPIRED_TOKEN_123', expires_at: now - 60, fetched_at: now - 7260 }),
      'not an entry',
      JSON.stringify({ access_token: 'STALE_TOKEN_1234', expires_at: now + 200, fetched_at: now - 7000 }),
    ]) {
      const { appId, secret } = mock.createApp();
      redisCli(redis.port, 'SET', `wechat:access_token:${appId}`, stored, 'EX', '3600');
      const run = await wxkit(['token', 'refresh', '--app', `oa:${appId}`, ...common], { WECHAT_SECRET: secret });
      expect(run.code, run.stderr).toBe(0);
      expect(run.json).toMatchObject({ ok: true, refreshed: true });
      expect(mock.counters(appId).classicTokenRequests).toBe(1);
    }
  });

  it("get and refresh of a key where another program keeps a Redis hash share the fleet's token beside it, at {key}:wxkit", async () => {
    const { appId, secret } = mock.createApp();
    const key = `wechat:access_token:${appId}`;
    redisCli(redis.port, 'HSET', key, 'owner', 'another program');
    const common = ['--endpoint', 'classic', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--json', '--show-token'];
    const got = await wxkit(['token', 'get', ...common], { WECHAT_SECRET: secret });
    expect(got.code, got.stderr).toBe(0);
    expect(JSON.parse(redisCli(redis.port, 'GET', `${key}:wxkit`))).toMatchObject({ access_token: got.json.token });
    const refreshed = await wxkit(['token', 'refresh', ...common], { WECHAT_SECRET: secret });
    expect(refreshed.code, refreshed.stderr).toBe(0);
    expect(JSON.parse(redisCli(redis.port, 'GET', `${key}:wxkit`))).toMatchObject({ access_token: refreshed.json.token });
    expect(redisCli(redis.port, 'TYPE', key).trim()).toBe('hash');
    expect(mock.counters(appId).classicTokenRequests).toBe(2);

    // inspect shows the token the fleet serves, beside the other program's value.
    const store = ['--endpoint', 'classic', '--store', redis.url, '--app', `oa:${appId}`];
    const inspected = await wxkit(['token', 'inspect', ...store, '--json', '--show-token']);
    expect(inspected.code, inspected.stderr).toBe(0);
    expect(inspected.json).toMatchObject({ ok: true, state: 'foreign', key, shared_key: `${key}:wxkit`, token: refreshed.json.token, bytes: null });
    expect(inspected.json.store_ttl_ms).toBeGreaterThan(0);
    const text = await wxkit(['token', 'inspect', ...store]);
    expect(text.stdout).toContain(`shared at   ${key}:wxkit`);
    expect(text.stdout).toContain("another program's value (a value of another kind than a string), which wxkit never replaces");
    // clear removes that token and leaves the other program's value; the next get fetches a new one.
    const cleared = await wxkit(['token', 'clear', ...store, '--json']);
    expect(cleared.code, cleared.stderr).toBe(0);
    expect(cleared.json).toMatchObject({ ok: true, removed: false, shared_removed: true });
    expect(redisCli(redis.port, 'EXISTS', `${key}:wxkit`).trim()).toBe('0');
    expect(redisCli(redis.port, 'TYPE', key).trim()).toBe('hash');
    const none = await wxkit(['token', 'inspect', ...store, '--json']);
    expect(none.code).toBe(5);
    expect(none.json).toMatchObject({ ok: false, state: 'foreign', error: { code: 'ERR_WXKIT_NO_TOKEN' } });
    const again = await wxkit(['token', 'get', ...common], { WECHAT_SECRET: secret });
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.token).not.toBe(refreshed.json.token);
    expect(mock.counters(appId).classicTokenRequests).toBe(3);
  });

  it("clear keeps a value of another program that the profile cannot read (a PHP object), as it keeps a Redis hash, and removes the fleet's token beside it", async () => {
    const { appId, secret } = mock.createApp();
    const profile = ['--profile', 'easyWeChat4', '--profile-options', '{"prefix":"clearphp:"}'];
    const common = ['--store', redis.url, '--app', `oa:${appId}`, ...profile, '--json'];
    const got = await wxkit(['token', 'get', ...common, '--base-url', mock.url], { WECHAT_SECRET: secret });
    expect(got.code, got.stderr).toBe(0);
    const key = got.json.key as string;
    redisCli(redis.port, 'SET', key, 'O:8:"stdClass":0:{}', 'EX', '600');
    const refreshed = await wxkit(['token', 'refresh', ...common, '--base-url', mock.url], { WECHAT_SECRET: secret });
    expect(refreshed.code, refreshed.stderr).toBe(0);
    const cleared = await wxkit(['token', 'clear', ...common], { WECHAT_SECRET: secret });
    expect(cleared.code, cleared.stderr).toBe(0);
    expect(cleared.json).toMatchObject({ ok: true, removed: false, shared_removed: true });
    // The PHP side's value is its own: the library never replaces it, nor may clear delete it.
    expect(redisCli(redis.port, 'GET', key)).toBe('O:8:"stdClass":0:{}');
    expect(redisCli(redis.port, 'EXISTS', `${key}:wxkit`).trim()).toBe('0');
  });

  it('inspect exits 5 for an entry the library no longer serves (past its expiry, or in its last 30 s), as for none', async () => {
    const now = Math.floor(Date.now() / 1000);
    for (const stored of [
      JSON.stringify({ access_token: 'EXPIRED_TOKEN_123', expires_at: now - 60, fetched_at: now - 7260 }),
      JSON.stringify({ access_token: 'LAST_SECONDS_TOKEN', expires_at: now + 20 }),
    ]) {
      const { appId } = mock.createApp();
      const key = `wechat:stable_access_token:${appId}`;
      // A store that keeps it: a peer's longer TTL, or none.
      redisCli(redis.port, 'SET', key, stored);
      const got = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--json']);
      expect(got.code, got.stderr).toBe(5);
      const inspected = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--json']);
      expect(inspected.code, inspected.stdout).toBe(5);
      expect(inspected.json).toMatchObject({ ok: false, state: 'stale', error: { code: 'ERR_WXKIT_NO_TOKEN', exit: 5 } });
    }
    // The same beside another program's value: the fleet's copy there has ended, and no program serves it.
    const { appId } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    redisCli(redis.port, 'HSET', key, 'owner', 'another program');
    redisCli(redis.port, 'SET', `${key}:wxkit`, JSON.stringify({ access_token: 'EXPIRED_BESIDE_123', expires_at: now - 60, fetched_at: now - 7260 }));
    const got = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--json']);
    expect(got.code, got.stderr).toBe(5);
    const inspected = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--json']);
    expect(inspected.code, inspected.stdout).toBe(5);
    expect(inspected.json).toMatchObject({ ok: false, state: 'foreign', shared_key: `${key}:wxkit`, error: { code: 'ERR_WXKIT_NO_TOKEN', exit: 5 } });
  });

  it("inspect and refresh judge a token of a format without expiry by the store's TTL, as the library does (its last 30 s are no token)", async () => {
    const { appId, secret } = mock.createApp();
    const args = ['--store', redis.url, '--app', `oa:${appId}`, '--profile', 'silenceper', '--json'];
    const key = (await wxkit(['token', 'inspect', ...args])).json.key as string;
    // A peer's bare token (no expiry in it) that its store drops in 20 s: the library reads it as a miss.
    redisCli(redis.port, 'SET', key, 'BARE_LAST_SECONDS_123', 'EX', '20');
    const inspected = await wxkit(['token', 'inspect', ...args]);
    expect(inspected.code, inspected.stdout).toBe(5);
    expect(inspected.json).toMatchObject({ ok: false, state: 'stale', error: { code: 'ERR_WXKIT_NO_TOKEN', exit: 5 } });
    // refresh does not take it back first (which fetched one token, and the forced refresh a second).
    const refreshed = await wxkit(['token', 'refresh', ...args, '--base-url', mock.url], { WECHAT_SECRET: secret });
    expect(refreshed.code, refreshed.stderr).toBe(0);
    const counters = mock.counters(appId);
    expect(counters.classicTokenRequests + counters.stableTokenRequests).toBe(1);
  });

  it('inspect says in words when the store keeps a token or a lock without expiry', async () => {
    const { appId } = mock.createApp();
    const args = ['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--profile', 'silenceper'];
    const key = (await wxkit([...args, '--json'])).json.key as string;
    // A peer's entry without expiry (a bare token, as a Go program keeps it) and a lock with no lease.
    redisCli(redis.port, 'SET', key, 'BARE_PEER_TOKEN_123');
    redisCli(redis.port, 'SET', `${key}:lock`, 'a program');
    const inspected = await wxkit(args);
    expect(inspected.stdout).toContain('the store keeps it without expiry');
    expect(inspected.stdout).toContain('held by a program, with no lease');
    expect(inspected.stdout).not.toContain('Infinity');
  });

  it('clear deletes only what it read: a token another program writes meanwhile is kept, and said so', async () => {
    const { appId } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    const entry = (token: string) => JSON.stringify({ access_token: token, expires_at: Math.floor(Date.now() / 1000) + 7000, fetched_at: Math.floor(Date.now() / 1000) });
    redisCli(redis.port, 'SET', key, entry('OLD_TOKEN_0123456789'));
    // Between clear's read and its delete, another program writes a newer token: a proxy in front of
    // Redis writes it (to Redis itself) the moment clear's delete arrives, then hands the delete on.
    let written = false;
    const proxy = await redisProxy(redis.port, (chunk) => {
      if (!written && /\r\n(EVALSHA|EVAL|DEL)\r\n/i.test(chunk.toString('latin1'))) {
        written = true;
        redisCli(redis.port, 'SET', key, entry('NEWER_TOKEN_0123456789'));
      }
    });
    try {
      const cleared = await wxkit(['token', 'clear', '--store', proxy.url, '--app', `oa:${appId}`, '--json']);
      expect(cleared.code, cleared.stderr).toBe(0);
      expect(cleared.json).toMatchObject({ ok: true, key, removed: false, changed_meanwhile: true });
      expect(JSON.parse(redisCli(redis.port, 'GET', key)).access_token).toBe('NEWER_TOKEN_0123456789');
    } finally {
      proxy.close();
    }
  });

  it("get under a format without fetched_at takes another program's token written between its own write and its read-back for the shared one, not for a lost write", async () => {
    const { appId, secret } = mock.createApp();
    const profile = ['--profile', 'easyWeChat4', '--profile-options', '{"prefix":"readback:"}'];
    const args = ['--app', `oa:${appId}`, ...profile, '--json', '--show-token'];
    const key = (await wxkit(['token', 'inspect', '--store', redis.url, ...args], { WECHAT_SECRET: secret })).json.key as string;
    const peers = 'PEER_TOKEN_WRITTEN_MEANWHILE_0123';
    // The PHP app refreshes right after the command's own write (answered), before the command reads the
    // key back: a proxy in front of Redis writes the PHP app's token before the next command goes on.
    let state: 'before' | 'written' | 'done' = 'before';
    const proxy = await redisProxy(redis.port, (chunk) => {
      if (state === 'written') {
        state = 'done';
        redisCli(redis.port, 'SET', key, `a:2:{s:12:"access_token";s:${peers.length}:"${peers}";s:10:"expires_in";i:7200;}`, 'EX', '7200');
      }
      if (state === 'before' && chunk.toString('latin1').includes('s:12:"access_token"')) state = 'written';
    });
    try {
      const got = await wxkit(['token', 'get', '--store', proxy.url, '--base-url', mock.url, ...args], { WECHAT_SECRET: secret });
      expect(got.code, got.stdout + got.stderr).toBe(0);
      // The token every program reads now.
      expect(got.json.token).toBe(peers);
      expect(mock.counters(appId).classicTokenRequests).toBe(1);
    } finally {
      proxy.close();
    }
  });

  it('a file:// store whose directory does not exist is a store error for the commands that only read, and is made by one that fetches', async () => {
    const { appId, secret } = mock.createApp();
    const missing = join(dir, 'no-such-dir');
    for (const action of ['inspect', 'clear', 'get']) {
      const run = await wxkit(['token', action, '--store', pathToFileURL(missing).href, '--app', `oa:${appId}`, '--json']);
      expect(run.code, `${action}: ${run.stdout}${run.stderr}`).toBe(3);
      expect(run.json.error).toMatchObject({ exit: 3, reason: 'database', message: expect.stringContaining('names a directory that does not exist') });
    }
    const fetched = await wxkit(['token', 'get', '--store', pathToFileURL(missing).href, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: secret });
    expect(fetched.code, fetched.stderr).toBe(0);
  });

  it('inspect and get show what a peer wrote in other units (microseconds, a pause far in the past) without failing', async () => {
    const { appId } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    const now = Math.floor(Date.now() / 1000);
    redisCli(redis.port, 'SET', key, JSON.stringify({ access_token: 'A'.repeat(100), expires_at: now + 7000, fetched_at: now * 1_000_000 }));
    redisCli(redis.port, 'SET', `${key}:refetch`, JSON.stringify({ until: -1e20, step: 1000 }));
    for (const args of [['inspect'], ['inspect', '--json'], ['get', '--json']]) {
      const run = await wxkit(['token', ...args, '--store', redis.url, '--app', `oa:${appId}`]);
      expect(run.code, `${args.join(' ')}: ${run.stdout}${run.stderr}`).toBe(0);
      expect(run.stderr).not.toMatch(/Invalid time value|RangeError/);
    }
  });

  it('inspect shows the failure marker a failed fetch left; clear removes it with the token', async () => {
    const { appId, secret } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    const common = ['--store', redis.url, '--app', `oa:${appId}`];
    const wrong = await wxkit(['token', 'get', ...common, '--base-url', mock.url], { WECHAT_SECRET: 'not-the-secret' });
    expect(wrong.code, wrong.stderr).toBe(6);
    expect(redisCli(redis.port, 'EXISTS', `${key}:failed`)).toBe('1');

    const inspected = await wxkit(['token', 'inspect', ...common, '--json']);
    expect(inspected.json.failure).toMatchObject({ state: 'in_force', code: 'ERR_WXKIT_WECHAT_API', errcode: 40125, failed_by: expect.any(String), attempt: 1 });
    const { failed_at, retry_at } = inspected.json.failure as { failed_at: number; retry_at: number };
    expect(retry_at - failed_at).toBe(60_000);
    const text = await wxkit(['token', 'inspect', ...common]);
    expect(text.stdout).toMatch(/failure\s+errcode 40125, .* by \S+ at \S+; every process fails with it until \S+ \(\d+ s\): wxkit token clear removes it/);

    // The secret fixed: without the marker gone, every process would fail with 40125 for up to a minute.
    const cleared = await wxkit(['token', 'clear', ...common, '--json']);
    expect(cleared.json).toMatchObject({ ok: true, key, removed: false, failure_removed: true });
    expect(redisCli(redis.port, 'EXISTS', `${key}:failed`)).toBe('0');
    const after = await wxkit(['token', 'inspect', ...common, '--json']);
    expect(after.json.failure).toBeNull();
    expect((await wxkit(['token', 'get', ...common, '--base-url', mock.url], { WECHAT_SECRET: secret })).code).toBe(0);
  });

  it("inspect shows the fleet's pause of fetches after rejected tokens; clear removes it with the token", async () => {
    const { appId } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    const common = ['--store', redis.url, '--app', `oa:${appId}`];
    const until = Date.now() + 30_000;
    redisCli(redis.port, 'SET', `${key}:refetch`, JSON.stringify({ until, step: 32_000 }), 'PX', '64000');

    const inspected = await wxkit(['token', 'inspect', ...common, '--json']);
    expect(inspected.json.refetch_pause).toEqual({ state: 'in_force', until, step_ms: 32_000, retry_at: until });
    const text = await wxkit(['token', 'inspect', ...common]);
    expect(text.stdout).toMatch(/pause\s+WeChat rejected tokens moments after they were fetched; no process fetches another before \S+ \(\d+ s, a step of 32 s\): wxkit token clear removes it/);

    // The program that fetched in a loop stopped: without the pause gone, callers would wait out its 30 s.
    const cleared = await wxkit(['token', 'clear', ...common, '--json']);
    expect(cleared.json).toMatchObject({ ok: true, key, removed: false, failure_removed: false, pause_removed: true });
    expect(redisCli(redis.port, 'EXISTS', `${key}:refetch`)).toBe('0');
    expect((await wxkit(['token', 'inspect', ...common, '--json'])).json.refetch_pause).toBeNull();

    // One that ends an hour ahead, with a step of a second: no process keeps it, and inspect says so.
    redisCli(redis.port, 'SET', `${key}:refetch`, JSON.stringify({ until: Date.now() + 3_600_000, step: 1_000 }), 'PX', '60000');
    expect((await wxkit(['token', 'inspect', ...common, '--json'])).json.refetch_pause).toMatchObject({ state: 'ignored', step_ms: 1_000 });
  });

  it('reads the secret from --secret-env NAME, never from a flag', async () => {
    const { appId, secret } = mock.createApp();
    const run = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--secret-env', 'OA_SECRET', '--json'], { OA_SECRET: secret });
    expect(run.code).toBe(0);
    const missing = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--secret-env', 'NOT_SET_ANYWHERE']);
    expect(missing.stderr).toContain('NOT_SET_ANYWHERE');
    expect(missing.code).toBe(7);
    // A command that needs no secret is not failed for one that is not set.
    const inspected = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--secret-env', 'NOT_SET_ANYWHERE', '--json']);
    expect(inspected.code, inspected.stderr).toBe(0);
    const flag = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--secret', secret]);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain('wxkit token has no option --secret: the secret is read from the environment only');
    expect(flag.stderr).not.toContain(secret);
  });

  it('takes the store from WXKIT_STORE where --store is not given, so that its password stays out of the process list', async () => {
    const { appId, secret } = mock.createApp();
    const run = await wxkit(['token', 'get', '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: secret, WXKIT_STORE: redis.url });
    expect(run.code, run.stderr).toBe(0);
    expect(redisCli(redis.port, 'EXISTS', String(run.json.key))).toBe('1');
    // The flag wins over the environment.
    const flagged = await wxkit(['token', 'inspect', '--store', `file://${dir}`, '--app', `oa:${appId}`, '--json'], { WXKIT_STORE: redis.url });
    expect(flagged.json.store).toBe(`file://${dir}`);
    const neither = await wxkit(['token', 'inspect', '--app', `oa:${appId}`]);
    expect(neither.code).toBe(2);
    expect(neither.stderr).toContain('needs --store (or WXKIT_STORE)');
    // A URL it cannot read is named as it was set: WXKIT_STORE, not a flag never given.
    const garbage = await wxkit(['token', 'inspect', '--app', `oa:${appId}`], { WXKIT_STORE: 'garbage' });
    expect(garbage.code).toBe(2);
    expect(garbage.stderr).toContain('WXKIT_STORE must be a URL');
    expect(garbage.stderr).not.toContain('--store must');
    const flaggedGarbage = await wxkit(['token', 'inspect', '--store', 'garbage', '--app', `oa:${appId}`]);
    expect(flaggedGarbage.stderr).toContain('--store must be a URL');
  });

  it('on a file store and on memcached, and for a WeCom agent', async () => {
    const { appId, secret } = mock.createApp();
    const fileStore = pathToFileURL(join(dir, 'tokens')).href;
    const viaFile = await wxkit(['token', 'get', '--store', fileStore, '--app', `mp:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: secret });
    expect(viaFile.code, viaFile.stderr).toBe(0);
    const inspected = await wxkit(['token', 'inspect', '--store', fileStore, '--app', `mp:${appId}`, '--json']);
    expect(inspected.json).toMatchObject({ state: 'present', store_ttl_ms: expect.any(Number) });

    const viaMemcached = await wxkit(['token', 'get', '--store', `memcached://${memcached.url}`, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: secret });
    expect(viaMemcached.code, viaMemcached.stderr).toBe(0);
    expect(await memcachedGet(memcached.port, `wechat:stable_access_token:${appId}`)).toMatch(/^\{"access_token"/);

    const work = mock.createWorkApp();
    const viaWork = await wxkit(['token', 'get', '--store', redis.url, '--app', `work:${work.corpId}:${work.agentId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: work.secret });
    expect(viaWork.code, viaWork.stderr).toBe(0);
    expect(viaWork.json.key).toBe(`wechat:work:access_token:${work.corpId}:${work.agentId}`);

    // wechatpy keys a WeCom token by part of the secret: the CLI builds that key from WECHAT_SECRET, shows
    // it masked, and says which variable to set when it is missing.
    const part = Array.from(work.secret).slice(0, 10).join('');
    const app = ['--store', redis.url, '--app', `work:${work.corpId}:${work.agentId}`, '--profile', 'wechatpy', '--base-url', mock.url, '--json'];
    const viaWechatpy = await wxkit(['token', 'get', ...app], { WECHAT_SECRET: work.secret });
    expect(viaWechatpy.code, viaWechatpy.stderr).toBe(0);
    expect(viaWechatpy.json.key).toBe(`wechatpy:${work.corpId}_***_access_token`);
    expect(viaWechatpy.stdout + viaWechatpy.stderr).not.toContain(part);
    expect(redisCli(redis.port, 'EXISTS', `wechatpy:${work.corpId}_${part}_access_token`).trim()).toBe('1');
    const unset = await wxkit(['token', 'inspect', ...app], { WECHAT_SECRET: '' });
    expect(unset.code).toBe(7);
    expect(unset.stdout).toContain('set WECHAT_SECRET, or name another variable with --secret-env NAME');
    // A secret no client takes (a space in it, say) would build a key no program uses: inspect and clear
    // refuse it as get does, naming the variable, never the secret.
    for (const action of ['inspect', 'clear']) {
      const spaced = await wxkit(['token', action, ...app], { WECHAT_SECRET: ` ${work.secret}` });
      expect(spaced.code, spaced.stdout).toBe(7);
      expect(spaced.stdout).toContain('WECHAT_SECRET holds a space or a control character');
      expect(spaced.stdout + spaced.stderr).not.toContain(part.slice(0, 9));
    }
    expect(redisCli(redis.port, 'EXISTS', `wechatpy:${work.corpId}_${part}_access_token`).trim()).toBe('1');
  });

  it('--profile reads and writes another SDK’s entry: EasyWeChat 4 on ThinkPHP, with its classic endpoint', async () => {
    const { appId, secret } = mock.createApp();
    const profile = ['--profile', 'easyWeChat4', '--profile-options', '{"prefix":"think:"}'];
    const got = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, ...profile, '--json', '--show-token'], { WECHAT_SECRET: secret });
    expect(got.code, got.stderr).toBe(0);
    expect(mock.counters(appId).classicTokenRequests).toBe(1);
    const key = got.json.key as string;
    expect(key).toMatch(/^think:easywechat\.kernel\.access_token\.[0-9a-f]{32}$/);
    const token = got.json.token as string;
    expect(redisCli(redis.port, 'GET', key)).toBe(`a:2:{s:12:"access_token";s:${token.length}:"${token}";s:10:"expires_in";i:7200;}`);
    const inspected = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, ...profile, '--json'], { WECHAT_SECRET: secret });
    expect(inspected.json).toMatchObject({ state: 'present', schema: 'easyWeChat4', key });
    expect(inspected.json.remaining_seconds).toBeGreaterThan(7100);
    // The PHP side stores something else there (a PHP object): never replaced, the token is shared beside it.
    redisCli(redis.port, 'SET', key, 'O:8:"stdClass":0:{}', 'EX', '600');
    const beside = await wxkit(['token', 'refresh', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, ...profile, '--json', '--show-token'], { WECHAT_SECRET: secret });
    expect(beside.code, beside.stderr).toBe(0);
    expect(redisCli(redis.port, 'GET', key)).toBe('O:8:"stdClass":0:{}');
    expect(JSON.parse(redisCli(redis.port, 'GET', `${key}:wxkit`))).toMatchObject({ access_token: beside.json.token });
    expect(mock.counters(appId).classicTokenRequests).toBe(2);
    const foreign = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, ...profile, '--json', '--show-token'], { WECHAT_SECRET: secret });
    expect(foreign.code, foreign.stderr).toBe(0);
    expect(foreign.json).toMatchObject({ state: 'foreign', shared_key: `${key}:wxkit`, token: beside.json.token, bytes: 'O:8:"stdClass":0:{}'.length });
    const unknown = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--profile', 'laravel-magic']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--profile must be one of native, easyWeChat4');
    // A prefix for a profile goes in its options; given on its own, or misspelt there, it is a usage error.
    const stray = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--profile', 'easyWeChat4', '--prefix', 'think:']);
    expect(stray.code).toBe(2);
    expect(stray.stderr).toContain("--prefix is the native schema's; give easyWeChat4's in --profile-options");
    const misspelt = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--profile', 'easyWeChat4', '--profile-options', '{"prefx":"think:"}']);
    expect(misspelt.code).toBe(2);
    expect(misspelt.stderr).toContain('easyWeChat4 options.prefx is not an option (did you mean prefix?)');
    // JSON that is no object would be no options at all: the peer's keys under the default prefix.
    for (const [profile, options] of [['native', '42'], ['easyWeChat4', 'null'], ['wechatpy', '["think:"]'], ['native', '{']]) {
      const run = await wxkit(['token', 'inspect', '--store', redis.url, '--app', `oa:${appId}`, '--profile', profile!, '--profile-options', options!]);
      expect(run.code, `${profile} ${options}`).toBe(2);
      expect(run.stderr).toContain('--profile-options must be a JSON object');
    }
  });

  it('exit codes: WeChat refused 6, usage 2, store down 3, no token without a secret 5', async () => {
    const { appId, secret } = mock.createApp();
    const wrong = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: 'not-the-secret' });
    expect(wrong.code).toBe(6);
    expect(wrong.json).toMatchObject({ ok: false, error: { code: 'ERR_WXKIT_WECHAT_API', errcode: 40125 } });
    expect(wrong.stdout).not.toContain('not-the-secret');
    expect((await wxkit(['token', 'get', '--store', 'ftp://x', '--app', `oa:${appId}`])).code).toBe(2);
    expect((await wxkit(['token', 'get', '--store', redis.url, '--app', 'oa'])).code).toBe(2);
    expect((await wxkit(['token', 'launch', '--store', redis.url])).code).toBe(2);
    expect((await wxkit(['fly'])).code).toBe(2);
    const down = await wxkit(['token', 'inspect', '--store', 'redis://127.0.0.1:1', '--app', `oa:${appId}`, '--json']);
    expect(down.code).toBe(3);
    expect(down.json).toMatchObject({ error: { code: 'ERR_WXKIT_CACHE' } });
    // With the store down, get and refresh fetch nothing: a token that cannot be shared would kill the
    // one every other program holds (classic endpoint), and is not what the operator asked for.
    const other = mock.createApp();
    for (const [action, store] of [['get', 'redis://127.0.0.1:1'], ['refresh', 'redis://127.0.0.1:1'], ['refresh', 'memcached://127.0.0.1:1']]) {
      const run = await wxkit(['token', action!, '--endpoint', 'classic', '--store', store!, '--app', `oa:${other.appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: other.secret });
      expect(run.code, `${action} on ${store}: ${run.stdout}${run.stderr}`).toBe(3);
      expect(run.json).toMatchObject({ ok: false, error: { code: 'ERR_WXKIT_CACHE' } });
    }
    expect(mock.counters(other.appId).tokenRequests).toBe(0);
    const noSecret = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--json']);
    expect(noSecret.code).toBe(5);
    expect(noSecret.json).toMatchObject({ error: { code: 'ERR_WXKIT_NO_TOKEN' } });
    expect(mock.counters(appId).tokenRequests).toBe(1);
    void secret;
  });

  it('the binary ends once it has printed: refresh and clear on each kind of store', async () => {
    // In this process, main() resolving says nothing of a socket or a timer it left open: a binary that
    // keeps one ends only when the test times out. The built binary, as a user runs it (get and inspect
    // on Redis end theirs in exit-codes.test.ts, where stdout is a closed pipe).
    const stores = [redis.url, `memcached://${memcached.url}`, pathToFileURL(join(dir, 'ends')).href];
    for (const store of stores) {
      const { appId, secret } = mock.createApp();
      for (const action of ['refresh', 'clear']) {
        const run = await wxkitProcess(['token', action, '--store', store, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: secret });
        expect(run.code, `${action} on ${store}: ${run.stdout}${run.stderr}`).toBe(0);
      }
    }
  });

  it('--help for each command, exit 0', async () => {
    const commands = [['--help'], ['token', '--help'], ['serve', '--help'], ['mock-server', '--help'], ['demo', '--help']];
    // Independent runs of the binary, side by side: mock-server and demo print to the process's own streams.
    const runs = await Promise.all(commands.map((args) => wxkitProcess(args)));
    for (const [i, args] of commands.entries()) {
      expect(runs[i]!.code, args.join(' ')).toBe(0);
      expect(runs[i]!.stdout).toMatch(/usage: wxkit/);
    }
    const [help, tokenHelp] = runs;
    for (const line of ['2  usage', '3  store unreachable', '6  WeChat API error', '7  configuration', '8  token not stored']) expect(help!.stdout).toContain(line);
    expect(tokenHelp!.stdout).toContain('8  token not stored');
    // As the README says: the band past maxConnections is answered 503 busy, not closed unanswered.
    expect(runs[2]!.stdout).toMatch(/"maxConnections": \d+, +optional: past it, 503 busy \(Retry-After: 1\), then closed/);
  });
});

describe('wxkit mock-server', () => {
  it('on a port another process has: one line, configuration (7), as serve', async () => {
    // The binary: the port is another process's (this one's), and the one line is all it prints.
    const run = await wxkitProcess(['mock-server', '--port', String(mock.port)]);
    expect(run.code, run.stderr).toBe(7);
    expect(run.stderr).toMatch(new RegExp(`^wxkit: cannot listen on 127\\.0\\.0\\.1:${mock.port} \\(EADDRINUSE\\): another process has that port\\n$`));
    // A host that does not resolve: the error names no port of its own, the flags do.
    const unresolved = await wxkitProcess(['mock-server', '--host', 'no-such-host.invalid', '--port', '47002']);
    expect(unresolved.code).toBe(7);
    expect(unresolved.stderr).toContain('cannot listen on no-such-host.invalid:47002 (');
  });

  it('with --json, a usage error is one JSON object on stdout (exit 2), as for every command', async () => {
    const run = await wxkitProcess(['mock-server', '--json', '--port', 'abc']);
    expect(run.code).toBe(2);
    expect(run.json).toMatchObject({ ok: false, error: { code: 'ERR_WXKIT_USAGE', exit: 2 } });
    expect((run.json.error as { message: string }).message).toContain('--port');
  });

  it('prints its URL and app, serves, and exits 0 on SIGTERM', async () => {
    const child = spawn(process.execPath, [bin, 'mock-server', '--json', '--port', '0', '--latency', '5']);
    const line = await new Promise<string>((resolve) => createInterface({ input: child.stdout }).once('line', resolve));
    const { url, apps } = JSON.parse(line) as { url: string; apps: { appId: string; secret: string }[] };
    const body = (await (await fetch(`${url}/cgi-bin/token?grant_type=client_credential&appid=${apps[0]!.appId}&secret=${apps[0]!.secret}`)).json()) as Record<string, unknown>;
    expect(body.expires_in).toBe(7200);
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

/**
 * A proxy in front of the Redis on `port` that hands each chunk a client sends to `beforeForward` before
 * passing it on: a test writes another program's value there, between two commands of the command's.
 */
async function redisProxy(port: number, beforeForward: (chunk: Buffer) => void): Promise<{ url: string; close: () => void }> {
  const proxy = createServer((client) => {
    const upstream = createConnection(port, '127.0.0.1');
    upstream.pipe(client);
    client.on('data', (chunk: Buffer) => {
      beforeForward(chunk);
      upstream.write(chunk);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    // A command that exits resets its connection: that ends the pair, it is no failure of the test.
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return { url: `redis://127.0.0.1:${(proxy.address() as { port: number }).port}`, close: () => proxy.close() };
}
