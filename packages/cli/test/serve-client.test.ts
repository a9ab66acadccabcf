import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { MemoryCache, OfficialAccount, Work, remoteTokenSource, type LogFields } from '@wxkit/core';
import { freePort, startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { CountingAgent } from './counting-agent.js';
import { startTokenService } from '../src/serve.js';

// remoteTokenSource against wxkit serve, counting the requests the client sends to the service.
const KEY = 'serve-client-key-0123456789abcdef';

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

  it("a 40001 is reported with its errcode: the service counts the token superseded from outside the fleet (a 42001 is not, nor an errcode that is no number)", async () => {
    const { appId, secret } = mock.createApp();
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    const client = new OfficialAccount({ appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url: service.url, key: KEY }), logger: false });
    const external = async () => {
      const text = await (await fetch(`${service.url}/metrics`)).text();
      const line = text.split('\n').find((row) => row.startsWith('wxkit_token_invalidated_externally_total{') && row.includes('token="access_token"'));
      return line === undefined ? 0 : Number(line.split(' ').pop());
    };
    try {
      await client.accessToken.getToken();
      expect(await external()).toBe(0);
      // Another program fetched a token: WeChat answers 40001 for the one the service's store holds.
      mock.invalidateTokens(appId);
      await client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} });
      expect(await external()).toBe(1);
      const fetches = mock.counters(appId).tokenRequests;
      // A token WeChat rejects as expired (42001) is no one else's doing: replaced, not counted.
      const held = await client.accessToken.getToken();
      mock.invalidateTokens(appId);
      await client.accessToken.invalidate(held, 42001);
      expect(mock.counters(appId).tokenRequests).toBe(fetches + 1);
      expect(await external()).toBe(1);
      // A client of another make: the errcode as text is taken; one that is no number is left out.
      const report = async (token: string, errcode: unknown) => {
        const res = await fetch(`${service.url}/v1/token/oa/${appId}/invalidate`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` }, body: JSON.stringify({ token, errcode }) });
        expect(res.status).toBe(200);
        return ((await res.json()) as { access_token: string }).access_token;
      };
      let current = await client.accessToken.getToken();
      mock.invalidateTokens(appId);
      current = await report(current, '40001');
      expect(await external()).toBe(2);
      mock.invalidateTokens(appId);
      current = await report(current, { code: 40001 });
      expect(mock.isTokenValid(appId, current)).toBe(true);
      expect(mock.counters(appId).tokenRequests).toBe(fetches + 3);
      expect(await external()).toBe(2);
      expect(mock.counters(appId).templateSends).toBe(1);
    } finally {
      await client.close();
      await service.close();
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
      // The service's answer that said to wait, WeChat's errcode and all, as the cause.
      expect((held as Error).cause).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: -1, message: (failed as Error).message });
      expect(agent.sent).toHaveLength(1);
    } finally {
      mock.clearFaults();
      await client.close();
      await service.close();
      await agent.close();
    }
  });
});

describe("wxkit serve's own way out", () => {
  it("a report WeChat cannot check (it does not answer): the client, on its default deadline, gets the service's 429, not a timeout of its own", async () => {
    const { appId, secret } = mock.createApp();
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    const source = remoteTokenSource({ url: service.url, key: KEY });
    const request = { kind: 'official_account' as const, id: appId, field: 'access_token' as const };
    try {
      const { value } = await source.fetch(request);
      // The token was fetched moments ago: the service checks the report with WeChat, which hangs.
      mock.injectFault({ kind: 'hang', path: 'cgi-bin/get_api_domain_ip', times: 1 });
      const error = await source.invalidate(request, value, 40001).then(() => undefined, (e: unknown) => e);
      expect(error).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 429 });
      expect(mock.counters(appId).tokenRequests).toBe(1);
    } finally {
      mock.clearFaults();
      await source.close?.();
      await service.close();
    }
  });

  it('/readyz stops saying ready once the service holds no token it can hand out (the one it had reported dead, WeChat refusing another)', async () => {
    const { appId, secret } = mock.createApp();
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false });
    const auth = { authorization: `Bearer ${KEY}` };
    try {
      const first = await fetch(`${service.url}/v1/token/oa/${appId}`, { headers: auth });
      const { access_token: token } = (await first.json()) as { access_token: string };
      expect((await fetch(`${service.url}/readyz`)).status).toBe(200);
      // WeChat ends the token, and refuses to issue another (this host's address left the whitelist).
      mock.invalidateTokens(appId);
      mock.setIpAllowed(appId, false);
      const report = await fetch(`${service.url}/v1/token/oa/${appId}/invalidate`, { method: 'POST', headers: auth, body: JSON.stringify({ token, errcode: 40001 }) });
      expect(report.status).toBe(502);
      await report.text();
      const ready = await fetch(`${service.url}/readyz`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toMatchObject({ error: { code: 'not_ready', apps: [`official_account/${appId}`] } });
    } finally {
      await service.close();
    }
  });

  it('/readyz says ready again once a passing failure (-1) has backed off, with no request to the service: it looks again then, not at its next periodic check', async () => {
    const { appId, secret } = mock.createApp();
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false, checkEverySeconds: 3600 });
    const auth = { authorization: `Bearer ${KEY}` };
    try {
      const { access_token: token } = (await (await fetch(`${service.url}/v1/token/oa/${appId}`, { headers: auth })).json()) as { access_token: string };
      // WeChat ends the token; its next one fails once (-1, system busy): the fleet backs off a second.
      mock.invalidateTokens(appId);
      mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/stable_token', times: 1 });
      const report = await fetch(`${service.url}/v1/token/oa/${appId}/invalidate`, { method: 'POST', headers: auth, body: JSON.stringify({ token, errcode: 40001 }) });
      expect(report.status).toBe(502);
      await report.text();
      expect((await fetch(`${service.url}/readyz`)).status).toBe(503);
      // Behind a balancer that routes by /readyz no request comes: the service looks again by itself.
      await vi.waitFor(async () => expect((await fetch(`${service.url}/readyz`)).status).toBe(200), { timeout: 15_000, interval: 200 });
      expect(mock.counters(appId)).toMatchObject({ tokenRequests: 3, errcodes: { '-1': 1 } });
    } finally {
      mock.clearFaults();
      await service.close();
    }
  });

  it('an instance that cannot reach WeChat (its fetch never left the host) answers 503 without Retry-After: its clients may reach another instance', async () => {
    const { appId, secret } = mock.createApp();
    const dead = `http://127.0.0.1:${await freePort()}`;
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: dead, logger: false });
    try {
      for (let i = 0; i < 2; i += 1) {
        const res = await fetch(`${service.url}/v1/token/oa/${appId}`, { headers: { authorization: `Bearer ${KEY}` } });
        expect(res.status).toBe(503);
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe('wechat_unreachable');
        expect(res.headers.get('retry-after')).toBeNull();
      }
    } finally {
      await service.close();
    }
  });
});

