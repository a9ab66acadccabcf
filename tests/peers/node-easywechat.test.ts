import { createRequire } from 'node:module';
import { createClient } from '@keyv/redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfficialAccount, nodeEasyWeChat } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';
import { startMockWeChat, startRedis, type MockApp, type MockWeChat, type StoreServer } from '@wxkit/testing';

// node-easywechat 3.6.2 itself (npm), sharing one real redis-server with wxkit, the mock WeChat upstream.
// What it stores (dist/OfficialAccount/AccessToken.js): key
// `official_account.access_token.{appId}.{secret}.{0|1}` (1 with use_stable_access_token, which defaults
// to false), value whatever its cache's set() makes of the bare token string, TTL expires_in; a cached
// value counts only when it is a non-empty string. It never refetches on a rejected token. Its cache is
// the app's: README's RedisCacher (get returns the stored string, set stores `data` with EX lifetime),
// here over node-redis.
const require = createRequire(import.meta.url);
const { OfficialAccount: PeerApp } = require('node-easywechat') as typeof import('node-easywechat');

let mock: MockWeChat;
let redis: StoreServer;
let peerRedis: ReturnType<typeof createClient>;
const closers: (() => Promise<unknown>)[] = [];
beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat(), startRedis()]);
  peerRedis = createClient({ url: redis.url });
  await peerRedis.connect();
});
afterAll(async () => {
  await Promise.all(closers.map((close) => close()));
  await peerRedis?.close();
  await Promise.all([mock?.close(), redis?.stop()]);
});

/** node-easywechat's README RedisCacher (CacheInterface: get, has, set, delete). */
const redisCacher = () => ({
  async get(id: string) {
    return peerRedis.get(id);
  },
  async has(id: string) {
    return (await peerRedis.exists(id)) > 0;
  },
  async set(id: string, data: unknown = null, lifeTime = 0) {
    if (lifeTime > 0) await peerRedis.set(id, data as string, { EX: lifeTime });
    else await peerRedis.set(id, data as string);
    return true;
  },
  async delete(id: string) {
    await peerRedis.del(id);
    return true;
  },
});

/**
 * A cacher that stores what node-easywechat's own FileCache writes (dist/Core/Cache/FileCache.js): the
 * JSON `{"data":…,"lifeTime":<unix s>}`, here in Redis, with the TTL as well.
 */
const jsonCacher = () => ({
  ...redisCacher(),
  async get(id: string) {
    const raw = await peerRedis.get(id);
    if (raw === null) return null;
    const item = JSON.parse(raw) as { data: unknown; lifeTime: number };
    return item.lifeTime > 0 && item.lifeTime < Math.floor(Date.now() / 1000) ? null : item.data;
  },
  async set(id: string, data: unknown = null, lifeTime = 0) {
    const item = JSON.stringify({ data, lifeTime: lifeTime > 0 ? lifeTime + Math.floor(Date.now() / 1000) : 0 });
    await peerRedis.set(id, item, lifeTime > 0 ? { EX: lifeTime } : {});
    return true;
  },
});

const TEMPLATE = { touser: 'oPeerUser', template_id: 'TPL_PEER', data: { first: { value: 'from node-easywechat' } } };
const message = { touser: 'oNodeUser', template_id: 'TPL_NODE', data: { first: { value: 'from wxkit' } } };

function peer(app: MockApp, cacher: { get(id: string): Promise<unknown> } & Omit<ReturnType<typeof redisCacher>, 'get'> = redisCacher()) {
  // As its README configures it, pointed at the mock through axios's baseURL; no other option.
  const instance = new PeerApp({ app_id: app.appId, secret: app.secret, token: 'peer', aes_key: '', http: { baseURL: `${mock.url}/` } });
  instance.setCache(cacher);
  // Its OfficialAccount/AccessToken class; the application's type names only its interface.
  const accessToken = instance.getAccessToken() as unknown as { getKey(): string; getToken(): Promise<string>; refresh(): Promise<string> };
  const client = instance.getClient();
  return {
    key: accessToken.getKey(),
    getToken: () => accessToken.getToken(),
    refresh: () => accessToken.refresh(),
    /** One template send; resolves with WeChat's errcode (0 = delivered). */
    async send(): Promise<number> {
      const response = await client.postJson('cgi-bin/message/template/send', TEMPLATE);
      return (response.toObject() as { errcode?: number }).errcode ?? -1;
    },
  };
}

