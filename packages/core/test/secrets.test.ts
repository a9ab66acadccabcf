import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount } from '../src/index.js';
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
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, tokenEndpoint: 'classic', timeoutMs: 300 });
    const seen = new Set<string>();
    const errors: unknown[] = [];

    seen.add(await app.accessToken.getToken());
    seen.add(await app.jssdk.getTicket());
    mock.invalidateTokens(appId);
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    seen.add(await app.accessToken.getToken());
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/message/template/send', times: 2 });
    errors.push(await rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} })));
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
});
