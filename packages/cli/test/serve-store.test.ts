import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CacheError, FileCache, MemoryCache, OfficialAccount, remoteTokenSource, type TokenCache } from '@wxkit/core';
import { localityOf } from '@wxkit/core/internal';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { ServiceMetrics, errcodeLabel } from '../src/serve-metrics.js';
import { StoreProbe } from '../src/serve-health.js';
import { startTokenService } from '../src/serve.js';

// `wxkit serve` hands its clients a counting wrapper of the store. It must keep the store's optional
// methods: without watch() the instances waiting on another's refresh poll instead of waking on its write.
describe('the store wrapper of wxkit serve', () => {
  it("passes the store's write notifications through", async () => {
    const cache = new MemoryCache();
    const counted = new ServiceMetrics().countingCache(cache, new Map([['k', 'app']]), new Map());
    const { watch } = counted;
    expect(typeof watch).toBe('function');
    let woken = 0;
    const stop = watch!('k', () => (woken += 1));
    await cache.set('k', 'v', 60);
    await counted.set('k', 'w', 60);
    await new Promise<void>((resolve) => queueMicrotask(resolve));
    expect(woken).toBe(2);
    stop();
    await cache.set('k', 'x', 60);
    await new Promise<void>((resolve) => queueMicrotask(resolve));
    expect(woken).toBe(2);
  });

  it("passes through which of the store's servers holds a key, and stays without it for a store that fails as a whole", async () => {
    class Parted extends MemoryCache {
      partition(key: string): string {
        return key.endsWith('a') ? 'one:11211' : 'two:11211';
      }
    }
    const counted = new ServiceMetrics().countingCache(new Parted(), new Map([['ka', 'app']]), new Map());
    expect(counted.partition?.('ka')).toBe('one:11211');
    expect(counted.partition?.('kb')).toBe('two:11211');
    expect(new ServiceMetrics().countingCache(new MemoryCache(), new Map(), new Map()).partition).toBeUndefined();
  });

  it("says where the store keeps its entries, as the store does: the clients keep their host's fallback directory out of a file store's", () => {
    const dir = join(tmpdir(), 'wxkit-serve-locality');
    expect(localityOf(new ServiceMetrics().countingCache(new FileCache({ dir }), new Map(), new Map()))).toEqual({ scope: 'host', dir });
    expect(localityOf(new ServiceMetrics().countingCache(new MemoryCache(), new Map(), new Map()))).toEqual({ scope: 'process' });
    const plain: TokenCache = { get: async () => undefined, set: async () => undefined, delete: async () => undefined };
    expect(localityOf(new ServiceMetrics().countingCache(plain, new Map(), new Map()))).toBeUndefined();
  });

  it('closes the store it wraps', async () => {
    const cache = new MemoryCache();
    const counted = new ServiceMetrics().countingCache(cache, new Map(), new Map());
    const { close } = counted;
    expect(typeof close).toBe('function');
    await close!();
    await expect(cache.get('k')).rejects.toBeInstanceOf(CacheError);
  });
});

