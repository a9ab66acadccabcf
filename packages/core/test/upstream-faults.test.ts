import { createServer, type Server } from 'node:http';
import { Agent, interceptors } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockFaultKind, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, Work, nativeSchema } from '../src/index.js';
import { errorText, newApp, rejection } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterEach(() => mock.clearFaults());
afterAll(async () => {
  await mock.close();
});

const key = (appId: string) => nativeSchema().accessTokenKey({ kind: 'official_account', appId, endpoint: 'stable' });

// Every way the token endpoint can answer badly, and the typed error each must become. The client's
// timeout is short so that "never answers" and "trickles forever" end quickly; the point is that they end.
const cases: [MockFaultKind, string, number | undefined][] = [
  ['html', 'ERR_WXKIT_BAD_RESPONSE', 200],
  ['truncated-json', 'ERR_WXKIT_BAD_RESPONSE', 200],
  ['wrong-types', 'ERR_WXKIT_BAD_RESPONSE', undefined],
  ['empty-token', 'ERR_WXKIT_BAD_RESPONSE', undefined],
  ['huge', 'ERR_WXKIT_BAD_RESPONSE', 200],
  ['http-502', 'ERR_WXKIT_HTTP', 502],
  ['http-500', 'ERR_WXKIT_HTTP', 500],
  ['reset', 'ERR_WXKIT_HTTP', undefined],
  ['hang', 'ERR_WXKIT_TIMEOUT', undefined],
  ['slow-body', 'ERR_WXKIT_TIMEOUT', undefined],
];

