import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, VERSION } from '../src/index.js';
import { ClientCore } from '../src/client-core.js';
import { parseJson } from '../src/http.js';
import { newApp, rejection } from './helpers.js';
import pkg from '../package.json' with { type: 'json' };

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

describe('client and templateMessage', () => {
  it('templateMessage.send() returns WeChat’s answer, with the 64-bit msgid digit for digit', async () => {
    const { app, appId } = newApp(mock);
    const first = await app.templateMessage.send({
      touser: 'oUser1',
      template_id: 'TPL1',
      url: 'https://shop.example/order/1',
      miniprogram: { appid: 'wxmini', pagepath: 'pages/index' },
      data: { first: { value: 'Paid', color: '#173177' } },
    });
    expect(first.errcode).toBe(0);
    expect(first.errmsg).toBe('ok');
    expect(typeof first.msgid).toBe('string');
    expect(BigInt(first.msgid)).toBeGreaterThan(BigInt(Number.MAX_SAFE_INTEGER));
    const second = await app.templateMessage.send({ touser: 'oUser1', template_id: 'TPL1', data: {} });
    expect(BigInt(second.msgid) - BigInt(first.msgid)).toBe(1n);
    expect(mock.counters(appId).templateSends).toBe(2);
  });

  it('WeChat’s errors come back as WeChatApiError with errcode and path', async () => {
    const { app } = newApp(mock);
    const error = await rejection(app.templateMessage.send({ touser: 'o1', template_id: 'T', data: 'x' as never }));
    expect(error.code).toBe('ERR_WXKIT_INVALID_OPTION');
    const api = await rejection(app.client.postJson('cgi-bin/message/template/send', { touser: '', template_id: 'T', data: {} }));
    expect(api).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40003, path: 'cgi-bin/message/template/send' });
  });

  it('client.get() and client.postJson() reach any API with the token injected', async () => {
    const { app, appId } = newApp(mock);
    const ips = await app.client.get<{ ip_list: string[] }>('/cgi-bin/get_api_domain_ip');
    expect(ips.ip_list.length).toBeGreaterThan(0);
    const sent = await app.client.postJson<{ errcode: number }>('cgi-bin/message/template/send', {
      touser: 'o1',
      template_id: 'T',
      data: {},
    });
    expect(sent.errcode).toBe(0);
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it('an unknown path is an HttpError with its status', async () => {
    const { app } = newApp(mock);
    const error = await rejection(app.client.get('cgi-bin/no/such/api'));
    expect(error).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 404, path: 'cgi-bin/no/such/api' });
  });

  it('a baseUrl with a path prefix keeps it', async () => {
    const { app } = newApp(mock, { baseUrl: `${mock.url}/prefix` });
    const error = await rejection(app.accessToken.getToken());
    expect(error).toMatchObject({ status: 404, path: 'cgi-bin/stable_token' });
  });
});

