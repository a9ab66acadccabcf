import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { FileCache } from '../src/index.js';

// When a writer dies holding a key's guard, every waiter sees the abandoned guard at once. Only one of
// them may break it: one that removed it by name a moment late would remove the next holder's guard
// instead and let a third writer in beside that holder (two add() winners). The breaker is whoever
// creates the guard's claim file, `<file>~break-<hash of the guard>-<n>`.
const root = mkdtempSync(join(tmpdir(), 'wxkit-file-break-'));
const fresh = (name: string) => {
  const dir = join(root, name);
  mkdirSync(dir);
  return dir;
};
const builtModule = new URL('../dist/index.js', import.meta.url).href;

/** Our own namespace id, read from a guard this process writes (the cache reads its clock under the guard). */
async function ownNamespace(): Promise<string> {
  const dir = fresh(`probe-${randomBytes(4).toString('hex')}`);
  let guard = '';
  const now = () => {
    if (guard === '') guard = readFileSync(join(dir, 'probe~guard'), 'utf8');
    return Date.now();
  };
  await new FileCache({ dir, now }).set('probe', 'v', 60);
  return guard.split(' ')[1]!;
}

function deadPid(): number {
  return Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout);
}

const claimOf = (guard: string, n: number) => `k~break-${createHash('sha256').update(guard).digest('hex').slice(0, 16)}-${n}`;
const leftovers = (dir: string) => readdirSync(dir).filter((name) => name.includes('~'));
// Preloaded into a child, it makes that process's guards and claims as on a full file system: symlinks.
const fullGuards = fileURLToPath(new URL('./fixtures/full-guards.mjs', import.meta.url));

