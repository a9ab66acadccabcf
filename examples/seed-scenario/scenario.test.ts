import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { runChild } from '../child-process.js';

// The child's own timeout is under the test's (60 s): a hung scenario is killed and fails the
// assertion below with its output, where the test's timeout would report nothing of what it did.
it('two programs share one token through Redis, and recover from another system’s refresh with one fetch', async () => {
  const script = fileURLToPath(new URL('./dist/scenario.js', import.meta.url));
  const run = await runChild(process.execPath, [script], { timeoutMs: 50_000, env: { ...process.env, REDIS_URL: '' } });
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