describe('a bad answer from the token endpoint is a typed error, nothing is cached, and the next fetch waits its back-off', () => {
  it.each(cases)('%s → %s', async (kind, code, status) => {
    let now = Date.now();
    const { app, appId, cache } = newApp(mock, { timeoutMs: 400, now: () => now });
    mock.injectFault({ kind, path: 'cgi-bin/stable_token', times: 1 });
    const error = await rejection(app.accessToken.getToken());
    expect(error.code).toBe(code);
    expect(error.path).toBe('cgi-bin/stable_token');
    if (status !== undefined) expect(error.status).toBe(status);
    expect(await cache.get(key(appId))).toBeUndefined();
    expect(await cache.get(`${key(appId)}:lock`)).toBeUndefined();
    // The failure is shared beside the entry, and the next call within the first back-off step (about
    // 1 s) gets the same error without asking WeChat.
    expect(JSON.parse((await cache.get(`${key(appId)}:failed`))!)).toMatchObject({ code, attempt: 1 });
    const again = await rejection(app.accessToken.getToken());
    expect(again.code).toBe(code);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    // Once the step has passed, the next call fetches and succeeds, and the marker is gone.
    now += 2_000;
    const token = await app.accessToken.getToken();
    expect(mock.isTokenValid(appId, token)).toBe(true);
    expect(mock.counters(appId).tokenRequests).toBe(2);
    expect(await cache.get(`${key(appId)}:failed`)).toBeUndefined();
    await app.close();
  });

  it.each(['"TOKEN-in-quotes"', 's:8:"TOKEN123";', '{"data":"TOKEN123"}', '[TOKEN123]'])(
    'a token in another encoding (%s) is a bad answer: never stored, nor sent to WeChat',
    async (value) => {
      const { app, appId, cache } = newApp(mock);
      mock.injectFault({ kind: 'field', path: 'cgi-bin/stable_token', field: 'access_token', value, times: 1 });
      expect(await rejection(app.accessToken.getToken())).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE', path: 'cgi-bin/stable_token' });
      expect(await cache.get(key(appId))).toBeUndefined();
      expect(mock.counters(appId).tokenRequests).toBe(1);
      await app.close();
    },
  );

  it('a token whose expires_in is too short to use (2 s) is a bad answer, backed off like one, not fetched again at every call', async () => {
    let now = Date.now();
    const shortLived = await startMockWeChat({ tokenTtlSeconds: 2 });
    try {
      const { app, appId, cache } = newApp(shortLived, { now: () => now });
      for (let i = 0; i < 5; i += 1) expect((await rejection(app.accessToken.getToken())).code).toBe('ERR_WXKIT_BAD_RESPONSE');
      expect(shortLived.counters(appId).tokenRequests).toBe(1);
      expect(await cache.get(key(appId))).toBeUndefined();
      // Asked again once the value it carried has ended (2 s), a second after.
      now += 3_000;
      await rejection(app.accessToken.getToken());
      expect(shortLived.counters(appId).tokenRequests).toBe(2);
      await app.close();
    } finally {
      await shortLived.close();
    }
  });

  it('a business API answering garbage is a typed error too, and the token stays cached', async () => {
    const { app, appId, cache } = newApp(mock, { timeoutMs: 400 });
    await app.accessToken.getToken();
    mock.injectFault({ kind: 'html', path: 'cgi-bin/message/template/send', times: 1 });
    const error = await rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }));
    expect(error.code).toBe('ERR_WXKIT_BAD_RESPONSE');
    expect(await cache.get(key(appId))).toBeDefined();
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it.each([302, 307, 308])('a redirect (%i) is an HttpError, never followed, even through a dispatcher that follows redirects: the secret stays home', async (status) => {
    const listen = async (server: Server) => {
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    };
    const elsewhere: string[] = [];
    const other = createServer((req, res) => {
      let body = '';
      req.on('data', (chunk: Buffer) => (body += chunk.toString()));
      req.on('end', () => {
        elsewhere.push(`${req.method} ${req.url} ${body}`);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{"access_token":"not-from-wechat","expires_in":7200}');
      });
    });
    const otherUrl = await listen(other);
    const front = createServer((req, res) => {
      req.resume();
      res.writeHead(status, { location: `${otherUrl}${req.url}` });
      res.end();
    });
    const baseUrl = await listen(front);
    const dispatcher = new Agent().compose(interceptors.redirect({ maxRedirections: 3 }));
    try {
      for (const tokenEndpoint of ['stable', 'classic'] as const) {
        const cache = new MemoryCache();
        const app = new OfficialAccount({ appId: 'wx1234567890abcdef', secret: 'the-app-secret', baseUrl, cache, logger: false, tokenEndpoint, dispatcher });
        const error = await rejection(app.accessToken.getToken());
        expect(error).toMatchObject({ code: 'ERR_WXKIT_HTTP', status });
        expect(errorText(error)).not.toContain('the-app-secret');
        expect(await cache.get(nativeSchema().accessTokenKey({ kind: 'official_account', appId: 'wx1234567890abcdef', endpoint: tokenEndpoint }))).toBeUndefined();
        await app.close();
      }
      expect(elsewhere).toEqual([]);
    } finally {
      await dispatcher.close();
      front.close();
      other.close();
    }
  });

  it('a body that cannot be written as JSON (a BigInt, a cycle) is a ConfigError, and nothing is sent', async () => {
    const { app, appId } = newApp(mock);
    await app.accessToken.getToken();
    const before = mock.counters(appId).requests;
    const cyclic: Record<string, unknown> = { touser: 'o1', template_id: 'TPL', data: {} };
    cyclic.self = cyclic;
    for (const body of [{ touser: 'o1', n: 1n }, cyclic]) {
      const error = await rejection(app.client.postJson('cgi-bin/message/template/send', body));
      expect(error).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'body' });
    }
    expect(mock.counters(appId).requests).toBe(before);
    await app.close();
  });

  it('the server is gone: ERR_WXKIT_HTTP, not a crash', async () => {
    const gone = await startMockWeChat();
    const { app } = newApp(gone, { timeoutMs: 1000 });
    await gone.close();
    const error = await rejection(app.accessToken.getToken());
    expect(error.code).toBe('ERR_WXKIT_HTTP');
  });
});

