import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { FileCache } from '../src/index.js';

// 8 processes hammer one directory for 10 s while random ones are SIGKILLed and replaced (see the worker
// for what each does). Every value written carries its own checksum, so a torn, mixed or half-written
// read is reported; every process also contends for one refresh lock, whose holders check that no two
// of them overlap. Twice, a holder is killed inside its critical section on purpose, so that the lock's
// recovery by its lease is exercised, not merely possible. Afterwards, ordinary use of the cache must
// leave no temp files and no guards behind.
const dir = mkdtempSync(join(tmpdir(), 'wxkit-hammer-'));
const script = fileURLToPath(new URL('./fixtures/hammer-worker.mjs', import.meta.url));
const env = { ...process.env, HAMMER_DIR: dir, HAMMER_MODULE: new URL('../dist/index.js', import.meta.url).href };

interface Stats {
  reads: number;
  writes: number;
  violations: string[];
  errors: string[];
  acquired: number;
  contended: number;
  takeovers: number;
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The reads, and the writes, the run must have seen at least. */
const WORK = 500;

it('8 processes for 10 s (longer on a loaded machine, until enough was done) with random SIGKILLs: no torn read, no error, never two lock holders at once', async () => {
  const totals: Stats = { reads: 0, writes: 0, violations: [], errors: [], acquired: 0, contended: 0, takeovers: 0 };
  const last = new Map<ChildProcess, Stats>();
  const holding = new Map<ChildProcess, (owner: string) => void>();
  const start = () => {
    const child = fork(script, [], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.on('message', (message: Stats | { holding: string }) => {
      if ('holding' in message) holding.get(child)?.(message.holding);
      else last.set(child, message);
    });
    return child;
  };
  const settle = (child: ChildProcess) => {
    const stats = last.get(child);
    if (!stats) return;
    totals.reads += stats.reads;
    totals.writes += stats.writes;
    totals.acquired += stats.acquired;
    totals.contended += stats.contended;
    totals.takeovers += stats.takeovers;
    totals.violations.push(...stats.violations);
    totals.errors.push(...stats.errors);
  };
  const kill = async (victim: ChildProcess) => {
    const gone = new Promise((resolve) => victim.once('exit', resolve));
    victim.kill('SIGKILL');
    await gone;
    settle(victim);
    workers = workers.map((worker) => (worker === victim ? start() : worker));
  };

  let workers = Array.from({ length: 8 }, start);
  let kills = 0;
  let holdersKilled = 0;
  // The work the workers reported so far, the running ones' included: enough to mean something (the
  // lock changed hands many times, each time with others trying to take it).
  const enough = () => {
    const running = workers.map((worker) => last.get(worker)).filter((stats) => stats !== undefined);
    const sum = (field: 'reads' | 'writes' | 'acquired') => totals[field] + running.reduce((total, stats) => total + stats[field], 0);
    return sum('reads') > WORK && sum('writes') > WORK && sum('acquired') >= 25;
  };
  const began = Date.now();
  // 10 s at least; on a loaded machine, on until enough work was done (60 s at most).
  const until = began + 10_000;
  const latest = began + 60_000;
  const holderKillsAt = [began + 2_500, began + 6_000];
  try {
    while (Date.now() < until || (!enough() && Date.now() < latest)) {
      await new Promise((resolve) => setTimeout(resolve, 300 + Math.random() * 400));
      if (holderKillsAt[0] !== undefined && Date.now() >= holderKillsAt[0]) {
        holderKillsAt.shift();
        // One worker takes the lock, says so from inside its critical section, and is killed right there.
        let running = workers.filter((worker) => last.has(worker));
        while (running.length === 0) {
          await new Promise((resolve) => setTimeout(resolve, 50));
          running = workers.filter((worker) => last.has(worker));
        }
        const victim = running[Math.floor(Math.random() * running.length)]!;
        const owner = await new Promise<string>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no worker took the lock within 5 s to be killed holding it')), 5000);
          holding.set(victim, (held) => {
            clearTimeout(timer);
            resolve(held);
          });
          victim.send('linger');
        });
        expect(owner).toMatch(new RegExp(`^${victim.pid}:`));
        await kill(victim);
        holdersKilled += 1;
      } else {
        await kill(workers[Math.floor(Math.random() * workers.length)]!);
      }
      kills += 1;
    }
    await Promise.all(
      workers.map(
        (worker) =>
          new Promise((resolve) => {
            worker.once('exit', resolve);
            worker.send('stop');
          }),
      ),
    );
    workers.forEach(settle);
  } finally {
    // On a failure above, no worker is left running.
    for (const worker of workers) if (worker.exitCode === null && worker.signalCode === null) worker.kill('SIGKILL');
  }

  expect(totals.violations).toEqual([]);
  // Killed writers leave guards and temp files behind; others break and sweep them, so no call fails.
  expect(totals.errors).toEqual([]);
  expect(kills).toBeGreaterThanOrEqual(10);
  expect(holdersKilled).toBe(2);
  // Enough work to mean something (counts since a killed worker's last report are lost): the lock
  // changed hands many times, each time with others trying to take it.
  expect(totals.reads).toBeGreaterThan(WORK);
  expect(totals.writes).toBeGreaterThan(WORK);
  expect(totals.acquired).toBeGreaterThanOrEqual(25);
  expect(totals.contended).toBeGreaterThan(totals.acquired * 5);
  // Each holder killed on purpose left its record; whoever took the lock after its lease found it.
  expect(totals.takeovers).toBeGreaterThanOrEqual(holdersKilled);

  // Ordinary use afterwards: the next writer of each key breaks guards of dead processes and sweeps
  // their temp files; deleting the keys leaves an empty directory.
  const cache = new FileCache({ dir });
  const keys = ['wechat:access_token:wxhammer', 'wechat:jsapi_ticket:wxhammer', 'wechat:wx_card_ticket:wxhammer', 'wechat:access_token:wxhammer:lock', 'hammer:holder'];
  for (const key of keys) {
    await cache.set(key, 'final', 60);
    expect(await cache.get(key)).toBe('final');
    await cache.delete(key);
  }
  expect(readdirSync(dir)).toEqual([]);
}, 90_000);
