import { inspect } from 'node:util';
import { Agent, MockAgent, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, MiniProgram, OfficialAccount, remoteTokenSource } from '../src/index.js';
import { maskUrl } from '../src/redact.js';
import { errorText, recordingLogger, rejection } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

describe('secrets stay secret', () => {
  it('no secret, token or ticket in any log line or error, through fetches, rejections and failures', async () => {
    const { appId, secret } = mock.createApp();
    const logger = recordingLogger();
    // The clock moves past the fleet's spacing of fetches after a rejection between the rounds below.
    let clock = Date.now();
    const now = () => clock;
    const cache = new MemoryCache({ now });
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, tokenEndpoint: 'classic', timeoutMs: 300, now });
    const seen = new Set<string>();
    const errors: unknown[] = [];

    seen.add(await app.accessToken.getToken());
    seen.add(await app.jssdk.getTicket());
    mock.invalidateTokens(appId);
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    seen.add(await app.accessToken.getToken());
    clock += 5_000;
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: 2 });
    errors.push(await rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} })));
    clock += 5_000;
    seen.add(await app.accessToken.getToken());
    mock.injectFault({ kind: 'hang', path: 'cgi-bin/get_api_domain_ip', times: 1 });
    errors.push(await rejection(app.client.get('cgi-bin/get_api_domain_ip')));
    const wrong = new OfficialAccount({ appId, secret: `${secret}x`, baseUrl: mock.url, logger, tokenEndpoint: 'classic' });
    errors.push(await rejection(wrong.accessToken.getToken()));
    const down = new OfficialAccount({
      appId,
      secret,
      baseUrl: mock.url,
      logger,
      cache: { get: () => Promise.reject(new Error('down')), set: () => Promise.reject(new Error('down')), delete: async () => {} },
    });
    await down.accessToken.getToken();

    expect(logger.lines.length).toBeGreaterThan(3);
    expect(errors).toHaveLength(3);
    const text = [JSON.stringify(logger.lines), ...errors.map(errorText)].join('\n');
    expect(text).not.toContain(secret);
    for (const value of seen) expect(text).not.toContain(value);
    expect(text).not.toContain('access_token=');
    await Promise.all([app.close(), wrong.close(), down.close()]);
  });

  it('no secret, token or login code in a failure a caller\'s dispatcher reports in the words of the request it refused', async () => {
    const { appId, secret } = mock.createApp();
    const texts: string[] = [];
    const record = (error: Error) => texts.push(errorText(error), inspect(error, { depth: Infinity, showHidden: true }));
    // undici's MockAgent quotes the path and query, or the body, of a request it has no answer for.
    const mockAgent = new MockAgent();
    mockAgent.disableNetConnect();
    mockAgent.get(mock.url).intercept({ path: '/cgi-bin/stable_token', method: 'POST', body: 'never this' }).reply(200, {});
    // A proxy or policy layer of the caller's that names what it blocked.
    const policy: Dispatcher = new Agent().compose(() => (options) => {
      throw new Error(`blocked by policy: ${options.method} ${options.path} ${String(options.body ?? '')}`);
    });
    for (const dispatcher of [mockAgent, policy]) {
      for (const tokenEndpoint of ['classic', 'stable'] as const) {
        const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false, tokenEndpoint, dispatcher });
        record(await rejection(app.accessToken.getToken()));
        await app.close();
      }
      const mp = new MiniProgram({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false, dispatcher });
      record(await rejection(mp.auth.code2Session('login-code-0123456789')));
      await mp.close();
    }
    // An API call with a token: the access_token in its query is no more shown than the secret.
    const cache = new MemoryCache();
    const owner = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    const token = await owner.accessToken.getToken();
    const sender = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, dispatcher: policy });
    record(await rejection(sender.client.get('cgi-bin/get_api_domain_ip')));
    await Promise.all([owner.close(), sender.close()]);

    // A token service's bearer key, sent in a header a dispatcher may quote too.
    const serviceKey = 'service-key-0123456789abcdef';
    mockAgent.get('http://tokens.internal:7400').intercept({ path: `/v1/token/official_account/${appId}`, headers: { authorization: 'Bearer another key' } }).reply(200, {});
    const client = new OfficialAccount({ appId, logger: false, tokenSource: remoteTokenSource({ url: 'http://tokens.internal:7400', key: serviceKey, dispatcher: mockAgent }) });
    record(await rejection(client.accessToken.getToken()));
    await client.close();

    expect(texts.length).toBe(16);
    const text = texts.join('\n');
    // The failures are reported, with the dispatcher's own words around what it quoted.
    expect(text).toContain('Mock dispatch not matched');
    expect(text).toContain('blocked by policy');
    expect(text).not.toContain(secret);
    expect(text).not.toContain('login-code-0123456789');
    expect(text).not.toContain(token);
    expect(text).toContain('Mock dispatch not matched for headers');
    expect(text).not.toContain(serviceKey);
    await Promise.all([mockAgent.close(), policy.close()]);
  });

  it('a store URL is shown with its password masked, and so is a userinfo without a colon, which redis-cli reads as the password', () => {
    expect(maskUrl('redis://user:topsecret@host:6379/0')).toBe('redis://user:***@host:6379/0');
    expect(maskUrl('redis://:topsecret@host:6379/0')).toBe('redis://:***@host:6379/0');
    expect(maskUrl('redis://topsecret@host:6379/0')).toBe('redis://***@host:6379/0');
    expect(maskUrl('redis://host:6379/0')).toBe('redis://host:6379/0');
    expect(maskUrl('not a url topsecret')).toBe('(unparsable URL)');
  });

  it('a store URL whose credentials URL parsing reads as its path (no host: a scheme left out or mistyped) is shown without them', () => {
    expect(maskUrl('user:topsecret@host:26379')).toBe('user:***@host:26379');
    expect(maskUrl('redis:/:topsecret@host:6379')).toBe('redis:***@host:6379');
    expect(maskUrl('redis:topsecret@host')).toBe('redis:***@host');
    expect(maskUrl('redis:///:topsecret@host:6379')).toBe('redis:***@host:6379');
    expect(maskUrl('host:6379')).toBe('host:6379');
    expect(maskUrl('file:///var/lib/a@b')).toBe('file:///var/lib/a@b');
  });
});