describe("the token service's own store reads", () => {
  let mock: MockWeChat;
  beforeAll(async () => {
    mock = await startMockWeChat();
  });
  afterAll(() => mock.close());

  it('a ticket is answered when the store stops answering reads of its entry', async () => {
    const KEY = 'store-deadline-key-0123456789';
    const { appId, secret } = mock.createApp();
    // A store whose reads of the ticket entry never settle, once `hang` is set.
    class HangingTicketReads extends MemoryCache {
      hang = false;
      hungReads = 0;
      override get(key: string): Promise<string | undefined> {
        if (!this.hang || key !== `wechat:jsapi_ticket:${appId}`) return super.get(key);
        this.hungReads += 1;
        return new Promise(() => {});
      }
    }
    const cache = new HangingTicketReads();
    const service = await startTokenService({ cache, apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    try {
      const ticket = async () => {
        const res = await fetch(`${service.url}/v1/ticket/oa/${appId}/jsapi`, { headers: { authorization: `Bearer ${KEY}` } });
        return { status: res.status, body: (await res.json()) as { ticket?: string; expires_at?: number } };
      };
      const first = await ticket();
      expect(first.status).toBe(200);
      cache.hang = true;
      const second = await ticket();
      expect(cache.hungReads).toBeGreaterThan(0);
      expect(second.status).toBe(200);
      expect(second.body.ticket).toBe(first.body.ticket);
      expect(second.body.expires_at).toBeTypeOf('number');
      expect(mock.counters(appId).ticketRequests).toBe(1);
    } finally {
      await service.close();
    }
  });

  it('an entry whose expires_at is in milliseconds is answered as living 2 h at most: its clients use it, report its rejection, and the service replaces it', async () => {
    const KEY = 'far-expiry-key-0123456789abcdef';
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const key = `wechat:stable_access_token:${appId}`;
    // Another program's write: a time in ms where the schema says seconds. Answered as it was, remote
    // clients refused it (a day or more ahead is another unit), and nothing ever replaced it (no send
    // carried it, so WeChat never rejected it).
    await cache.set(key, JSON.stringify({ access_token: 'WRITTEN_IN_MS_abcdefghijklmnop', expires_at: Date.now() + 7_200_000 }), 7200);
    const service = await startTokenService({ cache, apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    const client = new OfficialAccount({ appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url: service.url, key: KEY }), logger: false });
    try {
      for (let i = 0; i < 3; i += 1) await expect(client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} })).resolves.toMatchObject({ errcode: 0 });
      expect(mock.counters(appId).tokenRequests).toBe(1);
      const stored = JSON.parse((await cache.get(key))!) as { access_token: string; expires_at: number };
      expect(stored.access_token).not.toBe('WRITTEN_IN_MS_abcdefghijklmnop');
      expect(stored.expires_at).toBeLessThan(Date.now() / 1000 + 86_400);
    } finally {
      await client.close();
      await service.close();
    }
  });
});

describe("the token service's options", () => {
  it('a check period no timer can hold (or none at all) is a ConfigError, before anything starts', async () => {
    const base = { cache: new MemoryCache(), apps: [{ kind: 'official_account' as const, appId: 'wx0000000000000001', secret: 's' }], keys: ['options-test-key-0123456789'], port: 0, logger: false as const };
    // 30 days: beyond 2^31 - 1 ms, Node would run the check every millisecond.
    for (const checkEverySeconds of [2_592_000, 0, -1, Number.NaN, Number.POSITIVE_INFINITY, '30' as unknown as number]) {
      await expect(startTokenService({ ...base, checkEverySeconds }), String(checkEverySeconds)).rejects.toMatchObject({
        code: 'ERR_WXKIT_INVALID_OPTION',
        option: 'checkEverySeconds',
      });
    }
  });

  it('a bearer key with a space, a control character or a character past U+00FF, which no Authorization header carries, is a ConfigError', async () => {
    const base = { cache: new MemoryCache(), apps: [{ kind: 'official_account' as const, appId: 'wx0000000000000001', secret: 's' }], port: 0, logger: false as const };
    for (const key of ['options test key 0123456789', 'options-test-key-0123456789\n', 'options-test-key\t0123456789', 'options-test-key-€0123456789']) {
      const refused = await startTokenService({ ...base, keys: ['options-test-key-0123456789', key] }).catch((error: unknown) => error);
      expect(refused, JSON.stringify(key)).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'keys' });
      expect((refused as Error).message).not.toContain(key);
    }
  });
});