describe('FileCache breaks an abandoned guard once', () => {
  it('a claim on the guard by a live process holds other breakers off', async () => {
    const dir = fresh('live-claim');
    const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 300 });
    await cache.set('k', 'before', 60);
    const guard = `${deadPid()} ${await ownNamespace()} 0123456789abcdef`;
    writeFileSync(join(dir, 'k~guard'), guard);
    writeFileSync(join(dir, claimOf(guard, 0)), `${process.ppid} ${await ownNamespace()} fedcba9876543210`);
    await expect(cache.set('k', 'blocked', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    expect(readFileSync(join(dir, 'k~guard'), 'utf8')).toBe(guard);
    expect(await cache.get('k')).toBe('before');
  });

  it('claims left by breakers that died do not stop the next one, and are removed with the guard', async () => {
    const dir = fresh('dead-claims');
    const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 2000 });
    await cache.set('k', 'before', 60);
    const namespace = await ownNamespace();
    const guard = `${deadPid()} ${namespace} 0123456789abcdef`;
    writeFileSync(join(dir, 'k~guard'), guard);
    writeFileSync(join(dir, claimOf(guard, 0)), `${deadPid()} ${namespace} 1111111111111111`);
    writeFileSync(join(dir, claimOf(guard, 1)), `${deadPid()} ${namespace} 2222222222222222`);
    await cache.set('k', 'after', 60);
    expect(await cache.get('k')).toBe('after');
    expect(leftovers(dir)).toEqual([]);
  });

  // Where the file system has no room for a guard file, a writer's guard (and its claims) is a symlink
  // whose target is what the file would hold: it excludes the others as a file does.
  it('a guard made as a symlink is a writer\'s: of a live process it holds writers off, of a dead one it is broken once', async () => {
    const dir = fresh('symlink-guard');
    const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 300 });
    await cache.set('k', 'before', 60);
    const namespace = await ownNamespace();
    const live = `${process.ppid} ${namespace} 0123456789abcdef`;
    symlinkSync(live, join(dir, 'k~guard'));
    await expect(cache.set('k', 'blocked', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout' });
    await expect(cache.deleteIfEquals('k', 'before')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout' });
    expect(readlinkSync(join(dir, 'k~guard'))).toBe(live);
    expect(await cache.get('k')).toBe('before');

    rmSync(join(dir, 'k~guard'));
    symlinkSync(`${deadPid()} ${namespace} 0123456789abcdef`, join(dir, 'k~guard'));
    expect(await cache.deleteIfEquals('k', 'before')).toBe(true);
    expect(await cache.get('k')).toBeUndefined();
    expect(leftovers(dir)).toEqual([]);
  });

  it('a claim made as a symlink by a live process holds other breakers off', async () => {
    const dir = fresh('symlink-claim');
    const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 300 });
    await cache.set('k', 'before', 60);
    const namespace = await ownNamespace();
    const guard = `${deadPid()} ${namespace} 0123456789abcdef`;
    symlinkSync(guard, join(dir, 'k~guard'));
    symlinkSync(`${process.ppid} ${namespace} fedcba9876543210`, join(dir, claimOf(guard, 0)));
    await expect(cache.set('k', 'blocked', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout' });
    expect(readlinkSync(join(dir, 'k~guard'))).toBe(guard);
    expect(await cache.get('k')).toBe('before');
  });

  // The guard seen abandoned can be removed by its own holder, waking, between the breaker's last read of
  // it and its rename(): the breaker then takes aside the guard of the writer that came next.
  it.each(['symlink', 'file'])('a breaker that catches the next writer\'s guard (a %s) instead of the abandoned one puts it back, and that writer keeps the key', async (kind) => {
    const dir = fresh(`caught-${kind}`);
    const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 300 });
    await cache.set('k', 'before', 60);
    const namespace = await ownNamespace();
    const guard = join(dir, 'k~guard');
    writeFileSync(guard, `${process.ppid} ${namespace} 0123456789abcdef`);
    utimesSync(guard, 0, 0);
    const next = `${process.ppid} ${namespace} fedcba9876543210`;
    const promises = createRequire(import.meta.url)('node:fs/promises') as typeof import('node:fs/promises');
    const rename = promises.rename;
    let swaps = 0;
    promises.rename = (async (from: string, to: string) => {
      if (String(from).endsWith('~guard') && swaps === 0) {
        swaps += 1;
        unlinkSync(from);
        if (kind === 'symlink') symlinkSync(next, from);
        else writeFileSync(from, next);
      }
      return rename(from, to);
    }) as typeof rename;
    syncBuiltinESMExports();
    try {
      await expect(cache.set('k', 'blocked', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout' });
    } finally {
      promises.rename = rename;
      syncBuiltinESMExports();
    }
    expect(swaps).toBe(1);
    expect(lstatSync(guard).isSymbolicLink()).toBe(kind === 'symlink');
    expect(kind === 'symlink' ? readlinkSync(guard) : readFileSync(guard, 'utf8')).toBe(next);
    expect(await cache.get('k')).toBe('before');
    expect(leftovers(dir)).toEqual(['k~guard']);
  });

  it('claims on a guard that is gone are swept by the next writer', async () => {
    const dir = fresh('old-claims');
    await new FileCache({ dir }).set('k', 'before', 60);
    writeFileSync(join(dir, claimOf('a guard long gone', 0)), `${process.ppid} ${await ownNamespace()} 3333333333333333`);
    // The next writer: another process, or this one once guardStaleMs has passed.
    await new FileCache({ dir }).set('k', 'after', 60);
    expect(leftovers(dir)).toEqual([]);
  });

  it('a writer sweeps a key at its first write, then not again within guardStaleMs unless it met a guard', async () => {
    // A sweep reads the whole directory, which holds every account's files: not at every write.
    const dir = fresh('sweep-pace');
    const cache = new FileCache({ dir, guardStaleMs: 60_000, guardTimeoutMs: 2000 });
    const namespace = await ownNamespace();
    const leftover = () => `k~${namespace}-${deadPid()}-${randomBytes(6).toString('hex')}.tmp`;
    const first = leftover();
    writeFileSync(join(dir, first), 'v1 0\npartial');
    await cache.set('k', 'v1', 60);
    expect(leftovers(dir)).toEqual([]);
    const second = leftover();
    writeFileSync(join(dir, second), 'v1 0\npartial');
    await cache.set('k', 'v2', 60);
    expect(leftovers(dir)).toEqual([second]);
    // A guard left by a dead writer is evidence of more: breaking it sweeps at once.
    writeFileSync(join(dir, 'k~guard'), `${deadPid()} ${namespace} 0123456789abcdef`);
    await cache.set('k', 'v3', 60);
    expect(leftovers(dir)).toEqual([]);
    expect(await cache.get('k')).toBe('v3');
  });
});

