import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '../src/index.js';

// The HTTP shape of WeChat's answers: api.weixin.qq.com labels its JSON, errors included,
// "application/json; encoding=utf-8" (a client that keys on "charset" finds none).
let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

describe('answers', () => {
  it('token answers, business answers and errors, injected ones included, are HTTP 200 "application/json; encoding=utf-8"', async () => {
    const app = mock.createApp();
    const token = await fetch(`${mock.url}/cgi-bin/token?grant_type=client_credential&appid=${app.appId}&secret=${app.secret}`);
    const accessToken = ((await token.json()) as { access_token: string }).access_token;
    const ticket = await fetch(`${mock.url}/cgi-bin/ticket/getticket?access_token=${accessToken}&type=jsapi`);
    const refused = await fetch(`${mock.url}/cgi-bin/ticket/getticket?access_token=nope&type=jsapi`);
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/stable_token' });
    const busy = await fetch(`${mock.url}/cgi-bin/stable_token`, { method: 'POST', body: '{}' });
    for (const res of [token, ticket, refused, busy]) {
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('application/json; encoding=utf-8');
    }
    expect(((await refused.json()) as { errcode: number }).errcode).toBe(40014);
    expect(((await busy.json()) as { errcode: number }).errcode).toBe(-1);
  });
});
