import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { memcachedCommand, memcachedGet, memcachedGetBytes, memcachedSet, startMemcached, startMockWeChat, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { badWriteRefusals, describeTokenCache } from '@wxkit/testing/suite';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OfficialAccount, easyWeChat4, nativeSchema } from '@wxkit/core';
import { MemcachedCache } from '../src/index.js';

let memcached: StoreServer;
// The conformance suite's own server: its outage test stops and restarts it.
let conformance: StoreServer;
let mock: MockWeChat;
beforeAll(async () => {
  [memcached, conformance, mock] = await Promise.all([startMemcached(), startMemcached(), startMockWeChat()]);
});
afterAll(async () => {
  await Promise.all([memcached?.stop(), conformance?.stop(), mock?.close()]);
});

const built = new URL('../dist/index.js', import.meta.url).href;

describeTokenCache('MemcachedCache', {
  create: () => new MemcachedCache(conformance.url),
  shared: () => ({ module: built, export: 'MemcachedCache', args: [conformance.url] }),
  supports: { add: true, deleteIfEquals: true, compareAndSet: true, partition: true },
  outage: { stop: () => conformance.stop(), start: () => conformance.start() },
  rawBytes: (key) => memcachedGetBytes(conformance.port, key),
  // memcached counts TTLs in whole seconds; an entry lives up to 2 s past its TTL (MemcachedCache adds them, for memcached's clock), and memcached sees it go at its next tick.
  ttlSlackSeconds: 3,
});

