import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, nativeSchema, type TokenCache } from '../src/index.js';

// 1,000 random answers from the token endpoint and from a business API: wrong types, missing fields,
// empty and odd tokens, errcodes, HTML, truncation, odd statuses, huge bodies, trickles, resets, silence.
// Every call must end, within its timeout, in a value or a typed error; no process crash; and no store
// may ever hold an empty or non-string token.
const TIMEOUT_MS = 300;
const ALLOWED = new Set(['ERR_WXKIT_WECHAT_API', 'ERR_WXKIT_HTTP', 'ERR_WXKIT_TIMEOUT', 'ERR_WXKIT_BAD_RESPONSE']);

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/** Settles `call`, failing the test if it outlives its timeout by far: that would be a hang. */
async function settle<T>(call: () => Promise<T>): Promise<{ value?: T; code?: string }> {
  let timer: NodeJS.Timeout | undefined;
  const watchdog = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`a call outlived its ${TIMEOUT_MS} ms timeout by 5 s`)), TIMEOUT_MS + 5000);
  });
  try {
    return { value: await Promise.race([call(), watchdog]) };
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (!code) throw error;
    return { code };
  } finally {
    clearTimeout(timer);
  }
}

describe('upstream fuzz', () => {
  it('1,000 random answers: each call ends in a value or a typed error, and no store holds a bad token', async () => {
    const outcomes = new Map<string, number>();
    const caches: TokenCache[] = [];
    const apps = Array.from({ length: 25 }, () => {
      const { appId, secret } = mock.createApp();
      const cache = new MemoryCache();
      caches.push(cache);
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, tokenEndpoint: 'classic', timeoutMs: TIMEOUT_MS, logger: false });
      return { app, appId };
    });
    mock.injectFault({ kind: 'fuzz', path: 'cgi-bin/token', times: 800, seed: 20261125 });
    mock.injectFault({ kind: 'fuzz', path: 'cgi-bin/message/template/send', times: 200, seed: 7 });

    await Promise.all(
      apps.map(async ({ app }) => {
        for (let round = 0; round < 40; round += 1) {
          // Four in five rounds fetch a token (forceRefresh on the classic endpoint: one fetch each);
          // the rest send a message through whatever token the app holds.
          const result =
            round % 5 === 4
              ? await settle(() => app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} }))
              : await settle(() => app.accessToken.forceRefresh());
          if (result.code) {
            expect(ALLOWED, result.code).toContain(result.code);
            outcomes.set(result.code, (outcomes.get(result.code) ?? 0) + 1);
          } else {
            if (typeof result.value === 'string') expect(result.value).toMatch(/^[\x21-\x7e]+$/);
            else expect(typeof result.value).toBe('object');
            outcomes.set('ok', (outcomes.get('ok') ?? 0) + 1);
          }
        }
      }),
    );
    await Promise.all(apps.map(({ app }) => app.close()));

    // The fuzz really went everywhere: successes and every kind of typed failure occurred.
    expect([...outcomes.values()].reduce((a, b) => a + b, 0)).toBe(1000);
    for (const kind of ['ok', 'ERR_WXKIT_BAD_RESPONSE', 'ERR_WXKIT_HTTP', 'ERR_WXKIT_TIMEOUT', 'ERR_WXKIT_WECHAT_API']) {
      expect(outcomes.get(kind) ?? 0, kind).toBeGreaterThan(0);
    }
    for (const [i, cache] of caches.entries()) {
      const key = nativeSchema().accessTokenKey({ kind: 'official_account', appId: apps[i]!.appId, endpoint: 'classic' });
      const raw = await cache.get(key);
      if (raw === undefined) continue;
      const entry = nativeSchema().decode('access_token', raw);
      expect(entry?.value).toMatch(/^[\x21-\x7e]+$/);
    }
  });
});
