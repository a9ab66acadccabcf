import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfficialAccount, easyWeChat4 } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';
import { WorkerGroup, startMockWeChat, startRedis, type MockApp, type MockWeChat, type StoreServer, type WorkerResult } from '@wxkit/testing';
import { builtRedis, expectOneEntryAfterPeerRefresh, expectPeerReadsAndSends, gatedPhpPeer, nodeMessage, phpPeer, rawHex, type PhpPeerOptions } from './helpers.js';

// EasyWeChat 4 on a ThinkPHP Redis store: PHP's own serialize()/unserialize() on phpredis (Debian's
// php-cli and php-redis), EasyWeChat's key and refresh-on-40001 as its source has them
// (fixtures/easywechat-peer.php), one real redis-server shared with wxkit, the mock WeChat upstream.

let mock: MockWeChat;
let redis: StoreServer;
const caches: RedisCache[] = [];
beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat(), startRedis()]);
});
afterAll(async () => {
  await Promise.all(caches.map((cache) => cache.close()));
  await Promise.all([mock?.close(), redis?.stop()]);
});

const PREFIX = 'think:';
const address = () => `127.0.0.1:${redis.port}`;
const peerOptions = (app: MockApp): PhpPeerOptions => ({
  redis: address(),
  sdk: '4',
  store: 'thinkphp',
  prefix: PREFIX,
  appid: app.appId,
  secret: app.secret,
  baseUrl: mock.url,
});

function node(app: MockApp) {
  const cache = new RedisCache(redis.url);
  caches.push(cache);
  // As the profile's documentation shows it: the store's prefix, nothing else.
  const schema = easyWeChat4({ prefix: PREFIX });
  const client = new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, logger: false, schema });
  return { client, key: schema.accessTokenKey({ kind: 'official_account', appId: app.appId, secret: app.secret, endpoint: 'classic' }) };
}

/** PHP's serialize() of EasyWeChat 4's array, as bytes. */
const phpArrayBytes = (hex: string) => Buffer.from(hex, 'hex').toString('latin1');

