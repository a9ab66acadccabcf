import { createServer, type Server } from 'node:http';
import { MessageCrypto } from '@wxkit/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockComponent, type MockWeChat } from '../src/index.js';

// A frozen base clock: only advanceClock() moves the mock's time.
const T0 = Date.UTC(2026, 10, 25, 4, 0, 0);
type Json = Record<string, any>;

let mock: MockWeChat;
let callback: Server;
let callbackUrl: string;
/** What the callback received: query and body of each push. */
const received: { query: URLSearchParams; body: string }[] = [];

beforeAll(async () => {
  mock = await startMockWeChat({ now: () => T0 });
  callback = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      received.push({ query: new URL(req.url ?? '/', 'http://x').searchParams, body });
      res.end('success');
    });
  });
  await new Promise<void>((resolve) => callback.listen(0, '127.0.0.1', resolve));
  const address = callback.address();
  callbackUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/wechat/open`;
});
afterAll(async () => {
  await mock.close();
  await new Promise((resolve) => callback.close(resolve));
});

const post = async (path: string, body: unknown): Promise<Json> =>
  (await fetch(`${mock.url}/${path}`, { method: 'POST', body: JSON.stringify(body) })).json() as Promise<Json>;

async function componentToken(component: MockComponent, ticket = mock.issueVerifyTicket(component.appId)): Promise<Json> {
  return post('cgi-bin/component/api_component_token', {
    component_appid: component.appId,
    component_appsecret: component.secret,
    component_verify_ticket: ticket,
  });
}

function decryptPush(component: MockComponent, push: { query: URLSearchParams; body: string }): string {
  const crypto = new MessageCrypto({ token: component.token, encodingAESKey: component.encodingAESKey, appId: component.appId });
  const encrypt = /<Encrypt><!\[CDATA\[(.*?)\]\]><\/Encrypt>/.exec(push.body)![1]!;
  return crypto.decrypt({
    msgSignature: push.query.get('msg_signature')!,
    timestamp: push.query.get('timestamp')!,
    nonce: push.query.get('nonce')!,
    encrypt,
  });
}

describe('component_verify_ticket pushes', () => {
  it('pushes an encrypted, signed ticket that core decrypts, and the token endpoint accepts it', async () => {
    const component = mock.createComponent();
    mock.setComponentCallback(component.appId, callbackUrl);
    const before = received.length;
    const result = await mock.pushVerifyTicket(component.appId);
    expect(result).toMatchObject({ status: 200, body: 'success' });
    const push = received[before]!;
    expect(push.query.get('encrypt_type')).toBe('aes');
    const xml = decryptPush(component, push);
    expect(xml).toContain('<InfoType><![CDATA[component_verify_ticket]]></InfoType>');
    expect(xml).toContain(`<ComponentVerifyTicket><![CDATA[${result.ticket}]]></ComponentVerifyTicket>`);
    const token = await componentToken(component, result.ticket);
    expect(token.component_access_token).toMatch(/^\d{2}_/);
    expect(token.expires_in).toBe(7200);
    expect(mock.counters(component.appId)).toMatchObject({ verifyTicketPushes: 1, componentTokenRequests: 1 });
  });

  it('pushes every 10 minutes of mock time, and only then', async () => {
    const component = mock.createComponent();
    mock.setComponentCallback(component.appId, callbackUrl);
    mock.advanceClock(599);
    await mock.pushesSettled();
    expect(mock.counters(component.appId).verifyTicketPushes).toBe(0);
    mock.advanceClock(1);
    await mock.pushesSettled();
    expect(mock.counters(component.appId).verifyTicketPushes).toBe(1);
    mock.advanceClock(600);
    await mock.pushesSettled();
    expect(mock.counters(component.appId).verifyTicketPushes).toBe(2);
    mock.setComponentCallback(component.appId, undefined);
  });
});

describe('cgi-bin/component/api_component_token', () => {
  it('61006 for an unknown ticket, 61005 once it is 12 h old, 40125 for a wrong secret, 61004 outside the whitelist', async () => {
    const component = mock.createComponent();
    const ticket = mock.issueVerifyTicket(component.appId);
    const ask = (extra: Json = {}) =>
      post('cgi-bin/component/api_component_token', {
        component_appid: component.appId,
        component_appsecret: component.secret,
        component_verify_ticket: ticket,
        ...extra,
      });
    expect((await ask({ component_verify_ticket: 'ticket@@@nope' })).errcode).toBe(61006);
    expect((await ask({ component_appsecret: 'wrong' })).errcode).toBe(40125);
    expect((await ask({ component_appsecret: '' })).errcode).toBe(41004);
    mock.setIpAllowed(component.appId, false);
    expect(await ask()).toMatchObject({ errcode: 61004, errmsg: expect.stringMatching(/^access clientip is not registered requestIP: \S+ rid: /) });
    mock.setIpAllowed(component.appId, true);
    expect((await ask()).component_access_token).toBeTypeOf('string');
    mock.advanceClock(12 * 3600);
    expect((await ask()).errcode).toBe(61005);
  });

  it('a new component token supersedes the old one after the grace window: 40001 on the stale one', async () => {
    const component = mock.createComponent();
    const first = (await componentToken(component)).component_access_token as string;
    await componentToken(component);
    const preauth = (token: string) => post(`cgi-bin/component/api_create_preauthcode?component_access_token=${token}`, { component_appid: component.appId });
    expect((await preauth(first)).pre_auth_code).toMatch(/^preauthcode@@@/);
    mock.advanceClock(300);
    expect((await preauth(first)).errcode).toBe(40001);
  });
});

describe('authorization and authorizer tokens', () => {
  async function authorized(component: MockComponent) {
    const token = (await componentToken(component)).component_access_token as string;
    const pre = (await post(`cgi-bin/component/api_create_preauthcode?component_access_token=${token}`, { component_appid: component.appId }))
      .pre_auth_code as string;
    const grant = mock.authorize(component.appId, { preAuthCode: pre });
    return { token, grant };
  }

  it('api_query_auth answers the first tokens once; the authorizer token works on the business endpoints', async () => {
    const component = mock.createComponent();
    const { token, grant } = await authorized(component);
    const query = () => post(`cgi-bin/component/api_query_auth?component_access_token=${token}`, { component_appid: component.appId, authorization_code: grant.authorizationCode });
    const info = (await query()).authorization_info as Json;
    expect(info).toMatchObject({ authorizer_appid: grant.authorizerAppId, expires_in: 7200, func_info: [{ funcscope_category: { id: 1 } }, {}, {}, {}] });
    expect(info.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(grant.authorizerAppId));
    expect((await query()).errcode).toBe(61009);
    const send = await post(`cgi-bin/message/template/send?access_token=${info.authorizer_access_token}`, { touser: 'o1', template_id: 'T', data: {} });
    expect(send.errcode).toBe(0);
    const ticket = (await (await fetch(`${mock.url}/cgi-bin/ticket/getticket?type=jsapi&access_token=${info.authorizer_access_token}`)).json()) as Json;
    expect(ticket.ticket).toBeTypeOf('string');
    expect(mock.counters(grant.authorizerAppId)).toMatchObject({ templateSends: 1, ticketRequests: 1 });
  });

  it('api_authorizer_token rotates the refresh token: the old one answers 61023 from then on', async () => {
    const component = mock.createComponent();
    const { token, grant } = await authorized(component);
    const refresh = (refreshToken: string | undefined) =>
      post(`cgi-bin/component/api_authorizer_token?component_access_token=${token}`, {
        component_appid: component.appId,
        authorizer_appid: grant.authorizerAppId,
        authorizer_refresh_token: refreshToken,
      });
    const old = mock.authorizerRefreshToken(grant.authorizerAppId)!;
    const answer = await refresh(old);
    expect(answer.authorizer_access_token).toMatch(/^\d{2}_/);
    expect(answer.authorizer_refresh_token).not.toBe(old);
    expect(answer.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(grant.authorizerAppId));
    expect((await refresh(old)).errcode).toBe(61023);
    expect((await refresh(answer.authorizer_refresh_token)).authorizer_access_token).toBeTypeOf('string');
    expect(mock.counters(grant.authorizerAppId).authorizerTokenRequests).toBe(3);
    // api_get_authorizer_info tells the current refresh token: the way back after a lost one.
    const info = await post(`cgi-bin/component/api_get_authorizer_info?component_access_token=${token}`, { component_appid: component.appId, authorizer_appid: grant.authorizerAppId });
    expect(info.authorization_info.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(grant.authorizerAppId));
  });

  it('authorizeMany: accounts authorized at once, each refresh token working once, no access token issued', async () => {
    const component = mock.createComponent();
    const tokenAnswer = await componentToken(component);
    const accounts = mock.authorizeMany(component.appId, 3);
    expect(new Set(accounts.map((account) => account.authorizerAppId)).size).toBe(3);
    for (const { authorizerAppId, refreshToken } of accounts) {
      expect(mock.authorizerRefreshToken(authorizerAppId)).toBe(refreshToken);
      expect(mock.counters(authorizerAppId).tokensIssued).toBe(0);
      const refresh = () =>
        post(`cgi-bin/component/api_authorizer_token?component_access_token=${tokenAnswer.component_access_token}`, {
          component_appid: component.appId,
          authorizer_appid: authorizerAppId,
          authorizer_refresh_token: refreshToken,
        });
      expect((await refresh()).authorizer_access_token).toMatch(/^\d{2}_/);
      expect((await refresh()).errcode).toBe(61023);
    }
  });

  it('a lost-answer fault: WeChat rotates the refresh token, and the caller never hears the new one', async () => {
    const component = mock.createComponent();
    const { token, grant } = await authorized(component);
    const old = mock.authorizerRefreshToken(grant.authorizerAppId)!;
    mock.injectFault({ kind: 'lost-answer', path: 'cgi-bin/component/api_authorizer_token' });
    const request = fetch(`${mock.url}/cgi-bin/component/api_authorizer_token?component_access_token=${token}`, {
      method: 'POST',
      body: JSON.stringify({ component_appid: component.appId, authorizer_appid: grant.authorizerAppId, authorizer_refresh_token: old }),
      signal: AbortSignal.timeout(300),
    });
    await expect(request).rejects.toThrow();
    expect(mock.authorizerRefreshToken(grant.authorizerAppId)).not.toBe(old);
    expect(mock.counters(grant.authorizerAppId)).toMatchObject({ authorizerTokenRequests: 1, tokensIssued: 1 });
  });

  it('a field fault: WeChat rotates the refresh token, and the answer carries the value given, or another field of its own', async () => {
    const component = mock.createComponent();
    const { token, grant } = await authorized(component);
    const refresh = () =>
      post(`cgi-bin/component/api_authorizer_token?component_access_token=${token}`, {
        component_appid: component.appId,
        authorizer_appid: grant.authorizerAppId,
        authorizer_refresh_token: mock.authorizerRefreshToken(grant.authorizerAppId),
      });
    const old = mock.authorizerRefreshToken(grant.authorizerAppId)!;
    mock.injectFault({ kind: 'field', path: 'cgi-bin/component/api_authorizer_token', field: 'authorizer_refresh_token', value: { garbled: true } });
    const garbled = await refresh();
    expect(garbled).toMatchObject({ authorizer_access_token: expect.stringMatching(/^\d{2}_/), authorizer_refresh_token: { garbled: true } });
    expect(mock.authorizerRefreshToken(grant.authorizerAppId)).not.toBe(old);
    mock.injectFault({ kind: 'field', path: 'cgi-bin/component/api_authorizer_token', field: 'authorizer_refresh_token', from: 'authorizer_access_token' });
    const copied = await refresh();
    expect(copied.authorizer_refresh_token).toBe(copied.authorizer_access_token);
    // Inside an object, and only once: the next answer is whole.
    mock.injectFault({ kind: 'field', path: 'cgi-bin/component/api_get_authorizer_info', field: 'authorization_info.authorizer_refresh_token', value: 'a b' });
    const info = () => post(`cgi-bin/component/api_get_authorizer_info?component_access_token=${token}`, { component_appid: component.appId, authorizer_appid: grant.authorizerAppId });
    expect((await info()).authorization_info.authorizer_refresh_token).toBe('a b');
    expect((await info()).authorization_info.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(grant.authorizerAppId));
    // WeChat's refusal arrives as it is, and takes the fault.
    mock.injectFault({ kind: 'field', path: 'cgi-bin/component/api_authorizer_token', field: 'authorizer_refresh_token', value: 'x' });
    expect((await post(`cgi-bin/component/api_authorizer_token?component_access_token=${token}`, { component_appid: component.appId, authorizer_appid: grant.authorizerAppId, authorizer_refresh_token: old })).errcode).toBe(61023);
    expect((await refresh()).authorizer_refresh_token).toBe(mock.authorizerRefreshToken(grant.authorizerAppId));
    expect(() => mock.injectFault({ kind: 'field', path: 'cgi-bin/component/api_authorizer_token' })).toThrow(/must name its field/);
  });

  it('61003 once revoked or for another component, 61007 without permissions', async () => {
    const component = mock.createComponent();
    const other = mock.createComponent();
    const { token, grant } = await authorized(component);
    const otherToken = (await componentToken(other)).component_access_token as string;
    const refreshWith = (componentAppId: string, componentAccessToken: string) =>
      post(`cgi-bin/component/api_authorizer_token?component_access_token=${componentAccessToken}`, {
        component_appid: componentAppId,
        authorizer_appid: grant.authorizerAppId,
        authorizer_refresh_token: mock.authorizerRefreshToken(grant.authorizerAppId),
      });
    expect((await refreshWith(other.appId, otherToken)).errcode).toBe(61003);
    mock.revokeAuthorization(grant.authorizerAppId);
    expect((await refreshWith(component.appId, token)).errcode).toBe(61003);

    const bare = mock.authorize(component.appId, { funcInfo: [] });
    const info = (await post(`cgi-bin/component/api_query_auth?component_access_token=${token}`, { component_appid: component.appId, authorization_code: bare.authorizationCode }))
      .authorization_info as Json;
    const send = await post(`cgi-bin/message/template/send?access_token=${info.authorizer_access_token}`, { touser: 'o1', template_id: 'T', data: {} });
    expect(send.errcode).toBe(61007);
  });
});
