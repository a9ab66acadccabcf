import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache } from '@wxkit/core';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { startTokenService } from '../src/serve.js';

// Which apps a service serves, and where their secrets go.
const KEY = 'serve-apps-key-0123456789abcdef';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

describe('the apps of wxkit serve', () => {
  it('an app listed twice is refused before anything starts: its first client would be left open, the last one serving', async () => {
    const app = mock.createApp();
    const twice = [
      { kind: 'official_account' as const, appId: app.appId, secret: app.secret },
      { kind: 'official_account' as const, appId: app.appId, secret: app.secret, tokenEndpoint: 'classic' as const },
    ];
    await expect(startTokenService({ cache: new MemoryCache(), apps: twice, keys: [KEY], port: 0, baseUrl: mock.url, logger: false })).rejects.toMatchObject({
      code: 'ERR_WXKIT_INVALID_OPTION',
      message: expect.stringContaining(`the app official_account/${app.appId} is listed twice`),
    });
    expect(mock.counters(app.appId).tokenRequests).toBe(0);
  });

  it("a WeCom app's secret goes to WeCom or to workBaseUrl, never to baseUrl (WeChat's API, or a proxy for it)", async () => {
    const work = mock.createWorkApp();
    const id = `${work.corpId}:${work.agentId}`;
    const apps = [{ kind: 'work' as const, corpId: work.corpId, agentId: work.agentId, secret: work.secret }];
    const get = async (url: string) => {
      const res = await fetch(`${url}/v1/token/work/${id}`, { headers: { authorization: `Bearer ${KEY}` } });
      await res.arrayBuffer();
      return res.status;
    };
    // baseUrl alone: the request goes to WeCom's own host (unreachable from here, or refusing this corp).
    const proxied = await startTokenService({ cache: new MemoryCache(), apps, keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    try {
      expect(await get(proxied.url)).not.toBe(200);
      expect(mock.counters(id).tokenRequests).toBe(0);
    } finally {
      await proxied.close();
    }
    const toWork = await startTokenService({ cache: new MemoryCache(), apps, keys: [KEY], port: 0, baseUrl: 'http://127.0.0.1:9', workBaseUrl: mock.url, logger: false });
    try {
      expect(await get(toWork.url)).toBe(200);
      expect(mock.counters(id).tokenRequests).toBe(1);
      // corpId:agentId exactly: a third segment names no app this service serves.
      const extra = await fetch(`${toWork.url}/v1/token/work/${id}:anything`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(extra.status).toBe(404);
      expect(((await extra.json()) as { error: { code: string } }).error.code).toBe('unknown_app');
      // Nor in the one-segment form, where the spec is read as --app reads it.
      const spec = await fetch(`${toWork.url}/v1/token/work:${id}:anything`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(spec.status).toBe(404);
      await spec.arrayBuffer();
    } finally {
      await toWork.close();
    }
  });
});
