import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { OfficialAccount, remoteTokenSource } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';
import { startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { startTokenService } from '../src/serve.js';

// Tokens WeChat rejects moments after each fetch (another program fetching in a loop, an account WeChat
// refuses), reported by the clients of two services on one redis-server as tokens no call went through
// with ("worked": false): the services fetch once per step of the fleet's pause after such rejections
// ({key}:refetch), as clients that fetch for themselves do, not once per round of reports.
const KEY = 'serve-rejections-key-0123456789abcdef';

let mock: MockWeChat;
let redis: StoreServer;
beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat(), startRedis()]);
});
afterAll(async () => {
  await Promise.all([mock?.close(), redis?.stop()]);
});
afterEach(() => {
  mock.clearFaults();
  vi.useRealTimers();
});

describe('wxkit serve and tokens WeChat rejects moments after each fetch', () => {
  it('2 services, 4 clients a round: one fetch per step of the pause for the fleet, not one per round of reports', async () => {
    // A clock that only the test moves, taken by the services' clients as they start: the rounds stay
    // within one step however long they take.
    vi.useFakeTimers({ toFake: ['Date'] });
    const { appId, secret } = mock.createApp();
    const caches = [new RedisCache(redis.url), new RedisCache(redis.url)];
    const services = await Promise.all(
      caches.map((cache) => startTokenService({ cache, apps: [{ kind: 'official_account', appId, secret, tokenEndpoint: 'classic' }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false })),
    );
    // Clients of their own in each round: a source holds its requests back as the service's Retry-After
    // says, on the real clock, which the test does not move.
    const fleet = () => services.flatMap((service) => [0, 1].map(() => new OfficialAccount({ appId, baseUrl: mock.url, tokenSource: remoteTokenSource({ url: service.url, key: KEY }), logger: false })));
    // The store lets the pause go two steps of real time after its write, while the clock stands still:
    // the test keeps it, as a store whose clock stood still too would.
    const watcher = new RedisCache(redis.url);
    const pauseKey = `wechat:access_token:${appId}:refetch`;
    /** Keeps the pause of `step` ms once written, looking until `during` has ended. */
    const keep = async (step: number, during: Promise<unknown>) => {
      let ended = false;
      void during.finally(() => (ended = true));
      for (;;) {
        const last = ended;
        const raw = await watcher.get(pauseKey);
        if (raw?.includes(`"step":${step}`)) return void (await watcher.set(pauseKey, raw, 3600));
        if (last) return;
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    };
    const round = async () => {
      const clients = fleet();
      try {
        await Promise.allSettled(clients.flatMap((client) => [0, 1, 2].map(() => client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} }))));
      } finally {
        await Promise.all(clients.map((client) => client.close()));
      }
    };
    /** A round, the pause it writes kept. */
    const keptRound = async (step: number) => {
      const sends = round();
      await Promise.all([sends, keep(step, sends)]);
    };
    try {
      await Promise.all(services.map((service) => fetch(`${service.url}/v1/token/oa/${appId}`, { headers: { authorization: `Bearer ${KEY}` } })));
      const fetches = () => mock.counters(appId).classicTokenRequests;
      const warm = fetches();
      // Every token is refused, at the clients' sends and at the services' check alike.
      mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: Infinity });
      mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/get_api_domain_ip', times: Infinity });
      // The first rejection is answered with a fetch at once, which starts the pause (1 s); the token it
      // brings is refused too, and the fetches wait for the pause's end.
      await keptRound(1_000);
      await round();
      expect(fetches() - warm).toBe(1);
      // Past the step: one more fetch for the fleet, and the next pause is twice as long.
      vi.setSystemTime(Date.now() + 1_001);
      await keptRound(2_000);
      await round();
      expect(fetches() - warm).toBe(2);
      expect(mock.counters(appId).templateSends).toBe(0);
    } finally {
      await Promise.all(services.map((service) => service.close()));
      await Promise.all([...caches, watcher].map((cache) => cache.close()));
    }
  });
});
