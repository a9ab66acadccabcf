import { execFile, execFileSync, fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, lchownSync, lstatSync, lutimesSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { inspect, promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it, vi } from 'vitest';
import * as core from '@wxkit/core';
import { startMockWeChat } from '@wxkit/testing';
import { describeTokenCache } from '@wxkit/testing/suite';
import { FileCache } from '../src/index.js';

const root = mkdtempSync(join(tmpdir(), 'wxkit-file-test-'));
const suiteDir = join(root, 'suite');
// Child processes load the built package, as an application would.
const builtModule = new URL('../dist/index.js', import.meta.url).href;

describeTokenCache('FileCache', {
  create: () => new FileCache({ dir: suiteDir }),
  shared: { module: builtModule, export: 'FileCache', args: [{ dir: suiteDir }] },
  supports: { ttlMs: true, compareAndSet: true, watch: true },
  // The entry file is `v1 <expiresAtMs>\n` and the value's bytes; names keep [A-Za-z0-9_.-] and
  // write every other byte as %XX (packages/file/README.md).
  rawBytes: async (key) => {
    const name = [...Buffer.from(key, 'utf8')].map((b) => (/[A-Za-z0-9_.-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('');
    const file = await readFile(join(suiteDir, name)).catch(() => undefined);
    return file?.subarray(file.indexOf(0x0a) + 1);
  },
});

const fresh = (name: string) => join(root, name);
// Root may mount a tmpfs of its own size: a file system that fills up.
const canMountTmpfs = process.platform === 'linux' && process.getuid?.() === 0 && (() => {
  const probe = mkdtempSync(join(tmpdir(), 'wxkit-file-mount-'));
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]).status === 0;
  if (mounted) spawnSync('umount', [probe]);
  rmSync(probe, { recursive: true, force: true });
  return mounted;
})();
if (!canMountTmpfs) console.warn('skipped: the full file system test needs `mount -t tmpfs` (Linux, as root)');

it('@wxkit/file hands out the very class @wxkit/core ships, in its built ESM and CJS forms', async () => {
  expect(FileCache).toBe(core.FileCache);
  expect((await import(builtModule)).FileCache).toBe(core.FileCache);
  const required = createRequire(import.meta.url);
  expect(required('../dist/index.cjs').FileCache).toBe(required('@wxkit/core').FileCache);
});

describe('FileCache on disk', () => {
  it('creates the directory 0700 and writes files 0600, leaving no temp or guard files', async () => {
    const dir = fresh('modes/nested');
    const cache = new FileCache({ dir });
    await Promise.all(Array.from({ length: 20 }, (_, i) => cache.set(`k${i % 3}`, `v${i}`, 60)));
    await Promise.all(Array.from({ length: 20 }, (_, i) => cache.add(`lock${i % 2}`, `o${i}`, 60)));
    await Promise.all(Array.from({ length: 10 }, (_, i) => cache.deleteIfEquals(`lock${i % 2}`, `o${i}`)));
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(fresh('modes')).mode & 0o777).toBe(0o700);
    const files = readdirSync(dir);
    expect(files.filter((name) => name.includes('~'))).toEqual([]);
    for (const name of files) expect(statSync(join(dir, name)).mode & 0o777).toBe(0o600);
  });

  it('leaves an existing directory’s mode as it was', async () => {
    const dir = fresh('existing');
    mkdirSync(dir, { mode: 0o755 });
    await new FileCache(dir).set('k', 'v', 60);
    expect(statSync(dir).mode & 0o777).toBe(0o755);
  });

  it('names files after their keys: safe characters kept, every other byte %XX, long keys hashed', async () => {
    // Two levels down, so that `../../etc/passwd`, were it used as a path, would land in root/etc.
    const dir = fresh('names/inner');
    const cache = new FileCache({ dir });
    const keys = ['wechat:stable_access_token:wx4202f388888ab123', '../../etc/passwd', '.hidden', '微', 'x'.repeat(300)];
    for (const key of keys) await cache.set(key, 'v', 60);
    const names = readdirSync(dir).sort();
    expect(names).toContain('wechat%3Astable_access_token%3Awx4202f388888ab123');
    expect(names).toContain('%2E.%2F..%2Fetc%2Fpasswd');
    expect(names).toContain('%2Ehidden');
    expect(names).toContain('%E5%BE%AE');
    const long = names.find((name) => name.includes('%%'));
    expect(long).toMatch(/^x{150}%%[0-9a-f]{40}$/);
    expect(names).toHaveLength(keys.length);
    for (const name of names) expect(dirname(resolve(dir, name))).toBe(dir);
    expect(existsSync(join(root, 'etc'))).toBe(false);
  });

  it('stores `v1 <expiresAtMs>` and the value, byte for byte', async () => {
    const dir = fresh('format');
    const now = 1_764_000_000_000;
    await new FileCache({ dir, now: () => now }).set('k', '{"access_token":"T"}', 6900);
    expect(readFileSync(join(dir, 'k'), 'utf8')).toBe(`v1 ${now + 6_900_000}\n{"access_token":"T"}`);
  });

  it('a TTL meant as "for ever" (1e13 s, 2 ** 53 s) keeps the entry, and add() still lets one caller win', async () => {
    const cache = new FileCache({ dir: fresh('forever') });
    for (const ttl of [1e13, 2 ** 53, Number.MAX_VALUE]) {
      await cache.set(`k${ttl}`, 'v', ttl);
      expect(await cache.get(`k${ttl}`), String(ttl)).toBe('v');
      expect(await cache.add(`lock${ttl}`, 'a', ttl), String(ttl)).toBe(true);
      expect(await cache.add(`lock${ttl}`, 'b', ttl), String(ttl)).toBe(false);
      expect(await cache.get(`lock${ttl}`), String(ttl)).toBe('a');
    }
    await cache.close();
  });

  it('a corrupt file reads as absent and set() replaces it', async () => {
    const dir = fresh('corrupt');
    const cache = new FileCache({ dir });
    await cache.set('k', 'good', 60);
    writeFileSync(join(dir, 'k'), 'garbage without a header', { mode: 0o600 });
    expect(await cache.get('k')).toBeUndefined();
    await cache.set('k', 'replacement', 60);
    expect(await cache.get('k')).toBe('replacement');
    // A header that is there but not a number, and an add() over a corrupt file.
    writeFileSync(join(dir, 'k'), 'v1 soon\nvalue', { mode: 0o600 });
    expect(await cache.get('k')).toBeUndefined();
    expect(await cache.add('k', 'added', 60)).toBe(true);
    expect(await cache.get('k')).toBe('added');
  });

  it('add() replaces a lock whose lease ran out (its holder died)', async () => {
    const dir = fresh('stale-lock');
    let now = Date.now();
    const cache = new FileCache({ dir, now: () => now });
    expect(await cache.add('wechat:access_token:wx1:lock', 'dead-holder', 15)).toBe(true);
    expect(await cache.add('wechat:access_token:wx1:lock', 'waiter', 15)).toBe(false);
    now += 15_001;
    expect(await cache.add('wechat:access_token:wx1:lock', 'waiter', 15)).toBe(true);
    expect(await cache.get('wechat:access_token:wx1:lock')).toBe('waiter');
  });

  it('compareAndSet() never revives an expired entry, even one that holds the expected value', async () => {
    const dir = fresh('cas-expired');
    let now = Date.now();
    const cache = new FileCache({ dir, now: () => now });
    await cache.set('k', 'old-token', 10);
    now += 10_001;
    expect(await cache.compareAndSet('k', 'old-token', 'new-token', 60)).toBe(false);
    expect(await cache.get('k')).toBeUndefined();
    expect(readFileSync(join(dir, 'k'), 'utf8')).toBe(`v1 ${now - 1}\nold-token`);
  });

  it('a live guard that never goes away makes writes fail with ERR_WXKIT_CACHE after guardTimeoutMs', async () => {
    const dir = fresh('live-guard');
    const cache = new FileCache({ dir, guardTimeoutMs: 200 });
    await cache.set('k', 'v', 60);
    writeFileSync(join(dir, 'k~guard'), `${process.pid} mine`, { mode: 0o600 });
    await expect(cache.set('k', 'blocked', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout' });
    expect(await cache.get('k')).toBe('v');
  });

  it('a lost add(), deleteIfEquals() or compareAndSet() is decided by a read, without waiting for the guard', async () => {
    const dir = fresh('lost-without-guard');
    const cache = new FileCache({ dir, guardTimeoutMs: 200 });
    await cache.set('k', 'held', 60);
    // A guard that stays: of another writer (another namespace, judged by age) that is not yet stale.
    writeFileSync(join(dir, 'k~guard'), `1 ${'f'.repeat(16)} 0123456789abcdef`, { mode: 0o600 });
    expect(await cache.add('k', 'mine', 60)).toBe(false);
    expect(await cache.deleteIfEquals('k', 'other')).toBe(false);
    expect(await cache.compareAndSet('k', 'other', 'mine', 60)).toBe(false);
    // A call the read cannot decide still waits for the guard.
    await expect(cache.deleteIfEquals('k', 'held')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    await expect(cache.compareAndSet('k', 'held', 'mine', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    // So does an add() over an expired file, which only a guarded writer may remove.
    writeFileSync(join(dir, 'expired'), 'v1 1\nold', { mode: 0o600 });
    writeFileSync(join(dir, 'expired~guard'), `1 ${'f'.repeat(16)} 0123456789abcdef`, { mode: 0o600 });
    await expect(cache.add('expired', 'mine', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    expect(await cache.get('k')).toBe('held');
  });

  it('an add() where no file is needs no guard: link() creates the file only where none is', async () => {
    const dir = fresh('add-without-guard');
    mkdirSync(dir);
    const cache = new FileCache({ dir, guardTimeoutMs: 200 });
    // Another writer's guard that stays: a guarded add() would wait for it and fail.
    writeFileSync(join(dir, 'absent~guard'), `1 ${'f'.repeat(16)} 0123456789abcdef`, { mode: 0o600 });
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => cache.add('absent', `mine-${i}`, 60)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await cache.get('absent')).toBe(`mine-${results.indexOf(true)}`);
    expect(statSync(join(dir, 'absent')).mode & 0o777).toBe(0o600);
    // Its temp files are gone; the other writer's guard is left to its owner.
    expect(readdirSync(dir).sort()).toEqual(['absent', 'absent~guard']);
  });

  it('an add() over a name that reads as absent but is there (a dangling symlink) replaces it, as a set() would', async () => {
    const dir = fresh('add-over-dangling-link');
    mkdirSync(dir);
    const cache = new FileCache({ dir });
    symlinkSync(join(dir, 'gone'), join(dir, 'k'));
    // Reads as absent, like an expired or unreadable file: the next write replaces it.
    expect(await cache.get('k')).toBeUndefined();
    const results = await Promise.all(Array.from({ length: 4 }, (_, i) => cache.add('k', `mine-${i}`, 60)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await cache.get('k')).toBe(`mine-${results.indexOf(true)}`);
    expect(readdirSync(dir).filter((name) => name.includes('~'))).toEqual([]);
  });

  it('a directory it cannot use gives ERR_WXKIT_CACHE naming the directory', async () => {
    const file = fresh('not-a-dir');
    writeFileSync(file, 'x');
    const cache = new FileCache({ dir: join(file, 'sub') });
    const error = (await cache.get('k').then(
      () => undefined,
      (e: unknown) => e,
    )) as { code: string; message: string };
    // The reason an operator acts on: the directory is no directory, as a Redis database that is not there.
    expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'database' });
    expect(error.message).toContain(join(file, 'sub'));
  });

  it('a directory this user may not write to fails with reason permission', async () => {
    const parent = fresh('no-write');
    mkdirSync(parent, { mode: 0o500 });
    const dir = join(parent, 'sub');
    const script = `import(${JSON.stringify(builtModule)}).then((m) => new m.FileCache({ dir: ${JSON.stringify(dir)} }).get('k')).then(() => console.log('{}'), (e) => console.log(JSON.stringify({ code: e.code, reason: e.reason })))`;
    // root may write anywhere: the call is made by a process of another user then.
    const output = execFileSync(process.execPath, ['-e', script], process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {});
    expect(JSON.parse(String(output))).toEqual({ code: 'ERR_WXKIT_CACHE', reason: 'permission' });
  });

  it.skipIf(process.getuid?.() !== 0)("another user's entry file it may not read (root's, mode 0600) is that key's matter, reason type: the store is not taken for down, for that app nor any other", async () => {
    // The directory is the app user's (nobody here); root (a cron job, an operator's sudo) wrote app A's entry.
    const parent = mkdtempSync(join(tmpdir(), 'wxkit-file-other-user-'));
    chmodSync(parent, 0o755);
    const dir = join(parent, 'tokens');
    mkdirSync(dir, { mode: 0o700 });
    chownSync(dir, 65534, 65534);
    const mock = await startMockWeChat();
    try {
      const [a, b] = [mock.createApp(), mock.createApp()];
      const byRoot = new core.OfficialAccount({ ...a, baseUrl: mock.url, cache: new FileCache({ dir }), logger: false });
      await byRoot.accessToken.getToken();
      await byRoot.close();
      expect(statSync(join(dir, `wechat%3Astable_access_token%3A${a.appId}`))).toMatchObject({ uid: 0, mode: 0o100600 });
      // The mock answers from this process: the child is waited for without blocking it.
      const { stdout } = await promisify(execFile)(process.execPath, [fileURLToPath(new URL('./fixtures/other-user.mjs', import.meta.url))], {
        uid: 65534,
        gid: 65534,
        env: { ...process.env, OTHER_MODULE: builtModule, OTHER_DIR: dir, OTHER_URL: mock.url, OTHER_APPS: JSON.stringify([a, b]) },
      });
      const { events } = JSON.parse(stdout) as { events: string[] };
      expect(events.filter((event) => event.startsWith('cache.unavailable'))).toEqual([]);
      expect(events).toEqual([`cache.foreign_entry ${a.appId}`]);
      // App B's token is shared through the store as ever; app A's is kept beside its unreadable file.
      expect(mock.counters(b.appId).tokenRequests).toBe(1);
      expect(mock.counters(a.appId).tokenRequests).toBe(2);
    } finally {
      await mock.close();
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it.skipIf(process.getuid?.() !== 0)('a directory handed to another user whole (its files 0600, the directory 0755) is an outage, not each key\'s matter: /healthz and the breaker see it', async () => {
    // chown -R of the token directory (a container now run under another uid): this user may list it
    // but neither read a file nor write one. Taken for reason type, every read says "up" (the breaker
    // recovers on it, wxkit serve's probe reports 200) while no token can be read or written.
    const parent = mkdtempSync(join(tmpdir(), 'wxkit-file-chowned-'));
    chmodSync(parent, 0o755);
    const dir = join(parent, 'tokens');
    try {
      const byRoot = new FileCache({ dir });
      await byRoot.set('wechat:k', 'v', 60);
      chmodSync(dir, 0o755);
      const script = `import(${JSON.stringify(builtModule)}).then(async (m) => { const c = new m.FileCache({ dir: ${JSON.stringify(dir)} }); const r = []; for (const call of [() => c.get('wechat:k'), () => c.set('wechat:k', 'w', 60)]) r.push(await call().then(() => 'ok', (e) => e.reason)); console.log(JSON.stringify(r)); })`;
      const output = execFileSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534 });
      expect(JSON.parse(String(output))).toEqual(['permission', 'permission']);
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it('a call after close() fails with reason closed, and so does a watch', async () => {
    const cache = new FileCache({ dir: fresh('closed') });
    await cache.set('k', 'v', 60);
    await cache.close?.();
    await expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'closed' });
    expect(() => cache.watch('k', () => {})).toThrow(expect.objectContaining({ code: 'ERR_WXKIT_CACHE', reason: 'closed' }));
  });

  it('a directory removed while in use (a cleaner of the temp directory) is made again by the next write', async () => {
    const dir = fresh('removed-in-use');
    const cache = new FileCache({ dir });
    await cache.set('k', 'v1', 60);
    rmSync(dir, { recursive: true });
    await cache.set('k', 'v2', 60);
    expect(await cache.get('k')).toBe('v2');
    rmSync(dir, { recursive: true });
    expect(await cache.add('lock', 'owner', 60)).toBe(true);
    rmSync(dir, { recursive: true });
    await cache.delete('k');
    expect(await cache.compareAndSet('lock', 'nobody', 'x', 60)).toBe(false);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
  });

  it('a FIFO, a symlink to one, or a file far larger than an entry at a key is no entry: get() answers a miss at once, and add() replaces it', async () => {
    const dir = fresh('not-regular');
    mkdirSync(dir);
    const cache = new FileCache({ dir });
    execFileSync('mkfifo', [join(dir, 'fifo'), join(dir, 'target')]);
    symlinkSync(join(dir, 'target'), join(dir, 'linked'));
    writeFileSync(join(dir, 'huge'), Buffer.concat([Buffer.from(`v1 ${Date.now() + 60_000}\n`), Buffer.alloc(2 << 20, 0x61)]));
    // Opening a FIFO for reading waits for a writer: a get() that did would never settle.
    for (const key of ['fifo', 'linked', 'huge']) {
      expect(await cache.get(key), key).toBeUndefined();
      expect(await cache.add(key, `mine-${key}`, 60), key).toBe(true);
      expect(await cache.get(key), key).toBe(`mine-${key}`);
    }
  });

  it('a FIFO or a symlink planted at a guard is no writer\'s guard: it is broken, never opened, and the write lands', () => {
    const dir = fresh('not-regular-guard');
    mkdirSync(dir);
    // An old FIFO (judged abandoned by its age) at one key's guard, a symlink at another's.
    execFileSync('mkfifo', [join(dir, 'fifo~guard')]);
    utimesSync(join(dir, 'fifo~guard'), new Date(0), new Date(0));
    symlinkSync(join(dir, 'elsewhere'), join(dir, 'linked~guard'));
    const script = `import(${JSON.stringify(builtModule)}).then(async (m) => {
      const cache = new m.FileCache({ dir: ${JSON.stringify(dir)}, guardStaleMs: 60000, guardTimeoutMs: 2000 });
      const outcome = (call) => call.then(() => 'ok', (e) => \`\${e.code} \${e.reason} \${e.message}\`);
      const results = { fifo: await outcome(cache.set('fifo', 'v', 60)), linked: await outcome(cache.set('linked', 'v', 60)) };
      results.values = [await cache.get('fifo'), await cache.get('linked')];
      console.log(JSON.stringify(results));
    })`;
    // A write that opened the FIFO would wait for a writer for ever (and so would its process's exit):
    // the child is killed then, and says nothing.
    const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
    expect(child.stdout).not.toBe('');
    expect(JSON.parse(child.stdout)).toEqual({ fifo: 'ok', linked: 'ok', values: ['v', 'v'] });
    expect(readdirSync(dir).filter((name) => name.includes('~'))).toEqual([]);
  }, 30_000);

  it('a symlink planted at a waiting writer\'s guard draft (a directory others may write to) is never followed: no file elsewhere is written', async () => {
    const dir = fresh('draft-symlink');
    mkdirSync(dir, { mode: 0o777 });
    const victim = fresh('draft-symlink-victim');
    writeFileSync(victim, 'precious', { mode: 0o600 });
    // A live guard (this process's own): the writer below waits, rewriting its draft at every attempt.
    writeFileSync(join(dir, 'k~guard'), `${process.pid} 0000000000000000 ab`);
    const cache = new FileCache({ dir, guardStaleMs: 3_600_000, guardTimeoutMs: 3_600_000 });
    const written = cache.set('k', 'v', 60);
    const draftOf = () => readdirSync(dir).find((name) => name.startsWith('k~') && name.endsWith('.tmp'));
    await vi.waitFor(() => expect(draftOf()).toBeDefined(), { timeout: 10_000, interval: 1 });
    const draft = join(dir, draftOf()!);
    // Another local user swaps the draft for a symlink to a file of ours elsewhere (atomically).
    symlinkSync(victim, join(dir, 'planted'));
    renameSync(join(dir, 'planted'), draft);
    // The writer's next attempt: it either wrote through the link, or put a file of its own in its place.
    const isLink = () => lstatSync(draft, { throwIfNoEntry: false })?.isSymbolicLink() === true;
    await vi.waitFor(() => expect(readFileSync(victim, 'utf8') !== 'precious' || !isLink()).toBe(true), { timeout: 10_000, interval: 1 });
    rmSync(join(dir, 'k~guard'));
    await written;
    expect(readFileSync(victim, 'utf8')).toBe('precious');
    expect(await cache.get('k')).toBe('v');
  });

  it('a value whose file would exceed 1 MiB is refused with a RangeError by set() and add(), and nothing is left on disk', async () => {
    const dir = fresh('too-large');
    const cache = new FileCache({ dir });
    const value = 'a'.repeat(2 << 20);
    await expect(cache.set('big', value, 60)).rejects.toThrow(RangeError);
    expect(readdirSync(dir)).toEqual([]);
    // Written, it would read as a miss, and every add() after it would win as well.
    await expect(cache.add('big', value, 60)).rejects.toThrow(RangeError);
    await expect(cache.add('big', value, 60)).rejects.toThrow(RangeError);
    expect(readdirSync(dir)).toEqual([]);
    expect(await cache.get('big')).toBeUndefined();
  });

  it("names no key in its errors, their causes included: a profile's key may hold the app's secret", async () => {
    const dir = fresh('secret-in-key');
    const cache = new FileCache({ dir });
    // easyWeChat6's key for an app holds its secret; a directory there makes every call fail.
    const key = 'easywechat.kernel.access_token.wx0123456789abcdef.SECRET0123456789abcdef0123456789';
    mkdirSync(join(dir, key), { recursive: true });
    for (const call of [() => cache.get(key), () => cache.set(key, 'v', 60), () => cache.add(key, 'v', 60), () => cache.ttlMs(key)]) {
      const error = await call().then(() => undefined, (failure: unknown) => failure as Error & { cause?: NodeJS.ErrnoException });
      expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'type' });
      expect(inspect(error)).not.toContain('SECRET0123456789');
      expect(error!.cause?.message).toContain(dir);
    }
  });

  it('names no key in its errors either when its directory is given relative or not normalized (`./tokens`, `/srv//tokens/`)', async () => {
    const key = 'easywechat.kernel.access_token.wx0123456789abcdef.SECRET0123456789abcdef0123456789';
    const base = fresh('secret-in-key-unnormalized');
    for (const dir of [`./${relative(process.cwd(), join(base, 'relative'))}`, `${base}//double/`, `${base}/./dotted`]) {
      const cache = new FileCache({ dir });
      // A directory at the key makes every call fail, and Node's errors name the file as join(dir, name).
      mkdirSync(join(dir, key), { recursive: true });
      for (const call of [() => cache.get(key), () => cache.set(key, 'v', 60), () => cache.add(key, 'v', 60)]) {
        const error = await call().then(() => undefined, (failure: unknown) => failure as Error);
        expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'type' });
        expect(inspect(error)).not.toContain('SECRET0123456789');
      }
      // The directory itself replaced by a file: the temp file's name is in Node's ENOTDIR message.
      rmSync(dir, { recursive: true });
      writeFileSync(dir.replace(/\/+$/, ''), '');
      const error = await cache.set(key, 'v', 60).then(() => undefined, (failure: unknown) => failure as Error);
      expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', cause: { code: 'ENOTDIR' } });
      expect(inspect(error)).not.toContain('SECRET0123456789');
    }
  });

  it("a directory at a key (another program's) is a CacheError of reason type, not an outage: the token is served and the directory left", async () => {
    const dir = fresh('directory-at-key');
    const cache = new FileCache({ dir });
    mkdirSync(join(dir, 'k'), { recursive: true });
    for (const call of [() => cache.get('k'), () => cache.set('k', 'v', 60), () => cache.add('k', 'v', 60), () => cache.compareAndSet('k', 'a', 'v', 60)]) {
      await expect(call()).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'type' });
    }
    // Through a client: one foreign entry said, the store never taken for down (it was, and back up
    // at every probe, a warning each time), one fetch.
    const mock = await startMockWeChat();
    try {
      const { appId, secret } = mock.createApp();
      mkdirSync(join(dir, `wechat%3Astable_access_token%3A${appId}`));
      const app = new core.OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, memoMs: 0 });
      const events: string[] = [];
      for (const event of ['cache.unavailable', 'cache.recovered', 'cache.foreign_entry'] as const) app.on(event, () => events.push(event));
      const token = await app.accessToken.getToken();
      for (let i = 0; i < 5; i += 1) expect(await app.accessToken.getToken()).toBe(token);
      expect(events).toEqual(['cache.foreign_entry']);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(statSync(join(dir, `wechat%3Astable_access_token%3A${appId}`)).isDirectory()).toBe(true);
      await app.close();
    } finally {
      await mock.close();
    }
  });

  it('a write waits for a live guard guardTimeoutMs on the monotonic clock, even when the wall clock steps back', async () => {
    const dir = fresh('clock-steps-back');
    mkdirSync(dir);
    // A guard of another PID namespace: judged by its age alone, and it is young.
    writeFileSync(join(dir, 'k~guard'), `${process.pid} 0000000000000000 ab`);
    const cache = new FileCache({ dir, guardStaleMs: 3_600_000, guardTimeoutMs: 200 });
    const realNow = Date.now.bind(Date);
    let steps = 0;
    // Every look at the wall clock finds it an hour further back (an NTP step, again and again).
    const clock = vi.spyOn(Date, 'now').mockImplementation(() => realNow() - 3_600_000 * ++steps);
    try {
      await expect(cache.set('k', 'v', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout', message: expect.stringMatching(/waited 200 ms for another writer/) });
    } finally {
      clock.mockRestore();
    }
  });

  it('refuses a default directory another user made or others may write to, and uses a shared directory it is given as it is', async () => {
    // A directory passed as `dir` is the caller's: a volume shared between containers is often 0777.
    const shared = fresh('world-writable');
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    const given = new FileCache({ dir: shared });
    await given.set('k', 'v', 60);
    expect(await given.get('k')).toBe('v');

    const temp = fresh('tmpdir');
    mkdirSync(temp);
    const tmpdirBefore = process.env.TMPDIR;
    process.env.TMPDIR = temp;
    try {
      const defaultCache = new FileCache();
      expect(defaultCache.dir).toBe(join(temp, `wxkit-${process.getuid!()}`));
      mkdirSync(defaultCache.dir, { mode: 0o700 });
      for (const mode of [0o770, 0o707, 0o1777]) {
        chmodSync(defaultCache.dir, mode);
        await expect(defaultCache.get('k'), mode.toString(8)).rejects.toMatchObject({
          code: 'ERR_WXKIT_CACHE',
          reason: 'permission',
          message: expect.stringMatching(/refusing the default directory .*others may write to it.*pass a directory of your own as `dir`/),
        });
        await expect(defaultCache.set('k', 'v', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
        expect(readdirSync(defaultCache.dir)).toEqual([]);
      }
      chmodSync(defaultCache.dir, 0o700);
      if (process.getuid!() === 0) {
        chownSync(defaultCache.dir, 65534, 65534);
        await expect(defaultCache.get('k')).rejects.toMatchObject({ message: expect.stringMatching(/it belongs to uid 65534, not to this user \(0\)/) });
        chownSync(defaultCache.dir, 0, 0);
        // A link another user made at the name, to a directory of this user's that passes every check.
        const mine = fresh('linked-to');
        mkdirSync(mine, { mode: 0o700 });
        renameSync(defaultCache.dir, `${defaultCache.dir}.away`);
        symlinkSync(mine, defaultCache.dir);
        lchownSync(defaultCache.dir, 65534, 65534);
        await expect(defaultCache.set('k', 'v', 60)).rejects.toMatchObject({ message: expect.stringMatching(/it is a symbolic link that belongs to uid 65534, not to this user \(0\)/) });
        expect(readdirSync(mine)).toEqual([]);
        // This user's own link is this user's choice.
        lchownSync(defaultCache.dir, 0, 0);
        await defaultCache.set('k', 'v', 60);
        expect(readdirSync(mine)).toHaveLength(1);
        rmSync(defaultCache.dir);
        renameSync(`${defaultCache.dir}.away`, defaultCache.dir);
        // Root's link (an administrator's, systemd-tmpfiles'), for another user's default directory: followed.
        // Outside this test's TMPDIR, whose parents the other user may not enter.
        const theirs = mkdtempSync(join(tmpdirBefore ?? '/tmp', 'wxkit-file-root-link-'));
        chmodSync(theirs, 0o755);
        const target = join(theirs, 'target');
        mkdirSync(target, { mode: 0o700 });
        chownSync(target, 65534, 65534);
        symlinkSync(target, join(theirs, 'wxkit-65534'));
        const script = `import(${JSON.stringify(builtModule)}).then((m) => new m.FileCache().set('k', 'v', 60)).then(() => console.log('{}'), (e) => console.log(JSON.stringify({ message: e.message })))`;
        const output = execFileSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534, env: { ...process.env, TMPDIR: theirs } });
        expect(JSON.parse(String(output))).toEqual({});
        expect(readdirSync(target)).toHaveLength(1);
        rmSync(theirs, { recursive: true, force: true });
      }
      // Fixed while running: the same cache serves, without a restart.
      await defaultCache.set('k', 'v', 60);
      expect(await defaultCache.get('k')).toBe('v');
    } finally {
      if (tmpdirBefore === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = tmpdirBefore;
    }
  });

  it.skipIf(process.getuid?.() !== 0)('a default directory removed and made again by another user while in use is refused; another user\'s file in its own is no entry', async () => {
    const temp = fresh('tmpdir-remade');
    mkdirSync(temp);
    const tmpdirBefore = process.env.TMPDIR;
    process.env.TMPDIR = temp;
    try {
      const cache = new FileCache();
      await cache.set('wechat:access_token:wx1', 'mine', 60);
      const file = join(cache.dir, 'wechat%3Aaccess_token%3Awx1');
      // Another user's file in this user's own directory (root wrote it, a restore did): no entry, and
      // the next write replaces it.
      writeFileSync(file, `v1 ${Date.now() + 3_600_000}\nplanted`);
      chownSync(file, 65534, 65534);
      expect(await cache.get('wechat:access_token:wx1')).toBeUndefined();
      await cache.set('wechat:access_token:wx1', 'mine', 60);
      expect(await cache.get('wechat:access_token:wx1')).toBe('mine');
      // The directory goes (a cleaner of /tmp) and another user makes it again, open to all, with an entry.
      rmSync(cache.dir, { recursive: true });
      mkdirSync(cache.dir);
      chmodSync(cache.dir, 0o777);
      chownSync(cache.dir, 65534, 65534);
      writeFileSync(file, `v1 ${Date.now() + 3_600_000}\nplanted`);
      chownSync(file, 65534, 65534);
      await expect(cache.get('wechat:access_token:wx1')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', message: expect.stringMatching(/refusing the default directory .*belongs to uid 65534/) });
      await expect(cache.set('wechat:jsapi_ticket:wx1', 'mine-too', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
      expect(existsSync(join(cache.dir, 'wechat%3Ajsapi_ticket%3Awx1'))).toBe(false);
    } finally {
      if (tmpdirBefore === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = tmpdirBefore;
    }
  });

  it('an entry file that is empty, cut short in its header, binary garbage, or a symlink to a live entry elsewhere is no entry: a miss, and add() replaces it', async () => {
    const dir = fresh('not-entries');
    mkdirSync(dir);
    const cache = new FileCache({ dir });
    const live = `v1 ${Date.now() + 60_000}\nplanted`;
    writeFileSync(join(dir, 'empty'), '', { mode: 0o600 });
    writeFileSync(join(dir, 'cut'), live.slice(0, 8), { mode: 0o600 });
    writeFileSync(join(dir, 'binary'), Buffer.from([0x00, 0xff, 0x76, 0x31, 0x20, 0x0a, 0xfe]), { mode: 0o600 });
    // A live entry outside the directory, linked in at a key: followed, it would hand out whatever it says.
    writeFileSync(fresh('not-entries-elsewhere'), live, { mode: 0o600 });
    symlinkSync(fresh('not-entries-elsewhere'), join(dir, 'linked'));
    for (const key of ['empty', 'cut', 'binary', 'linked']) {
      expect(await cache.get(key), key).toBeUndefined();
      expect(await cache.ttlMs(key), key).toBeUndefined();
      expect(await cache.add(key, `mine-${key}`, 60), key).toBe(true);
      expect(await cache.get(key), key).toBe(`mine-${key}`);
    }
    expect(readFileSync(fresh('not-entries-elsewhere'), 'utf8')).toBe(live);
  });

  it.skipIf(!canMountTmpfs)('a full file system (a 64 KiB tmpfs; Linux as root): writes fail with reason readonly, the entries before stay whole, no temp or guard file is left, and writes land once there is room', async () => {
    const mount = fresh('full');
    mkdirSync(mount);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', mount]);
    try {
      const dir = join(mount, 'tokens');
      const cache = new FileCache({ dir });
      await cache.set('token', 'good', 60);
      expect(await cache.add('lock', 'holder', 60)).toBe(true);
      const filler: string[] = [];
      try {
        for (;;) {
          filler.push(join(mount, `filler-${filler.length}`));
          writeFileSync(filler.at(-1)!, Buffer.alloc(4096));
        }
      } catch (error) {
        expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      const big = 'x'.repeat(5000);
      const full = { code: 'ERR_WXKIT_CACHE', reason: 'readonly', message: expect.stringContaining('(ENOSPC)') };
      await expect(cache.set('token', big, 60)).rejects.toMatchObject(full);
      await expect(cache.compareAndSet('token', 'good', big, 60)).rejects.toMatchObject(full);
      await expect(cache.add('other', big, 60)).rejects.toMatchObject(full);
      await expect(cache.add('lock', big, 60)).resolves.toBe(false);
      expect(await cache.get('token')).toBe('good');
      expect(await cache.get('lock')).toBe('holder');
      expect(readdirSync(dir).sort()).toEqual(['lock', 'token']);
      for (const file of filler) rmSync(file, { force: true });
      await cache.set('token', big, 60);
      expect(await cache.get('token')).toBe(big);
      expect(readdirSync(dir).sort()).toEqual(['lock', 'token']);
    } finally {
      execFileSync('umount', [mount]);
    }
  });

  it.skipIf(!canMountTmpfs)('a full file system (a 64 KiB tmpfs; Linux as root): the holder of a refresh lock releases it, and another process takes it at its first attempt, not once the lease has run out', async () => {
    const mount = fresh('full-lock');
    mkdirSync(mount);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', mount]);
    try {
      const dir = join(mount, 'tokens');
      const lock = 'wechat:access_token:wxfull:lock';
      // This process holds the lock (a 60 s lease) and has a token to drop, written while there was room.
      const holder = new FileCache({ dir });
      expect(await holder.add(lock, 'holder', 60)).toBe(true);
      await holder.set('token', 'stale', 60);
      // Filled up to the last page, before each call that could free one.
      let fillers = 0;
      const fill = () => {
        try {
          for (;;) writeFileSync(join(mount, `filler-${(fillers += 1)}`), Buffer.alloc(4096));
        } catch (error) {
          expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
        }
      };
      const outcome = (call: Promise<unknown>) => call.then((value) => value, (error: { code?: string; reason?: string }) => `${error.code} ${error.reason}`);
      fill();
      const token = await outcome(holder.delete('token'));
      fill();
      // A compare that fails leaves the lock; the holder's own release drops it.
      const released = { token, otherOwner: await outcome(holder.deleteIfEquals(lock, 'not-the-holder')), holder: await outcome(holder.deleteIfEquals(lock, 'holder')) };
      // The waiter's clock moves on by a quarter of the lease after each attempt that did not take the
      // lock: a lock that stayed would be taken at attempt 5 at the earliest, once its lease ran out.
      const { stdout } = await promisify(execFile)(process.execPath, [fileURLToPath(new URL('./fixtures/lock-taker.mjs', import.meta.url))], {
        env: { ...process.env, TAKER_MODULE: builtModule, TAKER_DIR: dir, TAKER_KEY: lock, TAKER_LEASE_S: '60', TAKER_STEP_MS: '15000', TAKER_ATTEMPTS: '6' },
      });
      expect({ released, taker: JSON.parse(stdout) }).toEqual({
        released: { token: undefined, otherOwner: false, holder: true },
        taker: { attempts: 1, taken: true, errors: [] },
      });
      expect(await holder.get(lock)).toMatch(/^taker-\d+$/);
      expect(await holder.get('token')).toBeUndefined();
      expect(readdirSync(dir)).toEqual(['wechat%3Aaccess_token%3Awxfull%3Alock']);
    } finally {
      execFileSync('umount', [mount]);
    }
  });

  it.skipIf(!canMountTmpfs)('a file system with no inode left (a tmpfs of 16 inodes; Linux as root): delete() and deleteIfEquals() fail with reason readonly, as writes do, the entries stay, and nothing is left beside them', async () => {
    const mount = fresh('no-inode');
    mkdirSync(mount);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,nr_inodes=16,mode=0700', 'tmpfs', mount]);
    try {
      const dir = join(mount, 'tokens');
      const cache = new FileCache({ dir });
      expect(await cache.add('lock', 'holder', 60)).toBe(true);
      await cache.set('token', 'good', 60);
      const fillers: string[] = [];
      try {
        for (;;) {
          fillers.push(join(mount, `filler-${fillers.length}`));
          writeFileSync(fillers.at(-1)!, '');
        }
      } catch (error) {
        expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      // No inode for a guard of either kind: the file system's own answer.
      const full = { code: 'ERR_WXKIT_CACHE', reason: 'readonly', message: expect.stringContaining('(ENOSPC)') };
      await expect(cache.delete('token')).rejects.toMatchObject(full);
      await expect(cache.deleteIfEquals('lock', 'holder')).rejects.toMatchObject(full);
      expect(await cache.get('token')).toBe('good');
      expect(await cache.get('lock')).toBe('holder');
      expect(readdirSync(dir).sort()).toEqual(['lock', 'token']);
      // Room for a guard file: its draft, and its link (a tmpfs counts every name as an inode).
      for (const filler of fillers.slice(0, 2)) rmSync(filler, { force: true });
      expect(await cache.deleteIfEquals('lock', 'holder')).toBe(true);
      expect(readdirSync(dir)).toEqual(['token']);
    } finally {
      execFileSync('umount', [mount]);
    }
  });

  it.skipIf(!canMountTmpfs)('a full file system where symlinks are refused (EPERM, as on vfat or some FUSE file systems; Linux as root): delete() and deleteIfEquals() fail with the full file system\'s reason, readonly, and nothing is left', async () => {
    const mount = fresh('full-no-symlinks');
    mkdirSync(mount);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', mount]);
    const promises = createRequire(import.meta.url)('node:fs/promises') as typeof import('node:fs/promises');
    const symlink = promises.symlink;
    let refused = 0;
    try {
      const dir = join(mount, 'tokens');
      const cache = new FileCache({ dir });
      expect(await cache.add('lock', 'holder', 60)).toBe(true);
      try {
        for (let n = 0; ; n += 1) writeFileSync(join(mount, `filler-${n}`), Buffer.alloc(4096));
      } catch (error) {
        expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      promises.symlink = (async () => {
        refused += 1;
        throw Object.assign(new Error('EPERM: operation not permitted, symlink'), { code: 'EPERM', syscall: 'symlink' });
      }) as typeof symlink;
      syncBuiltinESMExports();
      await expect(cache.deleteIfEquals('lock', 'holder')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'readonly', message: expect.stringContaining('(ENOSPC)') });
      await expect(cache.delete('lock')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'readonly' });
      expect(refused).toBe(2);
      expect(await cache.get('lock')).toBe('holder');
      expect(readdirSync(dir)).toEqual(['lock']);
    } finally {
      promises.symlink = symlink;
      syncBuiltinESMExports();
      execFileSync('umount', [mount]);
    }
  });

  it.skipIf(!canMountTmpfs)('a full file system (Linux as root) in a directory others may write to: symlinks planted at guards, claims, temp names and entries, to a file of ours elsewhere, are never followed, written through nor chmod-ed, and the deletes go through', async () => {
    const mount = fresh('full-planted');
    mkdirSync(mount);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0777', 'tmpfs', mount]);
    const victim = fresh('full-planted-victim');
    writeFileSync(victim, 'precious', { mode: 0o644 });
    const before = statSync(victim);
    try {
      const dir = join(mount, 'tokens');
      mkdirSync(dir, { mode: 0o777 });
      chmodSync(dir, 0o777);
      const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 2000 });
      await cache.set('k', 'v', 60);
      await cache.set('j', 'v', 60);
      // Another user's: at k's guard, at a claim any breaker of j's guard could make, at a temp name (as a
      // breaker of another namespace killed would leave one), and at an entry.
      symlinkSync(victim, join(dir, 'k~guard'));
      symlinkSync(`1 ${'0'.repeat(16)} 0123456789abcdef`, join(dir, 'j~guard'));
      lutimesSync(join(dir, 'j~guard'), new Date(0), new Date(0));
      const claim = `j~break-${createHash('sha256').update(`1 ${'0'.repeat(16)} 0123456789abcdef`).digest('hex').slice(0, 16)}-0`;
      symlinkSync(victim, join(dir, claim));
      lutimesSync(join(dir, claim), new Date(0), new Date(0));
      const temp = `k~${'0'.repeat(16)}-1-aaaaaaaaaaaa.tmp`;
      symlinkSync(victim, join(dir, temp));
      lutimesSync(join(dir, temp), new Date(0), new Date(0));
      symlinkSync(victim, join(dir, 'e'));
      try {
        for (let n = 0; ; n += 1) writeFileSync(join(mount, `filler-${n}`), Buffer.alloc(4096));
      } catch (error) {
        expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      await cache.delete('k');
      expect(await cache.deleteIfEquals('j', 'v')).toBe(true);
      await cache.delete('e');
      expect(readdirSync(dir)).toEqual([]);
      const after = statSync(victim);
      expect({ content: readFileSync(victim, 'utf8'), mode: after.mode, mtimeMs: after.mtimeMs, uid: after.uid, nlink: after.nlink }).toEqual({ content: 'precious', mode: before.mode, mtimeMs: before.mtimeMs, uid: before.uid, nlink: 1 });
    } finally {
      execFileSync('umount', [mount]);
    }
  });

  it('files are 0600 and directories 0700 whatever the umask (a process run with umask 000)', () => {
    const dir = join(fresh('umask'), 'a', 'b');
    const script = `process.umask(0); import(${JSON.stringify(builtModule)}).then(async (m) => { const c = new m.FileCache({ dir: ${JSON.stringify(dir)} }); await c.set('k', 'v', 60); await c.add('lock', 'o', 60); await c.compareAndSet('k', 'v', 'w', 60); })`;
    execFileSync(process.execPath, ['-e', script]);
    for (const path of [fresh('umask'), join(fresh('umask'), 'a'), dir]) expect(statSync(path).mode & 0o777, path).toBe(0o700);
    expect(readdirSync(dir).sort()).toEqual(['k', 'lock']);
    for (const name of ['k', 'lock']) expect(statSync(join(dir, name)).mode & 0o777, name).toBe(0o600);
  });

  it.skipIf(process.platform !== 'linux')('a directory that cannot be made under /proc (where Node\'s recursive mkdir loops for ever) fails every call with ERR_WXKIT_CACHE', async () => {
    const cache = new FileCache({ dir: '/proc/wxkit-nope/cache' });
    await expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', message: expect.stringContaining('(ENOENT)') });
    await expect(cache.set('k', 'v', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
  });

  it('makes the missing parents of its directory, 0700 each, and takes one that exists', async () => {
    const base = fresh('parents');
    const cache = new FileCache({ dir: join(base, 'a', 'b') });
    await cache.set('k', 'v', 60);
    for (const dir of [base, join(base, 'a'), join(base, 'a', 'b')]) expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(await new FileCache({ dir: join(base, 'a', 'b') }).get('k')).toBe('v');
    writeFileSync(join(base, 'file'), 'x');
    await expect(new FileCache({ dir: join(base, 'file', 'c') }).get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', message: expect.stringContaining('(ENOTDIR)') });
    await expect(new FileCache({ dir: join(base, 'file') }).get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', message: expect.stringContaining('(ENOTDIR)') });
  });

  it('the empty key is a file of its own (`%`), never the directory: nothing is written beside the directory', async () => {
    const parent = fresh('empty-key');
    const cache = new FileCache({ dir: join(parent, 'cache') });
    await cache.set('', 'v', 60);
    expect(await cache.get('')).toBe('v');
    expect(await cache.add('', 'w', 60)).toBe(false);
    expect(readdirSync(parent)).toEqual(['cache']);
    expect(readdirSync(join(parent, 'cache'))).toEqual(['%']);
  });

  it('a watch of a directory that was removed and made again ends: its waiters look, and a new watch hears the new directory', async () => {
    const dir = fresh('watch-replaced');
    const cache = new FileCache({ dir });
    const writer = new FileCache({ dir });
    await cache.set('k', 'v1', 60);
    const told = new Promise<void>((resolve) => cache.watch('k', resolve));
    rmSync(dir, { recursive: true });
    mkdirSync(dir, { mode: 0o700 });
    await told;
    const heard = new Promise<void>((resolve) => cache.watch('k', resolve));
    await writer.set('k', 'v2', 60);
    await heard;
    await cache.close();
  });

  it('a watch that fails (an error from fs.watch) ends: its waiters look, and a new watch hears the next write', async () => {
    const dir = fresh('watch-error');
    mkdirSync(dir, { mode: 0o700 });
    const cache = new FileCache({ dir });
    const writer = new FileCache({ dir });
    // The real watcher of the directory, caught as FileCache makes it, so that it can be made to fail.
    const fs = createRequire(import.meta.url)('node:fs') as typeof import('node:fs');
    const realWatch = fs.watch;
    const made: import('node:fs').FSWatcher[] = [];
    fs.watch = ((...args: Parameters<typeof realWatch>) => {
      const watcher = realWatch(...args);
      made.push(watcher);
      return watcher;
    }) as typeof realWatch;
    syncBuiltinESMExports();
    try {
      const told = new Promise<void>((resolve) => cache.watch('k', resolve));
      expect(made).toHaveLength(1);
      made[0]?.emit('error', Object.assign(new Error('watch failed'), { code: 'EIO' }));
      await told;
      const heard = new Promise<void>((resolve) => cache.watch('k', resolve));
      expect(made).toHaveLength(2);
      await writer.set('k', 'v', 60);
      await heard;
    } finally {
      fs.watch = realWatch;
      syncBuiltinESMExports();
      await cache.close();
    }
  }, 10_000);

  it('checks its options before any I/O', () => {
    expect(() => new FileCache({ dir: '' })).toThrow(/FileCache options.dir must be a non-empty path \(got empty string\)/);
    expect(() => new FileCache({ guardStaleMs: -1 })).toThrow(/FileCache options.guardStaleMs/);
    expect(() => new FileCache(null as never)).toThrow(/FileCache options must be/);
    expect(new FileCache().dir).toBe(join(tmpdir(), `wxkit-${process.getuid?.() ?? 'user'}`));
  });
});

// The test kit's generic child (built), which runs TokenCache operations in another process.
const cacheChild = join(dirname(createRequire(import.meta.url).resolve('@wxkit/testing/package.json')), 'dist/cache-child.js');

interface ChildResult {
  result?: unknown;
  error?: string;
}

/** The next IPC message of `child`; rejects if it exits first. */
function nextMessage<T>(child: ChildProcess): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onExit = (code: number | null) => reject(new Error(`cache child exited (${code}) before it answered`));
    // 'close', not 'exit': an answer sent just before the child exits may still be in the channel at 'exit'.
    child.once('close', onExit);
    child.once('message', (message: T) => {
      child.off('close', onExit);
      resolve(message);
    });
  });
}

describe('FileCache across processes', () => {
  it('4 processes × 200 rounds of set()/get() while another process reads: never a torn value, no ~ files left', async () => {
    const dir = fresh('torn');
    const key = 'wechat:access_token:wxtorn';
    // Values of different lengths and fill, a few KiB each: a read that mixed two writes, or caught one
    // half written, would not be any of them.
    const valueOf = (p: number, r: number) => `${p}:${r}:${String.fromCharCode(97 + ((p * 7 + r) % 26)).repeat(1024 + ((p * 31 + r * 17) % 8192))}`;
    const written = new Set<string>();
    const opsOf = (p: number) =>
      Array.from({ length: 200 }, (_, r) => {
        written.add(valueOf(p, r));
        return [
          { op: 'set', key, value: valueOf(p, r), ttlSeconds: 60 },
          { op: 'get', key },
        ];
      }).flat();
    const spec = { module: builtModule, export: 'FileCache', args: [{ dir }] };
    const children = Array.from({ length: 4 }, () =>
      fork(cacheChild, [], { env: { ...process.env, WXKIT_CACHE_CHILD: JSON.stringify({ spec }) }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
    );
    try {
      await Promise.all(children.map((child) => nextMessage(child)));
      const reports = Promise.all(children.map((child) => nextMessage<{ results: ChildResult[] }>(child)));
      let writing = true;
      void reports.finally(() => (writing = false)).catch(() => undefined);
      for (const [p, child] of children.entries()) child.send({ go: true, ops: opsOf(p) });

      // This process is the reader: it reads for as long as any writer runs.
      const reader = new FileCache({ dir });
      const bad: string[] = [];
      let values = 0;
      while (writing) {
        const value = await reader.get(key);
        if (value === undefined) continue;
        values += 1;
        if (!written.has(value)) bad.push(`${value.length} chars: ${JSON.stringify(value.slice(0, 24))}`);
      }
      const results = (await reports).map((report) => report.results);

      expect(bad).toEqual([]);
      expect(values).toBeGreaterThan(0);
      for (const list of results) {
        expect(list).toHaveLength(400);
        expect(list.filter((r) => r.error !== undefined)).toEqual([]);
        // No one deletes the key, so every writer's get() finds one of the written values, whole.
        for (const r of list.filter((_, i) => i % 2 === 1)) expect(written.has(r.result as string)).toBe(true);
      }
      // Whoever wrote last wrote its round 199.
      expect([0, 1, 2, 3].map((p) => valueOf(p, 199))).toContain(await reader.get(key));
      expect(readdirSync(dir).filter((name) => name.includes('~'))).toEqual([]);
    } finally {
      for (const child of children) if (child.exitCode === null) child.kill();
    }
  });
});

describe.skipIf(!canMountTmpfs)('FileCache across processes on a full file system (a 64 KiB tmpfs; Linux as root)', () => {
  it('3 processes × 2 concurrent deleteIfEquals() of the value there, 30 rounds: exactly one deletes in each round, and none fails', async () => {
    const mount = fresh('full-race');
    mkdirSync(mount);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', mount]);
    const dir = join(mount, 'tokens');
    const key = 'wechat:access_token:wxrace:lock';
    const children: ChildProcess[] = [];
    try {
      const cache = new FileCache({ dir });
      expect(await cache.add(key, 'v0', 600)).toBe(true);
      try {
        for (let n = 0; ; n += 1) writeFileSync(join(mount, `filler-${n}`), Buffer.alloc(4096));
      } catch (error) {
        expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      const env = { ...process.env, DELETE_MODULE: builtModule, DELETE_DIR: dir, DELETE_KEY: key, DELETE_CALLS: '2' };
      const script = fileURLToPath(new URL('./fixtures/full-deleter.mjs', import.meta.url));
      const lines = Array.from({ length: 3 }, () => {
        const child = spawn(process.execPath, [script], { env, stdio: ['pipe', 'pipe', 'inherit'] });
        children.push(child);
        return createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
      });
      const next = async (line: AsyncIterator<string>) => JSON.parse((await line.next()).value as string) as { round: number; deleted: number; errors: string[] };
      await Promise.all(lines.map(next));
      const rounds: string[] = [];
      for (let round = 0; round < 30; round += 1) {
        // The page the last round's delete freed holds this round's value: an add() needs no guard.
        if (round > 0) expect(await cache.add(key, `v${round}`, 600)).toBe(true);
        for (const child of children) child.stdin!.write(`${round}\n`);
        const answers = await Promise.all(lines.map(next));
        const deleted = answers.reduce((sum, answer) => sum + answer.deleted, 0);
        const errors = answers.flatMap((answer) => answer.errors);
        if (deleted !== 1 || errors.length > 0) rounds.push(`round ${round}: ${deleted} deleted, errors ${JSON.stringify(errors)}`);
      }
      expect(rounds).toEqual([]);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      for (const child of children) child.kill();
      execFileSync('umount', [mount]);
    }
  });
});

afterAll(() => rmSync(root, { recursive: true, force: true }));