describe('MemcachedCache on a real memcached', () => {
  it('stores raw bytes: a plain `get` returns exactly the documented value', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemcachedCache(memcached.url);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const token = await app.accessToken.getToken();
    const raw = await memcachedGet(memcached.port, `wechat:stable_access_token:${appId}`);
    expect(raw).toMatch(new RegExp(`^\\{"access_token":"${token}","expires_at":\\d{10},"fetched_at":\\d{10},"fetched_by":"[^"]+:${process.pid}"\\}$`));
    // getToken() does not wait for the lock's release; close() does, before the store goes.
    await app.close();
    expect(await memcachedGet(memcached.port, `wechat:stable_access_token:${appId}:lock`)).toBeUndefined();
    await cache.close();
  });

  it('uses a value another program wrote with a plain `set`, without an upstream fetch', async () => {
    const { appId, secret } = mock.createApp();
    const now = Math.floor(Date.now() / 1000);
    await memcachedSet(memcached.port, `wechat:stable_access_token:${appId}`, `{"access_token":"FROM_PHP","expires_at":${now + 7000},"fetched_at":${now}}`, 6700);
    const cache = new MemcachedCache(`memcached://${memcached.url}`);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    expect(await app.accessToken.getToken()).toBe('FROM_PHP');
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await cache.close();
  });

  it('an entry never expires before its TTL: memcached counts whole seconds from a clock read once a second, so 2 s are added', async () => {
    const cache = new MemcachedCache(memcached.url);
    const key = `wechat:ttl-floor:${process.pid}:${Date.now()}`;
    const before = Date.now() / 1000;
    await cache.set(key, 'v', 60);
    await cache.close();
    // memcached's own record of when the entry goes (unix seconds): its clock's last tick plus the TTL it was sent.
    const dump = await memcachedCommand(memcached.port, 'lru_crawler metadump all\r\n');
    const line = dump.split(/\r?\n/).find((entry) => entry.startsWith(`key=${encodeURIComponent(key)} `));
    expect(line, dump).toBeDefined();
    const expiresAt = Number(/ exp=(\d+)/.exec(line!)![1]);
    expect(expiresAt).toBeGreaterThanOrEqual(before + 60);
    // memcached turns its monotonic seconds into wall-clock time through the whole second it started in,
    // so its record may lead the wall clock by up to a second: 60 s, the 2 added, and that second.
    expect(expiresAt).toBeLessThanOrEqual(Date.now() / 1000 + 63);
  });

  it('a TTL over 30 days (a refresh token\'s year) is kept whole, sent as the Unix time it ends, not cut to 30 days', async () => {
    const cache = new MemcachedCache(memcached.url);
    const stamp = `${process.pid}:${Date.now()}`;
    const year = 365 * 24 * 3600;
    const before = Date.now() / 1000;
    await cache.set(`wechat:ttl-year:${stamp}`, 'v', year);
    expect(await cache.add(`wechat:ttl-year-add:${stamp}`, 'v', year)).toBe(true);
    await cache.set(`wechat:ttl-cas:${stamp}`, 'v', 60);
    expect(await cache.compareAndSet(`wechat:ttl-cas:${stamp}`, 'v', 'w', year)).toBe(true);
    // A TTL meant as for ever: the latest time memcached's field holds, not a time already past.
    await cache.set(`wechat:ttl-ever:${stamp}`, 'v', 2 ** 53);
    await cache.close();
    const dump = await memcachedCommand(memcached.port, 'lru_crawler metadump all\r\n');
    const expiry = (key: string) => {
      const line = dump.split(/\r?\n/).find((entry) => entry.startsWith(`key=${encodeURIComponent(key)} `));
      expect(line, dump).toBeDefined();
      return Number(/ exp=(-?\d+)/.exec(line!)![1]);
    };
    for (const key of [`wechat:ttl-year:${stamp}`, `wechat:ttl-year-add:${stamp}`, `wechat:ttl-cas:${stamp}`]) {
      expect(expiry(key)).toBeGreaterThanOrEqual(before + year);
      expect(expiry(key)).toBeLessThanOrEqual(Date.now() / 1000 + year + 3);
    }
    expect(expiry(`wechat:ttl-ever:${stamp}`)).toBeGreaterThanOrEqual(before + 70 * year);
    expect(await memcachedGet(memcached.port, `wechat:ttl-ever:${stamp}`)).toBe('v');
  });

  it('spreads keys over several servers, and each reads back', async () => {
    const second = await startMemcached();
    try {
      const cache = new MemcachedCache({ servers: [memcached.url, second.url] });
      const keys = Array.from({ length: 20 }, (_, i) => `wechat:stable_access_token:wxspread${i}`);
      for (const key of keys) await cache.set(key, `v-${key}`, 60);
      for (const key of keys) expect(await cache.get(key)).toBe(`v-${key}`);
      const onSecond = await Promise.all(keys.map((key) => memcachedGet(second.port, key)));
      const onFirst = await Promise.all(keys.map((key) => memcachedGet(memcached.port, key)));
      expect(onSecond.filter(Boolean).length).toBeGreaterThan(0);
      expect(onFirst.filter(Boolean).length).toBeGreaterThan(0);
      expect(onFirst.filter(Boolean).length + onSecond.filter(Boolean).length).toBe(keys.length);
      await cache.close();
    } finally {
      await second.stop();
    }
  });

  it('a server that is not there: ERR_WXKIT_CACHE, not a hang', async () => {
    const cache = new MemcachedCache({ servers: '127.0.0.1:1', timeoutMs: 200 });
    const calls = await Promise.allSettled([cache.get('k'), cache.set('k', 'v', 1), cache.add('k', 'v', 1), cache.deleteIfEquals('k', 'v')]);
    for (const call of calls) {
      expect((call as PromiseRejectedResult).reason).toMatchObject({ code: 'ERR_WXKIT_CACHE', message: expect.stringContaining('127.0.0.1:1') });
    }
    await cache.close();
  });

  it('a value above U+00FF or a bad TTL is refused with a RangeError before any request, not taken for a store failure', async () => {
    const cache = new MemcachedCache({ servers: '127.0.0.1:1', timeoutMs: 200 });
    for (const refusal of await badWriteRefusals(cache)) expect(refusal).toBeInstanceOf(RangeError);
    await cache.close();
  });

  it('memcached killed under a warm client: every call fails at once, reason refused; once it is back the same client works', async () => {
    const server = await startMemcached();
    const cache = new MemcachedCache({ servers: server.url, timeoutMs: 60_000 });
    try {
      await cache.set('k', 'v', 60);
      await server.stop('SIGKILL');
      // A timeoutMs of a minute: a call that waited for an answer rather than fail would time the test out.
      const settled = await Promise.allSettled(everyCall(cache));
      expect(settled.map((call) => call.status === 'rejected' && { code: call.reason.code, reason: call.reason.reason })).toEqual(
        settled.map(() => ({ code: 'ERR_WXKIT_CACHE', reason: 'refused' })),
      );
      await server.start();
      await cache.set('k', 'back', 60);
      expect(await cache.get('k')).toBe('back');
    } finally {
      await cache.close();
      await server.stop();
    }
  });

  it('memcached hung (SIGSTOP): every call fails on its deadline, reason timeout; once it goes on (SIGCONT) the same client works', async () => {
    const server = await startMemcached();
    const cache = new MemcachedCache({ servers: server.url, timeoutMs: 200 });
    try {
      await cache.set('k', 'v', 60);
      await server.pause();
      const settled = await Promise.allSettled(everyCall(cache));
      expect(settled.map((call) => call.status === 'rejected' && { code: call.reason.code, reason: call.reason.reason })).toEqual(
        settled.map(() => ({ code: 'ERR_WXKIT_CACHE', reason: 'timeout' })),
      );
      await server.resume();
      // A key none of the timed-out calls touched: those memcached read before it stopped run once it
      // goes on, late (a delete of 'k' could land after a new write of it).
      await cache.set('k:after', 'back', 60);
      expect(await cache.get('k:after')).toBe('back');
      // Calls pending when close() is called are closed calls, whatever they waited for.
      await server.pause();
      const pending = expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'closed' });
      await cache.close();
      await pending;
      await expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'closed' });
    } finally {
      await cache.close();
      await server.stop();
    }
  });

  it('a memcached that takes only its text protocol (-B ascii) never answers: the error says to check for it, not only for a hung server', async () => {
    const server = await startMemcached({ args: ['-B', 'ascii'] });
    const cache = new MemcachedCache({ servers: server.url, timeoutMs: 200 });
    try {
      await expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout', message: expect.stringContaining('-B ascii') });
    } finally {
      await cache.close();
      await server.stop();
    }
  });

  it('keeps keys memcached cannot hold as they are (a space, a control character, past its 250 bytes) under a digest', async () => {
    const cache = new MemcachedCache(memcached.url);
    const spaced = `has space:${process.pid}`;
    expect(await cache.add(`${spaced}:lock`, 'o', 60)).toBe(true);
    expect(await cache.add(`${spaced}:lock`, 'p', 60)).toBe(false);
    await cache.set(spaced, 'v', 60);
    await cache.set(`has\ttab:${process.pid}`, 'tab', 60);
    expect(await cache.get(spaced)).toBe('v');
    expect(await cache.get(`has\ttab:${process.pid}`)).toBe('tab');
    expect(await cache.get(`has  space:${process.pid}`)).toBeUndefined();
    expect(await cache.compareAndSet(spaced, 'v', 'w', 60)).toBe(true);
    expect(await cache.deleteIfEquals(`${spaced}:lock`, 'o')).toBe(true);
    const long = `${'k'.repeat(250)}:${process.pid}`;
    expect(await cache.add(`${long}:lock`, 'o', 60)).toBe(true);
    expect(await cache.add(`${long}:lock`, 'p', 60)).toBe(false);
    await cache.set(long, 'v', 60);
    expect(await cache.get(long)).toBe('v');
    expect(await cache.get(`${long}:other`)).toBeUndefined();
    await cache.close();
  });

  it("a peer schema's prefix with a space (memcached's text protocol cannot carry the key): two hosts still share one fetch", async () => {
    const { appId, secret } = mock.createApp();
    // EasyWeChat 4's prefix is the PHP cache store's own; wxkit takes it as it is.
    const schema = easyWeChat4({ prefix: 'my app:' });
    const hosts = [0, 1].map(() => {
      const cache = new MemcachedCache(memcached.url);
      const fallbackDir = mkdtempSync(join(tmpdir(), 'wxkit-mc-host-'));
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema, fallbackDir, logger: false });
      return { cache, app };
    });
    const events: string[] = [];
    for (const { app } of hosts) app.on('cache.unavailable', () => events.push('cache.unavailable'));
    try {
      const token = await hosts[0]!.app.accessToken.getToken();
      expect(await hosts[1]!.app.accessToken.getToken()).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(events).toEqual([]);
    } finally {
      for (const { app, cache } of hosts) {
        await app.close();
        await cache.close();
      }
    }
  });

  it('an entry key of 250 bytes: its lock and failure-marker keys, longer, still reach memcached, and two hosts share one fetch', async () => {
    const { appId, secret } = mock.createApp();
    // A deployment's own prefix that brings the entry key to memcached's limit; `{key}:lock` is 255 bytes.
    const prefix = 'p'.repeat(250 - `access_token:${appId}`.length);
    const entryKey = `${prefix}access_token:${appId}`;
    expect(Buffer.byteLength(entryKey)).toBe(250);
    // Two hosts: each its own client and fallback directory, so memcached is all they share.
    const hosts = [0, 1].map(() => {
      const cache = new MemcachedCache(memcached.url);
      const fallbackDir = mkdtempSync(join(tmpdir(), 'wxkit-mc-host-'));
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: nativeSchema({ prefix }), tokenEndpoint: 'classic', fallbackDir, logger: false });
      return { cache, app };
    });
    const token = await hosts[0]!.app.accessToken.getToken();
    expect(await hosts[1]!.app.accessToken.getToken()).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(await memcachedGet(memcached.port, entryKey)).toContain(`"access_token":"${token}"`);
    for (const { app, cache } of hosts) {
      await app.close();
      await cache.close();
    }
  });

  it('several servers, one down: an app whose entry lives on the other keeps its lock there too, and two hosts share one fetch', async () => {
    const servers = await Promise.all([startMemcached(), startMemcached()]);
    const { appId, secret } = mock.createApp();
    const entryKey = `wechat:access_token:${appId}`;
    // Which server the entry's key goes to: written once through a client of both, then looked for.
    const probe = new MemcachedCache({ servers: servers.map((server) => server.url) });
    await probe.set(entryKey, 'where', 60);
    const holds = await Promise.all(servers.map((server) => memcachedGet(server.port, entryKey)));
    await probe.delete(entryKey);
    await probe.close();
    const live = servers[holds.indexOf('where')]!;
    const down = servers.find((server) => server !== live)!;
    await down.stop();
    // Two hosts: each its own client and fallback directory, so the live server is all they share.
    const hosts = [0, 1].map(() => {
      const cache = new MemcachedCache({ servers: servers.map((server) => server.url) });
      const fallbackDir = mkdtempSync(join(tmpdir(), 'wxkit-mc-host-'));
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', fallbackDir, logger: false });
      return { cache, app };
    });
    try {
      const token = await hosts[0]!.app.accessToken.getToken();
      expect(await hosts[1]!.app.accessToken.getToken()).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(await memcachedGet(live.port, entryKey)).toContain(`"access_token":"${token}"`);
    } finally {
      for (const { app, cache } of hosts) {
        await app.close();
        await cache.close();
      }
      await live.stop();
    }
  });

  it("several servers, the others down: the wxkit command's write probe ({key}:probe) lives on its entry's server", async () => {
    const servers = await Promise.all([startMemcached(), startMemcached(), startMemcached()]);
    const both = new MemcachedCache({ servers: servers.map((server) => server.url) });
    // Sixteen fixed entry keys: where each lives is fixed by the hash, and so is where its probe would go
    // hashed on its own (about two thirds of them to another server).
    const keys = Array.from({ length: 16 }, (_, i) => `wechat:stable_access_token:wx${String(i).padStart(16, '0')}`);
    try {
      for (const key of keys) await both.set(key, 'where', 60);
      const onFirst = [];
      for (const key of keys) if ((await memcachedGet(servers[0]!.port, key)) === 'where') onFirst.push(key);
      expect(onFirst.length).toBeGreaterThan(0);
      await Promise.all([servers[1]!.stop(), servers[2]!.stop()]);
      // The command checks that a key's server takes writes before it fetches: with the key's server up,
      // the check passes whichever others are down.
      const refused: string[] = [];
      for (const key of onFirst) await both.set(`${key}:probe`, 'wxkit-cli', 5).catch(() => refused.push(key));
      expect(refused).toEqual([]);
    } finally {
      await both.close();
      await Promise.all(servers.map((server) => server.stop()));
    }
  });

  it("several servers, one down: a key holding another program's value has the fleet's entry beside it ({key}:wxkit) on its server, and two hosts share one fetch", async () => {
    const servers = await Promise.all([startMemcached(), startMemcached()]);
    const { appId, secret } = mock.createApp();
    const schema = easyWeChat4();
    const entryKey = schema.accessTokenKey({ kind: 'official_account', appId, endpoint: 'classic', secret });
    // The PHP side keeps something wxkit cannot read there (a PHP object): the fleet's token goes beside it.
    const foreign = 'O:8:"stdClass":0:{}';
    const probe = new MemcachedCache({ servers: servers.map((server) => server.url) });
    await probe.set(entryKey, foreign, 600);
    const holds = await Promise.all(servers.map((server) => memcachedGet(server.port, entryKey)));
    await probe.close();
    const live = servers[holds.indexOf(foreign)]!;
    const down = servers.find((server) => server !== live)!;
    await down.stop();
    const hosts = [0, 1].map(() => {
      const cache = new MemcachedCache({ servers: servers.map((server) => server.url) });
      const fallbackDir = mkdtempSync(join(tmpdir(), 'wxkit-mc-host-'));
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema, tokenEndpoint: 'classic', fallbackDir, logger: false });
      return { cache, app };
    });
    try {
      const token = await hosts[0]!.app.accessToken.getToken();
      expect(await hosts[1]!.app.accessToken.getToken()).toBe(token);
      expect(mock.counters(appId).tokenRequests).toBe(1);
      expect(await memcachedGet(live.port, entryKey)).toBe(foreign);
      expect(await memcachedGet(live.port, `${entryKey}:wxkit`)).toContain(`"access_token":"${token}"`);
    } finally {
      for (const { app, cache } of hosts) {
        await app.close();
        await cache.close();
      }
      await live.stop();
    }
  });

  it('memcached restarted while the lock holder fetches: the second holder\'s token, asked for later in the same second, is not replaced by the first\'s', async () => {
    const [server, wechat] = await Promise.all([startMemcached(), startMockWeChat()]);
    const { appId, secret } = wechat.createApp();
    // Both fetches within one second: fetched_at cannot order them.
    const now = Date.now();
    const hosts = [0, 1].map(() => {
      const cache = new MemcachedCache(server.url);
      const fallbackDir = mkdtempSync(join(tmpdir(), 'wxkit-mc-host-'));
      const app = new OfficialAccount({ appId, secret, baseUrl: wechat.url, cache, tokenEndpoint: 'classic', fallbackDir, now: () => now, logger: false });
      return { cache, app };
    });
    try {
      wechat.setLatency(1000);
      const first = hosts[0]!.app.accessToken.getToken();
      await vi.waitUntil(() => wechat.counters(appId).tokenRequests === 1, { timeout: 5000, interval: 5 });
      // The lock goes with the restart; the second host takes it and fetches: WeChat's newest token.
      await server.stop('SIGKILL');
      await server.start();
      wechat.setLatency(0);
      const second = await hosts[1]!.app.accessToken.getToken();
      expect(await first).toBe(second);
      expect(wechat.counters(appId).tokenRequests).toBe(2);
      expect(await memcachedGet(server.port, `wechat:access_token:${appId}`)).toContain(`"access_token":"${second}"`);
    } finally {
      for (const { app, cache } of hosts) {
        await app.close();
        await cache.close();
      }
      await Promise.all([server.stop(), wechat.close()]);
    }
  });

  it('checks its options before connecting', () => {
    expect(() => new MemcachedCache('localhost')).toThrow(/MemcachedCache options.servers must be "host:port"/);
    expect(() => new MemcachedCache({ servers: [] })).toThrow(/options.servers/);
    // A port no socket can have is the option's fault, not a store outage at every call.
    expect(() => new MemcachedCache('127.0.0.1:70000')).toThrow(/options.servers must be "host:port"/);
    expect(() => new MemcachedCache({ servers: ['127.0.0.1:11211', '127.0.0.1:0'] })).toThrow(/options.servers/);
    expect(() => new MemcachedCache({ servers: 'a:1', timeoutMs: -5 })).toThrow(/options.timeoutMs/);
    expect(() => new MemcachedCache({ servers: 'a:1', password: 5 as never })).toThrow(/options.password must be a string \(got number\)/);
    expect(() => new MemcachedCache('memcached://10.0.0.1:11211,10.0.0.2:11211')).not.toThrow();
    // Credentials in the string, as the CLI's --store takes them: the message names the options that take
    // them, and shows no part of the password.
    for (const servers of ['memcached://app:pw-s3cret@10.0.0.1:11211', ['10.0.0.2:11211', 'app:pw-s3cret@10.0.0.1:11211']]) {
      let error: unknown;
      try {
        new MemcachedCache({ servers });
      } catch (caught) {
        error = caught;
      }
      expect(error).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'servers', message: expect.stringMatching(/username and password options/) });
      expect((error as Error).message).not.toContain('s3cret');
    }
  });
});

