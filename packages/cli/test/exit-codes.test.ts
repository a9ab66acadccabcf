import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, redisCli, startMemcached, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { maskPasswords } from '../src/args.js';
import { runDemo } from '../src/demo.js';
import { bin, wxkit, wxkitProcess } from './run-cli.js';

// Each kind of failure has its own exit code and a message in wxkit's words, against real redis-server
// processes and the mock server: the command in this process as the binary runs it (run-cli.ts), and the
// binary in a process of its own where a signal, a pipe, serve's start or demo's own output is the point.
const PASSWORD = 'pw-7f3a19c2d0';

let mock: MockWeChat;
let redis: StoreServer;
let replica: StoreServer;
let partialAcl: StoreServer;
let withPassword: StoreServer;
beforeAll(async () => {
  [mock, redis, replica, partialAcl, withPassword] = await Promise.all([
    startMockWeChat(),
    startRedis(),
    // A replica of a primary that is not there: it answers reads and refuses writes (READONLY).
    freePort().then((port) => startRedis({ args: ['--replicaof', '127.0.0.1', String(port)] })),
    // An ACL user that may write the probe and the lock, and not the token's key (NOPERM).
    startRedis({ args: ['--user', 'app', 'on', `>${PASSWORD}`, '+@all', '%R~*', '%RW~*:probe', '%RW~*:lock', '%RW~*:failure', '%RW~*:forced'] }),
    startRedis({ args: ['--requirepass', PASSWORD] }),
  ]);
});
afterAll(async () => {
  await Promise.all([mock?.close(), redis?.stop(), replica?.stop(), partialAcl?.stop(), withPassword?.stop()]);
});

/**
 * A TCP proxy on 127.0.0.1 to the server on `port`: what a client sends goes through `forward`, which
 * hands each chunk on (`send`), holds it or drops it; the server's answers pass as they are.
 */
