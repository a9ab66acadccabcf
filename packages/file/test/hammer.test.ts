import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { FileCache } from '../src/index.js';

// 8 processes hammer one directory for 10 s while random ones are SIGKILLed and replaced. Every value
// written carries its own checksum; a reader that ever sees a torn, mixed or half-written value reports
// it. Afterwards, ordinary use of the cache must leave no temp files and no guards behind.
const dir = mkdtempSync(join(tmpdir(), 'wxkit-hammer-'));
const script = fileURLToPath(new URL('./fixtures/hammer-worker.mjs', import.meta.url));
const env = { ...process.env, HAMMER_DIR: dir, HAMMER_MODULE: new URL('../dist/index.js', import.meta.url).href };

interface Stats {
  reads: number;
  writes: number;
  violations: string[];
  errors: number;
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('8 processes for 10 s with random SIGKILLs: no torn or corrupt read, nothing left behind', async () => {
  const totals: Stats = { reads: 0, writes: 0, violations: [], errors: 0 };
  const last = new Map<ChildProcess, Stats>();
  const start = () => {
    const child = fork(script, [], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.on('message', (stats: Stats) => last.set(child, stats));
    return child;
  };
  const settle = (child: ChildProcess) => {
    const stats = last.get(child);
    if (!stats) return;
    totals.reads += stats.reads;
    totals.writes += stats.writes;
    totals.errors += stats.errors;
    totals.violations.push(...stats.violations);
  };
  let workers = Array.from({ length: 8 }, start);
  let kills = 0;
  const until = Date.now() + 10_000;
  while (Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 300 + Math.random() * 400));
    const victim = workers[Math.floor(Math.random() * workers.length)]!;
    const gone = new Promise((resolve) => victim.once('exit', resolve));
    victim.kill('SIGKILL');
    await gone;
    kills += 1;
    settle(victim);
    workers = workers.map((worker) => (worker === victim ? start() : worker));
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

  expect(kills).toBeGreaterThanOrEqual(10);
  expect(totals.reads).toBeGreaterThan(1000);
  expect(totals.writes).toBeGreaterThan(1000);
  expect(totals.violations).toEqual([]);

  // Ordinary use afterwards: the next writer of each key breaks guards of dead processes and sweeps
  // their temp files; deleting the keys leaves an empty directory.
  const cache = new FileCache({ dir });
  for (const key of ['wechat:access_token:wxhammer', 'wechat:access_token:wxhammer:lock', 'wechat:jsapi_ticket:wxhammer']) {
    await cache.set(key, 'final', 60);
    expect(await cache.get(key)).toBe('final');
    await cache.delete(key);
  }
  expect(readdirSync(dir)).toEqual([]);
});