describe('WeChat refuses the credentials or the quota', () => {
  it('wrong secret (40125): WeChatApiError, asked again at most once a minute, or at once on forceRefresh(); nothing cached', async () => {
    const { appId } = mock.createApp();
    const cache = new MemoryCache();
    let now = Date.now();
    const app = new OfficialAccount({ appId, secret: 'not-the-secret', baseUrl: mock.url, cache, logger: false, now: () => now });
    for (let call = 1; call <= 3; call += 1) {
      const error = await rejection(app.accessToken.getToken());
      expect(error.code).toBe('ERR_WXKIT_WECHAT_API');
      expect(error.errcode).toBe(40125);
      expect(error.rid).toMatch(/^[0-9a-f]+-[0-9a-f]+-[0-9a-f]+$/);
      // The first call asked WeChat; the others within the minute got the same error from the marker.
      expect(mock.counters(appId).tokenRequests).toBe(1);
    }
    now += 59_000;
    await rejection(app.accessToken.getToken());
    expect(mock.counters(appId).tokenRequests).toBe(1);
    now += 2_000;
    expect((await rejection(app.accessToken.getToken())).errcode).toBe(40125);
    expect(mock.counters(appId).tokenRequests).toBe(2);
    // A fixed secret is tried at once with forceRefresh(), marker or not.
    expect((await rejection(app.accessToken.forceRefresh())).errcode).toBe(40125);
    expect(mock.counters(appId).tokenRequests).toBe(3);
    expect(await cache.get(key(appId))).toBeUndefined();
    expect(await cache.get(`${key(appId)}:lock`)).toBeUndefined();
  });

  it('40001 from a token endpoint itself is a wrong secret (WeCom answers a wrong corpsecret so): said so, and asked again once a minute, not in transient steps', async () => {
    let now = Date.now();
    const agent = mock.createWorkApp();
    const work = new Work({ ...agent, secret: 'not-the-corpsecret', baseUrl: mock.url, cache: new MemoryCache(), logger: false, now: () => now });
    const { app, appId } = newApp(mock, { now: () => now });
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/stable_token', times: 1 });
    // A wrong corpsecret names no agent: WeCom's fetches are counted over the whole mock.
    const fetches = { work: () => mock.counters().classicTokenRequests, app: () => mock.counters(appId).tokenRequests };
    const before = fetches.work();
    for (const [client, counted, path] of [[work, () => fetches.work() - before, 'cgi-bin/gettoken'], [app, fetches.app, 'cgi-bin/stable_token']] as const) {
      const error = await rejection(client.accessToken.getToken());
      expect(error).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40001, path });
      expect(error.message).toMatch(/secret/);
      expect(error.message).not.toMatch(/access_token invalid/);
      // Past a first transient step (1 s ± 20 %): a credential error still holds the fleet back.
      now += 2_000;
      const shared = await rejection(client.accessToken.getToken());
      expect(shared).toMatchObject({ errcode: 40001 });
      expect(shared.message).toMatch(/secret/);
      expect(counted()).toBe(1);
    }
    now += 60_000;
    await rejection(work.accessToken.getToken());
    expect(fetches.work() - before).toBe(2);
    await app.accessToken.getToken();
    expect(fetches.app()).toBe(2);
    await Promise.all([work.close(), app.close()]);
  });

  it("WeCom's IP refusal (60020) and invalid secret (40091) at gettoken hold the fleet back a minute, as WeChat's 40164 and 40125 do, not in transient steps", async () => {
    let now = Date.now();
    for (const [errcode, setUp] of [
      [60020, (id: string) => mock.setIpAllowed(id, false)],
      [40091, () => mock.injectFault({ kind: 'errcode', errcode: 40091, path: 'cgi-bin/gettoken', times: 1 })],
    ] as const) {
      const agent = mock.createWorkApp();
      const id = `${agent.corpId}:${agent.agentId}`;
      setUp(id);
      const work = new Work({ ...agent, baseUrl: mock.url, cache: new MemoryCache(), logger: false, now: () => now });
      expect(await rejection(work.accessToken.getToken())).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode, path: 'cgi-bin/gettoken' });
      // Past a first transient step (1 s ± 20 %), and the next (2 s): nothing a person fixes heals that fast.
      now += 2_000;
      expect(await rejection(work.accessToken.getToken())).toMatchObject({ errcode });
      now += 3_000;
      expect(await rejection(work.accessToken.getToken())).toMatchObject({ errcode });
      expect(mock.counters(id).classicTokenRequests).toBe(1);
      mock.setIpAllowed(id, true);
      now += 60_000;
      await work.accessToken.getToken();
      expect(mock.counters(id).classicTokenRequests).toBe(2);
      await work.close();
    }
  });

  it('IP not whitelisted (40164) and unknown appid (40013) surface as they are', async () => {
    const { app, appId } = newApp(mock);
    mock.setIpAllowed(appId, false);
    expect((await rejection(app.accessToken.getToken())).errcode).toBe(40164);
    mock.setIpAllowed(appId, true);
    const unknown = new OfficialAccount({ appId: 'wx0000000000000000', secret: 'x', baseUrl: mock.url, logger: false });
    expect((await rejection(unknown.accessToken.getToken())).errcode).toBe(40013);
  });

  it('daily quota reached (45009): surfaced plainly, no retry storm', async () => {
    const limited = await startMockWeChat({ quotas: { token: 1 } });
    try {
      const { app, appId } = newApp(limited, { tokenEndpoint: 'classic' });
      await app.accessToken.getToken();
      limited.invalidateTokens(appId);
      const sends = Array.from({ length: 10 }, (_, i) =>
        rejection(app.templateMessage.send({ touser: `o${i}`, template_id: 'T', data: {} })),
      );
      const errors = await Promise.all(sends);
      expect(errors.every((error) => error.errcode === 45009)).toBe(true);
      // One fetch that worked, then one refresh attempt shared by the ten callers.
      expect(limited.counters(appId).classicTokenRequests).toBe(2);
    } finally {
      await limited.close();
    }
  });
});
