import { startMockWeChat, switchableStore, type MockApp, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientPool, MemoryCache, type ClientPoolKind, type ClientPoolOptions, type OfficialAccount } from '../src/index.js';
import { collect, nextEvent, rejection } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

const pools: ClientPool<never>[] = [];
afterAll(async () => {
  await Promise.all(pools.map((pool) => pool.close()));
});

function poolOf<K extends ClientPoolKind>(options: Omit<ClientPoolOptions<K>, 'baseUrl' | 'logger'> & Partial<ClientPoolOptions<K>>): ClientPool<K> {
  const pool = new ClientPool<K>({ baseUrl: mock.url, cache: new MemoryCache(), logger: false, ...options } as ClientPoolOptions<K>);
  pools.push(pool as unknown as ClientPool<never>);
  return pool;
}

function officialAccounts(apps: MockApp[], extra: Partial<ClientPoolOptions<'officialAccount'>> = {}) {
  const secrets = new Map(apps.map((app) => [app.appId, app.secret]));
  return poolOf<'officialAccount'>({ kind: 'officialAccount', credentials: (id) => ({ secret: secrets.get(id) }), ...extra });
}

const send = (client: OfficialAccount) => client.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });

describe('ClientPool.on(): events of every account', () => {
  it('each fetch is heard once by the pool and once by the client that listens, for official accounts, mini programs and WeCom apps', async () => {
    const app = mock.createApp();
    const oa = officialAccounts([app]);
    const mp = poolOf<'miniProgram'>({ kind: 'miniProgram', credentials: () => ({ secret: app.secret }) });
    const work = mock.createWorkApp();
    const id = `${work.corpId}:${work.agentId}`;
    const corps = poolOf<'work'>({ kind: 'work', credentials: () => ({ corpId: work.corpId, agentId: work.agentId, secret: work.secret }) });
    const heard = { pool: 0, client: 0 };
    for (const pool of [oa, mp, corps] as ClientPool<ClientPoolKind>[]) pool.on('access_token.fetched', () => (heard.pool += 1));
    const a = await oa.get(app.appId);
    a.on('access_token.fetched', () => (heard.client += 1));
    await a.accessToken.getToken();
    const m = await mp.get(app.appId);
    m.on('access_token.fetched', () => (heard.client += 1));
    await m.accessToken.getToken();
    const w = await corps.get(id);
    w.on('access_token.fetched', () => (heard.client += 1));
    await w.accessToken.getToken();
    expect(heard).toEqual({ pool: 3, client: 3 });
  });

  it("a stored entry of an account's token that is no valid entry (cache.corrupt_entry) is heard by the pool, with the account's appId", async () => {
    const [app] = [mock.createApp()];
    const cache = new MemoryCache();
    const pool = officialAccounts([app!], { cache });
    const heard: (string | undefined)[] = [];
    pool.on('cache.corrupt_entry', (event) => heard.push(event.appId));
    const client = await pool.get(app!.appId);
    await cache.set(client.accessToken.cacheKey, '{"not":"an entry"}', 7000);
    await send(client);
    expect(heard).toEqual([app!.appId]);
  });

  it('a store outage is heard once by the pool, not once per account', async () => {
    const store = switchableStore();
    const apps = [mock.createApp(), mock.createApp(), mock.createApp()];
    const pool = officialAccounts(apps, { cache: store.cache, memoMs: 0, fallbackDir: false });
    const clients = await Promise.all(apps.map((app) => pool.get(app.appId)));
    await Promise.all(clients.map((client) => client.accessToken.getToken()));
    let unavailable = 0;
    pool.on('cache.unavailable', () => (unavailable += 1));
    const recovered = nextEvent(pool, 'cache.recovered');
    store.down();
    await Promise.all(clients.map((client) => client.accessToken.getToken()));
    store.up();
    await recovered;
    expect(unavailable).toBe(1);
  });

  it('a pool listener that throws neither fails the send nor silences the client\'s own listener', async () => {
    const app = mock.createApp();
    const pool = officialAccounts([app]);
    pool.on('access_token.fetched', () => {
      throw new Error('listener');
    });
    const client = await pool.get(app.appId);
    let own = 0;
    client.on('access_token.fetched', () => (own += 1));
    await send(client);
    expect(own).toBe(1);
    expect(mock.counters(app.appId).templateSends).toBe(1);
  });

  it('a pool listener that asks for the same account, whose client went idle meanwhile, does not break the send under way', async () => {
    const app = mock.createApp();
    let now = 0;
    const pool = officialAccounts([app], { clientIdleMs: 1000, now: () => now });
    let asked: Promise<OfficialAccount> | undefined;
    pool.on('access_token.fetched', () => {
      now += 5000;
      asked = pool.get(app.appId);
    });
    const first = await pool.get(app.appId);
    await send(first);
    const second = await asked!;
    expect(second).not.toBe(first);
    await send(second);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 2 });
  });

  it('a pool listener that closes the pool from inside the event: close() resolves, the send after the fetch is refused unsent', async () => {
    const app = mock.createApp();
    const pool = officialAccounts([app]);
    let closing: Promise<void> | undefined;
    pool.on('access_token.fetched', () => void (closing = pool.close()));
    const client = await pool.get(app.appId);
    const error = await rejection(send(client));
    await closing;
    expect(error).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false });
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 0 });
    expect(await rejection(pool.get(app.appId))).toMatchObject({ name: 'ConfigError' });
  });

  it('once() hears the next event of any account only', async () => {
    const apps = [mock.createApp(), mock.createApp()];
    const pool = officialAccounts(apps);
    const heard: (string | undefined)[] = [];
    pool.once('access_token.fetched', (event) => heard.push(event.appId));
    for (const app of apps) await (await pool.get(app.appId)).accessToken.getToken();
    expect(heard).toEqual([apps[0]!.appId]);
  });

  it('a dropped client is collected though the pool has a listener', async () => {
    const [a, b] = [mock.createApp(), mock.createApp()];
    const pool = officialAccounts([a, b], { maxClients: 1 });
    pool.on('access_token.fetched', () => undefined);
    const ref = await (async () => {
      const client = await pool.get(a.appId);
      await client.accessToken.getToken();
      return new WeakRef(client);
    })();
    await pool.get(b.appId);
    await collect();
    expect(ref.deref()).toBeUndefined();
  });

  it('no payload a pool hears carries a token or a secret: fetches, a token killed elsewhere, a refused secret', async () => {
    const app = mock.createApp();
    let secret = 'a-wrong-secret-0123456789abcdef01';
    const pool = poolOf<'officialAccount'>({ kind: 'officialAccount', credentials: () => ({ secret }), tokenEndpoint: 'classic' });
    const payloads: unknown[] = [];
    const events = ['access_token.fetched', 'access_token.fetch_failed', 'access_token.invalidated', 'access_token.invalidated_externally', 'jsapi_ticket.fetched'] as const;
    for (const name of events) pool.on(name, (event) => payloads.push(event));
    await rejection(send(await pool.get(app.appId)));
    secret = app.secret;
    const client = await pool.get(app.appId);
    const token = await client.accessToken.getToken();
    mock.invalidateTokens(app.appId);
    await send(client);
    const ticket = await client.jssdk.getTicket();
    const text = JSON.stringify(payloads);
    expect(payloads.length).toBeGreaterThanOrEqual(4);
    for (const value of [app.secret, 'a-wrong-secret-0123456789abcdef01', token, ticket, await client.accessToken.getToken()]) expect(text).not.toContain(value);
  });

  it("WeCom: two agents of one corp are told apart by the key of what the pool hears, its appId the corp's", async () => {
    const one = mock.createWorkApp();
    const two = mock.createWorkApp({ corpId: one.corpId });
    const byId = new Map([one, two].map((app) => [`${app.corpId}:${app.agentId}`, app]));
    const corps = poolOf<'work'>({ kind: 'work', credentials: (id) => byId.get(id) });
    const heard: { appId?: string; key?: string }[] = [];
    corps.on('access_token.fetched', (event) => heard.push({ appId: event.appId, key: event.key }));
    for (const id of byId.keys()) await (await corps.get(id)).accessToken.getToken();
    expect(heard.map((event) => event.appId)).toEqual([one.corpId, one.corpId]);
    expect(heard.map((event) => event.key!.endsWith(`:${one.corpId}:${one.agentId}`) || event.key!.endsWith(`:${two.corpId}:${two.agentId}`))).toEqual([true, true]);
    expect(new Set(heard.map((event) => event.key)).size).toBe(2);
  });
});
