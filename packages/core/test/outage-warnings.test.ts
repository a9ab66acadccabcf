import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startMockWeChat, switchableStore, type MockWeChat } from '@wxkit/testing';
import { CacheError, FileCache, MemoryCache, OfficialAccount, type CacheUnavailableEvent } from '../src/index.js';
import { Log } from '../src/logger.js';
import { GuardedStore } from '../src/store.js';
import { nextEvent, recordingLogger } from './helpers.js';

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

/** The lines `logger` was given for `event`. */
const linesOf = (logger: ReturnType<typeof recordingLogger>, event: string) => logger.lines.filter((line) => (line.fields as { event: string }).event === event);

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
    const recoveries = apps.slice(0, 3).map((app) => nextEvent(app, 'cache.recovered'));
    await Promise.all(apps.map((app) => app.accessToken.getToken()));

    for (let outage = 1; outage <= 2; outage += 1) {
      store.down();
      // Every client reads the store (memoMs: 0): the first failure opens the breaker for all of them.
      await Promise.all(apps.map((app) => app.accessToken.getToken()));
      expect(linesOf(logger, 'cache.unavailable')).toHaveLength(outage);
      expect(linesOf(otherLogger, 'cache.unavailable')).toHaveLength(outage);
      expect(linesOf(logger, 'cache.unavailable').at(-1)!.fields).toMatchObject({ clients: CLIENTS });
      // Each client that listens still hears of it, once per outage.
      expect(heard).toHaveLength(3 * outage);
      expect(heard.every((event) => event.clients === CLIENTS)).toBe(true);

      store.up();
      // A probe in the background notices; the recovery is one line too.
      await vi.waitFor(() => expect(linesOf(logger, 'cache.recovered')).toHaveLength(outage), { timeout: 10_000 });
      if (outage === 1) await Promise.all(recoveries);
      expect(linesOf(otherLogger, 'cache.recovered')).toHaveLength(outage);
    }
    await Promise.all(apps.map((app) => app.close()));
  });
});

describe('a store whose reads answer while its writes fail (a read-only replica): the outages a probe ends and the next write begins', () => {
  it('the first outage and the first of each minute after it are written, every one emitted with how many came in a row', async () => {
    /** A store that reads, and refuses every write as a read-only replica does. */
    class ReadOnly extends MemoryCache {
      readonly refused = () => Promise.reject(new CacheError("READONLY You can't write against a read only replica."));
      override set = this.refused;
      override add = this.refused;
      override compareAndSet = this.refused;
      override deleteIfEquals = this.refused;
    }
    const logger = recordingLogger();
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new ReadOnly(), logger, memoMs: 0, fallbackDir: false });
    const heard: CacheUnavailableEvent[] = [];
    app.on('cache.unavailable', (event) => heard.push(event));
    const lines = (event: string) => linesOf(logger, event);
    // The store holds no token (its writes fail): a call's lock write takes it down, and the host serves;
    // the probe, a read, finds it back; the next write (a call's, or the host's token offered back to the
    // store) takes it down again.
    while (heard.length < 5) {
      const recovered = nextEvent(app, 'cache.recovered');
      await app.accessToken.getToken();
      await recovered;
    }
    const again = heard.map((event) => event.again);
    expect(again).toEqual([0, ...again.slice(1).map((_, i) => i + 2)]);
    // The first outage, and the first flap of the minute, which says so; none of the three after it.
    expect(lines('cache.unavailable')).toHaveLength(2);
    expect(lines('cache.unavailable')[1]!.message).toMatch(/failed again \(\w+\) within a minute of answering, 2 outages in a row/);
    expect(lines('cache.recovered')).toHaveLength(2);
    // The host's one token served every call.
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await app.close();
  });
});