describe('the /healthz store probe', () => {
  it('does not keep the process alive while the store does not answer', async () => {
    const hung = Object.assign(new MemoryCache(), { get: () => new Promise<undefined>(() => {}) });
    const timers = () => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
    const before = timers();
    const probe = new StoreProbe(hung, 'k', { intervalMs: 60_000, timeoutMs: 60_000, onChange: () => {} });
    void probe.start();
    // The probe's deadline timer exists now; it must be one that lets the process exit.
    expect(timers()).toBe(before);
    probe.stop();
  });

  it('a probe under way at stop() reports nothing when the store answers afterwards (its owner closed it: reason closed)', async () => {
    let fail!: (error: Error) => void;
    const hung = Object.assign(new MemoryCache(), { get: () => new Promise<undefined>((_, reject) => (fail = reject)) });
    const changes: unknown[] = [];
    const probe = new StoreProbe(hung, 'k', { intervalMs: 60_000, timeoutMs: 60_000, onChange: (state) => changes.push(state) });
    const probing = probe.start();
    probe.stop();
    fail(new CacheError('RedisCache get failed: closed', { reason: 'closed' }));
    await probing;
    expect(changes).toEqual([]);
    expect(probe.state).toBeUndefined();
  });

  it("a probed key that holds another kind of value (CacheError reason type) is the store answering: up, not 503", async () => {
    const states: boolean[] = [];
    const other = Object.assign(new MemoryCache(), {
      get: () => Promise.reject(new CacheError('RedisCache get failed: the key holds another kind of value', { reason: 'type' })),
    });
    const down = Object.assign(new MemoryCache(), { get: () => Promise.reject(new CacheError('refused', { reason: 'refused' })) });
    for (const cache of [other, down]) {
      const probe = new StoreProbe(cache, 'k', { intervalMs: 60_000, timeoutMs: 60_000, onChange: (state) => states.push(state.up) });
      await probe.start();
      probe.stop();
    }
    expect(states).toEqual([true, false]);
  });

  it('a store down for another reason is a change: /healthz says the reason it gives now, and the same one again is none', async () => {
    const reasons = ['refused', 'refused', 'auth', 'auth', 'auth'];
    let probes = 0;
    const failing = Object.assign(new MemoryCache(), {
      get: () => Promise.reject(new CacheError('down', { reason: reasons[Math.min(probes++, reasons.length - 1)] as 'refused' })),
    });
    const changes: string[] = [];
    const probe = new StoreProbe(failing, 'k', { intervalMs: 5, timeoutMs: 60_000, onChange: (state) => changes.push(`${state.up}/${state.reason}`) });
    await probe.start();
    // When the store went down: the reason changes, the time does not.
    const wentDown = probe.state!.since;
    await vi.waitFor(() => expect(probes).toBeGreaterThanOrEqual(reasons.length + 2));
    probe.stop();
    expect(changes).toEqual(['false/refused', 'false/auth']);
    expect(probe.state).toMatchObject({ up: false, reason: 'auth', since: wentDown });
  });
});

describe('the errcode label of wxkit_upstream_errors_total', () => {
  it("keeps WeChat's known errcodes and wxkit's codes, and buckets any other errcode as other", async () => {
    expect(errcodeLabel(40164, 'ERR_WXKIT_WECHAT_API')).toBe('40164');
    expect(errcodeLabel(45009, 'ERR_WXKIT_WECHAT_API')).toBe('45009');
    expect(errcodeLabel(-1, 'ERR_WXKIT_WECHAT_API')).toBe('-1');
    expect(errcodeLabel(89506, 'ERR_WXKIT_WECHAT_API')).toBe('89506');
    expect(errcodeLabel(60020, 'ERR_WXKIT_WECHAT_API')).toBe('60020');
    expect(errcodeLabel(40091, 'ERR_WXKIT_WECHAT_API')).toBe('40091');
    expect(errcodeLabel(undefined, 'ERR_WXKIT_TIMEOUT')).toBe('ERR_WXKIT_TIMEOUT');
    expect(errcodeLabel(undefined, 'anything else')).toBe('unknown');
    // A server answering a fresh errcode each time makes one series, not one per number.
    const metrics = new ServiceMetrics();
    const listeners = new Map<string, (event: { errcode?: number; code?: string }) => void>();
    const client = { on: (name: string, listener: (event: { errcode?: number; code?: string }) => void) => listeners.set(name, listener) };
    metrics.watch(client as never, 'oa/wx1');
    for (let errcode = 990_000; errcode < 990_050; errcode += 1) listeners.get('access_token.fetch_failed')!({ errcode, code: 'ERR_WXKIT_WECHAT_API' });
    const text = await metrics.registry.metrics();
    const series = text.split('\n').filter((line) => line.startsWith('wxkit_upstream_errors_total{'));
    expect(series).toEqual(['wxkit_upstream_errors_total{app="oa/wx1",errcode="other"} 50']);
  });
});