async function startProxy(port: number, forward: (chunk: Buffer, send: (chunk: Buffer) => void) => void): Promise<{ port: number; close: () => void }> {
  const proxy = createServer((client) => {
    const upstream = createConnection(port, '127.0.0.1');
    upstream.pipe(client);
    client.on('data', (chunk: Buffer) => forward(chunk, (bytes) => upstream.write(bytes)));
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return { port: (proxy.address() as { port: number }).port, close: () => void proxy.close() };
}

describe('wxkit exit codes and messages', () => {
  it('usage (2): wxkit’s own sentence and the usage line, never the parser’s text', async () => {
    const cases: [string[], string][] = [
      [['token', 'get', '--store', redis.url, '--bogus'], 'wxkit token has no option --bogus'],
      // Names Object.prototype holds are no options either.
      [['token', 'get', '--store', redis.url, '--app', 'oa:wx1', '--toString'], 'wxkit token has no option --toString\n'],
      [['token', 'get', '--store', redis.url, '--app', 'oa:wx1', '--constructor', 'x'], 'wxkit token has no option --constructor\n'],
      [['token', 'get', '--store'], '--store needs a value'],
      [['token', 'get', '--store', '--app', 'oa:wx1'], '--store needs a value'],
      [['token', 'get', '--store', redis.url, '--json=yes'], '--json is a switch and takes no value'],
      [['token', 'get', 'extra', '--store', redis.url], 'wxkit token takes at most 1 argument besides its options (got "extra")'],
      [['token', 'launch', '--store', redis.url], '"launch" is not a token action'],
      [['token', '--store', redis.url], 'wxkit token needs an action'],
      [['token', 'get', '--app', 'oa:wx1'], 'wxkit token get needs --store'],
      [['token', 'get', '--store', redis.url], 'needs --app KIND:ID'],
      [['token', 'get', '--store', redis.url, '--app', 'oa'], '--app must be official_account:<appid> (or oa:<appid>), mini_program:<appid> (or mp:<appid>)'],
      // A segment too many is a typo, never the app before it (clear would clear another app's token).
      [['token', 'clear', '--store', 'file:///tmp', '--app', 'work:ww1:1000002:1000003'], '--app must be official_account:<appid>'],
      [['token', 'inspect', '--store', 'file:///tmp', '--app', 'oa:wx1:x'], '--app must be official_account:<appid>'],
      // The docs' placeholder pasted as it is, and ids no client takes: refused, not looked up as absent (exit 5).
      [['token', 'inspect', '--store', 'file:///tmp', '--app', 'oa:wx…'], '--app appid must be letters, digits'],
      [['token', 'clear', '--store', 'file:///tmp', '--app', 'mp:wx 1'], '--app appid must be letters, digits'],
      [['token', 'inspect', '--store', 'file:///tmp', '--app', 'work:ww/1:1000002'], '--app corpid must be letters, digits'],
      [['token', 'get', '--store', 'ftp://x', '--app', 'oa:wx1'], 'is not a store wxkit knows'],
      [['token', 'get', '--store', 'file://fileserver/var/lib/wechat', '--app', 'oa:wx1'], '--store file:// must name a directory of this host'],
      [['token', 'inspect', '--store', 'file:///var/lib/a%2Fb', '--app', 'oa:wx1'], '--store file:// must name a directory of this host'],
      [['token', 'get', '--store', redis.url, '--app', 'oa:wx1', '--endpoint', 'fast'], '--endpoint must be stable or classic'],
      [['token', 'inspect', '--store', redis.url, '--app', 'work:ww1:1000002', '--endpoint', 'classic'], '--endpoint is for official accounts and mini programs; WeCom has one token endpoint'],
      [['token', 'get', '--store', redis.url, '--appid', 'wx1'], 'use --app official_account:<appid>'],
      // Checked before the store is opened: nothing listens there, and the answer is still a usage error.
      [['token', 'get', '--store', 'redis://127.0.0.1:1', '--app', 'oa:wx1', '--base-url', 'ftp://127.0.0.1:1'], '--base-url must be an http:// or https:// URL'],
      [['token', 'get', '--store', 'redis://127.0.0.1:1', '--app', 'oa:wx1', '--base-url', 'api.weixin.qq.com'], '--base-url must be an http:// or https:// URL'],
      [['token', 'inspect', '--store', 'redis://alice:pa%zzss@127.0.0.1:1', '--app', 'oa:wx1'], '--store redis:// has credentials that are not percent-encoded'],
      [['fly'], '"fly" is not a wxkit command'],
    ];
    // Independent runs, side by side.
    const runs = await Promise.all(cases.map(([args]) => wxkit(args)));
    for (const [i, [args, sentence]] of cases.entries()) {
      const run = runs[i]!;
      expect(run.code, args.join(' ')).toBe(2);
      expect(run.stderr, args.join(' ')).toMatch(/^wxkit: /);
      expect(run.stderr, args.join(' ')).toContain(sentence);
      expect(run.stderr, args.join(' ')).toMatch(/\n\nusage: wxkit /);
      expect(run.stderr).not.toMatch(/ERR_PARSE_ARGS|To specify a positional argument|argument missing|Unknown option/);
    }
    const json = await wxkit(['token', 'get', '--store', redis.url, '--bogus', '--json']);
    expect(json.json.error).toMatchObject({ code: 'ERR_WXKIT_USAGE', exit: 2 });
  });

  it('usage (2): a store URL given where no argument is taken is quoted without its password', async () => {
    const url = `redis://app:${PASSWORD}@127.0.0.1:6379`;
    const runs = await Promise.all([
      // --store forgotten before the URL: an argument too many, or no action at all.
      wxkit(['token', 'get', url, '--app', 'oa:wx1']),
      wxkit(['token', url, '--app', 'oa:wx1']),
      wxkit(['token', 'get', '--store', url, '--app', 'oa:wx1', `--show-token=${url}`]),
      // demo prints its report to the process's own streams: the binary's whole output is checked.
      wxkitProcess(['demo', `memcached://app:${PASSWORD}@127.0.0.1:11211`]),
    ]);
    for (const run of runs) {
      expect(run.code, run.stderr).toBe(2);
      expect(run.stderr).toMatch(/:\/\/app:\*\*\*@127\.0\.0\.1/);
      expect(run.stdout + run.stderr).not.toContain(PASSWORD);
    }
  });

  it("runDemo, called by a program, quotes a store URL it takes no argument for without its password", async () => {
    const refused = await runDemo([`memcached://app:${PASSWORD}@127.0.0.1:11211`]).catch((error: unknown) => error as Error);
    expect(refused).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', message: expect.stringContaining('memcached://app:***@127.0.0.1:11211') });
    expect((refused as Error).message).not.toContain(PASSWORD);
  });

  it('a password with quotes or a raw @ in it is masked whole', () => {
    expect(maskPasswords(`"redis://app:it's\"sec@ret@127.0.0.1:6379"`)).toBe('"redis://app:***@127.0.0.1:6379"');
    expect(maskPasswords('got memcached://u:p%40ss@h:11211 and redis://h:6379')).toBe('got memcached://u:***@h:11211 and redis://h:6379');
    // A userinfo alone is a password to redis-cli (`redis://secret@h`), masked as the library masks it;
    // a port, or an @ in a path, is left as it is.
    expect(maskPasswords('redis://secret@h:6379 redis://h:6379/0 https://h/a@b')).toBe('redis://***@h:6379 redis://h:6379/0 https://h/a@b');
    // Each URL of a word that holds several (a cluster's list typed where no argument is taken).
    expect(maskPasswords('got "redis://pw1@h1:6379,redis://pw2@h2:6379"')).toBe('got "redis://***@h1:6379,redis://***@h2:6379"');
    expect(maskPasswords('redis://pw1@h1:6379,redis://app:pw2@h2:6379')).toBe('redis://***@h1:6379,redis://app:***@h2:6379');
    // URLs in a query string (a DSN handed on in one): the second one's password too.
    expect(maskPasswords('store=redis://pw1@h1:6379&fallback=redis://pw2@h2:6379')).toBe('store=redis://***@h1:6379&fallback=redis://***@h2:6379');
    expect(maskPasswords('redis://u:pa&x://word@h:6379')).toBe('redis://u:***@h:6379');
    // The second URL's password holding `=x://` or `&x://`: no split inside it shows a part of it.
    expect(maskPasswords('redis://pw1@h1:6379&x=redis://u:p=q://r@h2:6379')).not.toMatch(/p=q|pw1/);
    expect(maskPasswords('redis://pw1@h1:6379,redis://u:p&q://r@h2:6379')).not.toMatch(/p&q|pw1/);
    // A password holding :// is still one password, after a separator too.
    expect(maskPasswords('redis://u:pa://ss@h:6379')).toBe('redis://u:***@h:6379');
    expect(maskPasswords('redis://u:pa,ss://word@h:6379')).toBe('redis://u:***@h:6379');
    expect(maskPasswords("redis://u:p'x://y@h:6379")).toBe('redis://u:***@h:6379');
    // The usage text quoted after an error keeps its placeholder as written.
    expect(maskPasswords('--store URL  redis://[user:pass@]host:port[/db], memcached://[user:pass@]host:port')).toBe('--store URL  redis://[user:pass@]host:port[/db], memcached://[user:pass@]host:port');
    // …and a real password beside it is masked all the same.
    expect(maskPasswords('redis://admin:hunter2@10.0.0.5:6379/0#[user:pass@]')).toBe('redis://admin:***@10.0.0.5:6379/0#[user:pass@]');
    expect(maskPasswords('redis://[user:pass@]u:secret@h')).toBe('redis://[user:pass@]u:***@h');
    expect(maskPasswords('redis://u:se[user:pass@]cret@h')).toBe('redis://u:***@h');
    expect(maskPasswords('bad key "a\u0000b"')).toBe('bad key "a\u0000b"');
  });

  it('configuration (7): a missing WECHAT_SECRET says which variable or flag to set', async () => {
    const { appId } = mock.createApp();
    const refresh = await wxkit(['token', 'refresh', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url]);
    expect(refresh.code).toBe(7);
    expect(refresh.stderr).toContain('set WECHAT_SECRET, or name another variable with --secret-env NAME');
    const unset = await wxkit(['token', 'refresh', '--store', redis.url, '--app', `oa:${appId}`, '--secret-env', 'OA_SECRET_NOT_SET', '--json']);
    expect(unset.code).toBe(7);
    expect(unset.json.error).toMatchObject({ code: 'ERR_WXKIT_CONFIG', exit: 7 });
    expect(unset.json.error!.message).toContain('export OA_SECRET_NOT_SET=');
    // get without the secret only reads: no token (5), and the message says how to let it fetch.
    const get = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url]);
    expect(get.code).toBe(5);
    expect(get.stderr).toContain('set WECHAT_SECRET (or name another variable with --secret-env NAME)');
    for (const run of [refresh, unset, get]) expect(run.stdout + run.stderr).not.toContain("refresh: 'never'");
    // A secret read from a file with its line break: named by its variable, never quoted, before WeChat
    // is asked (it would answer 40125 and nothing of why).
    const secret = '0123456789abcdef0123456789abcdef';
    const spaced = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--secret-env', 'OA_SECRET_FROM_FILE'], { OA_SECRET_FROM_FILE: `${secret}\n` });
    expect(spaced.code, spaced.stderr).toBe(7);
    expect(spaced.stderr).toContain('OA_SECRET_FROM_FILE holds a space or a control character (a line break at its end, say), which no secret has');
    expect(spaced.stderr).not.toContain(secret);
    expect(mock.counters(appId).tokenRequests).toBe(0);
  });

  it('store unreachable (3): refused, and an authentication failure named as such', async () => {
    const { appId, secret } = mock.createApp();
    const refused = await wxkit(['token', 'get', '--store', `redis://127.0.0.1:${await freePort()}`, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: secret });
    expect(refused.code).toBe(3);
    expect(refused.json.error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'refused', exit: 3 });
    const url = withPassword.url.replace('redis://', 'redis://:not-the-password@');
    const auth = await wxkit(['token', 'get', '--store', url, '--app', `oa:${appId}`, '--base-url', mock.url], { WECHAT_SECRET: secret });
    expect(auth.code).toBe(3);
    expect(auth.stderr).toContain('authentication failed');
    expect(auth.stderr).toContain('redis://:***@');
    expect(auth.stderr).not.toContain('not-the-password');
    expect(mock.counters(appId).tokenRequests).toBe(0);
  });

  it('not stored (8): a read-only replica refuses the write, and nothing is fetched', async () => {
    const { appId, secret } = mock.createApp();
    for (const action of ['get', 'refresh']) {
      const run = await wxkit(['token', action, '--store', replica.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: secret });
      expect(run.code, run.stdout + run.stderr).toBe(8);
      expect(run.json.error).toMatchObject({ code: 'ERR_WXKIT_NOT_STORED', reason: 'readonly', exit: 8 });
      expect(run.json.error!.message).toContain('refuses writes, so wxkit fetched nothing');
    }
    expect(mock.counters(appId).tokenRequests).toBe(0);
  });

  it('store unreachable (3), not refused (8): a store that reads and then stops answering the write', async () => {
    const { appId, secret } = mock.createApp();
    const memcached = await startMemcached();
    // Hands memcached's binary protocol on until the first SET (opcode 0x01), which it swallows: the
    // store answered the read, and the write gets no answer (MemcachedCache waits 500 ms).
    let swallowing = false;
    const proxy = await startProxy(memcached.port, (chunk, send) => {
      swallowing ||= chunk[0] === 0x80 && chunk[1] === 0x01;
      if (!swallowing) send(chunk);
    });
    try {
      const { port } = proxy;
      const run = await wxkit(['token', 'get', '--store', `memcached://127.0.0.1:${port}`, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: secret });
      expect(run.code, run.stdout + run.stderr).toBe(3);
      expect(run.json.error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout', exit: 3 });
      expect(mock.counters(appId).tokenRequests).toBe(0);
    } finally {
      proxy.close();
      await memcached.stop();
    }
  });

  it('store unreachable (3): a Redis that stops answering once the token is fetched says why (reason timeout)', async () => {
    const { appId, secret } = mock.createApp();
    // Hands Redis's protocol on until WeChat has been asked for the token, then swallows every command:
    // the token's write and the read-back after it get no answer.
    const proxy = await startProxy(redis.port, (chunk, send) => {
      if (mock.counters(appId).stableTokenRequests === 0) send(chunk);
    });
    try {
      const { port } = proxy;
      const run = await wxkit(['token', 'get', '--store', `redis://127.0.0.1:${port}`, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: secret });
      expect(run.code, run.stdout + run.stderr).toBe(3);
      expect(run.json.error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout', exit: 3 });
      expect(mock.counters(appId).stableTokenRequests).toBe(1);
    } finally {
      proxy.close();
    }
  }, 30_000);

  /** `wxkit token get` with the secret, once it holds the refresh lock and WeChat keeps its fetch waiting. */
  async function fetchingUnderLock(store: StoreServer) {
    const { appId, secret } = mock.createApp();
    mock.injectFault({ kind: 'hang', path: 'cgi-bin/stable_token' });
    const key = `wechat:stable_access_token:${appId}`;
    const child = spawn(process.execPath, [bin, 'token', 'get', '--store', store.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], {
      env: { ...process.env, WECHAT_APPID: '', WECHAT_SECRET: secret },
    });
    const output = { stdout: '', stderr: '' };
    child.stdout.on('data', (chunk: Buffer) => (output.stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output.stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
    while (redisCli(store.port, 'EXISTS', `${key}:lock`) !== '1') await new Promise((resolve) => setImmediate(resolve));
    return { key, child, exited, output };
  }

  it('stopped (130, 143): a signal while WeChat keeps the fetch waiting cuts it and releases the refresh lock', async () => {
    for (const [signal, exit] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
      const { key, child, exited, output } = await fetchingUnderLock(redis);
      child.kill(signal);
      expect(await exited, output.stdout).toBe(exit);
      expect(JSON.parse(output.stdout.trim()).error).toMatchObject({ exit, message: expect.stringContaining(`stopped by ${signal}`) });
      expect(redisCli(redis.port, 'EXISTS', `${key}:lock`)).toBe('0');
      // Cut, not waited out: a fetch that timed out after close() would have left the fleet a failure marker.
      expect(redisCli(redis.port, 'EXISTS', `${key}:failed`)).toBe('0');
      mock.clearFaults();
    }
  });

  it('stopped (130, 143) before it waits for a token, while the store does not answer (get, inspect, clear): its failure line under --json, not the bare signal', async () => {
    // A server that takes the connection and every command, and answers none.
    let received = 0;
    const silent = createServer((socket) => {
      socket.on('data', () => (received += 1));
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const { port } = silent.address() as { port: number };
    const { appId, secret } = mock.createApp();
    try {
      for (const [action, signal, exit] of [['get', 'SIGTERM', 143], ['inspect', 'SIGINT', 130], ['clear', 'SIGTERM', 143]] as const) {
        received = 0;
        const child = spawn(process.execPath, [bin, 'token', action, '--store', `redis://127.0.0.1:${port}`, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], {
          env: { ...process.env, WECHAT_APPID: '', WECHAT_SECRET: secret },
        });
        let stdout = '';
        child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
        const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
        // The command has sent the store its first command: it is reading the store.
        while (received === 0) await new Promise((resolve) => setImmediate(resolve));
        child.kill(signal);
        expect(await exited, `${action}: ${stdout}`).toEqual({ code: exit, signal: null });
        expect(JSON.parse(stdout.trim())).toMatchObject({ ok: false, error: { exit, message: expect.stringContaining(`stopped by ${signal}`) } });
      }
      expect(mock.counters(appId).stableTokenRequests).toBe(0);
    } finally {
      silent.close();
    }
  });

  it('stopped: a second signal while the store does not answer the lock release ends the process at once, and says so', async () => {
    const store = await startRedis();
    try {
      const { child, exited, output } = await fetchingUnderLock(store);
      await store.pause();
      // Two signals of different kinds, which the system never merges into one (in either order).
      child.kill('SIGTERM');
      child.kill('SIGINT');
      const code = await exited;
      const second = /stopped by (SIGINT|SIGTERM) again: exiting without waiting for the store/.exec(output.stderr)?.[1];
      expect(second, output.stderr).toBeDefined();
      expect(code).toBe(second === 'SIGINT' ? 130 : 143);
    } finally {
      mock.clearFaults();
      await store.resume();
      await store.stop();
    }
  });

  it('stopped (130, 143) after the fetch, while the command reads back what the store holds: no token printed, no lock left', async () => {
    for (const [signal, exit] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
      const { appId, secret } = mock.createApp();
      const key = `wechat:stable_access_token:${appId}`;
      const readBack = `*2\r\n$3\r\nGET\r\n$${key.length}\r\n${key}\r\n`;
      // Hands Redis's protocol on, and holds the command's first GET of the token's key after it wrote
      // the token (and what the command sends after it): the read that checks the others can read it.
      let written = false;
      let onHeld!: () => void;
      const held = new Promise<void>((resolve) => (onHeld = resolve));
      const holding: (() => void)[] = [];
      const proxy = await startProxy(redis.port, (chunk, send) => {
        const text = chunk.toString('latin1');
        if (holding.length === 0 && !(written && text === readBack)) {
          written ||= text.includes(key) && text.includes('"access_token"');
          send(chunk);
          return;
        }
        holding.push(() => send(chunk));
        onHeld();
      });
      try {
        const { port } = proxy;
        const child = spawn(process.execPath, [bin, 'token', 'get', '--store', `redis://127.0.0.1:${port}`, '--app', `oa:${appId}`, '--base-url', mock.url, '--show-token', '--json'], {
          env: { ...process.env, WECHAT_APPID: '', WECHAT_SECRET: secret },
        });
        let stdout = '';
        child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
        const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
        await held;
        child.kill(signal);
        // Stopped while the read is held. A command that went on waiting for it is let go after 5 s,
        // and fails below with what it then printed.
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([exited, new Promise((resolve) => (timer = setTimeout(resolve, 5000)))]);
        clearTimeout(timer);
        holding.splice(0).forEach((send) => send());
        expect(await exited, stdout).toEqual({ code: exit, signal: null });
        const token = JSON.parse(redisCli(redis.port, 'GET', key)).access_token as string;
        expect(stdout).not.toContain(token);
        expect(stdout.trim().split('\n')).toHaveLength(1);
        expect(JSON.parse(stdout)).toMatchObject({ ok: false, error: { exit, message: expect.stringContaining(`stopped by ${signal}`) } });
        expect(redisCli(redis.port, 'EXISTS', `${key}:lock`)).toBe('0');
        expect(mock.counters(appId).stableTokenRequests).toBe(1);
      } finally {
        proxy.close();
      }
    }
  });

  it('stopped as it closes the store (get, inspect, clear): its own exit code, never the bare signal, and a token printed only with exit 0', async () => {
    const hook = fileURLToPath(new URL('./fixtures/signal-at-store-close.mjs', import.meta.url));
    const { appId, secret } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    for (const [action, signal, exit] of [['get', 'SIGTERM', 143], ['inspect', 'SIGINT', 130], ['clear', 'SIGTERM', 143], ['get', 'SIGINT', 130]] as const) {
      const child = spawn(process.execPath, ['--import', hook, bin, 'token', action, '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--show-token', '--json'], {
        env: { ...process.env, WECHAT_APPID: '', WECHAT_SECRET: secret, SIGNAL_AT_CLOSE_PORT: String(redis.port), SIGNAL_AT_CLOSE: signal },
      });
      let stdout = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      const ended = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
      // The signal lands as the store closes: the command either ends as stopped (its line) or, where it
      // had closed the store before the signal was handled, with its answer; never killed where it stood.
      expect(ended.signal, `${action}: ${stdout}`).toBeNull();
      const lines = stdout.trim().split('\n');
      expect(lines, `${action}: ${stdout}`).toHaveLength(1);
      const printed = JSON.parse(lines[0]!) as { ok: boolean; error?: { exit: number; message: string } };
      if (ended.code === 0) expect(printed.ok).toBe(true);
      else {
        expect(ended.code, stdout).toBe(exit);
        expect(printed).toMatchObject({ ok: false, error: { exit, message: expect.stringContaining(`stopped by ${signal}`) } });
        expect(stdout).not.toContain('"token"');
      }
      expect(redisCli(redis.port, 'EXISTS', `${key}:lock`)).toBe('0');
    }
  });

  it('stopped (143) as its client closes, after it had its answer: the stopped line only, no token', async () => {
    const hook = fileURLToPath(new URL('./fixtures/signal-at-client-close.mjs', import.meta.url));
    const { appId, secret } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    const child = spawn(process.execPath, ['--import', hook, bin, 'token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--show-token', '--json'], {
      env: { ...process.env, WECHAT_APPID: '', WECHAT_SECRET: secret },
    });
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const ended = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
    expect(ended, stdout).toEqual({ code: 143, signal: null });
    const token = JSON.parse(redisCli(redis.port, 'GET', key)).access_token as string;
    expect(stdout).not.toContain(token);
    expect(stdout.trim().split('\n')).toHaveLength(1);
    expect(JSON.parse(stdout)).toMatchObject({ ok: false, error: { exit: 143, message: expect.stringContaining('stopped by SIGTERM') } });
    expect(mock.counters(appId).stableTokenRequests).toBe(1);
  });

  it('a failure the command had before a signal landed as its client closed is the one reported, with its exit code', async () => {
    const hook = fileURLToPath(new URL('./fixtures/signal-at-client-close.mjs', import.meta.url));
    const { appId } = mock.createApp();
    const key = `wechat:stable_access_token:${appId}`;
    // A secret WeChat refuses (40125): the command fails at WeChat, and the signal lands as it then closes its client.
    const child = spawn(process.execPath, ['--import', hook, bin, 'token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], {
      env: { ...process.env, WECHAT_APPID: '', WECHAT_SECRET: '0123456789abcdef0123456789abcdef' },
    });
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const ended = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
    expect(mock.counters(appId).stableTokenRequests).toBe(1);
    expect(stdout.trim().split('\n')).toHaveLength(1);
    const printed = JSON.parse(stdout) as { ok: boolean; error: { exit: number; message: string } };
    expect(printed.ok).toBe(false);
    expect(printed.error.message, stdout).not.toContain('stopped by SIGTERM');
    expect(ended, stdout).toEqual({ code: printed.error.exit, signal: null });
    expect([130, 143]).not.toContain(ended.code);
    expect(redisCli(redis.port, 'EXISTS', `${key}:lock`)).toBe('0');
  });

  it('no token (5): get with the secret while another program holds the refresh lock and writes nothing says what to do from the command line', async () => {
    const { appId, secret } = mock.createApp();
    const lock = `wechat:stable_access_token:${appId}:lock`;
    redisCli(redis.port, 'SET', lock, 'otherhost:4242:abc', 'PX', '600000');
    try {
      for (const action of ['get', 'refresh']) {
        const run = await wxkit(['token', action, '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--lock-wait-ms', '300', '--json'], { WECHAT_SECRET: secret });
        expect(run.code, run.stdout + run.stderr).toBe(5);
        expect(run.json.error!.message).toMatch(/Waited 300 ms for another process \(otherhost:4242:abc\)/);
        expect(run.json.error!.message).toContain('wxkit token clear --lock removes its lock; --lock-wait-ms N waits longer');
        expect(run.json.error!.message).not.toContain('raise lockWaitMs');
      }
      expect(mock.counters(appId).tokenRequests).toBe(0);
      const bad = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--lock-wait-ms', '5s']);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain('--lock-wait-ms must be a whole number of ms from 100 to 600000');
      // Where nothing would wait that long: a usage error, not a wait the user asked for and did not get.
      for (const args of [['get'], ['inspect'], ['clear']]) {
        const unused = await wxkit(['token', ...args, '--store', redis.url, '--app', `oa:${appId}`, '--lock-wait-ms', '5000']);
        expect(unused.code, args.join(' ')).toBe(2);
        expect(unused.stderr).toContain('--lock-wait-ms is for get and refresh with the secret');
      }
    } finally {
      redisCli(redis.port, 'DEL', lock);
    }
  });

  it('no token (5): refresh while another program holds the lock waits for a token other than the stored one, never hands that back as refreshed', async () => {
    const { appId, secret } = mock.createApp();
    const common = ['--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'];
    const first = await wxkit(['token', 'get', ...common, '--show-token'], { WECHAT_SECRET: secret });
    expect(first.code, first.stderr).toBe(0);
    const lock = `wechat:stable_access_token:${appId}:lock`;
    redisCli(redis.port, 'SET', lock, 'otherhost:4242:abc', 'PX', '600000');
    try {
      const run = await wxkit(['token', 'refresh', ...common, '--show-token', '--lock-wait-ms', '300'], { WECHAT_SECRET: secret });
      expect(run.code, run.stdout).toBe(5);
      expect(run.json.error!.message).toMatch(/Waited 300 ms for another process \(otherhost:4242:abc\)/);
      expect(mock.counters(appId).tokenRequests).toBe(1);
    } finally {
      redisCli(redis.port, 'DEL', lock);
    }
  });

  it('not stored (8): a token fetched and then refused by the store is not handed out as if shared', async () => {
    const { appId, secret } = mock.createApp();
    const url = partialAcl.url.replace('redis://', `redis://app:${PASSWORD}@`);
    const run = await wxkit(['token', 'get', '--store', url, '--app', `oa:${appId}`, '--base-url', mock.url, '--json', '--show-token'], { WECHAT_SECRET: secret });
    expect(run.code, run.stdout + run.stderr).toBe(8);
    expect(run.json.error).toMatchObject({ code: 'ERR_WXKIT_NOT_STORED', exit: 8 });
    expect(run.json.token).toBeUndefined();
    // The one fetch happened, and nobody can read its token back.
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(redisCli(partialAcl.port, 'EXISTS', `wechat:stable_access_token:${appId}`)).toBe('0');
  });

  it('serve: usage (2) for its flags, configuration (7) for its config file and its port', async () => {
    const usage = await wxkitProcess(['serve', '--store', redis.url, '--conifg', 'serve.json']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('wxkit serve has no option --conifg');
    expect(usage.stderr).toContain('usage: wxkit serve --store <url> --config <file>');
    const noConfig = await wxkitProcess(['serve', '--store', redis.url]);
    expect(noConfig.code).toBe(2);
    expect(noConfig.stderr).toContain('wxkit serve needs --config');
    const dir = mkdtempSync(join(tmpdir(), 'wxkit-exit-'));
    const missing = await wxkitProcess(['serve', '--store', redis.url, '--config', join(dir, 'absent.json')]);
    expect(missing.code).toBe(7);
    expect(missing.stderr).toContain('absent.json: no such file');
    const config = join(dir, 'serve.json');
    const { appId, secret } = mock.createApp();
    writeFileSync(config, JSON.stringify({ keysEnv: 'EXIT_TEST_KEYS', apps: [{ app: `oa:${appId}`, secretEnv: 'EXIT_TEST_SECRET' }], baseUrl: mock.url }));
    // A key no "Authorization: Bearer <key>" header can carry: refused at start, not a 401 for every caller.
    const spaced = await wxkitProcess(['serve', '--store', redis.url, '--config', config, '--port', '0'], { EXIT_TEST_KEYS: 'exit test key with spaces', EXIT_TEST_SECRET: secret });
    expect(spaced.code, spaced.stderr).toBe(7);
    expect(spaced.stderr).toContain('a key in EXIT_TEST_KEYS holds a space, a control character or a character past U+00FF');
    expect(spaced.stderr).not.toContain('exit test key with spaces');
    const taken = createServer();
    const port = await new Promise<number>((resolve) => taken.listen(0, '127.0.0.1', () => resolve((taken.address() as { port: number }).port)));
    try {
      const busy = await wxkitProcess(['serve', '--store', redis.url, '--config', config, '--port', String(port)], { EXIT_TEST_KEYS: 'exit-test-key-0123456789', EXIT_TEST_SECRET: secret });
      expect(busy.code).toBe(7);
      expect(busy.stderr).toContain(`cannot listen on 127.0.0.1:${port} (EADDRINUSE)`);
      // A --host that names no address: the same configuration error, not a crash with a stack.
      const nowhere = await wxkitProcess(['serve', '--store', redis.url, '--config', config, '--port', '0', '--host', 'no-such-host.invalid'], { EXIT_TEST_KEYS: 'exit-test-key-0123456789', EXIT_TEST_SECRET: secret });
      expect(nowhere.code, nowhere.stderr).toBe(7);
      expect(nowhere.stderr).toContain('cannot listen on no-such-host.invalid:0');
      expect(nowhere.stderr).not.toMatch(/\n\s+at /);
    } finally {
      taken.close();
    }
  });

  it('a reader that went away (`| head -1`) leaves the exit code the command’s, with no stack', async () => {
    // stdout a pipe whose reader closed before the command printed: every write fails with EPIPE.
    const closedStdout = (args: string[], env: Record<string, string>) => {
      const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, WECHAT_APPID: '', WECHAT_SECRET: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.destroy();
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      return new Promise<{ code: number | null; stderr: string }>((resolve) => child.once('close', (code) => resolve({ code, stderr })));
    };
    const { appId, secret } = mock.createApp();
    const app = ['--store', redis.url, '--app', `oa:${appId}`];
    const none = await closedStdout(['token', 'inspect', ...app, '--json'], {});
    expect(none.stderr).not.toMatch(/EPIPE|\n\s+at /);
    expect(none.code).toBe(5);
    // The token fetched is stored whatever became of the line that shows it.
    const got = await closedStdout(['token', 'get', ...app, '--base-url', mock.url], { WECHAT_SECRET: secret });
    expect(got.stderr).not.toMatch(/EPIPE|\n\s+at /);
    expect(got.code).toBe(0);
    expect(redisCli(redis.port, 'EXISTS', `wechat:stable_access_token:${appId}`)).toBe('1');
  });

  it('WeChat API error (6), WeChat unreachable (4)', async () => {
    const { appId } = mock.createApp();
    const wrong = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${appId}`, '--base-url', mock.url, '--json'], { WECHAT_SECRET: 'not-the-secret' });
    expect(wrong.code).toBe(6);
    expect(wrong.json.error).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40125, exit: 6 });
    const other = mock.createApp();
    const down = await wxkit(['token', 'get', '--store', redis.url, '--app', `oa:${other.appId}`, '--base-url', `http://127.0.0.1:${await freePort()}`, '--json'], {
      WECHAT_SECRET: other.secret,
    });
    expect(down.code).toBe(4);
    expect(down.json.error).toMatchObject({ code: 'ERR_WXKIT_HTTP', exit: 4 });
  });
});
