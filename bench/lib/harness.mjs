// What every benchmark shares: the servers, the worker processes, and the arithmetic.
import { fork } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
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
    },
  };
}

const workerScript = fileURLToPath(new URL('./worker.mjs', import.meta.url));

/** Forks `count` workers with `config` and resolves once all are ready. */
export async function startWorkers(count, config, { execArgv = [] } = {}) {
  const children = await Promise.all(
    Array.from({ length: count }, async () => {
      const child = fork(workerScript, [], {
        env: { ...process.env, WXKIT_BENCH: JSON.stringify(config) },
        execArgv,
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      await new Promise((resolve, reject) => {
        child.once('message', resolve);
        child.once('exit', (code) => reject(new Error(`a ${config.library} worker exited with ${code} at start`)));
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
    one: (message) => ask(children[0], message),
    async stop() {
      await Promise.all(
        children.map(
          (child) =>
            new Promise((resolve) => {
              if (child.exitCode !== null) return resolve();
              child.once('exit', resolve);
              child.send({ op: 'exit' });
            }),
        ),
      );
    },
  };
}

/** Sums ok/failed and merges error counts over worker results. */
export function totals(results) {
  const errors = {};
  let ok = 0;
  let failed = 0;
  for (const result of results) {
    ok += result.ok;
    failed += result.failed;
    for (const [label, n] of Object.entries(result.errors)) errors[label] = (errors[label] ?? 0) + n;
  }
  return { ok, failed, errors };
}

export function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export const round = (n, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;