function wxkit(app: MockApp): OfficialAccount {
  const cache = new RedisCache(redis.url);
  closers.push(() => cache.close());
  // Only the credentials and the profile: the profile must default to node-easywechat's own key.
  return new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, logger: false, schema: nodeEasyWeChat() });
}

describe('node-easywechat 3.6.2 and wxkit with nodeEasyWeChat()', () => {
  it('node-easywechat fetches and stores; wxkit reads it, with no fetch of its own, and sends', async () => {
    const app = mock.createApp();
    const token = await peer(app).refresh();
    const node = wxkit(app);
    expect(await node.accessToken.getToken()).toBe(token);
    await node.templateMessage.send(message);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 1, rejectedCalls: 0 });
  });

  it('wxkit fetches and stores; node-easywechat reads it, with no fetch of its own, and sends', async () => {
    const app = mock.createApp();
    const token = await wxkit(app).accessToken.getToken();
    const other = peer(app);
    // The bare token under node-easywechat's key: what its getToken() accepts as is.
    expect(await peerRedis.get(other.key)).toBe(token);
    expect(await other.getToken()).toBe(token);
    expect(await other.send()).toBe(0);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 1, rejectedCalls: 0 });
  });

  it('both refresh at the same moment: wxkit loses no send, node-easywechat always reads a token WeChat accepts', async () => {
    const app = mock.createApp();
    const other = peer(app);
    const node = wxkit(app);
    await node.accessToken.getToken();
    // Slow answers keep both fetches in flight together.
    mock.setLatency(40);
    try {
      for (let round = 0; round < 3; round += 1) {
        const [peerToken, , sends] = await Promise.all([
          other.refresh(),
          node.accessToken.forceRefresh(),
          Promise.all(Array.from({ length: 5 }, () => node.templateMessage.send(message))),
        ]);
        expect(typeof peerToken).toBe('string');
        expect(sends).toHaveLength(5);
        const seen = await other.getToken();
        expect(mock.isTokenValid(app.appId, seen), `round ${round}: ${seen.slice(0, 12)}…`).toBe(true);
        expect(await other.send()).toBe(0);
      }
    } finally {
      mock.setLatency(0);
    }
    expect(mock.counters(app.appId).tokenRequests).toBe(7);

    // Still one shared entry: WeChat drops every token, node-easywechat refetches, and wxkit's rejected
    // send finds that token in the store and fetches nothing.
    mock.invalidateTokens(app.appId);
    const last = await other.refresh();
    await Promise.all(Array.from({ length: 5 }, () => node.templateMessage.send(message)));
    expect(await node.accessToken.getToken()).toBe(last);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 8, templateSends: 3 * 6 + 5 });
  });

  it("a cacher that stores node-easywechat's value as JSON (its FileCache's layout): wxkit takes none of it for a token, leaves it as it is, and sends with a token of its own", async () => {
    const app = mock.createApp();
    const other = peer(app, jsonCacher());
    const token = await other.refresh();
    const stored = await peerRedis.get(other.key);
    expect(stored).toMatch(/^\{"data":"/);
    const node = wxkit(app);
    const own = await node.accessToken.getToken();
    expect(own).not.toBe(stored);
    expect(mock.isTokenValid(app.appId, own)).toBe(true);
    await node.templateMessage.send(message);
    // The peer's value is its own: not deleted after a refused send, not replaced.
    expect(await peerRedis.get(other.key)).toBe(stored);
    expect(await other.getToken()).toBe(token);
    expect(await other.send()).toBe(0);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 2, templateSends: 2, rejectedCalls: 0 });
  });
});
