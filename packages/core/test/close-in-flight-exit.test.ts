import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileCache } from '../src/index.js';

// A program closes its client while the client's token fetch is at WeChat under the refresh lock, and
// then does nothing more: it must exit on its own once close() resolved (nothing of wxkit's keeps the
// event loop alive), with the token written and the lock released for the fleet.

const child = fileURLToPath(new URL('./fixtures/close-in-flight-child.mjs', import.meta.url));

let mock: MockWeChat;
let root: string;
beforeAll(async () => {
  mock = await startMockWeChat();
  root = mkdtempSync(join(tmpdir(), 'wxkit-close-exit-'));
});
afterAll(async () => {
  await mock.close();
  rmSync(root, { recursive: true, force: true });
});

/** A front for the mock that holds token requests (stable_token) until release(), counting them as they arrive. */
async function tokenGate(): Promise<{ url: string; arrived: () => number; release: () => void; close: () => Promise<void> }> {
  let arrived = 0;
  let open!: () => void;
  const released = new Promise<void>((resolve) => (open = resolve));
  const body = async (req: IncomingMessage) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  };
  const server: Server = createServer((req, res) => {
    void (async () => {
      const sent = await body(req);
      if (req.url?.includes('stable_token')) {
        arrived += 1;
        await released;
      }
      const answer = await fetch(`${mock.url}${req.url}`, {
        method: req.method,
        headers: { 'content-type': req.headers['content-type'] ?? 'application/json' },
        body: req.method === 'GET' ? undefined : sent,
      });
      res.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? 'application/json' });
      res.end(Buffer.from(await answer.arrayBuffer()));
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    arrived: () => arrived,
    release: open,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
}

describe.concurrent('close() while the token fetch is at WeChat under the lock, then nothing more', () => {
  it.each([
    ['client', 0],
    ['pool', 0],
    ['before-exit', 3],
  ] as const)('%s: the program exits on its own, the token written and the lock released', async (mode, code) => {
    const { appId, secret } = mock.createApp();
    const gate = await tokenGate();
    const cacheDir = join(root, mode);
    try {
      const config = { mode, appId, secret, baseUrl: gate.url, cacheDir };
      const program = spawn(process.execPath, [child], { env: { ...process.env, WXKIT_CHILD: JSON.stringify(config) }, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
      let out = '';
      let err = '';
      program.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
      program.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => program.once('exit', (exitCode) => resolve(exitCode)));
      const disconnected = new Promise<void>((resolve) => program.once('disconnect', () => resolve()));
      // The fetch is held at WeChat's door, under the lock.
      await until(() => gate.arrived() === 1);
      program.send('close');
      // close() was called (the program disconnects right after): only now does WeChat answer.
      await disconnected;
      gate.release();
      // A program kept alive by a handle never exits: a failure, not a measure of time.
      let timer: NodeJS.Timeout | undefined;
      const exitCode = await Promise.race([
        exited,
        new Promise<'alive'>((resolve) => (timer = setTimeout(() => resolve('alive'), 30_000))),
      ]).finally(() => clearTimeout(timer));
      if (exitCode === 'alive') program.kill('SIGKILL');
      expect({ exitCode, err }).toEqual({ exitCode: code, err: '' });
      expect(JSON.parse(out)).toMatchObject({ closed: true, send: expect.stringMatching(/client was closed/) });
      const cache = new FileCache({ dir: cacheDir });
      const key = `wechat:stable_access_token:${appId}`;
      expect(await cache.get(key)).toBeDefined();
      expect(await cache.get(`${key}:lock`)).toBeUndefined();
      await cache.close();
      expect(mock.counters(appId)).toMatchObject({ tokenRequests: 1, templateSends: 0 });
    } finally {
      await gate.close();
    }
  });
});