/**
 * One call of each method, `add` first: against a hung server its own deadline passes first, and as it
 * is never resent it fails with that deadline's error; the others fail with the connection it failed.
 */
function everyCall(cache: MemcachedCache): Promise<unknown>[] {
  return [cache.add('k:lock', 'o', 60), cache.get('k'), cache.set('k', 'w', 60), cache.delete('k'), cache.deleteIfEquals('k:lock', 'o'), cache.compareAndSet('k', 'v', 'w', 60)];
}

describe('MemcachedCache: conditional writes', () => {
  it('on a memcached without CAS (-C) wxkit still shares and replaces tokens: no store failure, the lock let go', async () => {
    const server = await startMemcached({ args: ['-C'] });
    const cache = new MemcachedCache(server.url);
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, tokenEndpoint: 'classic' });
    const events: string[] = [];
    app.on('cache.unavailable', () => events.push('cache.unavailable'));
    try {
      await memcachedSet(server.port, 'token', 'T1', 60);
      // CAS 0 makes the write unconditional, after the compare (README).
      expect(await cache.compareAndSet('token', 'T1', 'T2', 60)).toBe(true);
      expect(await cache.compareAndSet('token', 'T1', 'T3', 60)).toBe(false);
      expect(await memcachedGet(server.port, 'token')).toBe('T2');
      // A token replaced after WeChat rejected it is stored, and the lock let go: no store outage.
      const first = await app.accessToken.getToken();
      const second = await app.accessToken.forceRefresh();
      expect(second).not.toBe(first);
      expect(await memcachedGet(server.port, `wechat:access_token:${appId}`)).toContain(second);
      await app.close();
      expect(await memcachedGet(server.port, `wechat:access_token:${appId}:lock`)).toBeUndefined();
      expect(events).toEqual([]);
      expect(mock.counters(appId).tokenRequests).toBe(2);
    } finally {
      await app.close();
      await cache.close();
      await server.stop();
    }
  });

  for (const op of ['compareAndSet', 'deleteIfEquals'] as const) {
    it(`${op}: a process held up past timeoutMs (a long synchronous task) takes memcached's answer that came meanwhile, rather than fail the call`, async () => {
      const key = `held-up:${op}:${process.pid}`;
      await memcachedSet(memcached.port, key, 'T1', 60);
      const cache = new MemcachedCache({ servers: memcached.url, timeoutMs: 200 });
      try {
        await cache.get(key);
        const [socket] = (process as unknown as { _getActiveHandles(): { constructor: { name: string }; remotePort?: number; destroyed?: boolean; once(e: string, f: () => void): void }[] })
          ._getActiveHandles()
          .filter((handle) => handle.constructor.name === 'Socket' && handle.remotePort === memcached.port && !handle.destroyed);
        // Once the write is sent (after the read's answer), the event loop is held up three times
        // timeoutMs: memcached answers meanwhile, and the answer waits to be read.
        const holdUp = () => {
          const until = performance.now() + 600;
          while (performance.now() < until);
        };
        socket!.once('data', () => setImmediate(holdUp));
        const call = op === 'compareAndSet' ? cache.compareAndSet(key, 'T1', 'T2', 60) : cache.deleteIfEquals(key, 'T1');
        expect(await call).toBe(true);
        expect(await memcachedGet(memcached.port, key)).toBe(op === 'compareAndSet' ? 'T2' : undefined);
      } finally {
        await cache.close();
      }
    });
  }

  for (const op of ['compareAndSet', 'deleteIfEquals'] as const) {
    it(`${op}: a close() once its read is answered sends no write (which would open a connection nothing closes)`, async () => {
      const key = `close-between:${op}`;
      await memcachedSet(memcached.port, key, 'T1', 60);
      const cache = new MemcachedCache(memcached.url);
      await cache.get(key);
      const sockets = () =>
        (process as unknown as { _getActiveHandles(): { constructor: { name: string }; remotePort?: number; destroyed?: boolean; once(e: string, f: () => void): void }[] })
          ._getActiveHandles()
          .filter((handle) => handle.constructor.name === 'Socket' && handle.remotePort === memcached.port && !handle.destroyed);
      const [socket] = sockets();
      let closing: Promise<void> | undefined;
      // After memjs has taken the read's answer, before the call goes on to its write.
      socket!.once('data', () => process.nextTick(() => (closing = cache.close())));
      const call = op === 'compareAndSet' ? cache.compareAndSet(key, 'T1', 'T2', 60) : cache.deleteIfEquals(key, 'T1');
      await expect(call).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'closed' });
      await closing;
      expect(sockets()).toHaveLength(0);
      expect(await memcachedGet(memcached.port, key)).toBe('T1');
    });
  }
});
