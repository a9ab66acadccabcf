import { spawn, type SpawnOptions } from 'node:child_process';
import { onTestFinished } from 'vitest';

/** What a child process left: its exit status (null when a signal ended it), and its output as text. */
export interface ChildRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The groups still running, killed if the worker exits first (its own group no longer takes them along). */
const running = new Set<() => void>();
process.once('exit', () => {
  for (const kill of running) kill();
});

/**
 * Runs `command` to its end and resolves what it left, as spawnSync would, without blocking the test
 * worker meanwhile: a worker blocked past a minute (an npm install, a type check on a busy machine)
 * misses its own calls to the test runner, which then fails the run. `timeoutMs` ends it with SIGKILL.
 * The child leads a process group of its own, and it is the group that is killed (npm's scripts, a
 * vitest's workers hold the output pipes: killing the child alone would leave them running, and this
 * waiting for them). Started in a test, the group is killed when the test ends: a test that failed or
 * timed out leaves no child running after it.
 */
export function runChild(command: string, args: readonly string[], options: SpawnOptions & { timeoutMs?: number; input?: string } = {}): Promise<ChildRun> {
  const { timeoutMs, input, ...spawnOptions } = options;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...spawnOptions, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    let ended = false;
    const killGroup = () => {
      if (ended || child.pid === undefined) return;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    };
    running.add(killGroup);
    try {
      onTestFinished(killGroup);
    } catch {
      // Not in a test (a beforeAll): the caller's timeoutMs bounds the child.
    }
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = timeoutMs === undefined ? undefined : setTimeout(killGroup, timeoutMs);
    child.on('error', (error) => {
      ended = true;
      running.delete(killGroup);
      clearTimeout(timer);
      reject(error);
    });
    // The group is killed once the child exited too: what it left behind holds no pipe open.
    child.on('exit', () => {
      killGroup();
      ended = true;
    });
    child.on('close', (status, signal) => {
      ended = true;
      running.delete(killGroup);
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(input);
  });
}
