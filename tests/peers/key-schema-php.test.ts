import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfficialAccount, WeChatApiError } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';
import { redisCli, startMockWeChat, startRedis, type MockApp, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { fixture, start } from './helpers.js';

// docs/key-schema.md's "A reader and writer in PHP", run as the page prints it: the test takes the code
// block out of the page, and php-cli (phpredis) runs it against a real redis-server beside wxkit
// processes, the mock WeChat upstream.

const page = readFileSync(new URL('../../docs/key-schema.md', import.meta.url), 'utf8');
const snippet = /## A reader and writer in PHP\n[^#]*?```php\n([\s\S]*?)```/.exec(page)?.[1];

let mock: MockWeChat;
let redis: StoreServer;
let dir: string;
let snippetFile: string;
const caches: RedisCache[] = [];
beforeAll(async () => {
  expect(snippet, 'the PHP block of docs/key-schema.md').toBeTruthy();
  dir = mkdtempSync(join(tmpdir(), 'wxkit-snippet-'));
  snippetFile = join(dir, 'wechat_token.php');
  writeFileSync(snippetFile, snippet!);
  [mock, redis] = await Promise.all([startMockWeChat(), startRedis()]);
});
afterAll(async () => {
  await Promise.all(caches.map((cache) => cache.close()));
  await Promise.all([mock?.close(), redis?.stop()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface SnippetResult {
  token?: string;
  error?: string;
  fetches: number;
}

function runSnippet(app: MockApp) {
  const child = start('php', [fixture('key-schema-snippet.php'), snippetFile, `127.0.0.1:${redis.port}`, app.appId, app.secret, mock.url]);
  return child.done.then(({ code, out, err }) => {
    expect(code, err).toBe(0);
    expect(err, 'PHP warnings').toBe('');
    return JSON.parse(out) as SnippetResult;
  });
}

function node(app: MockApp): OfficialAccount {
  const cache = new RedisCache(redis.url);
  caches.push(cache);
  return new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, logger: false });
}

const key = (app: MockApp) => `wechat:stable_access_token:${app.appId}`;

/** Waits for a key to appear in Redis (the other side has taken its lock): an event, not a sleep. */
async function keyAppears(name: string): Promise<void> {
  for (let i = 0; i < 500; i += 1) {
    if (redisCli(redis.port, 'EXISTS', name) === '1') return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`${name} never appeared`);
}

describe("docs/key-schema.md's PHP reader and writer, beside wxkit", () => {
  it('reads the token wxkit wrote, without a fetch', async () => {
    const app = mock.createApp();
    const token = await node(app).accessToken.getToken();
    expect(await runSnippet(app)).toEqual({ token, fetches: 0 });
    expect(mock.counters(app.appId).stableTokenRequests).toBe(1);
  });

  it('fetches on a miss and writes an entry wxkit reads without a fetch', async () => {
    const app = mock.createApp();
    const { token, fetches } = await runSnippet(app);
    expect(fetches).toBe(1);
    const entry = JSON.parse(redisCli(redis.port, 'GET', key(app))) as Record<string, unknown>;
    expect(Object.keys(entry)).toEqual(['access_token', 'expires_at', 'fetched_at', 'fetched_by']);
    expect(Number(redisCli(redis.port, 'TTL', key(app)))).toBeGreaterThan(6800);
    expect(await node(app).accessToken.getToken()).toBe(token);
    expect(mock.counters(app.appId).stableTokenRequests).toBe(1);
    expect(redisCli(redis.port, 'EXISTS', `${key(app)}:lock`)).toBe('0');
  });

  it('waits while wxkit holds the lock, and takes its token', async () => {
    const app = mock.createApp();
    mock.setLatency(500);
    try {
      const fetching = node(app).accessToken.getToken();
      await keyAppears(`${key(app)}:lock`);
      const [token, php] = await Promise.all([fetching, runSnippet(app)]);
      expect(php).toEqual({ token, fetches: 0 });
    } finally {
      mock.setLatency(0);
    }
    expect(mock.counters(app.appId).stableTokenRequests).toBe(1);
  });

  it('holds the lock while it fetches: wxkit waits and takes its token', async () => {
    const app = mock.createApp();
    mock.setLatency(500);
    try {
      const php = runSnippet(app);
      await keyAppears(`${key(app)}:lock`);
      const [result, token] = await Promise.all([php, node(app).accessToken.getToken()]);
      expect(result).toEqual({ token, fetches: 1 });
    } finally {
      mock.setLatency(0);
    }
    expect(mock.counters(app.appId).stableTokenRequests).toBe(1);
  });

  it("backs off on wxkit's failure marker, and leaves one wxkit backs off on", async () => {
    const wxkitFailed = mock.createApp();
    mock.injectFault({ kind: 'errcode', errcode: 40164, path: 'cgi-bin/stable_token' });
    await expect(node(wxkitFailed).accessToken.getToken()).rejects.toMatchObject({ errcode: 40164 });
    expect(await runSnippet(wxkitFailed)).toEqual({ error: 'WeChat token fetch failed: errcode 40164', fetches: 0 });
    expect(mock.counters(wxkitFailed.appId).stableTokenRequests).toBe(1);

    const phpFailed = mock.createApp();
    mock.injectFault({ kind: 'errcode', errcode: 40164, path: 'cgi-bin/stable_token' });
    expect(await runSnippet(phpFailed)).toEqual({ error: 'WeChat token fetch failed: errcode 40164', fetches: 1 });
    expect(redisCli(redis.port, 'EXISTS', key(phpFailed))).toBe('0');
    const error = await node(phpFailed).accessToken.getToken().then(
      () => undefined,
      (reason: unknown) => reason,
    );
    expect(error).toBeInstanceOf(WeChatApiError);
    expect(error).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40164 });
    expect(mock.counters(phpFailed.appId).stableTokenRequests).toBe(1);
  });

  it('treats an entry that breaks the rules as a miss: a token with a trailing newline, a string expires_at', async () => {
    for (const bad of [
      { access_token: 'TOKEN_WITH_NEWLINE\n', expires_at: Math.floor(Date.now() / 1000) + 7200 },
      { access_token: 'TOKEN_STRING_EXPIRY', expires_at: String(Math.floor(Date.now() / 1000) + 7200) },
    ]) {
      const app = mock.createApp();
      redisCli(redis.port, 'SET', key(app), JSON.stringify(bad), 'EX', '600');
      const { token, fetches } = await runSnippet(app);
      expect(fetches, JSON.stringify(bad)).toBe(1);
      expect(mock.isTokenValid(app.appId, token ?? '')).toBe(true);
    }
  });
});