describe('wxkit serve under more connections than it holds', () => {
  it('answers the ones past maxConnections 503 busy with Retry-After, closes those past its band unanswered, logs and counts both, and takes new ones once others close', async () => {
    const { appId, secret } = mock.createApp();
    const warnings: LogFields[] = [];
    let onWarn = () => {};
    const logger = { warn: (fields: LogFields) => (warnings.push(fields), onWarn()) };
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger, maxConnections: 2 });
    const { hostname, port } = new URL(service.url);
    const open = () =>
      new Promise<Socket>((resolve, reject) => {
        const socket = connect(Number(port), hostname, () => resolve(socket));
        socket.once('error', reject);
      });
    /** What `socket` receives until the service closes it. */
    const receivedOn = (socket: Socket) =>
      new Promise<string>((resolve) => {
        const chunks: Buffer[] = [];
        socket.on('data', (chunk: Buffer) => chunks.push(chunk));
        socket.once('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
      });
    const held = [await open(), await open()];
    try {
      // Past maxConnections: one answer, then the connection is closed.
      const third = await open();
      const answer = receivedOn(third);
      third.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      const text = await answer;
      expect(text).toMatch(/^HTTP\/1\.1 503 /);
      expect(text.toLowerCase()).toContain('retry-after: 1');
      expect(text.toLowerCase()).toContain('connection: close');
      expect(text).toContain('"code":"busy"');
      expect(warnings.find((line) => line.event === 'serve.connections_busy')).toMatchObject({ answered: 1, maxConnections: 2 });
      // The band above maxConnections (16 here) taken too: the next one is closed without a byte.
      for (let i = 0; i < 16; i += 1) held.push(await open());
      const dropped = new Promise<void>((resolve) => (onWarn = () => warnings.some((line) => line.event === 'serve.connections_dropped') && resolve()));
      const past = await open();
      const nothing = await receivedOn(past);
      await dropped;
      expect(nothing).toBe('');
      expect(warnings.find((line) => line.event === 'serve.connections_dropped')).toMatchObject({ dropped: 1, maxConnections: 2 });
    } finally {
      for (const socket of held) socket.destroy();
    }
    try {
      // The held connections are gone once the service saw them close: it answers again.
      let metrics: string | undefined;
      let refused = 0;
      for (let attempt = 0; attempt < 50 && metrics === undefined; attempt += 1) {
        metrics = await fetch(`${service.url}/metrics`).then(
          (res) => (res.status === 200 ? res.text() : void (refused += 1)),
          () => void (refused += 1),
        );
      }
      expect(metrics).toMatch(/^wxkit_http_connections_dropped_total [1-9]\d*$/m);
      // Answered before its route is read: counted as unmatched.
      expect(metrics).toMatch(/^wxkit_http_requests_total\{route="unmatched",status="503"\} 1$/m);
    } finally {
      await service.close();
    }
  });

  it('a connection in the band, held silent, does not count as served: once the served ones close, the next is served', async () => {
    const { appId, secret } = mock.createApp();
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false, maxConnections: 1 });
    const { hostname, port } = new URL(service.url);
    const open = () =>
      new Promise<Socket>((resolve, reject) => {
        const socket = connect(Number(port), hostname, () => resolve(socket));
        socket.once('error', reject);
      });
    const served = await open();
    const silent = await open();
    try {
      // The served connection goes; the service has seen it go once a request on a new one is answered.
      const gone = new Promise((resolve) => served.once('close', resolve));
      served.destroy();
      await gone;
      await vi.waitFor(async () => expect((await fetch(`${service.url}/healthz`)).status).toBe(200));
    } finally {
      silent.destroy();
      await service.close();
    }
  });

  it("a client answered 503 busy holds back as Retry-After says: its next call does not ask the service", async () => {
    const { appId, secret } = mock.createApp();
    const service = await startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false, maxConnections: 1 });
    const { hostname, port } = new URL(service.url);
    const held = await new Promise<Socket>((resolve, reject) => {
      const socket = connect(Number(port), hostname, () => resolve(socket));
      socket.once('error', reject);
    });
    const agent = new CountingAgent();
    const source = remoteTokenSource({ url: service.url, key: KEY, dispatcher: agent });
    const request = { kind: 'official_account' as const, id: appId, field: 'access_token' as const };
    try {
      expect(await source.fetch(request).catch((e: unknown) => e)).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 503 });
      expect(await source.fetch(request).catch((e: unknown) => e)).toMatchObject({ code: 'ERR_WXKIT_HTTP' });
      expect(agent.sent).toEqual([`GET v1/token/official_account/${appId}`]);
    } finally {
      held.destroy();
      await source.close?.();
      await agent.close();
      await service.close();
    }
  });

  it('refuses a maxConnections that is no whole number of at least 1', async () => {
    const { appId, secret } = mock.createApp();
    for (const maxConnections of [0, 1.5, -1, Number.NaN]) {
      await expect(
        startTokenService({ cache: new MemoryCache(), apps: [{ kind: 'official_account', appId, secret }], keys: [KEY], port: 0, baseUrl: mock.url, logger: false, maxConnections }),
        String(maxConnections),
      ).rejects.toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'maxConnections' });
    }
  });
});

