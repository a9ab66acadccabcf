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

/** The environment of every run: no app, secret or store of the test machine's own, then the run's. */
const environment = (env: Record<string, string | undefined>) => ({ WECHAT_APPID: '', WECHAT_SECRET: '', WXKIT_STORE: '', ...env });

/**
 * Commands that print to the process's own streams (mock-server's lines and usage, demo's report through
 * console): in this process their output would reach neither collector, and a check that a run never
 * prints something would hold whatever they printed. They run as the binary, with wxkitProcess().
 */
const OWN_STREAMS = new Set(['mock-server', 'demo']);

function lastJson(stdout: string): Run['json'] {
  try {
    return JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as Run['json'];
  } catch {
    return {}; // not a --json run
  }
}

interface Collector {
  stream: Writable;
  add(text: string): void;
  text(): string;
}

function collector(): Collector {
  let text = '';
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      text += chunk.toString();
      done();
    },
  });
  return { stream, add: (more) => void (text += more), text: () => text };
}

/** Runs side by side in this process, and the environment they share (one at a time may differ). */
let running = 0;
let runningEnv = '';
let restore: () => void = () => undefined;
/** The runs under way: what is written meanwhile to the process's own stdout and stderr goes to each. */
const active = new Set<{ stdout: Collector; stderr: Collector }>();

/**
 * process.stdout and process.stderr while runs are under way: a write of the library's or the
 * command's that bypasses `io` is in the output of every run under way, as it is in a binary's.
 */
function teeProcessStreams(): () => void {
  const streams = [
    [process.stdout, 'stdout'],
    [process.stderr, 'stderr'],
  ] as const;
  const originals = streams.map(([stream, which]) => {
    const write = stream.write;
    stream.write = function (this: NodeJS.WriteStream, chunk: unknown, ...rest: unknown[]) {
      const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString();
      for (const run of active) run[which].add(text);
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof stream.write;
    return () => void (stream.write = write);
  });
  return () => originals.forEach((undo) => undo());
}

/** Sets each variable, or removes it where its value is undefined. */
function setEnvironment(pairs: Iterable<readonly [string, string | undefined]>): void {
  for (const [name, value] of pairs) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
}

function useEnvironment(env: Record<string, string | undefined>): () => void {
  const wanted = environment(env);
  const asText = JSON.stringify(wanted);
  if (running > 0 && asText !== runningEnv) throw new Error('wxkit() runs side by side in one process take the same environment');
  if (running++ === 0) {
    runningEnv = asText;
    const saved = Object.keys(wanted).map((name) => [name, process.env[name]] as const);
    setEnvironment(Object.entries(wanted));
    const untee = teeProcessStreams();
    restore = () => {
      untee();
      setEnvironment(saved);
    };
  }
  return () => {
    if (--running === 0) restore();
  };
}

/**
 * The command as the binary runs it, in this process: `main()` with the arguments, its output collected
 * (with anything written to the process's own stdout and stderr meanwhile), the environment set for the
 * run. Its exit code is what the binary exits with. Starting a Node process per command costs the suite a
 * second each; `wxkitProcess()` is for a signal, a pipe, the process's end, or mock-server and demo.
 */
export async function wxkit(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  if (OWN_STREAMS.has(args[0] ?? '')) throw new Error(`wxkit ${args[0]} prints to the process's own streams: run it with wxkitProcess()`);
  const release = useEnvironment(env);
  const run = { stdout: collector(), stderr: collector() };
  active.add(run);
  try {
    const code = await main(args, { stdout: run.stdout.stream, stderr: run.stderr.stream });
    const stdout = run.stdout.text();
    return { code, stdout, stderr: run.stderr.text(), json: lastJson(stdout) };
  } finally {
    active.delete(run);
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