describe('EasyWeChat 4 on a ThinkPHP Redis store (PHP serialize)', () => {
  it('the peer fetches and stores; wxkit reads it, with no fetch of its own, and sends', async () => {
    const app = mock.createApp();
    const { token } = await phpPeer(peerOptions(app), 'refresh');
    const { client, key } = node(app);
    expect(phpArrayBytes(await rawHex(address(), key))).toBe(`a:2:{s:12:"access_token";s:${token!.length}:"${token}";s:10:"expires_in";i:7200;}`);
    expect(await client.accessToken.getToken()).toBe(token);
    await client.templateMessage.send(nodeMessage);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 1, rejectedCalls: 0 });
  });

  it('wxkit fetches and stores; the peer reads it, with no fetch of its own, and sends', async () => {
    const app = mock.createApp();
    const { client, key } = node(app);
    const token = await client.accessToken.getToken();
    expect(phpArrayBytes(await rawHex(address(), key))).toBe(`a:2:{s:12:"access_token";s:${token.length}:"${token}";s:10:"expires_in";i:7200;}`);
    const php = peerOptions(app);
    expect(await phpPeer(php, 'read')).toEqual({ token, unparseable: 0 });
    expect(await phpPeer(php, 'send', '2')).toEqual({ sent: 2, failed: 0, fetches: 0, rejected: 0, unparseable: 0 });
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 2, rejectedCalls: 0 });
  });

  it('both refresh at the same moment: wxkit loses no send, the peer parses every value it meets', async () => {
    const app = mock.createApp();
    const php = peerOptions(app);
    const { client } = node(app);
    await client.accessToken.getToken();
    mock.setLatency(40);
    try {
      for (let round = 0; round < 3; round += 1) {
        const peer = await gatedPhpPeer(php, 'refresh');
        const [figures, , sends] = await Promise.all([
          peer.go(),
          client.accessToken.forceRefresh(),
          Promise.all(Array.from({ length: 5 }, () => client.templateMessage.send(nodeMessage))),
        ]);
        expect(figures.unparseable, `round ${round}`).toBe(0);
        expect(sends).toHaveLength(5);
        await expectPeerReadsAndSends(php, mock, app.appId);
      }
    } finally {
      mock.setLatency(0);
    }
    expect(mock.counters(app.appId).tokenRequests).toBe(7);
    await expectOneEntryAfterPeerRefresh(php, mock, app.appId, client);
  });

  it('a mixed fleet: one PHP app, two Node processes, tokens killed upstream: 0 lost on the Node side, ≤ 1 Node fetch per invalidation', async () => {
    const app = mock.createApp();
    const php = peerOptions(app);
    const group = await WorkerGroup.start(2, {
      baseUrl: mock.url,
      ...app,
      store: { module: builtRedis, export: 'RedisCache', args: [redis.url] },
      schema: { name: 'easyWeChat4', options: { prefix: PREFIX } },
    });
    const nodeFetches = (results: WorkerResult[]) => results.reduce((n, r) => n + (r.events['access_token.fetched'] ?? 0), 0);
    const expectAllSent = (results: WorkerResult[], each: number) => {
      expect(results.flatMap((r) => r.errors)).toEqual([]);
      expect(results.map((r) => r.ok)).toEqual(results.map(() => each));
    };
    try {
      // The PHP app starts first and fetches; the Node processes use its token.
      expect(await phpPeer(php, 'send', '5')).toMatchObject({ sent: 5, failed: 0, fetches: 1, unparseable: 0 });
      const warm = await group.run('send', 10);
      expectAllSent(warm, 10);
      expect(nodeFetches(warm)).toBe(0);

      // 1. Killed upstream while Node sends: one Node process refreshes for both; PHP then reads it.
      mock.invalidateTokens(app.appId);
      const first = await group.run('send', 20);
      expectAllSent(first, 20);
      expect(nodeFetches(first)).toBe(1);
      expect(await phpPeer(php, 'send', '5')).toMatchObject({ sent: 5, failed: 0, fetches: 0, unparseable: 0 });

      // 2. Killed again, and the PHP app meets it first: it refreshes on its own (no lock), and the
      // Node processes pick up its token after one rejection each, without fetching.
      mock.invalidateTokens(app.appId);
      expect(await phpPeer(php, 'send', '5')).toMatchObject({ sent: 5, failed: 0, fetches: 1, rejected: 1, unparseable: 0 });
      const second = await group.run('send', 20);
      expectAllSent(second, 20);
      expect(nodeFetches(second)).toBe(0);
    } finally {
      await group.stop();
    }
  });

  it('the peer refreshes in a loop, without a lock, while wxkit sends: every send delivered, no fetch of wxkit after its first', async () => {
    const app = mock.createApp();
    const php = peerOptions(app);
    const { client } = node(app);
    await client.accessToken.getToken();
    let stop = false;
    let peerFetches = 0;
    const loop = (async () => {
      while (!stop) peerFetches += (await phpPeer(php, 'refresh')).unparseable === 0 ? 1 : Number.NaN;
    })();
    let lost = 0;
    // Until the peer has refreshed 4 times: its tokens end each other (the mock keeps the one before the
    // latest alive for its grace window, and kills the older ones), and wxkit's with them.
    try {
      while (peerFetches < 4) {
        const sends = await Promise.allSettled(Array.from({ length: 3 }, () => client.templateMessage.send(nodeMessage)));
        lost += sends.filter((send) => send.status === 'rejected').length;
      }
    } finally {
      stop = true;
      await loop;
    }
    expect(lost).toBe(0);
    const counters = mock.counters(app.appId);
    expect(counters.rejectedCalls).toBeGreaterThan(0);
    expect(counters.tokenRequests).toBe(1 + peerFetches);
  });
});

