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

// Two clients report the same rejected token within the fleet's pause after rejections ({key}:refetch):
// one sent no call through with it ("worked": false), the other did ("worked": true). A token a call
// went through with was replaced by a program outside the fleet, and WeChat does take the fleet's tokens:
// its replacement is fetched at once, whichever report came first, as clients that fetch for themselves
// fetch it (the process that had a call go through fetches at once, whatever the pause).
describe('wxkit serve and reports of one token that disagree on whether it worked', () => {
  it('a "worked": true report after a "worked": false one, within the pause: the replacement is fetched at once', async () => {
    // A clock that only the test moves: the reports stay within the pause's step.
    vi.useFakeTimers({ toFake: ['Date'] });
    const { appId, secret } = mock.createApp();
    const cache = new RedisCache(redis.url);
    const watcher = new RedisCache(redis.url);
    const service = await startTokenService({ cache, apps: [{ kind: 'official_account', appId, secret, tokenEndpoint: 'classic' }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
    const get = async () => ((await (await fetch(`${service.url}/v1/token/oa/${appId}`, { headers })).json()) as { access_token: string }).access_token;
    const report = async (token: string, worked: boolean) => {
      const res = await fetch(`${service.url}/v1/token/oa/${appId}/invalidate`, { method: 'POST', headers, body: JSON.stringify({ token, errcode: 40001, worked }) });
      return { status: res.status, body: (await res.json()) as { access_token?: string } };
    };
    const pauseKey = `wechat:access_token:${appId}:refetch`;
    try {
      const fetches = () => mock.counters(appId).classicTokenRequests;
      const first = await get();
      // WeChat refuses the tokens at the service's check from now on.
      mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/get_api_domain_ip', times: Infinity });
      // A token no call went through with: replaced at once, and the fleet's pause begins (1 s).
      const second = (await report(first, false)).body.access_token;
      expect(second).toBeDefined();
      expect(second).not.toBe(first);
      expect(fetches()).toBe(2);
      // The store would let the pause go after two steps of real time: kept, as the clock stands still.
      const raw = await watcher.get(pauseKey);
      expect(raw).toBeDefined();
      await watcher.set(pauseKey, raw!, 3600);
      // The second token is rejected within the pause: a client that sent no call with it says so
      // first, and waits for the pause.
      expect((await report(second!, false)).status).toBe(503);
      expect(fetches()).toBe(2);
      // A client whose call did go through with it: WeChat took the fleet's token, then a program outside
      // the fleet replaced it. Fetched at once.
      mock.clearFaults();
      const answer = await report(second!, true);
      expect(answer.status).toBe(200);
      expect(answer.body.access_token).not.toBe(second);
      expect(fetches()).toBe(3);
    } finally {
      await service.close();
      await Promise.all([cache.close(), watcher.close()]);
    }
  });
  it('a client that says "worked": false of tokens WeChat takes costs at most the one replacement of a token older than a minute, as before', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const { appId, secret } = mock.createApp();
    const cache = new RedisCache(redis.url);
    const service = await startTokenService({ cache, apps: [{ kind: 'official_account', appId, secret, tokenEndpoint: 'classic' }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
    const get = async () => ((await (await fetch(`${service.url}/v1/token/oa/${appId}`, { headers })).json()) as { access_token: string }).access_token;
    const report = async (token: string) => {
      const res = await fetch(`${service.url}/v1/token/oa/${appId}/invalidate`, { method: 'POST', headers, body: JSON.stringify({ token, errcode: 40001, worked: false }) });
      return { status: res.status, body: (await res.json()) as { access_token?: string } };
    };
    try {
      const fetches = () => mock.counters(appId).classicTokenRequests;
      const first = await get();
      // WeChat takes the token at the service's check: answered with it, nothing fetched.
      for (let i = 0; i < 5; i += 1) expect((await report(first)).body.access_token).toBe(first);
      expect(fetches()).toBe(1);
      // A minute on, the report of the token is taken unchecked: replaced at once, the first step of a pause.
      vi.setSystemTime(Date.now() + 61_000);
      const second = (await report(first)).body.access_token;
      expect(second).not.toBe(first);
      expect(fetches()).toBe(2);
      // Its replacement is checked again: the lies cost nothing more, and every answer is a token.
      for (let i = 0; i < 5; i += 1) expect(await report(second!)).toEqual({ status: 200, body: expect.objectContaining({ access_token: second }) });
      expect(await get()).toBe(second);
      expect(fetches()).toBe(2);
    } finally {
      await service.close();
      await cache.close();
    }
  });
});
