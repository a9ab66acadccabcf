import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileCache, nativeSchema } from '@wxkit/core';
import { freePort, startMockWeChat, type MockWeChat } from '@wxkit/testing';

// `wxkit serve` and the signals that stop it: the first one starts the shutdown, and any that follow
// (Ctrl-C twice, or once under npm, which forwards the terminal's SIGINT to a child that got it too)
// must not kill the process while it writes what it fetched and releases the refresh lock.
const bin = fileURLToPath(new URL('../bin/wxkit.mjs', import.meta.url));
const KEY = 'signals-key-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'wxkit-serve-signals-'));

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('wxkit serve and signals', () => {
  it('a second and third signal while stopping are logged, not obeyed: the fetch under way is written, the lock released, exit 0', async () => {
    const app = mock.createApp();
    const storeDir = join(dir, 'store');
    const config = join(dir, 'signals.json');
    writeFileSync(config, JSON.stringify({ keysEnv: 'TEST_SERVE_KEYS', baseUrl: mock.url, apps: [{ app: `oa:${app.appId}`, secretEnv: 'APP_SECRET' }] }));
    // The fetch the service starts at once is still under way when the signals come.
    mock.setLatency(3000);
    const child = spawn(process.execPath, [bin, 'serve', '--store', `file://${storeDir}`, '--config', config, '--port', String(await freePort())], {
      env: { ...process.env, TEST_SERVE_KEYS: KEY, APP_SECRET: app.secret },
    });
    const lines: Record<string, unknown>[] = [];
    let raw = '';
    const waiters = new Set<{ event: string; resolve: () => void }>();
    child.stderr.on('data', (chunk: Buffer) => (raw += chunk.toString()));
    createInterface({ input: child.stdout }).on('line', (text) => {
      raw += `${text}\n`;
      const line = JSON.parse(text) as Record<string, unknown>;
      lines.push(line);
      for (const waiter of waiters) if (line.event === waiter.event) (waiters.delete(waiter), waiter.resolve());
    });
    const logged = (event: string) => new Promise<void>((resolve) => (lines.some((line) => line.event === event) ? resolve() : waiters.add({ event, resolve })));
    // 'close': every line is read before the exit counts (at 'exit' the last may still be in the pipe).
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('close', (code, signal) => resolve([code, signal])));
    try {
      await logged('serve.listening');
      // The fetch has reached WeChat (the mock counts it on arrival) and holds the refresh lock.
      while (mock.counters(app.appId).tokenRequests === 0) await new Promise((resolve) => setTimeout(resolve, 20));
      child.kill('SIGTERM');
      await logged('serve.stopping');
      child.kill('SIGTERM');
      // Killed by it, the process never logs the line: the exit ends the wait.
      await Promise.race([logged('serve.already_stopping'), exited]);
      child.kill('SIGINT');
      expect(await exited, raw).toEqual([0, null]);
      expect(lines.filter((line) => line.event === 'serve.already_stopping').map((line) => line.signal)).toEqual(['SIGTERM', 'SIGINT']);
      // What was fetched is in the store, and the lock is gone: the fleet neither waits for a lease nor fetches again.
      const store = new FileCache({ dir: storeDir });
      const key = nativeSchema().accessTokenKey({ kind: 'official_account', appId: app.appId, endpoint: 'stable' });
      expect(await store.get(nativeSchema().lockKey(key))).toBeUndefined();
      expect(await store.get(key)).toContain('"access_token"');
      expect(mock.counters(app.appId).tokenRequests).toBe(1);
    } finally {
      mock.setLatency(0);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
