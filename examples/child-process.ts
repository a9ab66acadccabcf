import { spawn, type SpawnOptions } from 'node:child_process';

/** What a child process left: its exit status (null when a signal ended it), and its output as text. */
export interface ChildRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `command` to its end and resolves what it left, as spawnSync would, without blocking the test
 * worker meanwhile: a worker blocked past a minute (an npm install, a type check on a busy machine)
 * misses its own calls to the test runner, which then fails the run. `timeoutMs` ends it with SIGKILL.
 */
export function runChild(command: string, args: readonly string[], options: SpawnOptions & { timeoutMs?: number; input?: string } = {}): Promise<ChildRun> {
  const { timeoutMs, input, ...spawnOptions } = options;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...spawnOptions, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(input);
  });
}
