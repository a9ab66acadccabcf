import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat, type MockWeChatOptions, type MockWorkApp } from '../src/index.js';

// WeCom (qyapi.weixin.qq.com) as its own documentation describes it: "访问频率限制"
// (developer.work.weixin.qq.com/document/path/90454) and its error codes.
// 2026-11-25 12:10 Beijing time: hours roll over only when a test moves the clock.
const T0 = Date.UTC(2026, 10, 25, 4, 10, 0);
type Json = Record<string, any>;

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat({ now: () => T0 });
});
afterAll(async () => {
  await mock.close();
});

const get = async (path: string, base = mock.url): Promise<Json> => (await fetch(`${base}/${path}`)).json() as Promise<Json>;
const gettoken = (app: MockWorkApp, base = mock.url) => get(`cgi-bin/gettoken?corpid=${app.corpId}&corpsecret=${encodeURIComponent(app.secret)}`, base);

async function withMock(options: MockWeChatOptions, run: (local: MockWeChat) => Promise<void>): Promise<void> {
  const local = await startMockWeChat(options);
  try {
    await run(local);
  } finally {
    await local.close();
  }
}

describe('WeCom gettoken and its tokens', () => {
  it('a token WeCom ended before its expiry → 40014 (WeCom has no "not latest" 40001 on business calls)', async () => {
    const app = mock.createWorkApp();
    const id = `${app.corpId}:${app.agentId}`;
    const token = (await gettoken(app)).access_token as string;
    mock.invalidateTokens(id);
    const body = (await (
      await fetch(`${mock.url}/cgi-bin/message/send?access_token=${token}`, { method: 'POST', body: JSON.stringify({ touser: 'u', msgtype: 'text', agentid: 1, text: { content: 'x' } }) })
    ).json()) as Json;
    expect(body.errcode).toBe(40014);
    expect(mock.counters(id).rejectedCalls).toBe(1);
  });

  it('no corpid → 41002 corpid missing; no corpsecret → 41004 corpsecret missing', async () => {
    const app = mock.createWorkApp();
    const noCorp = await get(`cgi-bin/gettoken?corpsecret=${encodeURIComponent(app.secret)}`);
    expect(noCorp).toMatchObject({ errcode: 41002 });
    expect(noCorp.errmsg).toMatch(/^corpid missing/);
    for (const query of [`corpid=${app.corpId}`, `corpid=${app.corpId}&corpsecret=`]) {
      const noSecret = await get(`cgi-bin/gettoken?${query}`);
      expect(noSecret).toMatchObject({ errcode: 41004 });
      expect(noSecret.errmsg).toMatch(/^corpsecret missing/);
    }
  });

  it('has no daily gettoken quota (quotas.token is cgi-bin/token’s): a corp’s limits are per minute and per hour', async () => {
    await withMock({ now: () => T0, quotas: { token: 1, workTokenPerMinute: 2, workTokenPerHour: 3 } }, async (local) => {
      const first = local.createWorkApp();
      const second = local.createWorkApp({ corpId: first.corpId });
      expect((await gettoken(first, local.url)).errcode).toBe(0);
      expect((await gettoken(second, local.url)).errcode).toBe(0);
      // Two calls of the corp this minute: the third waits 60 s (45011)...
      expect((await gettoken(first, local.url)).errcode).toBe(45011);
      local.advanceClock(60);
      expect((await gettoken(first, local.url)).errcode).toBe(0);
      // ...and three this hour: the fourth waits 60 minutes (45009), not for the next day.
      local.advanceClock(60);
      expect((await gettoken(second, local.url)).errcode).toBe(45009);
      local.advanceClock(59 * 60);
      expect((await gettoken(second, local.url)).errcode).toBe(45009);
      local.advanceClock(60);
      expect((await gettoken(second, local.url)).errcode).toBe(0);
    });
  });
});

describe('WeCom jsapi tickets: 100 an hour per agent, 400 an hour per corp', () => {
  it('an agent’s 101st ticket within the hour → 45009, and WeCom blocks it for 60 minutes from then, not to the next clock hour', async () => {
    await withMock({ now: () => T0 }, async (local) => {
      const app = local.createWorkApp();
      const token = (await gettoken(app, local.url)).access_token as string;
      for (let i = 0; i < 50; i++) expect((await get(`cgi-bin/get_jsapi_ticket?access_token=${token}`, local.url)).errcode).toBe(0);
      for (let i = 0; i < 50; i++) expect((await get(`cgi-bin/ticket/get?access_token=${token}&type=agent_config`, local.url)).errcode).toBe(0);
      expect((await get(`cgi-bin/get_jsapi_ticket?access_token=${token}`, local.url)).errcode).toBe(45009);
      expect((await get(`cgi-bin/ticket/get?access_token=${token}&type=agent_config`, local.url)).errcode).toBe(45009);
      // Refused at 12:10: the next clock hour (13:00) is still blocked; 13:10 is not.
      local.advanceClock(55 * 60);
      expect((await get(`cgi-bin/get_jsapi_ticket?access_token=${token}`, local.url)).errcode).toBe(45009);
      local.advanceClock(5 * 60);
      expect((await get(`cgi-bin/get_jsapi_ticket?access_token=${token}`, local.url)).errcode).toBe(0);
    });
  });

  it('the corp’s agents share 400 an hour', async () => {
    await withMock({ now: () => T0, quotas: { workTicketPerHour: 3, workCorpTicketPerHour: 4 } }, async (local) => {
      const first = local.createWorkApp();
      const second = local.createWorkApp({ corpId: first.corpId });
      const other = local.createWorkApp();
      const [a, b, c] = (await Promise.all([first, second, other].map(async (app) => (await gettoken(app, local.url)).access_token))) as [string, string, string];
      const ticket = async (token: string) => (await get(`cgi-bin/get_jsapi_ticket?access_token=${token}`, local.url)).errcode;
      expect([await ticket(a), await ticket(a), await ticket(a), await ticket(a)]).toEqual([0, 0, 0, 45009]);
      expect([await ticket(b), await ticket(b)]).toEqual([0, 45009]);
      const refused = await get(`cgi-bin/get_jsapi_ticket?access_token=${b}`, local.url);
      // WeCom words it as a frequency limit, not as the official accounts' daily quota.
      expect(refused.errmsg).toMatch(/^api freq out of limit rid: /);
      expect(await ticket(c)).toBe(0);
    });
  });
});
