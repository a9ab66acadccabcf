import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { nativeSchema, type TokenCache } from '@wxkit/core';
import { startMemcached, startMockWeChat, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { startTokenService } from '../src/serve.js';
import { openStore } from '../src/stores.js';

// A store spread over servers that fail one at a time (memcached://a,b): /healthz and wxkit_store_up speak
// for every server that holds an app's entry, not for the first app's alone.
describe('wxkit serve on a store of several servers, one down', () => {
  const KEY = 'partitions-key-0123456789abcdef';
  let mock: MockWeChat;
  /** Each test's two memcached servers, one of which it stops. */
  let servers: StoreServer[];
  beforeAll(async () => {
    mock = await startMockWeChat();
  });
  afterAll(() => mock.close());
  beforeEach(async () => {
    servers = await Promise.all([startMemcached(), startMemcached()]);
  });
  afterEach(async () => {
    await Promise.all(servers.map((server) => server.stop()));
  });

  it('/healthz is 503 naming the apps on the server that does not answer, whichever app is listed first', async () => {
    const cache: TokenCache = await openStore(`memcached://${servers.map((server) => server.url).join(',')}`);
    const schema = nativeSchema();
    const partOf = (appId: string) => cache.partition!(schema.accessTokenKey({ kind: 'official_account', appId, endpoint: 'stable' }));
    // The first app listed on the server that stays, the second on the one that stops.
    const first = mock.createApp();
    let second = mock.createApp();
    for (let i = 0; partOf(second.appId) === partOf(first.appId); i += 1) {
      if (i > 200) throw new Error('no app on the other server');
      second = mock.createApp();
    }
    const stopping = servers.find((server) => partOf(second.appId).endsWith(`:${server.port}`))!;
    const apps = [first, second].map(({ appId, secret }) => ({ kind: 'official_account' as const, appId, secret }));
    const lines: Record<string, unknown>[] = [];
    const logger = { info: (fields: Record<string, unknown>) => lines.push(fields), warn: (fields: Record<string, unknown>) => lines.push(fields), error: () => {} };
    // A probe's deadline is healthCheckMs (at most 2 s): a shorter one would let a busy machine's slow
    // answer read as the store down, and the counts below would see it.
    const service = await startTokenService({ cache, apps, keys: [KEY], port: 0, baseUrl: mock.url, healthCheckMs: 1_000, logger });
    const health = async () => {
      const res = await fetch(`${service.url}/healthz`);
      return { status: res.status, body: (await res.json()) as { status?: string; error?: { code: string; apps?: string[]; message: string } } };
    };
    const storeUp = async () => /^wxkit_store_up (\d)$/m.exec(await (await fetch(`${service.url}/metrics`)).text())?.[1];
    try {
      expect(await health()).toMatchObject({ status: 200, body: { status: 'ok' } });
      expect(await storeUp()).toBe('1');
      await stopping.stop();
      await vi.waitFor(async () => expect((await health()).status).toBe(503), { timeout: 10_000, interval: 50 });
      const down = await health();
      // The second app's token is there (the first app's tickets may be too).
      expect(down.body.error).toMatchObject({ code: 'store_unavailable', apps: expect.arrayContaining([`official_account/${second.appId}`]) });
      // The server's address stays in the log.
      expect(down.body.error!.message).not.toContain(String(stopping.port));
      expect(down.body.error!.message).toMatch(/^1 of the store's \d servers does not answer.*; the apps on it: /);
      expect(await storeUp()).toBe('0');
      expect(lines).toContainEqual(expect.objectContaining({ event: 'serve.store_down', apps: expect.arrayContaining([`official_account/${second.appId}`]), part: partOf(second.appId) }));
      expect(lines.filter((line) => line.event === 'serve.store_down')).toHaveLength(1);
    } finally {
      await service.close();
      await cache.close?.();
    }
  });

  it("an app whose server answers keeps sharing its token through the store while another server is down: its replacement is written there, not to the host's directory", async () => {
    const cache: TokenCache = await openStore(`memcached://${servers.map((server) => server.url).join(',')}`);
    const schema = nativeSchema();
    const keyOf = (appId: string) => schema.accessTokenKey({ kind: 'official_account', appId, endpoint: 'stable' });
    // The first app on the server that stays, the second on the one that stops.
    const first = mock.createApp();
    let second = mock.createApp();
    for (let i = 0; cache.partition!(keyOf(second.appId)) === cache.partition!(keyOf(first.appId)); i += 1) {
      if (i > 200) throw new Error('no app on the other server');
      second = mock.createApp();
    }
    const stopping = servers.find((server) => cache.partition!(keyOf(second.appId)).endsWith(`:${server.port}`))!;
    const apps = [first, second].map(({ appId, secret }) => ({ kind: 'official_account' as const, appId, secret }));
    const lines: Record<string, unknown>[] = [];
    const logger = { info: (fields: Record<string, unknown>) => lines.push(fields), warn: (fields: Record<string, unknown>) => lines.push(fields), error: () => {} };
    const service = await startTokenService({ cache, apps, keys: [KEY], port: 0, baseUrl: mock.url, checkEverySeconds: 3_600, logger });
    const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
    const token = async (appId: string) => (await (await fetch(`${service.url}/v1/token/oa/${appId}`, { headers })).json()) as { access_token: string };
    try {
      const before = (await token(first.appId)).access_token;
      await token(second.appId);
      await stopping.stop();
      // The second app's client meets its server down (once its memory of the token, a second, is out).
      await vi.waitFor(
        async () => {
          await token(second.appId);
          expect(lines).toContainEqual(expect.objectContaining({ event: 'cache.unavailable', appId: second.appId }));
        },
        { timeout: 10_000, interval: 100 },
      );
      // WeChat rejects the first app's token: the service replaces it, on the server that holds its entry.
      mock.invalidateTokens(first.appId);
      const res = await fetch(`${service.url}/v1/token/oa/${first.appId}/invalidate`, { method: 'POST', headers, body: JSON.stringify({ token: before, errcode: 40001 }) });
      expect(res.status).toBe(200);
      const after = ((await res.json()) as { access_token: string }).access_token;
      expect(after).not.toBe(before);
      const fetched = lines.filter((line) => line.event === 'access_token.fetched' && line.appId === first.appId);
      expect(fetched.map((line) => line.tier)).toEqual(['shared', 'shared']);
      // Every other process on the store (a client reading it, another instance of the service) reads it there.
      expect(JSON.parse((await cache.get(keyOf(first.appId)))!)).toMatchObject({ access_token: after });
    } finally {
      await service.close();
      await cache.close?.();
    }
  });

  it("/healthz is 503 when the server that holds only an app's ticket entries does not answer", async () => {
    const cache: TokenCache = await openStore(`memcached://${servers.map((server) => server.url).join(',')}`);
    const schema = nativeSchema();
    const tokenPart = (appId: string) => cache.partition!(schema.accessTokenKey({ kind: 'official_account', appId, endpoint: 'stable' }));
    const ticketParts = (appId: string) => ['jsapi', 'wx_card'].map((type) => cache.partition!(schema.ticketKey({ kind: 'official_account', appId, endpoint: 'stable' }, type as never)));
    // An app with a ticket on the server its token is not on: that server holds nothing else of the service's.
    let app = mock.createApp();
    const elsewhere = () => ticketParts(app.appId).find((part) => part !== tokenPart(app.appId));
    for (let i = 0; elsewhere() === undefined; i += 1) {
      if (i > 200) throw new Error('no app with a ticket on the other server');
      app = mock.createApp();
    }
    const stopping = servers.find((server) => elsewhere()!.endsWith(`:${server.port}`))!;
    const service = await startTokenService({ cache, apps: [{ kind: 'official_account', appId: app.appId, secret: app.secret }], keys: [KEY], port: 0, baseUrl: mock.url, healthCheckMs: 1_000, logger: false });
    try {
      expect((await fetch(`${service.url}/healthz`)).status).toBe(200);
      await stopping.stop();
      await vi.waitFor(async () => expect((await fetch(`${service.url}/healthz`)).status).toBe(503), { timeout: 10_000, interval: 50 });
    } finally {
      await service.close();
      await cache.close?.();
    }
  });
});
