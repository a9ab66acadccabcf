import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, MiniProgram, nativeSchema } from '../src/index.js';
import { rejection } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

const newMiniProgram = (options: Partial<ConstructorParameters<typeof MiniProgram>[0]> = {}) => {
  const { appId, secret } = mock.createApp();
  const cache = new MemoryCache();
  return { mp: new MiniProgram({ appId, secret, baseUrl: mock.url, cache, logger: false, ...options }), appId, secret, cache };
};

describe('MiniProgram', () => {
  it('shares its token like an official account: stable endpoint, documented key', async () => {
    const { mp, appId, cache } = newMiniProgram();
    const token = await mp.accessToken.getToken();
    expect(mp.accessToken.cacheKey).toBe(`wechat:stable_access_token:${appId}`);
    expect(nativeSchema().decode('access_token', (await cache.get(mp.accessToken.cacheKey)) ?? '')?.value).toBe(token);
    expect(mock.counters(appId)).toMatchObject({ stableTokenRequests: 1, classicTokenRequests: 0 });
  });

  it('subscribeMessage.send() sends, and recovers from a dead token once', async () => {
    const { mp, appId } = newMiniProgram();
    const message = { touser: 'oUser', template_id: 'TPL', page: 'pages/index', data: { thing1: { value: 'Shipped' } } };
    expect((await mp.subscribeMessage.send(message)).errcode).toBe(0);
    mock.invalidateTokens(appId);
    expect((await mp.subscribeMessage.send(message)).errcode).toBe(0);
    expect(mock.counters(appId)).toMatchObject({ messageSends: 2, tokenRequests: 2, rejectedCalls: 1 });
    await expect(mp.subscribeMessage.send({ ...message, touser: '' })).rejects.toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'touser' });
  });

  it('wxacode.getUnlimited() returns the image bytes; a bad scene is a WeChatApiError', async () => {
    const { mp } = newMiniProgram();
    const png = await mp.wxacode.getUnlimited({ scene: 'order=42', page: 'pages/order/index' });
    expect(Buffer.isBuffer(png)).toBe(true);
    expect(png.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
    const error = await rejection(mp.wxacode.getUnlimited({ scene: 'x'.repeat(33) }));
    expect(error).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40169, path: 'wxa/getwxacodeunlimit' });
  });

  it('wxacode.getUnlimited() answered with an HTML page (a proxy, a captive portal) is a BadResponseError, not image bytes', async () => {
    const { mp, appId } = newMiniProgram();
    mock.injectFault({ kind: 'html', path: 'wxa/getwxacodeunlimit', times: 1 });
    const error = await rejection(mp.wxacode.getUnlimited({ scene: 'order=42' }));
    expect(error).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE', path: 'wxa/getwxacodeunlimit', status: 200 });
    expect(mock.counters(appId).wxaCodes).toBe(0);
  });

  it('auth.code2Session() needs no token; bad and reused codes are WeChatApiErrors; the secret stays out of errors', async () => {
    const { mp, appId, secret } = newMiniProgram();
    const session = await mp.auth.code2Session('code-abc');
    expect(session.openid).toMatch(/^o[\w-]{27}$/);
    expect(session.session_key).toMatch(/\S{20,}/);
    expect(mock.counters(appId).tokenRequests).toBe(0);
    const reused = await rejection(mp.auth.code2Session('code-abc'));
    expect(reused).toMatchObject({ errcode: 40163, path: 'sns/jscode2session' });
    expect((await rejection(mp.auth.code2Session('nonsense'))).errcode).toBe(40029);
    expect(String(reused.message)).not.toContain(secret);
    await expect(mp.auth.code2Session('')).rejects.toMatchObject({ option: 'jsCode' });
  });

  it('without a secret (follower) code2Session says what it needs', async () => {
    const { appId } = mock.createApp();
    const follower = new MiniProgram({ appId, refresh: 'never', baseUrl: mock.url, logger: false });
    await expect(follower.auth.code2Session('code-x')).rejects.toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'secret' });
  });
});
