import { fork } from 'node:child_process';
import { createServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, startRedis, type StoreServer } from '@wxkit/testing';
import { childThatExitsByItself, type CacheChildOp } from '@wxkit/testing/suite';

// A process that used RedisCache and closed it must end on its own, whatever the server did: a timer,
// a reconnect loop or a socket left behind would keep a CLI command or a cron job running for ever.
// Each child never calls process.exit(); its exit code 0 is the proof, and what it still had open
// right after close() is shown when it did not exit.

const built = new URL('../dist/index.js', import.meta.url).href;
const connectTimeoutMs = 300;
// A standalone server, and the same address as the one root node of a Cluster.
const specs = (port: number) =>
  [{ url: `redis://:pw@127.0.0.1:${port}` }, { cluster: [`redis://:pw@127.0.0.1:${port}`] }].map((where) => ({
    module: built,
    export: 'RedisCache',
    args: [{ ...where, connectTimeoutMs }],
  }));
const ops: CacheChildOp[] = [
  { op: 'get', key: 'wxkit-exit:k' },
  { op: 'set', key: 'wxkit-exit:k', value: 'v', ttlSeconds: 60 },
  { op: 'add', key: 'wxkit-exit:k:lock', value: 'owner', ttlSeconds: 60 },
  { op: 'deleteIfEquals', key: 'wxkit-exit:k:lock', value: 'owner' },
  { op: 'compareAndSet', key: 'wxkit-exit:k', expected: 'v', value: 'w', ttlSeconds: 60 },
];

/** A TCP server that accepts connections and never sends a byte, as a hung server or a half-dead proxy. */
async function startSilentServer(): Promise<{ port: number; connections: () => number; close: () => Promise<void> }> {
  const sockets: Socket[] = [];
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    sockets.push(socket);
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port,
    connections: () => sockets.length,
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Runs test/fixtures/exit-child.mjs with `steps`; `onAnnounce` runs when the child reaches its
 * 'announce' step. Resolves the child's outcomes, what it held right after its last step, and its exit
 * code (null when it was still running 15 s after its report, and was killed).
 */
async function exitChild(options: object, steps: string[], onAnnounce?: () => Promise<unknown>) {
  const script = fileURLToPath(new URL('./fixtures/exit-child.mjs', import.meta.url));
  const child = fork(script, [], {
    env: { ...process.env, WXKIT_EXIT_CHILD: JSON.stringify({ module: built, options, steps }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  // 'close', not 'exit': the report, sent just before the child exits, may still be in the channel at 'exit'.
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const report = await new Promise<{ outcomes: string[]; resources: string[] }>((resolve, reject) => {
    child.on('message', (message: { reached?: boolean; outcomes?: string[]; resources?: string[] }) => {
      if (message.reached) void onAnnounce?.();
      else resolve({ outcomes: message.outcomes ?? [], resources: message.resources ?? [] });
    });
    void exited.then(() => reject(new Error('exit child ended without a report')));
  });
  let timer: NodeJS.Timeout | undefined;
  // A bound on a failure, not a measurement: a child still running this long after close() is held open.
  const code = await Promise.race([exited, new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), 15_000)))]);
  clearTimeout(timer);
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  return { ...report, code };
}

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((cleanup) => cleanup()));
});

describe('RedisCache lets the process exit after close()', () => {
  it('when nothing listens on the port: every call fails with ERR_WXKIT_CACHE, and the process exits (standalone, Cluster)', async () => {
    for (const spec of specs(await freePort())) {
      const { code, results, resources } = await childThatExitsByItself(spec, ops);
      expect(results.map((r) => r.error)).toEqual(ops.map(() => 'ERR_WXKIT_CACHE'));
      expect({ spec: spec.args, code, resources: code === 0 ? [] : resources }).toEqual({ spec: spec.args, code: 0, resources: [] });
    }
  });

  it('when the server accepts the connection and never answers a byte (standalone, Cluster)', async () => {
    const silent = await startSilentServer();
    cleanups.push(silent.close);
    for (const spec of specs(silent.port)) {
      const before = silent.connections();
      const { code, results, resources } = await childThatExitsByItself(spec, ops);
      expect(results.map((r) => r.error)).toEqual(ops.map(() => 'ERR_WXKIT_CACHE'));
      // The client did get a connection: it was the handshake that never finished.
      expect(silent.connections()).toBeGreaterThan(before);
      expect({ spec: spec.args, code, resources: code === 0 ? [] : resources }).toEqual({ spec: spec.args, code: 0, resources: [] });
    }
  });

  it('when the server starts listening only after calls timed out, and the client connects late', async () => {
    const port = await freePort();
    let redis: StoreServer | undefined;
    cleanups.push(async () => redis?.stop());
    // Calls time out while nothing listens; then the server starts, and calls go on until one gets through.
    const { code, outcomes, resources } = await exitChild({ url: `redis://127.0.0.1:${port}`, connectTimeoutMs }, ['call', 'call', 'announce', 'until-ok', 'close'], async () => {
      redis = await startRedis({ port });
    });
    expect(outcomes.slice(0, 2)).toEqual(['ERR_WXKIT_CACHE', 'ERR_WXKIT_CACHE']);
    expect(outcomes.at(-1)).toBe('ok');
    expect({ code, resources: code === 0 ? [] : resources }).toEqual({ code: 0, resources: [] });
  });

  it('when close() is called while calls are still waiting for a connection (nothing listening, or a silent server)', async () => {
    const silent = await startSilentServer();
    cleanups.push(silent.close);
    for (const port of [await freePort(), silent.port]) {
      const { code, outcomes, resources } = await exitChild({ url: `redis://127.0.0.1:${port}`, connectTimeoutMs: 5000 }, ['pending-close']);
      expect(outcomes).toEqual(['ERR_WXKIT_CACHE', 'ERR_WXKIT_CACHE', 'ERR_WXKIT_CACHE']);
      expect({ port, code, resources: code === 0 ? [] : resources }).toEqual({ port, code: 0, resources: [] });
    }
  });
});
