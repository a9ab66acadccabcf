import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CacheError, MemoryCache } from '@wxkit/core';
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
});

describe('the errcode label of wxkit_upstream_errors_total', () => {
  it("keeps WeChat's known errcodes and wxkit's codes, and buckets any other errcode as other", async () => {
    expect(errcodeLabel(40164, 'ERR_WXKIT_WECHAT_API')).toBe('40164');
    expect(errcodeLabel(45009, 'ERR_WXKIT_WECHAT_API')).toBe('45009');
    expect(errcodeLabel(-1, 'ERR_WXKIT_WECHAT_API')).toBe('-1');
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