describe('POST /v1/token/{app}/invalidate', () => {
  let mock: MockWeChat;
  beforeAll(async () => {
    mock = await startMockWeChat();
  });
  afterAll(() => mock.close());

  const KEY = 'invalidate-key-0123456789abcdef';
  const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
  /** A service on `cache` for `app`, on the classic endpoint. */
  const serve = (cache: TokenCache, { appId, secret }: { appId: string; secret: string }) =>
    startTokenService({ cache, apps: [{ kind: 'official_account', appId, secret, tokenEndpoint: 'classic' }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
  interface Answer {
    status: number;
    retryAfter: string | null;
    body: { access_token?: string; expires_at?: number; fetched_at?: number; error?: { code: string } };
  }
  /** A client's report of `token` to the service at `url`. */
  const report = async (url: string, appId: string, token: string): Promise<Answer> => {
    const res = await fetch(`${url}/v1/token/oa/${appId}/invalidate`, { method: 'POST', headers, body: JSON.stringify({ token }) });
    return { status: res.status, retryAfter: res.headers.get('retry-after'), body: (await res.json()) as Answer['body'] };
  };
  /** The token the service at `url` hands out now. */
  const current = async (url: string, appId: string) => (await (await fetch(`${url}/v1/token/oa/${appId}`, { headers })).json()) as { access_token: string; fetched_at?: number };

  it('right after a replacement, a report of the new token is checked with WeChat: a working token costs no fetch, a rejected one is replaced', async () => {
    const app = mock.createApp();
    const { appId } = app;
    const service = await serve(new MemoryCache(), app);
    const say = (token: string) => report(service.url, appId, token);
    const fetches = () => mock.counters(appId).classicTokenRequests;
    try {
      const first = (await current(service.url, appId)).access_token;
      expect(fetches()).toBe(1);
      // Fetched a moment ago and WeChat still takes it: checked, answered as it is, no fetch.
      expect((await say(first)).body.access_token).toBe(first);
      expect(fetches()).toBe(1);
      // WeChat rejected it (a program outside the fleet fetched): one fetch, the new token in the
      // answer; the same report again costs nothing.
      mock.invalidateTokens(appId);
      const second = (await say(first)).body.access_token!;
      expect(second).not.toBe(first);
      expect((await say(first)).body.access_token).toBe(second);
      expect(fetches()).toBe(2);
      // A client that reports every token it is given: WeChat still takes this one, so no fetch.
      for (let i = 0; i < 5; i += 1) {
        const looped = await say(second);
        expect(looped.status).toBe(200);
        expect(looped.body.access_token).toBe(second);
      }
      expect(fetches()).toBe(2);
      // WeChat cannot say (its answer is a 502): spaced, 429 with Retry-After, still no fetch.
      mock.injectFault({ kind: 'http-502', path: 'cgi-bin/get_api_domain_ip', times: 1 });
      const unsure = await say(second);
      expect(unsure.status).toBe(429);
      expect(unsure.body.error?.code).toBe('invalidate_spaced');
      expect(Number(unsure.retryAfter)).toBeGreaterThan(0);
      expect(fetches()).toBe(2);
      // A program outside the fleet fetched: WeChat rejects the token, and it is replaced at once.
      mock.invalidateTokens(appId);
      const third = await say(second);
      expect(third.status).toBe(200);
      expect(third.body.access_token).not.toBe(second);
      expect(mock.isTokenValid(appId, third.body.access_token!)).toBe(true);
      expect(fetches()).toBe(3);
    } finally {
      await service.close();
    }
  });

  it('the spacing holds across instances of the service sharing the store: a client that reports every token it gets, to each in turn, costs one fetch', async () => {
    const app = mock.createApp();
    const { appId } = app;
    const cache = new MemoryCache();
    const services = [await serve(cache, app), await serve(cache, app)];
    const say = async (url: string, token: string) => (await report(url, appId, token)).body.access_token!;
    const fetches = () => mock.counters(appId).classicTokenRequests;
    try {
      let token = (await current(services[0]!.url, appId)).access_token;
      mock.invalidateTokens(appId);
      token = await say(services[0]!.url, token);
      expect(fetches()).toBe(2);
      // Each instance in turn hears of the token the other one fetched: no instance replaced it itself.
      for (let i = 0; i < 6; i += 1) token = await say(services[i % 2]!.url, token);
      expect(fetches()).toBe(2);
      expect(mock.isTokenValid(appId, token)).toBe(true);
    } finally {
      await Promise.all(services.map((service) => service.close()));
    }
  });

  it("an entry without fetched_at (another implementation's) is spaced by the instance's own last replacement", async () => {
    const app = mock.createApp();
    const { appId } = app;
    const key = `wechat:access_token:${appId}`;
    // The shared store as another implementation of the schema uses it, one that leaves out the
    // informative fetched_at. Once armed, it refreshes the moment this instance deletes the entry it
    // reported (its own fetch, from WeChat), and writes its token there before this instance looks again.
    let armed = false;
    let external: string | undefined;
    class OtherWriter extends MemoryCache {
      override async deleteIfEquals(k: string, expected: string): Promise<boolean> {
        const deleted = await super.deleteIfEquals(k, expected);
        if (deleted && armed && k === key) {
          armed = false;
          external = mock.issueClassicToken(appId);
          await super.set(k, JSON.stringify({ access_token: external, expires_at: Math.floor(Date.now() / 1000) + 7200 }), 7000);
        }
        return deleted;
      }
    }
    const service = await serve(new OtherWriter(), app);
    const say = async (token: string) => (await report(service.url, appId, token)).body;
    const fetches = () => mock.counters(appId).classicTokenRequests;
    try {
      const first = (await current(service.url, appId)).access_token;
      expect(fetches()).toBe(1);
      // WeChat rejects the token (a fetch outside the fleet): the report replaces it. This instance
      // deletes it, and the token it then reads is the other implementation's, undated.
      mock.invalidateTokens(appId);
      armed = true;
      const answer = await say(first);
      expect(answer.access_token).toBe(external);
      expect(answer.fetched_at).toBeUndefined();
      expect(fetches()).toBe(1);
      // Reports of it right after: nothing says when it was fetched, but this instance replaced the entry
      // a moment ago, so each is checked with WeChat, which takes it, and no token is fetched.
      for (let i = 0; i < 3; i += 1) {
        const again = await say(external!);
        expect(again.access_token).toBe(external);
        expect(again.fetched_at).toBeUndefined();
      }
      expect(fetches()).toBe(1);
      expect(mock.isTokenValid(appId, external!)).toBe(true);
    } finally {
      await service.close();
    }
  });

  it("a report of a token another instance just fetched, while this one cannot read the store: WeChat's word, not a guess", async () => {
    const app = mock.createApp();
    const { appId } = app;
    // The shared store; its reads of the token entry fail while `failing` is set (a reset connection).
    class Flaky extends MemoryCache {
      failing = false;
      override get(key: string): Promise<string | undefined> {
        if (this.failing && key.startsWith('wechat:access_token:')) return Promise.reject(new Error('read ECONNRESET'));
        return super.get(key);
      }
    }
    const cache = new Flaky();
    const [a, b] = [await serve(cache, app), await serve(cache, app)];
    const fetches = () => mock.counters(appId).classicTokenRequests;
    try {
      const first = (await current(b.url, appId)).access_token;
      mock.invalidateTokens(appId);
      const second = (await report(a.url, appId, first)).body.access_token!;
      expect(second).not.toBe(first);
      expect(fetches()).toBe(2);
      cache.failing = true;
      // B may still remember the first token; it cannot tell from the store which is current. WeChat
      // takes the reported one: answered with it, nothing dropped, nothing fetched.
      const answer = await report(b.url, appId, second);
      expect(answer.status).toBe(200);
      expect(answer.body.access_token).toBe(second);
      expect(answer.body.expires_at).toBeTypeOf('number');
      // WeChat cannot say either: 503, and still nothing dropped or fetched.
      mock.injectFault({ kind: 'http-502', path: 'cgi-bin/get_api_domain_ip', times: 1 });
      const unsure = await report(b.url, appId, second);
      expect(unsure.status).toBe(503);
      expect(unsure.body.error?.code).toBe('store_unavailable');
      cache.failing = false;
      expect(JSON.parse((await cache.get(`wechat:access_token:${appId}`))!).access_token).toBe(second);
      expect(fetches()).toBe(2);
    } finally {
      cache.failing = false;
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('a report is never answered with a token the store holds past its life (a store that took none of the writes, or keeps no TTL): the current one instead', async () => {
    const app = mock.createApp();
    const { appId } = app;
    // A read-only store (a replica after a failover): reads answer, every write fails.
    class ReadOnly extends MemoryCache {
      readOnly = false;
      override set(key: string, value: string, ttlSeconds: number): Promise<void> {
        return this.readOnly ? Promise.reject(new CacheError('READONLY You can\'t write against a read only replica.', { reason: 'readonly' } as never)) : super.set(key, value, ttlSeconds);
      }
      override add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        return this.readOnly ? Promise.reject(new CacheError('READONLY', { reason: 'readonly' } as never)) : super.add(key, value, ttlSeconds);
      }
      override compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
        return this.readOnly ? Promise.reject(new CacheError('READONLY', { reason: 'readonly' } as never)) : super.compareAndSet(key, expected, value, ttlSeconds);
      }
    }
    const cache = new ReadOnly();
    const now = Math.floor(Date.now() / 1000);
    const past = 'PAST_ITS_LIFE_0123456789abcdefghijkl';
    const near = 'IN_ITS_LAST_SECONDS_0123456789abcdefg';
    for (const [stale, expiresAt] of [[past, now - 100], [near, now + 10]] as const) {
      await cache.set(`wechat:access_token:${appId}`, JSON.stringify({ access_token: stale, expires_at: expiresAt, fetched_at: expiresAt - 7200 }), 3600);
      cache.readOnly = true;
      const service = await serve(cache, app);
      try {
        const fresh = (await current(service.url, appId)).access_token;
        expect(fresh).not.toBe(stale);
        expect(JSON.parse((await cache.get(`wechat:access_token:${appId}`))!).access_token).toBe(stale);
        // A token neither current nor the store's: answered with the one the service hands out.
        const answer = await report(service.url, appId, 'AN_OLDER_TOKEN_0123456789abcdefghij');
        expect(answer.status).toBe(200);
        expect(answer.body.access_token).toBe(fresh);
        expect(answer.body.expires_at! - Math.floor(Date.now() / 1000)).toBeGreaterThan(60);
      } finally {
        cache.readOnly = false;
        await service.close();
      }
    }
  });

  it('a fetched_at in the future (a clock ahead, a store that lies) spaces reports for a minute at most', async () => {
    const app = mock.createApp();
    const { appId } = app;
    const cache = new MemoryCache();
    const token = mock.issueClassicToken(appId);
    const now = Math.floor(Date.now() / 1000);
    await cache.set(`wechat:access_token:${appId}`, JSON.stringify({ access_token: token, expires_at: now + 7200, fetched_at: now + 3600 }), 7200);
    const service = await serve(cache, app);
    try {
      mock.injectFault({ kind: 'http-502', path: 'cgi-bin/get_api_domain_ip', times: 1 });
      const res = await report(service.url, appId, token);
      expect(res.status).toBe(429);
      const seconds = Number(res.retryAfter);
      expect(seconds).toBeGreaterThan(0);
      expect(seconds).toBeLessThanOrEqual(60);
      expect(mock.counters(appId).classicTokenRequests).toBe(0);
    } finally {
      await service.close();
    }
  });
});