describe('a store down for good right after outages within a minute of each other', () => {
  it('an outage whose minute was written already is written once it has lasted 5 s, its event not emitted again, and its recovery written', async () => {
    const store = switchableStore();
    const logger = recordingLogger();
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, logger, memoMs: 0, fallbackDir: false });
    const heard: CacheUnavailableEvent[] = [];
    let recoveries = 0;
    app.on('cache.unavailable', (event) => heard.push(event));
    app.on('cache.recovered', () => (recoveries += 1));
    const lines = (event: string) => linesOf(logger, event);
    await app.accessToken.getToken();
    // The clock of the outages, moved on where the test says so.
    const clock = performance.now.bind(performance);
    let ahead = 0;
    const now = vi.spyOn(performance, 'now').mockImplementation(() => clock() + ahead);
    try {
      // Two short outages and the start of a third, within a minute of each other.
      for (let outage = 1; outage <= 3; outage += 1) {
        store.down();
        await app.accessToken.getToken();
        expect(heard).toHaveLength(outage);
        if (outage === 3) break;
        store.up();
        await vi.waitFor(() => expect(recoveries).toBe(outage), { timeout: 5_000 });
      }
      expect(heard.map((event) => event.again)).toEqual([0, 2, 3]);
      // The third is the second flap of the minute: not written, for now.
      expect(lines('cache.unavailable')).toHaveLength(2);
      expect(lines('cache.recovered')).toHaveLength(2);
      // It lasts: the store is down for good, and the log must say so.
      ahead += 5_000;
      await vi.waitFor(() => expect(lines('cache.unavailable')).toHaveLength(3), { timeout: 5_000 });
      expect(lines('cache.unavailable')[2]!.message).toMatch(/still does not answer/);
      expect(lines('cache.unavailable')[2]!.fields).toMatchObject({ again: 3 });
      // Written, not emitted again: its event was heard when it began.
      expect(heard).toHaveLength(3);
      // Its recovery is written too: each line written has its recovery line.
      store.up();
      await vi.waitFor(() => expect(lines('cache.recovered')).toHaveLength(3), { timeout: 5_000 });
      expect(recoveries).toBe(3);
    } finally {
      now.mockRestore();
      await app.close();
    }
  });
});

describe('a client made during an outage of a store that names no parts', () => {
  it("its logger has the outage's warning at the client's first use, before its recovery line", async () => {
    const store = switchableStore();
    const [first, later] = [recordingLogger(), recordingLogger()];
    const made = (logger: typeof first) => {
      const { appId, secret } = mock.createApp();
      return new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, logger, memoMs: 0, fallbackDir: false });
    };
    const one = made(first);
    store.down();
    await one.accessToken.getToken();
    expect(linesOf(first, 'cache.unavailable')).toHaveLength(1);
    const other = made(later);
    const heard: CacheUnavailableEvent[] = [];
    other.on('cache.unavailable', (event) => heard.push(event));
    await other.accessToken.getToken();
    expect(linesOf(later, 'cache.unavailable')).toHaveLength(1);
    expect(heard).toHaveLength(1);
    // Heard once: a later call does not tell it again.
    await other.accessToken.getToken();
    expect(heard).toHaveLength(1);
    const recovered = nextEvent(other, 'cache.recovered');
    store.up();
    await recovered;
    expect(linesOf(later, 'cache.recovered')).toHaveLength(1);
    expect(linesOf(later, 'cache.unavailable')).toHaveLength(1);
    await Promise.all([one.close(), other.close()]);
  });

  it("whose first use of the store is a call the breaker refuses (a durable store's read): its logger has the warning before its recovery line", async () => {
    const store = switchableStore();
    const [first, later] = [recordingLogger(), recordingLogger()];
    const one = new GuardedStore(store.cache, 1000, new Log(first), 'wxfirst');
    store.down();
    await expect(one.get('k')).rejects.toThrow();
    expect(linesOf(first, 'cache.unavailable')).toHaveLength(1);
    // Made during the outage; its first call is refused without a look at `down`.
    const other = new GuardedStore(store.cache, 1000, new Log(later), 'wxlater');
    await expect(other.get('k')).rejects.toThrow(/was not sent/);
    store.up();
    await vi.waitFor(() => expect(linesOf(later, 'cache.recovered')).toHaveLength(1), { timeout: 5_000 });
    expect(linesOf(later, 'cache.unavailable')).toHaveLength(1);
    one.dispose();
    other.dispose();
  });
});

describe('two handles of one client on one store (an open platform whose durable store is its cache)', () => {
  it('the client hears of an outage once, and counts once among the clients of the store', async () => {
    const store = switchableStore();
    const logger = recordingLogger();
    const emitter = new EventEmitter();
    const heard: string[] = [];
    emitter.on('cache.unavailable', (event: CacheUnavailableEvent) => heard.push(`unavailable ${event.clients}`));
    emitter.on('cache.recovered', (event: { clients: number }) => heard.push(`recovered ${event.clients}`));
    const log = new Log(logger, { emitter });
    const [cache, durable] = [new GuardedStore(store.cache, 1000, log, 'wxplatform'), new GuardedStore(store.cache, 1000, log, 'wxplatform')];
    const back = [cache, durable].map((handle) => new Promise<void>((resolve) => handle.onRecovered(resolve)));
    store.down();
    await expect(cache.get('k')).rejects.toThrow();
    await expect(durable.get('k')).rejects.toThrow(/was not sent/);
    store.up();
    // Each handle's own recovery listener still runs.
    await Promise.all(back);
    expect(heard).toEqual(['unavailable 1', 'recovered 1']);
    expect(logger.lines.map((line) => (line.fields as { event: string }).event)).toEqual(['cache.unavailable', 'cache.recovered']);
    cache.dispose();
    durable.dispose();
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
