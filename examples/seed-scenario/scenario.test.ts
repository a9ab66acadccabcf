import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

it('two programs share one token through Redis, and recover from another system’s refresh with one fetch', () => {
  const script = fileURLToPath(new URL('./dist/scenario.js', import.meta.url));
  const run = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, REDIS_URL: '' } });
  expect(run.status, run.stdout + run.stderr).toBe(0);
  const summary = JSON.parse(run.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
  expect(summary).toMatchObject({
    sent: 20,
    lost: 0,
    fetchesAtStart: 1,
    upstreamFetches: 2,
    sameTokenAtStart: true,
    sameTokenAfter: true,
    errors: [],
  });
  expect(summary.rejectedByWeChat).toBeGreaterThanOrEqual(1);
});
