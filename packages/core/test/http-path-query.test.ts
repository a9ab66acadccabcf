import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OfficialAccount } from '../src/index.js';
import { HttpClient } from '../src/http.js';
import { errorText, rejection } from './helpers.js';

// Parameters written in an API's path (`cgi-bin/user/info?openid=…`) are sent, beside the call's query;
// the access_token is the client's own, whatever the path says; messages name the path without them.

let server: Server;
let base = '';
/** The request targets the server received, in order. */
const received: string[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    received.push(req.url ?? '');
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const body = path === '/cgi-bin/token' ? { access_token: 'TOKEN-1', expires_in: 7200 } : path.endsWith('/fail') ? { errcode: 40003, errmsg: 'invalid openid' } : { errcode: 0 };
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

function account() {
  return new OfficialAccount({ appId: 'wx0123456789abcdef', secret: 'secret', baseUrl: base, cache: new MemoryCache(), logger: false, tokenEndpoint: 'classic' });
}

/** The query of the last request the server received for `pathname`, as name → every value. */
function sentQuery(pathname: string): Record<string, string[]> {
  const target = received.filter((url) => new URL(url, 'http://x').pathname === pathname).at(-1);
  expect(target).toBeDefined();
  const params = new URL(target!, 'http://x').searchParams;
  return Object.fromEntries([...new Set(params.keys())].map((name) => [name, params.getAll(name)]));
}

describe('a query string written in the path', () => {
  it('its parameters are sent with the access token', async () => {
    const app = account();
    try {
      await app.client.get('cgi-bin/user/info?openid=OPENID&lang=zh_CN&remark=a%20b%26c');
      expect(sentQuery('/cgi-bin/user/info')).toEqual({ openid: ['OPENID'], lang: ['zh_CN'], remark: ['a b&c'], access_token: ['TOKEN-1'] });
      await app.client.postJson('cgi-bin/user/info/updateremark?openid=OPENID', { remark: 'r' });
      expect(sentQuery('/cgi-bin/user/info/updateremark')).toEqual({ openid: ['OPENID'], access_token: ['TOKEN-1'] });
    } finally {
      await app.close();
    }
  });

  it("the call's query wins over a parameter of the same name in the path", async () => {
    const app = account();
    try {
      await app.client.get('cgi-bin/user/info?openid=OPENID&lang=zh_CN', { lang: 'en' });
      expect(sentQuery('/cgi-bin/user/info')).toEqual({ openid: ['OPENID'], lang: ['en'], access_token: ['TOKEN-1'] });
      await app.client.postJson('wxa/query?a=1&b=2', {}, { query: { b: 3 } });
      expect(sentQuery('/wxa/query')).toEqual({ a: ['1'], b: ['3'], access_token: ['TOKEN-1'] });
    } finally {
      await app.close();
    }
  });

  it('an access_token written in the path is never sent: the client sends its own, or none', async () => {
    const app = account();
    try {
      await app.client.get('cgi-bin/user/info?access_token=FORGED&openid=OPENID');
      expect(sentQuery('/cgi-bin/user/info')).toEqual({ openid: ['OPENID'], access_token: ['TOKEN-1'] });
    } finally {
      await app.close();
    }
    const http = new HttpClient({ baseUrl: base, timeoutMs: 2_000, maxResponseBytes: 1 << 20, dispatcher: undefined, userAgent: 'test' });
    try {
      await http.json({ method: 'GET', path: 'plain/echo?access_token=FORGED&a=1' });
      expect(sentQuery('/plain/echo')).toEqual({ a: ['1'] });
    } finally {
      await http.close();
    }
  });

  it('a whole URL given as the path is a ConfigError naming the option, before the token is read or anything sent', async () => {
    const app = account();
    try {
      const before = received.length;
      for (const path of [`${base}/cgi-bin/user/info`, 'https://api.weixin.qq.com/cgi-bin/user/info', '//api.weixin.qq.com/cgi-bin/user/info', '', 42 as unknown as string]) {
        expect(await rejection(app.client.get(path)), String(path)).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'path' });
        expect(await rejection(app.client.postJson(path, {})), String(path)).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'path' });
      }
      expect(received.length).toBe(before);
    } finally {
      await app.close();
    }
  });

  it('an error names the path without its query string', async () => {
    const app = account();
    try {
      const error = await rejection(app.client.get('cgi-bin/user/fail?openid=SECRET-OPENID&access_token=FORGED'));
      expect([error.code, error.errcode, error.path]).toEqual(['ERR_WXKIT_WECHAT_API', 40003, 'cgi-bin/user/fail']);
      expect(sentQuery('/cgi-bin/user/fail')).toEqual({ openid: ['SECRET-OPENID'], access_token: ['TOKEN-1'] });
      const text = errorText(error);
      for (const secret of ['TOKEN-1', 'FORGED', 'SECRET-OPENID', 'openid=']) expect(text).not.toContain(secret);
    } finally {
      await app.close();
    }
  });
});