describe('parseJson', () => {
  it('keeps integers beyond 2^53 exact as strings and leaves everything else alone', () => {
    expect(parseJson('{"msgid":2000000000000000001,"n":12,"f":1.5e300,"s":"12345678901234567890","neg":-9007199254740993}')).toEqual({
      msgid: '2000000000000000001',
      n: 12,
      f: 1.5e300,
      s: '12345678901234567890',
      neg: '-9007199254740993',
    });
    expect(parseJson('{"safe":9007199254740991,"frac":0.12345678901234567890}')).toEqual({
      safe: 9007199254740991,
      frac: 0.12345678901234568,
    });
    expect(parseJson('{"esc":"a\\"1234567890123456789","x":[1234567890123456789]}')).toEqual({
      esc: 'a"1234567890123456789',
      x: ['1234567890123456789'],
    });
  });

  it('quotes exactly the integer tokens beyond 2^53 outside strings, in any JSON (20,000 generated texts, those that are JSON, against a walk over every character)', () => {
    // The reference: a walk over every character, skipping strings (escapes honoured) and reading
    // whole number tokens, as the first version of parseJson did.
    const reference = (text: string): unknown => {
      let out = '';
      let last = 0;
      for (let i = 0; i < text.length; ) {
        if (text[i] === '"') {
          i += 1;
          while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
          i += 1;
          continue;
        }
        const token = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
        if (!token) {
          i += 1;
          continue;
        }
        if (token[1] === undefined && token[2] === undefined && token[0].replace('-', '').length >= 16 && !Number.isSafeInteger(Number(token[0]))) {
          out += `${text.slice(last, i)}"${token[0]}"`;
          last = i + token[0].length;
        }
        i += token[0].length;
      }
      return JSON.parse(out + text.slice(last));
    };
    let seed = 7;
    const random = (n: number) => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) % n;
    };
    const digits = (n: number) => `${1 + random(9)}${Array.from({ length: n - 1 }, () => random(10)).join('')}`;
    const pieces = ['a', '1', ' ', '\\"', '\\\\', '\\u0022', '\\\\"', '-', 'e'];
    const value = (depth: number): string => {
      switch (random(depth > 2 ? 5 : 8)) {
        case 0:
          return `${random(2) ? '-' : ''}${digits(1 + random(22))}`;
        case 1:
          return `${digits(1 + random(20))}.${digits(1 + random(20))}`;
        case 2:
          return `${digits(1 + random(18))}${random(2) ? 'e' : 'E'}${random(2) ? '-' : '+'}${digits(1 + random(18))}`;
        case 3:
          return `"${Array.from({ length: random(6) }, () => (random(3) ? pieces[random(pieces.length)] : digits(17))).join('')}"`;
        case 4:
          return ['true', 'false', 'null'][random(3)]!;
        case 5:
        case 6:
          return `[${Array.from({ length: random(4) }, () => value(depth + 1)).join(random(2) ? ',' : ' , ')}]`;
        default:
          return `{${Array.from({ length: random(4) }, (_, i) => `"k${i}${random(2) ? digits(17) : ''}":${value(depth + 1)}`).join(',')}}`;
      }
    };
    let compared = 0;
    let quoted = 0;
    for (let i = 0; i < 20_000; i += 1) {
      const text = value(0);
      // Some pieces end a string early (an escaped backslash before a quote): such a text is no JSON.
      let plain: unknown;
      try {
        plain = JSON.parse(text);
      } catch {
        continue;
      }
      const expected = reference(text);
      expect(parseJson(text), text).toEqual(expected);
      compared += 1;
      if (JSON.stringify(expected) !== JSON.stringify(plain)) quoted += 1;
    }
    // Most texts are JSON, and thousands of them hold an integer beyond 2^53 somewhere.
    expect(compared).toBeGreaterThan(15_000);
    expect(quoted).toBeGreaterThan(1_000);
  });

  it('looks at each stretch of a body once, however many long integers come before the next quote', () => {
    // 20,000 integers beyond 2^53 and no quote between them: a search for the next quote that started
    // again from the last one found, at each integer, read the rest of the body 20,000 times over.
    const ids = Array.from({ length: 20_000 }, (_, i) => `${9_007_199_254_740_993n + BigInt(i)}`);
    const indexOf = String.prototype.indexOf;
    for (const text of [`{"ids":[${ids.join(',')}]}`, `[${ids.join(',')}]`]) {
      // Characters the searches for a quote read in the body: from where each starts to what it finds.
      let read = 0;
      const spy = vi.spyOn(String.prototype, 'indexOf').mockImplementation(function (this: string, search: string, from?: number) {
        const at = indexOf.call(this, search, from);
        if (this.length === text.length && search === '"') read += (at === -1 ? this.length : at + 1) - (from ?? 0);
        return at;
      });
      let parsed: unknown;
      try {
        parsed = parseJson(text);
      } finally {
        spy.mockRestore();
      }
      expect(read).toBeLessThanOrEqual(text.length);
      const list = (Array.isArray(parsed) ? parsed : (parsed as { ids: unknown[] }).ids) as unknown[];
      expect([list.length, list[0], list.at(-1)]).toEqual([ids.length, '9007199254740993', ids.at(-1)]);
    }
  });
});

it('VERSION matches package.json', () => {
  expect(VERSION).toBe(pkg.version);
});

describe('settings shared by clients made alike', () => {
  const make = (memoMs: number) => new ClientCore('OfficialAccount', 'wx4202f388888ab123', { memoMs, logger: false });

  it('are one object for the same values and clock; a client made under fake timers keeps its own clock, and one made after reads the real one', async () => {
    const [a, b] = [make(23_456), make(23_456)];
    expect(a.settings).toBe(b.settings);
    vi.useFakeTimers({ toFake: ['Date'] });
    let faked: ClientCore;
    try {
      faked = make(34_567);
      expect(faked.settings.now).toBe(Date.now);
    } finally {
      vi.useRealTimers();
    }
    const real = make(34_567);
    expect(real.settings.now).toBe(Date.now);
    expect(faked.settings.now).not.toBe(Date.now);
    await Promise.all([a, b, faked, real].map((core) => core.close()));
  });
});

describe('a closed client', () => {
  it('refuses setCache() with a ConfigError naming the option, rather than take a store nobody closes', async () => {
    const app = new OfficialAccount({ appId: 'wx4202f388888ab123', secret: 's', logger: false });
    await app.close();
    const cache = new MemoryCache();
    expect(() => app.setCache(cache)).toThrow(expect.objectContaining({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'cache' }));
    expect(() => app.accessToken.setCache(cache)).toThrow(expect.objectContaining({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'cache' }));
  });
});
