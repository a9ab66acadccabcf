import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { FileCache, OfficialAccount, type TokenCache } from '../src/index.js';
import { storeHealth } from '../src/store-health.js';
import { hostFallback } from '../src/token/tiers.js';

// Every account's first fetch looks in the host's fallback directory for a token a process of the host
// kept there (KeptTokens): through a handle made for that look, let go after it. 10,000 accounts would
// otherwise each keep one on a store they may never use (a handle, and its place in the store's health).
let mock: MockWeChat;
const dirs: string[] = [];
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `wxkit-${name}-`));
  dirs.push(dir);
  return dir;
}

it("20 accounts' first fetches look in the host's fallback and keep no handle on it", async () => {
  const fallbackDir = tempDir('fallback-handles');
  const cache = new FileCache({ dir: tempDir('fallback-handles-store') });
  const clients = Array.from({ length: 20 }, () => new OfficialAccount({ ...mock.createApp(), baseUrl: mock.url, cache, fallbackDir, logger: false }));
  for (const client of clients) await client.accessToken.getToken();
  const host = hostFallback(fallbackDir) as TokenCache;
  expect(typeof host).toBe('object');
  expect(storeHealth(host, '').users()).toHaveLength(0);
  await Promise.all(clients.map((client) => client.close()));
});