describe('FileCache across processes, breaking one abandoned guard', () => {
  // An add() where a file is, even an expired one, goes through the guard (only a guarded writer removes
  // a file); where none is, link() decides without it, and the dead guard is left to the key's next
  // guarded write.
  it.each([
    ['over an expired file: through the guard, broken by one of them', true],
    ['where no file is: by link(), past the dead guard', false],
  ])('4 processes × 3 add() each on a key whose guard holder is gone, 60 rounds, %s: exactly one winner per round', async (_, expired) => {
    const dir = fresh(`race-${expired ? 'expired' : 'absent'}`);
    const namespace = await ownNamespace();
    const dead = deadPid();
    // The racer of the namespace test, here all in our own namespace: each round, every waiter finds the
    // guard of a dead process of ours, which may be broken at once.
    const racers = Array.from({ length: 4 }, (_, i) => {
      const child = spawn(process.execPath, [fileURLToPath(new URL('./fixtures/ns-racer.mjs', import.meta.url))], {
        env: { ...process.env, RACE_MODULE: builtModule, RACE_DIR: dir, RACE_TAG: `p${i}`, RACE_CALLS: '3' },
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
      const next = async () => JSON.parse((await lines.next()).value as string);
      return { child, next };
    });
    try {
      for (const racer of racers) expect((await racer.next()).guard.split(' ')[1]).toBe(namespace);
      const wrong: string[] = [];
      const errors: string[] = [];
      for (let round = 0; round < 60; round += 1) {
        writeFileSync(join(dir, `race%3A${round}~guard`), `${dead} ${namespace} ${round.toString(16).padStart(16, '0')}`);
        if (expired) writeFileSync(join(dir, `race%3A${round}`), 'v1 1\nold');
        for (const racer of racers) racer.child.stdin!.write(`${round}\n`);
        const results = (await Promise.all(racers.map((racer) => racer.next()))) as Array<{ wins: number; errors: string[] }>;
        const wins = results.map((result) => result.wins);
        errors.push(...results.flatMap((result) => result.errors));
        if (wins.reduce((a, b) => a + b, 0) !== 1) wrong.push(`round ${round}: ${wins.join(' + ')} winners`);
      }
      expect({ wrong, errors }).toEqual({ wrong: [], errors: [] });
      const guards = Array.from({ length: 60 }, (_, round) => `race%3A${round}~guard`);
      expect(leftovers(dir).filter((name) => !name.startsWith('probe-')).sort()).toEqual(expired ? [] : guards.sort());
    } finally {
      for (const racer of racers) racer.child.stdin!.end();
    }
  });
});

describe('FileCache: a writer paused past guardStaleMs, whose guard another writer broke', () => {
  // guardStaleMs is how long a live writer may hold a guard: past it the next writer breaks the guard
  // (a stalled process is taken for a hung one). The stalled writer, waking, must not then act on what it
  // compared before its stall: the key may hold what the breaker wrote since, a newer token or lock.
  const pausedWriter = (dir: string, call: unknown[], until: string, full = false) => {
    const child = spawn(process.execPath, [...(full ? ['--import', fullGuards] : []), fileURLToPath(new URL('./fixtures/paused-writer.mjs', import.meta.url))], {
      env: { ...process.env, PAUSE_MODULE: builtModule, PAUSE_DIR: dir, PAUSE_STALE_MS: '300', PAUSE_UNTIL: until, PAUSE_CALL: JSON.stringify(call) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    return {
      holding: async () => expect((await lines.next()).value).toBe('holding'),
      outcome: async () => JSON.parse((await lines.next()).value as string) as { value?: unknown; error?: string },
    };
  };

  it('compareAndSet never puts its older value over what the breaker wrote', async () => {
    const dir = fresh('paused-cas');
    const cache = new FileCache({ dir, guardStaleMs: 300 });
    await cache.set('k', 'T0', 60);
    const until = join(dir, 'resume');
    const paused = pausedWriter(dir, ['compareAndSet', 'k', 'T0', 'T1-older', 60], until);
    await paused.holding();
    // The guard is broken once it is 300 ms old, though its process lives.
    expect(await cache.compareAndSet('k', 'T0', 'T2-newer', 60)).toBe(true);
    writeFileSync(until, '');
    const outcome = await paused.outcome();
    expect(outcome.value).not.toBe(true);
    expect(await cache.get('k')).toBe('T2-newer');
  });

  it('add over an expired lock never removes the lock the breaker took since: one winner', async () => {
    const dir = fresh('paused-add');
    const cache = new FileCache({ dir, guardStaleMs: 300 });
    // A lock whose lease is over (the file layout: `v1 <expiresAtMs>\n<value>`, `:` written as %3A).
    writeFileSync(join(dir, 'k%3Alock'), `v1 ${Date.now() - 1000}\ndead-owner`, { mode: 0o600 });
    const until = join(dir, 'resume');
    const paused = pausedWriter(dir, ['add', 'k:lock', 'owner-a', 60], until);
    await paused.holding();
    expect(await cache.add('k:lock', 'owner-b', 60)).toBe(true);
    writeFileSync(until, '');
    const outcome = await paused.outcome();
    expect(outcome.value).not.toBe(true);
    expect(await cache.get('k:lock')).toBe('owner-b');
  });

  it('deleteIfEquals never removes the lock the breaker took since', async () => {
    const dir = fresh('paused-delete');
    const cache = new FileCache({ dir, guardStaleMs: 300 });
    await cache.set('k:lock', 'owner-a', 60);
    const until = join(dir, 'resume');
    const paused = pausedWriter(dir, ['deleteIfEquals', 'k:lock', 'owner-a'], until);
    await paused.holding();
    // Owner a's lease is over meanwhile (here: its owner-b compare-and-set of the lock, under a broken guard).
    expect(await cache.compareAndSet('k:lock', 'owner-a', 'owner-b', 60)).toBe(true);
    writeFileSync(until, '');
    const outcome = await paused.outcome();
    expect(outcome.value).not.toBe(true);
    expect(await cache.get('k:lock')).toBe('owner-b');
  });

  // Its guard a symlink (made where the file system had no room for the guard file): held() reads it as
  // it reads a file guard, so a waking writer acts on nothing it compared before its stall.
  it.each([
    ['deleteIfEquals', ['deleteIfEquals', 'k:lock', 'owner-a']],
    ['compareAndSet', ['compareAndSet', 'k:lock', 'owner-a', 'older', 60]],
  ])('its guard a symlink: %s never acts over what the breaker wrote', async (op, call) => {
    const dir = fresh(`paused-symlink-${op}`);
    const cache = new FileCache({ dir, guardStaleMs: 300 });
    await cache.set('k:lock', 'owner-a', 60);
    const until = join(dir, 'resume');
    const paused = pausedWriter(dir, call, until, true);
    await paused.holding();
    expect(lstatSync(join(dir, 'k%3Alock~guard')).isSymbolicLink()).toBe(true);
    expect(await cache.compareAndSet('k:lock', 'owner-a', 'owner-b', 60)).toBe(true);
    writeFileSync(until, '');
    const outcome = await paused.outcome();
    expect(outcome.value).not.toBe(true);
    expect(await cache.get('k:lock')).toBe('owner-b');
  });

  it('its guard a symlink: add over an expired lock never removes the lock the breaker took since', async () => {
    const dir = fresh('paused-symlink-add');
    const cache = new FileCache({ dir, guardStaleMs: 300 });
    writeFileSync(join(dir, 'k%3Alock'), `v1 ${Date.now() - 1000}\ndead-owner`, { mode: 0o600 });
    const until = join(dir, 'resume');
    const paused = pausedWriter(dir, ['add', 'k:lock', 'owner-a', 60], until, true);
    await paused.holding();
    expect(lstatSync(join(dir, 'k%3Alock~guard')).isSymbolicLink()).toBe(true);
    expect(await cache.add('k:lock', 'owner-b', 60)).toBe(true);
    writeFileSync(until, '');
    const outcome = await paused.outcome();
    expect(outcome.value).not.toBe(true);
    expect(await cache.get('k:lock')).toBe('owner-b');
  });
});

// On a file system full one moment and not the next (or shared by users of whom some are over quota),
// a key's guards and claims are files and symlinks by turns: the two kinds exclude each other.
describe('FileCache across processes whose guards are files and symlinks by turns', () => {
  it('3 processes × (2 deleteIfEquals() + 2 compareAndSet()) of the value there, half their guards symlinks, 24 rounds, every other one over a dead writer\'s guard (a file or a symlink): exactly one takes the value in each round', async () => {
    const dir = fresh('mixed-guards');
    const cache = new FileCache({ dir });
    const namespace = await ownNamespace();
    const dead = deadPid();
    const key = 'wechat:access_token:wxmixed:lock';
    const racers = Array.from({ length: 3 }, () => {
      const child = spawn(process.execPath, ['--import', fullGuards, fileURLToPath(new URL('./fixtures/mixed-racer.mjs', import.meta.url))], {
        env: { ...process.env, FULL_GUARDS_P: '0.5', RACE_MODULE: builtModule, RACE_DIR: dir, RACE_KEY: key, RACE_CALLS: '2' },
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
      const next = async () => JSON.parse((await lines.next()).value as string) as { wins: number; errors: string[]; fullGuards: number };
      return { child, next };
    });
    try {
      await Promise.all(racers.map((racer) => racer.next()));
      const wrong: string[] = [];
      let fullGuardsMade = 0;
      for (let round = 0; round < 24; round += 1) {
        await cache.set(key, `v${round}`, 600);
        const guard = join(dir, 'wechat%3Aaccess_token%3Awxmixed%3Alock~guard');
        const content = `${dead} ${namespace} ${round.toString(16).padStart(16, '0')}`;
        if (round % 4 === 1) writeFileSync(guard, content);
        if (round % 4 === 3) symlinkSync(content, guard);
        for (const racer of racers) racer.child.stdin!.write(`${round}\n`);
        const results = await Promise.all(racers.map((racer) => racer.next()));
        const wins = results.reduce((sum, result) => sum + result.wins, 0);
        const errors = results.flatMap((result) => result.errors);
        fullGuardsMade = results.reduce((sum, result) => sum + result.fullGuards, 0);
        if (wins !== 1 || errors.length > 0) wrong.push(`round ${round}: ${wins} took it, errors ${JSON.stringify(errors)}`);
      }
      expect(wrong).toEqual([]);
      expect(fullGuardsMade).toBeGreaterThan(0);
      expect(leftovers(dir).filter((name) => !name.startsWith('probe-'))).toEqual([]);
    } finally {
      for (const racer of racers) racer.child.stdin!.end();
    }
  });
});

afterAll(() => rmSync(root, { recursive: true, force: true }));
