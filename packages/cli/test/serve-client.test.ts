import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent, type Dispatcher } from 'undici';
import { MemoryCache, OfficialAccount, remoteTokenSource } from '@wxkit/core';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { startTokenService } from '../src/serve.js';

// remoteTokenSource against wxkit serve, counting the requests the client sends to the service.
const KEY = 'serve-client-key-0123456789abcdef';

/** An undici Agent that records each request it sends: `GET v1/token/…`, `POST …/invalidate`. */
class CountingAgent extends Agent {
  readonly sent: string[] = [];
  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    this.sent.push(`${options.method} ${String(options.path).replace(/^\//, '')}`);
    return super.dispatch(options, handler);
  }
}

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

describe('remoteTokenSource with wxkit serve', () => {
  it("a rejected token costs one request to the service: the invalidate answer's token is used as it is", async () => {
    const { appId, secret } = mock.createApp();
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    const agent = new CountingAgent();
    const client = new OfficialAccount({ appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url: service.url, key: KEY, dispatcher: agent }), logger: false });
    try {
      const first = await client.accessToken.getToken();
      expect(agent.sent).toEqual([`GET v1/token/official_account/${appId}`]);
      mock.invalidateTokens(appId);
      await client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} });
      // The report, answered with the new token; no GET after it.
      expect(agent.sent).toEqual([`GET v1/token/official_account/${appId}`, `POST v1/token/official_account/${appId}/invalidate`]);
      const second = await client.accessToken.getToken();
      expect(second).not.toBe(first);
      expect(mock.isTokenValid(appId, second)).toBe(true);
      expect(mock.counters(appId).templateSends).toBe(1);
      expect(agent.sent).toHaveLength(2);
    } finally {
      await client.close();
      await service.close();
      await agent.close();
    }
  });

  it("a fetch the service backs off from is answered with Retry-After, and the client does not ask again before it", async () => {
    const { appId, secret } = mock.createApp();
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/stable_token', times: Infinity });
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    const agent = new CountingAgent();
    const client = new OfficialAccount({ appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url: service.url, key: KEY, dispatcher: agent }), logger: false });
    try {
      const raw = await fetch(`${service.url}/v1/token/oa/${appId}`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(raw.status).toBe(502);
      const seconds = Number(raw.headers.get('retry-after'));
      expect(seconds).toBeGreaterThanOrEqual(1);
      expect(((await raw.json()) as { error: { retryAfterSeconds?: number } }).error.retryAfterSeconds).toBe(seconds);

      const failed = await client.accessToken.getToken().catch((error: unknown) => error);
      expect(failed).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: -1 });
      expect(agent.sent).toHaveLength(1);
      // Asked again at once: the same error, without a request.
      const held = await client.accessToken.getToken().catch((error: unknown) => error);
      expect(held).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: -1 });
      expect((held as Error).message).toMatch(/the token service said to ask again after \S+, and this process waits until then$/);
      expect(agent.sent).toHaveLength(1);
    } finally {
      mock.clearFaults();
      await client.close();
      await service.close();
      await agent.close();
    }
  });
});
