import perfHooks from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache } from '@wxkit/core';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { startTokenService } from '../src/serve.js';

// startTokenService is public: a program may start and close it many times (a reload of its app list,
// a test suite). What close() leaves behind must not grow with each start.

/**
 * Counts the GC observers and event-loop-delay monitors made through `perf_hooks` (Node's metrics, as
 * prom-client collects them) that are still running: observing, or enabled.
 */
function watchPerfHooks() {
  const hooks = perfHooks as unknown as Record<string, unknown>;
  const { PerformanceObserver: Observer, monitorEventLoopDelay: monitor } = perfHooks;
  const live = { observers: 0, monitors: 0 };
  hooks.PerformanceObserver = class extends Observer {
    #on = false;
    override observe(options: Parameters<InstanceType<typeof Observer>['observe']>[0]) {
      if (!this.#on) live.observers += 1;
      this.#on = true;
      return super.observe(options);
    }
    override disconnect() {
      if (this.#on) live.observers -= 1;
      this.#on = false;
      return super.disconnect();
    }
  };
  hooks.monitorEventLoopDelay = (options?: Parameters<typeof monitor>[0]) => {
    const histogram = monitor(options);
    const { enable, disable } = histogram;
    let on = false;
    histogram.enable = () => {
      if (!on) live.monitors += 1;
      on = true;
      return enable.call(histogram);
    };
    histogram.disable = () => {
      if (on) live.monitors -= 1;
      on = false;
      return disable.call(histogram);
    };
    return histogram;
  };
  return { live, restore: () => Object.assign(hooks, { PerformanceObserver: Observer, monitorEventLoopDelay: monitor }) };
}

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

describe('a token service started and closed again and again', () => {
  it("leaves no GC observer or event-loop monitor of its metrics running per start: Node's metrics are collected once per process", async () => {
    const watched = watchPerfHooks();
    try {
      const { appId, secret } = mock.createApp();
      const cycle = async () => {
        const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: ['restart-test-key-0123456789'], port: 0, baseUrl: mock.url, logger: false });
        const res = await fetch(`${service.url}/metrics`);
        expect(res.status).toBe(200);
        expect(await res.text()).toContain('nodejs_eventloop_lag_seconds');
        await service.close();
      };
      await cycle();
      const after = { ...watched.live };
      for (let i = 0; i < 3; i += 1) await cycle();
      expect(watched.live).toEqual(after);
    } finally {
      watched.restore();
    }
  });
});
