import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OfficialAccount } from '../src/index.js';
import { errorText, rejection } from './helpers.js';

// A base URL with a path too many (a proxy prefix the host does not serve) sends every call to
// `/wechat/cgi-bin/…`, which the API answers 404: the message says where the request went. (A base
// ending in the API's own prefix, `…/cgi-bin`, is refused at construction.)

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

describe('an API answering 404', () => {
  it('is reported with the URL the request went to, base path included, and no credential', async () => {
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: `${mock.url}/wechat`, cache: new MemoryCache(), logger: false, fallbackDir: false });
    const error = await rejection(app.accessToken.getToken());
    await app.close();
    expect(error).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 404 });
    expect(error.message).toContain(`(it went to ${mock.url}/wechat/cgi-bin/stable_token)`);
    expect(errorText(error)).not.toContain(secret);
    // The request never reached an API of the mock.
    expect(mock.counters(appId).tokenRequests).toBe(0);
  });
});