describe('remoteTokenSource with wxkit serve, a WeCom token in its last 30 s', () => {
  it('the token the service still hands out (gettoken answers it with too little life to keep) is served from the client until 5 s before its end, not asked for on every call', async () => {
    // Tokens that live 62 s, the first one handed out 30.5 s ago (WeChat's clock set back for it).
    let offset = -30_500;
    const wecom = await startMockWeChat({ tokenTtlSeconds: 62, now: () => Date.now() + offset });
    const { corpId, agentId, secret } = wecom.createWorkApp();
    const cache = new MemoryCache();
    // Another process of the fleet fetched it, by WeChat's clock.
    const seed = new Work({ corpId, agentId, secret, baseUrl: wecom.url, cache, logger: false, now: () => Date.now() + offset });
    const entry = await seed.accessToken.getEntry();
    offset = 0;
    const service = await startTokenService({ cache, apps: [{ kind: 'work', corpId, agentId, secret }], keys: [KEY], port: 0, workBaseUrl: wecom.url, logger: false });
    const agent = new CountingAgent();
    const client = new Work({ corpId, agentId, baseUrl: wecom.url, cache: new MemoryCache(), tokenSource: remoteTokenSource({ url: service.url, key: KEY, dispatcher: agent }), logger: false });
    try {
      expect(await client.accessToken.getToken()).toBe(entry.value);
      // Its last 30 s: the service's store no longer serves it, gettoken hands it back with under 30 s left.
      while (Date.now() < (entry.expiresAt! - 29) * 1000) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(await client.accessToken.getToken()).toBe(entry.value);
      const sent = agent.sent.length;
      for (let i = 0; i < 5; i += 1) expect(await client.accessToken.getToken()).toBe(entry.value);
      expect(agent.sent).toHaveLength(sent);
    } finally {
      await Promise.all([client.close(), seed.close()]);
      await service.close();
      await agent.close();
      await wecom.close();
    }
  });
});
