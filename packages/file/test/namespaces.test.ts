import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { lutimesSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { FileCache } from '../src/index.js';

// A PID means something only in the PID namespace it was issued in. Two containers that share a volume
// each see the other's PIDs as dead, so a guard is judged by PID only when it carries our own namespace
// id; any other guard (and temp file) is judged by its age alone.
const root = mkdtempSync(join(tmpdir(), 'wxkit-file-ns-'));
const fresh = (name: string) => join(root, name);
const builtModule = new URL('../dist/index.js', import.meta.url).href;
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

/** The guard this process writes, read while a set() holds it (the cache reads its clock under the guard). */
async function ownGuard(): Promise<{ pid: number; namespace: string }> {
  const dir = fresh(`probe-${randomBytes(4).toString('hex')}`);
  let guard = '';
  const cache = new FileCache({
    dir,
    now: () => {
      if (guard === '') guard = readFileSync(join(dir, 'probe~guard'), 'utf8');
      return Date.now();
    },
  });
  await cache.set('probe', 'v', 60);
  const [pid, namespace] = guard.split(' ');
  expect(guard).toMatch(/^\d+ [0-9a-f]{16} [0-9a-f]{16}$/);
  return { pid: Number(pid), namespace: namespace! };
}

/** The PID of a process that has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(child.stdout);
}

const otherThan = (namespace: string) => (namespace === 'f'.repeat(16) ? '0'.repeat(16) : 'f'.repeat(16));
const leftovers = (dir: string) => readdirSync(dir).filter((name) => name.includes('~')).sort();

describe('FileCache guards carry a PID namespace id', () => {
  it('writes `<pid> <namespace id> <random>` in its guards', async () => {
    const { pid, namespace } = await ownGuard();
    expect(pid).toBe(process.pid);
    expect((await ownGuard()).namespace).toBe(namespace);
  });

  it.skipIf(process.platform !== 'linux')('on Linux the namespace id is a hash of the boot id and of the PID namespace (Linux only)', async () => {
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const pidNamespace = readlinkSync('/proc/self/ns/pid');
    const expected = createHash('sha256').update(`${bootId}\n${pidNamespace}`).digest('hex').slice(0, 16);
    expect((await ownGuard()).namespace).toBe(expected);
  });

  it('a guard of another namespace whose PID is not alive here is not broken before guardStaleMs; past it, it is', async () => {
    const dir = fresh('foreign-guard');
    const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 300 });
    await cache.set('k', 'before', 60);
    const { namespace } = await ownGuard();
    const foreign = `${deadPid()} ${otherThan(namespace)} 0123456789abcdef`;
    writeFileSync(join(dir, 'k~guard'), foreign, { mode: 0o600 });

    // The writer of that guard may be alive in its own container: waiting is the only safe answer.
    await expect(cache.set('k', 'blocked', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    await expect(cache.add('k:lock', 'blocked', 60)).resolves.toBe(true); // other keys are not held up
    expect(await cache.get('k')).toBe('before');
    expect(readFileSync(join(dir, 'k~guard'), 'utf8')).toBe(foreign);

    // Once it is older than guardStaleMs it is broken, whatever its namespace.
    const old = (Date.now() - 61_000) / 1000;
    utimesSync(join(dir, 'k~guard'), old, old);
    await cache.set('k', 'after', 60);
    expect(await cache.get('k')).toBe('after');
    expect(leftovers(dir)).toEqual([]);
  });

  it('a guard or a breaker\'s claim dated ahead (written before the wall clock stepped back) still goes stale: it is broken once seen standing for guardStaleMs', async () => {
    const dir = fresh('guard-dated-ahead');
    const cache = new FileCache({ dir, guardStaleMs: 300, guardTimeoutMs: 5000 });
    await cache.set('k', 'before', 60);
    await cache.set('j', 'before', 60);
    const { namespace } = await ownGuard();
    const ahead = (Date.now() + 3_600_000) / 1000;
    // Another container's writer, killed holding k's guard; by its mtime it is an hour from being written.
    writeFileSync(join(dir, 'k~guard'), `${deadPid()} ${otherThan(namespace)} 0123456789abcdef`, { mode: 0o600 });
    utimesSync(join(dir, 'k~guard'), ahead, ahead);
    await cache.set('k', 'after', 60);
    expect(await cache.get('k')).toBe('after');
    // j's guard is long stale, but another container's breaker was killed holding its claim, dated ahead.
    const guard = `${deadPid()} ${otherThan(namespace)} 00112233445566778899`;
    writeFileSync(join(dir, 'j~guard'), guard, { mode: 0o600 });
    utimesSync(join(dir, 'j~guard'), 0, 0);
    const claim = `j~break-${createHash('sha256').update(guard).digest('hex').slice(0, 16)}-0`;
    writeFileSync(join(dir, claim), `${deadPid()} ${otherThan(namespace)} 8899aabbccddeeff`, { mode: 0o600 });
    utimesSync(join(dir, claim), ahead, ahead);
    await cache.set('j', 'after', 60);
    expect(await cache.get('j')).toBe('after');
    expect(leftovers(dir)).toEqual([]);
  });

  it('a guard of our own namespace whose process is gone is broken at once', async () => {
    const dir = fresh('own-dead-guard');
    const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 2000 });
    await cache.set('k', 'before', 60);
    const { namespace } = await ownGuard();
    writeFileSync(join(dir, 'k~guard'), `${deadPid()} ${namespace} 0123456789abcdef`, { mode: 0o600 });
    await cache.set('k', 'after', 60);
    expect(await cache.get('k')).toBe('after');
    expect(leftovers(dir)).toEqual([]);
  });

  it('a guard of our own namespace whose process is alive is left alone until guardStaleMs', async () => {
    const dir = fresh('own-live-guard');
    const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 300 });
    await cache.set('k', 'before', 60);
    const { namespace } = await ownGuard();
    writeFileSync(join(dir, 'k~guard'), `${process.ppid} ${namespace} 0123456789abcdef`, { mode: 0o600 });
    await expect(cache.set('k', 'blocked', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    expect(await cache.get('k')).toBe('before');
  });

  it('a temp file left by another namespace is swept only past guardStaleMs; one of ours whose process is gone, at once', async () => {
    const dir = fresh('temps');
    const cache = new FileCache({ dir, guardStaleMs: 60_000 });
    await cache.set('k', 'v1', 60);
    const { namespace } = await ownGuard();
    const pid = deadPid();
    const foreign = `k~${otherThan(namespace)}-${pid}-aaaaaaaaaaaa.tmp`;
    const ours = `k~${namespace}-${pid}-bbbbbbbbbbbb.tmp`;
    // A temp name of an older version (no namespace id) is judged by age too.
    const unmarked = `k~${pid}-cccccccccccc.tmp`;
    for (const name of [foreign, ours, unmarked]) writeFileSync(join(dir, name), 'v1 0\npartial', { mode: 0o600 });

    // The next writer of the key (another process, or this one past guardStaleMs) sweeps.
    const next = () => new FileCache({ dir, guardStaleMs: 60_000 });
    await next().set('k', 'v2', 60);
    expect(leftovers(dir)).toEqual([foreign, unmarked].sort());

    const old = (Date.now() - 61_000) / 1000;
    utimesSync(join(dir, foreign), old, old);
    utimesSync(join(dir, unmarked), old, old);
    await next().set('k', 'v3', 60);
    expect(leftovers(dir)).toEqual([]);
    expect(await cache.get('k')).toBe('v3');
  });

  it('a symlink at a temp name (a symlink guard a breaker of another namespace took aside, then was killed) is swept past guardStaleMs, judged by its own age', async () => {
    const dir = fresh('temp-symlinks');
    const cache = new FileCache({ dir, guardStaleMs: 60_000 });
    await cache.set('k', 'v1', 60);
    const { namespace } = await ownGuard();
    const other = otherThan(namespace);
    // Its target is the guard's content, which names nothing; one to a young file is judged by its own age too.
    const taken = `k~${other}-${deadPid()}-aaaaaaaaaaaa.tmp`;
    symlinkSync(`${deadPid()} ${other} 0123456789abcdef`, join(dir, taken));
    const young = join(root, 'young-target');
    writeFileSync(young, 'v1 0\nyoung');
    const planted = `k~${other}-${deadPid()}-bbbbbbbbbbbb.tmp`;
    symlinkSync(young, join(dir, planted));
    const old = (Date.now() - 61_000) / 1000;
    for (const name of [taken, planted]) lutimesSync(join(dir, name), old, old);

    await new FileCache({ dir, guardStaleMs: 60_000 }).set('k', 'v2', 60);
    expect(leftovers(dir)).toEqual([]);
    expect(readFileSync(young, 'utf8')).toBe('v1 0\nyoung');
    expect(await cache.get('k')).toBe('v2');
  });
});

// Two processes in two PID namespaces of their own (as two containers on one volume) race add() on one
// directory. Each racer is started after a different number of short-lived processes, so its PID does not
// exist in the other namespace: judged by PID, each would take the other's guard for a dead one.
const unshare = ['--pid', '--fork', '--mount-proc'];
const canUnshare = process.platform === 'linux' && spawnSync('unshare', [...unshare, 'true']).status === 0;
const canHideProc = process.platform === 'linux' && spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs none /proc']).status === 0;
if (!canUnshare) console.warn('skipped: the PID namespace race needs `unshare --pid --fork --mount-proc` (Linux, as root)');
if (!canHideProc) console.warn('skipped: the namespace id fallback test needs `unshare --mount` and mount (Linux, as root)');

interface Racer {
  pid: number;
  guard: string;
  next: () => Promise<{ round: number; wins: number; errors: string[] }>;
  send: (line: string) => void;
  end: () => Promise<number | null>;
}

async function startRacer(dir: string, tag: string, before: number, calls: number): Promise<Racer> {
  const script = `${'/bin/true; '.repeat(before)}"$0" "$1"`;
  const child = spawn('unshare', [...unshare, '/bin/sh', '-c', script, process.execPath, fixture('ns-racer.mjs')], {
    env: { ...process.env, RACE_MODULE: builtModule, RACE_DIR: dir, RACE_TAG: tag, RACE_CALLS: String(calls) },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async () => {
    const line = await lines.next();
    if (line.done) throw new Error(`racer ${tag} ended early (exit ${await exited})`);
    return JSON.parse(line.value as string);
  };
  const first = (await next()) as { pid: number; guard: string };
  return {
    ...first,
    next,
    send: (line) => child.stdin!.write(`${line}\n`),
    end: () => {
      child.stdin!.end();
      return exited;
    },
  };
}

describe('FileCache across PID namespaces', () => {
  it.skipIf(!canUnshare)('two racers in two PID namespaces (unshare; Linux as root) × 300 rounds of add(): exactly one winner per round', async () => {
    const dir = fresh('ns-race');
    mkdirSync(dir);
    const racers = await Promise.all([startRacer(dir, 'a', 1, 3), startRacer(dir, 'b', 3, 3)]);
    // Each round's key holds an expired file, so that every add() goes through the guard (where no file
    // is, link() decides without one).
    try {
      const [a, b] = racers as [Racer, Racer];
      // The set-up is what it claims: two namespaces, PIDs that mean nothing in the other one.
      const { namespace } = await ownGuard();
      const namespaces = racers.map((racer) => racer.guard.split(' ')[1]);
      expect(new Set([namespace, ...namespaces]).size).toBe(3);
      expect(a.pid).not.toBe(b.pid);
      expect(Math.max(a.pid, b.pid)).toBeLessThan(10);

      const wrong: string[] = [];
      const errors: string[] = [];
      for (let round = 0; round < 300; round += 1) {
        writeFileSync(join(dir, `race%3A${round}`), 'v1 1\nold');
        for (const racer of racers) racer.send(String(round));
        const [ra, rb] = await Promise.all(racers.map((racer) => racer.next()));
        expect([ra!.round, rb!.round]).toEqual([round, round]);
        errors.push(...ra!.errors, ...rb!.errors);
        if (ra!.wins + rb!.wins !== 1) wrong.push(`round ${round}: ${ra!.wins} + ${rb!.wins} winners`);
      }
      expect({ wrong, errors }).toEqual({ wrong: [], errors: [] });
    } finally {
      expect(await Promise.all(racers.map((racer) => racer.end()))).toEqual([0, 0]);
    }
  });

  it.skipIf(!canHideProc)('where /proc cannot tell (hidden with unshare --mount; Linux as root), one id per temp directory is drawn and kept', async () => {
    const probe = (tmp: string) => {
      const result = spawnSync('unshare', ['--mount', '--propagation', 'private', '/bin/sh', '-c', 'mount -t tmpfs none /proc && "$0" "$1"', process.execPath, fixture('guard-probe.mjs')], {
        env: { ...process.env, TMPDIR: tmp, PROBE_MODULE: builtModule, PROBE_DIR: fresh('fallback-cache') },
        encoding: 'utf8',
      });
      expect(result.status).toBe(0);
      return (JSON.parse(result.stdout) as { guard: string }).guard.split(' ')[1]!;
    };
    const tmpA = fresh('tmp-a');
    const tmpB = fresh('tmp-b');
    mkdirSync(tmpA);
    mkdirSync(tmpB);
    const first = probe(tmpA);
    expect(probe(tmpA)).toBe(first);
    expect(readFileSync(join(tmpA, 'wxkit-namespace-id'), 'utf8').trim()).toBe(first);
    const other = probe(tmpB);
    expect(other).not.toBe(first);
    expect([first, other]).not.toContain((await ownGuard()).namespace);
    // Not even that can be written: each process has an id of its own, so its PIDs are never believed.
    const nowhere = fresh('no-such-tmp');
    expect(probe(nowhere)).not.toBe(probe(nowhere));
  });

  it.skipIf(!canHideProc)('where /proc cannot tell and the temp directory is full (a 64 KiB tmpfs; Linux as root), each process has an id of its own and leaves no file there', () => {
    const tmp = fresh('tmp-full');
    mkdirSync(tmp);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', tmp]);
    try {
      try {
        for (let n = 0; ; n += 1) writeFileSync(join(tmp, `filler-${n}`), Buffer.alloc(4096));
      } catch (error) {
        expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      const before = readdirSync(tmp).sort();
      const probe = () => {
        const result = spawnSync('unshare', ['--mount', '--propagation', 'private', '/bin/sh', '-c', 'mount -t tmpfs none /proc && "$0" "$1"', process.execPath, fixture('guard-probe.mjs')], {
          env: { ...process.env, TMPDIR: tmp, PROBE_MODULE: builtModule, PROBE_DIR: fresh('full-tmp-cache') },
          encoding: 'utf8',
        });
        expect(result.status).toBe(0);
        return (JSON.parse(result.stdout) as { guard: string }).guard.split(' ')[1]!;
      };
      expect(probe()).not.toBe(probe());
      expect(readdirSync(tmp).sort()).toEqual(before);
    } finally {
      execFileSync('umount', [tmp]);
    }
  });
});

afterAll(() => rmSync(root, { recursive: true, force: true }));
