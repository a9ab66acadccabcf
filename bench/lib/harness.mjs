// What every benchmark shares: the servers, the worker processes, and the arithmetic.
import { fork } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMemcached, startMockWeChat, startRedis } from '@wxkit/testing';

/** WeChat answers in about 20 ms from most clouds in China; the mock waits that long on every call. */
export const LATENCY_MS = 20;

/** Starts the mock WeChat server and one of each real store, for the whole run. */
export async function startEnvironment() {
  const [mock, redis, memcached] = await Promise.all([startMockWeChat({ latencyMs: LATENCY_MS }), startRedis(), startMemcached()]);
  const fileRoot = mkdtempSync(join(tmpdir(), 'wxkit-bench-'));
  let dirs = 0;
  return {
    /** A fresh empty directory of this run (a host's fallback directory, say). */
    tempDir() {
      const dir = join(fileRoot, `t${dirs++}`);
      mkdirSync(dir);
      return dir;
    },
    mock,
    redis,
    memcached,
    /** A store spec for a worker; file stores get a fresh directory each time. */
    store(kind) {
      if (kind === 'file') return { kind, dir: join(fileRoot, `d${dirs++}`) };
      if (kind === 'redis') return { kind, url: redis.url };
      if (kind === 'memcached') return { kind, url: memcached.url };
      return { kind };
    },
    async stop() {
      await Promise.all([mock.close(), redis.stop(), memcached.stop()]);
      rmSync(fileRoot, { recursive: true, force: true });
    },
  };
}

const workerScript = fileURLToPath(new URL('./worker.mjs', import.meta.url));

/**
 * Forks `count` workers with `config` (or `config(i)` for worker i, e.g. a fallback directory per
 * simulated host) and resolves once all are ready.
 */
export async function startWorkers(count, config, { execArgv = [] } = {}) {
  const configOf = typeof config === 'function' ? config : () => config;
  const children = await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const child = fork(workerScript, [], {
        env: { ...process.env, WXKIT_BENCH: JSON.stringify(configOf(i)) },
        execArgv,
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      await new Promise((resolve, reject) => {
        child.once('message', resolve);
        child.once('exit', (code) => reject(new Error(`a ${configOf(i).library} worker exited with ${code} at start`)));
      });
      return child;
    }),
  );
  const ask = (child, message) =>
    new Promise((resolve) => {
      child.once('message', resolve);
      child.send(message);
    });
  return {
    /** Sends `message` to every worker at once; resolves all answers and the wall time. */
    async all(message) {
      const started = performance.now();
      const results = await Promise.all(children.map((child) => ask(child, message)));
      return { results, wallMs: performance.now() - started };
    },
    /** Sends `message` to every worker, expecting no answer. */
    tell(message) {
      for (const child of children) child.send(message);
    },
    /** Sends `message` to worker `index` (the first by default) alone. */
    one: (message, index = 0) => ask(children[index], message),
    /** Sends `message` to the workers at `indexes` at once; resolves their answers and the wall time. */
    async some(message, indexes) {
      const started = performance.now();
      const results = await Promise.all(indexes.map((index) => ask(children[index], message)));
      return { results, wallMs: performance.now() - started };
    },
    /** SIGKILLs worker `index` and waits for it to be gone. */
    async kill(index) {
      const child = children[index];
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await gone;
    },
    /** Asks every worker to exit; one still there after 5 s (a client stuck on a hung store) is killed. */
    async stop() {
      await Promise.all(
        children.map(
          (child) =>
            new Promise((resolve) => {
              if (child.exitCode !== null || child.signalCode !== null) return resolve();
              const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
              child.once('exit', () => {
                clearTimeout(timer);
                resolve();
              });
              child.send({ op: 'exit' });
            }),
        ),
      );
    },
  };
}

/** Sums ok/failed/sent and merges error counts over worker results. */
export function totals(results) {
  const errors = {};
  let ok = 0;
  let failed = 0;
  let sent = 0;
  for (const result of results) {
    ok += result.ok;
    failed += result.failed;
    sent += result.sent ?? result.ok + result.failed;
    for (const [label, n] of Object.entries(result.errors)) errors[label] = (errors[label] ?? 0) + n;
  }
  return { ok, failed, sent, errors };
}

/**
 * A store that accepts connections and never answers a byte: what a hung Redis (a full disk, a paused
 * VM, a half-open connection through a proxy) looks like to its clients.
 */
export async function startHungServer() {
  const sockets = new Set();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('data', () => undefined);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `redis://127.0.0.1:${server.address().port}`,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export const round = (n, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;
