import { expect, it } from 'vitest';
import { runChild, type ChildRun } from '../child-process.js';

// runChild() must leave nothing running behind a test: a test that fails or times out (vitest's
// testTimeout) does not wait for its child, which would run on after the file (an npm install into a
// scratch directory afterAll removed, a nested vitest and its workers).
let left: Promise<ChildRun> | undefined;

it('a test that ends while its child still runs', () => {
  // The child would end by itself after 30 s: a run without the fix leaves no process for ever.
  left = runChild(process.execPath, ['-e', 'setTimeout(() => {}, 30_000)']);
});

it('the child of a test that ended was killed at its end', async () => {
  expect(await left).toMatchObject({ status: null, signal: 'SIGKILL' });
}, 10_000);

it('timeoutMs ends a child whose own children hold its output open, and keeps what it wrote', async () => {
  const run = await runChild('sh', ['-c', 'echo started; sleep 30 & wait'], { timeoutMs: 500 });
  expect(run).toMatchObject({ status: null, signal: 'SIGKILL', stdout: 'started\n' });
}, 10_000);

it('a failing child resolves its exit status and its output', async () => {
  const run = await runChild(process.execPath, ['-e', 'process.stdout.write("out"); process.stderr.write("err"); process.exit(3)']);
  expect(run).toEqual({ status: 3, signal: null, stdout: 'out', stderr: 'err' });
});

it('input reaches the child on stdin, and stdin ends', async () => {
  const run = await runChild(process.execPath, ['-e', 'let s = ""; process.stdin.setEncoding("utf8").on("data", (c) => (s += c)).on("end", () => process.stdout.write(s.toUpperCase()))'], { input: 'ü'.repeat(70_000) });
  expect(run.stdout).toBe('Ü'.repeat(70_000));
  expect(run.status).toBe(0);
});
