import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientPool, MemoryCache, OfficialAccount, Work } from '../src/index.js';

// A client's jssdk is made at first use: the same object at every access, its tickets' events heard by a
// pool, and a client closed before its first use fetches no ticket.
let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

describe('jssdk', () => {
  it('is one object at every access, for an official account and a WeCom app', async () => {
    const oa = new OfficialAccount({ ...mock.createApp(), baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    const work = mock.createWorkApp();
    const wecom = new Work({ corpId: work.corpId, agentId: work.agentId, secret: work.secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    try {
      expect(oa.jssdk).toBe(oa.jssdk);
      expect(wecom.jssdk).toBe(wecom.jssdk);
    } finally {
      await Promise.all([oa.close(), wecom.close()]);
    }
  });

  it("of a pool's client, first used after the pool's on(): its ticket's fetch is heard by the pool", async () => {
    const app = mock.createApp();
    const pool = new ClientPool({ kind: 'officialAccount', baseUrl: mock.url, cache: new MemoryCache(), logger: false, credentials: () => ({ secret: app.secret }) });
    try {
      const heard: string[] = [];
      pool.on('jsapi_ticket.fetched', (event) => heard.push(event.appId ?? ''));
      const client = await pool.get(app.appId);
      await client.jssdk.getTicket('jsapi');
      expect(heard).toEqual([app.appId]);
      expect(mock.counters(app.appId).ticketRequests).toBe(1);
    } finally {
      await pool.close();
    }
  });

  it('first used after close(): its ticket is refused at once, with no call to WeChat', async () => {
    const app = mock.createApp();
    const client = new OfficialAccount({ ...app, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    await client.close();
    const refused = await client.jssdk.getTicket('jsapi').then(() => undefined, (error: unknown) => error);
    expect(refused).toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 0, ticketRequests: 0 });
  });
});
