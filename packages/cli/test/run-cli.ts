import { spawn } from 'node:child_process';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { main } from '../src/main.js';

/** The `wxkit` binary: `process.exitCode = await main(process.argv.slice(2))`, and a reader gone away ignored. */
export const bin = fileURLToPath(new URL('../bin/wxkit.mjs', import.meta.url));

/** What a run of the command printed, its exit code, and its last stdout line as JSON (`{}` if none). */
export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  json: Record<string, unknown> & { error?: Record<string, unknown> };
}

/** The environment of every run: no app or secret of the test machine's own, then the run's. */
const environment = (env: Record<string, string | undefined>) => ({ WECHAT_APPID: '', WECHAT_SECRET: '', ...env });

function lastJson(stdout: string): Run['json'] {
  try {
    return JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as Run['json'];
  } catch {
    return {}; // not a --json run
  }
}

/** Runs side by side in this process, and the environment they share (one at a time may differ). */
let running = 0;
let runningEnv = '';
let restore: () => void = () => undefined;

function useEnvironment(env: Record<string, string | undefined>): () => void {
  const wanted = environment(env);
  const asText = JSON.stringify(wanted);
  if (running > 0 && asText !== runningEnv) throw new Error('wxkit() runs side by side in one process take the same environment');
  if (running++ === 0) {
    runningEnv = asText;
    const saved = Object.keys(wanted).map((name) => [name, process.env[name]] as const);
    for (const [name, value] of Object.entries(wanted)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    restore = () => {
      for (const [name, value] of saved) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    };
  }
  return () => {
    if (--running === 0) restore();
  };
}

function collector(): { stream: Writable; text: () => string } {
  let text = '';
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      text += chunk.toString();
      done();
    },
  });
  return { stream, text: () => text };
}

/**
 * The command as the binary runs it, in this process: `main()` with the arguments, its output collected,
 * the environment set for the run. Its exit code is what the binary exits with. Starting a Node process
 * per command costs the suite a second each; `wxkitProcess()` is for a signal, a pipe or the process's end.
 */
export async function wxkit(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  const release = useEnvironment(env);
  const stdout = collector();
  const stderr = collector();
  try {
    const code = await main(args, { stdout: stdout.stream, stderr: stderr.stream });
    return { code, stdout: stdout.text(), stderr: stderr.text(), json: lastJson(stdout.text()) };
  } finally {
    release();
  }
}

/** The built binary in a process of its own, as a user runs it. */
export function wxkitProcess(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...environment(env) } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr, json: lastJson(stdout) })));
}
