import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '../src/index.js';

// A token works only on the APIs of its own kind of account: an official account's or mini program's
// on api.weixin.qq.com, a WeCom agent's on qyapi.weixin.qq.com, a component_access_token only where a
// component_access_token is asked for. Anything else is an access token the API does not know: 40014.
const T0 = Date.UTC(2026, 10, 25, 4, 0, 0);
type Json = Record<string, any>;

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat({ now: () => T0 });
});
afterAll(async () => {
  await mock.close();
});

const get = async (path: string): Promise<Json> => (await fetch(`${mock.url}/${path}`)).json() as Promise<Json>;
const post = async (path: string, body: unknown): Promise<Json> =>
  (await fetch(`${mock.url}/${path}`, { method: 'POST', body: JSON.stringify(body) })).json() as Promise<Json>;
const template = { touser: 'o1', template_id: 'T', data: { first: { value: 'x' } } };
const workMessage = { touser: 'zhangsan', msgtype: 'text', agentid: 1, text: { content: 'x' } };

async function workToken(): Promise<{ id: string; token: string; corpId: string }> {
  const app = mock.createWorkApp();
  const body = await get(`cgi-bin/gettoken?corpid=${app.corpId}&corpsecret=${encodeURIComponent(app.secret)}`);
  return { id: `${app.corpId}:${app.agentId}`, token: body.access_token as string, corpId: app.corpId };
}

async function appToken(): Promise<{ appId: string; token: string }> {
  const app = mock.createApp();
  const body = await post('cgi-bin/stable_token', { grant_type: 'client_credential', appid: app.appId, secret: app.secret });
  return { appId: app.appId, token: body.access_token as string };
}

describe('tokens of one kind of account are unknown to the APIs of another', () => {
  it('a component_access_token sent as an access_token → 40014, nothing sent', async () => {
    const component = mock.createComponent();
    const ticket = mock.issueVerifyTicket(component.appId);
    const { component_access_token: token } = await post('cgi-bin/component/api_component_token', {
      component_appid: component.appId,
      component_appsecret: component.secret,
      component_verify_ticket: ticket,
    });
    expect(typeof token).toBe('string');
    expect((await post(`cgi-bin/message/template/send?access_token=${token}`, template)).errcode).toBe(40014);
    expect((await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`)).errcode).toBe(40014);
    expect(mock.counters(component.appId)).toMatchObject({ templateSends: 0, ticketRequests: 0 });
  });

  it('a WeCom token on the official account APIs → 40014, nothing sent', async () => {
    const { id, token } = await workToken();
    expect((await post(`cgi-bin/message/template/send?access_token=${token}`, template)).errcode).toBe(40014);
    expect((await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`)).errcode).toBe(40014);
    expect(mock.counters(id)).toMatchObject({ templateSends: 0, ticketRequests: 0 });
  });

  it('an official account token on the WeCom APIs → 40014, nothing sent', async () => {
    const { appId, token } = await appToken();
    expect((await post(`cgi-bin/message/send?access_token=${token}`, workMessage)).errcode).toBe(40014);
    expect((await get(`cgi-bin/get_jsapi_ticket?access_token=${token}`)).errcode).toBe(40014);
    expect((await get(`cgi-bin/ticket/get?access_token=${token}&type=agent_config`)).errcode).toBe(40014);
    expect(mock.counters(appId)).toMatchObject({ messageSends: 0, ticketRequests: 0 });
    // Each still works on its own service's APIs, and on the IP lists both services answer.
    const work = await workToken();
    expect((await post(`cgi-bin/message/send?access_token=${work.token}`, workMessage)).errcode).toBe(0);
    expect((await post(`cgi-bin/message/template/send?access_token=${token}`, template)).errcode).toBe(0);
    for (const each of [work.token, token]) expect(Array.isArray((await get(`cgi-bin/getcallbackip?access_token=${each}`)).ip_list)).toBe(true);
  });
});
