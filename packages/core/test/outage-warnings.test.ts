import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startMockWeChat, switchableStore, type MockWeChat } from '@wxkit/testing';
import { FileCache, OfficialAccount, type CacheUnavailableEvent } from '../src/index.js';
import { recordingLogger } from './helpers.js';

// Issue 14: a platform runs thousands of clients on one store. An outage of that store is one event,
// and it is written as one warning (and one recovery line) per store and outage, not one per client.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

const CLIENTS = 300;

describe('a store outage is logged once per store, not once per client', () => {
  it(`${CLIENTS} clients on one store and one logger: one warning and one recovery line per outage, every client's event`, async () => {
    const store = switchableStore();
    const logger = recordingLogger();
    const otherLogger = recordingLogger();
    const apps = Array.from({ length: CLIENTS }, (_, i) => {
      const { appId, secret } = mock.createApp();
      // The last client logs elsewhere: its logger gets its own line.
      return new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, logger: i === CLIENTS - 1 ? otherLogger : logger, memoMs: 0, fallbackDir: false });
    });
    const heard: CacheUnavailableEvent[] = [];
    for (const app of apps.slice(0, 3)) app.on('cache.unavailable', (event) => heard.push(event));
    const recoveries = apps.slice(0, 3).map((app) => new Promise((resolve) => app.once('cache.recovered', resolve)));
    await Promise.all(apps.map((app) => app.accessToken.getToken()));
    const lines = (target: typeof logger, event: string) => target.lines.filter((line) => (line.fields as { event: string }).event === event);

    for (let outage = 1; outage <= 2; outage += 1) {
      store.down();
      // Every client reads the store (memoMs: 0): the first failure opens the breaker for all of them.
      await Promise.all(apps.map((app) => app.accessToken.getToken()));
      expect(lines(logger, 'cache.unavailable')).toHaveLength(outage);
      expect(lines(otherLogger, 'cache.unavailable')).toHaveLength(outage);
      expect(lines(logger, 'cache.unavailable').at(-1)!.fields).toMatchObject({ clients: CLIENTS });
      // Each client that listens still hears of it, once per outage.
      expect(heard).toHaveLength(3 * outage);
      expect(heard.every((event) => event.clients === CLIENTS)).toBe(true);

      store.up();
      // A probe in the background notices; the recovery is one line too.
      await vi.waitFor(() => expect(lines(logger, 'cache.recovered')).toHaveLength(outage), { timeout: 10_000 });
      if (outage === 1) await Promise.all(recoveries);
      expect(lines(otherLogger, 'cache.recovered')).toHaveLength(outage);
    }
    await Promise.all(apps.map((app) => app.close()));
  });
});

describe("the warning names the store's failure", () => {
  it('with the code of its cause once, where the store names it itself (FileCache)', async () => {
    const root = mkdtempSync(join(tmpdir(), 'wxkit-outage-'));
    // A directory under a plain file: every open fails with ENOTDIR.
    writeFileSync(join(root, 'plain'), '');
    const dir = join(root, 'plain', 'cache');
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new FileCache({ dir }), logger: false, fallbackDir: false });
    const heard: CacheUnavailableEvent[] = [];
    app.on('cache.unavailable', (event) => heard.push(event));
    try {
      await app.accessToken.getToken();
      expect(heard).toHaveLength(1);
      expect(heard[0]!.error).toBe(`FileCache get failed in ${dir} (ENOTDIR)`);
    } finally {
      await app.close();
      rmSync(root, { recursive: true, force: true });
    }
  });
});
