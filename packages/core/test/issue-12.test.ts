import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount, easyWeChat4, easyWeChat6 } from '../src/index.js';
import { igbinarySerialize, igbinaryUnserialize } from '../src/igbinary.js';
import { recordingLogger } from './helpers.js';

// Issue 12: PHP peers on Symfony Cache write igbinary (DefaultMarshaller, whenever the extension is
// loaded). wxkit reads it, writes back the form the key holds, and never turns it into an outage.
const vectors = (JSON.parse(readFileSync(new URL('./fixtures/igbinary-vectors.json', import.meta.url), 'utf8')) as { vectors: { name: string; hex: string }[] }).vectors;
const phpWrote = (name: string) => Buffer.from(vectors.find((v) => v.name === name)!.hex, 'hex').toString('latin1');
const TOKEN136 = '86_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_'.repeat(4).slice(0, 123) + 'ABCDEFGHIJKLM';
/** What PHP's igbinary_unserialize() makes of bytes, as JSON. */
const phpReads = (raw: string) => {
  const run = spawnSync('php', ['-r', 'echo json_encode(igbinary_unserialize(hex2bin(trim(fgets(STDIN)))));'], {
    input: Buffer.from(raw, 'latin1').toString('hex'),
    encoding: 'utf8',
  });
  expect(run.stderr).toBe('');
  return JSON.parse(run.stdout) as unknown;
};

describe('issue 12: igbinary entries of PHP peers', () => {
  let mock: MockWeChat;
  beforeAll(async () => {
    mock = await startMockWeChat();
  });
  afterAll(async () => {
    await mock.close();
  });

  it('EasyWeChat 6 on Symfony Cache: reads the igbinary token PHP wrote (length byte 0x88) and sends with it, no fetch', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: easyWeChat6({ store: 'symfony' }), logger: false });
    expect(app.accessToken.cacheKey).toBe(`official_account.access_token.${appId}.${secret}.0`);
    await cache.set(app.accessToken.cacheKey, phpWrote('string of 136 characters (a WeChat token)'), 7000);
    expect(await app.accessToken.getToken()).toBe(TOKEN136);
    expect(mock.counters(appId).tokenRequests).toBe(0);
  });

  it('reads Symfony 5.4 and 6.4 item envelopes and EasyWeChat 4 arrays written by PHP', async () => {
    for (const [name, schema] of [
      ['Symfony Cache 5.4 envelope', easyWeChat6()],
      ['Symfony Cache 6.4 value wrapper', easyWeChat6()],
      ['EasyWeChat 4 token array', easyWeChat4()],
    ] as const) {
      const { appId, secret } = mock.createApp();
      const cache = new MemoryCache();
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema, logger: false });
      await cache.set(app.accessToken.cacheKey, phpWrote(name), 7000);
      expect(await app.accessToken.getToken(), name).toBe(TOKEN136);
      expect(mock.counters(appId).tokenRequests, name).toBe(0);
    }
  });

  it("reads Symfony 6+'s value wrapper in serialize() form (symfony/cache 7.2+'s default), with tags after the value or none", async () => {
    // Symfony's Traits/ValueWrapper.php: a class named "\xA9" whose __serialize() is [packed metadata => value] + tags.
    const php = [
      'eval(\'final class \' . "\\xA9" . \' { public function __construct(public $v, public $p, public $t) {}',
      '  public function __serialize(): array { return [$this->p => $this->v] + $this->t; } }\');',
      '$c = "\\xA9"; $token = trim(fgets(STDIN));',
      'echo bin2hex(serialize(new $c($token, pack("Vn", 116403600, 12), []))), "\\n";',
      'echo bin2hex(serialize(new $c($token, pack("Vn", 116403600, 12) | "\\0\\0\\0\\0\\x80", ["wechat" => "wechat"]))), "\\n";',
    ].join('\n');
    const run = spawnSync('php', ['-r', php], { input: `${TOKEN136}\n`, encoding: 'utf8' });
    expect(run.stderr).toBe('');
    const written = run.stdout.trim().split('\n').map((hex) => Buffer.from(hex, 'hex').toString('latin1'));
    expect(written).toHaveLength(2);
    for (const raw of written) {
      expect(raw).toMatch(/^O:1:"\xa9":[12]:\{s:6:"/);
      const { appId, secret } = mock.createApp();
      const cache = new MemoryCache();
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: easyWeChat6(), logger: false });
      await cache.set(app.accessToken.cacheKey, raw, 7000);
      expect(await app.accessToken.getToken()).toBe(TOKEN136);
      expect(mock.counters(appId).tokenRequests).toBe(0);
    }
  });

  it('auto writes the form the key holds: a forced refresh over an igbinary entry writes igbinary, which PHP reads', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: easyWeChat4(), logger: false });
    await cache.set(app.accessToken.cacheKey, phpWrote('EasyWeChat 4 token array'), 7000);
    expect(await app.accessToken.getToken()).toBe(TOKEN136);
    const fresh = await app.accessToken.forceRefresh();
    expect(fresh).not.toBe(TOKEN136);
    const raw = (await cache.get(app.accessToken.cacheKey))!;
    expect(raw.slice(0, 4)).toBe('\u0000\u0000\u0000\u0002');
    expect(phpReads(raw)).toEqual({ access_token: fresh, expires_in: 7200 });
  });

  it("into an empty key, auto writes the store's stock form: serialize() for ThinkPHP and Laravel, igbinary for Symfony; an explicit marshaller always wins", async () => {
    const cases = [
      [easyWeChat6(), 's:'],
      [easyWeChat6({ store: 'laravel' }), 's:'],
      [easyWeChat6({ store: 'symfony' }), '\u0000\u0000\u0000\u0002'],
      [easyWeChat6({ store: 'symfony', marshaller: 'php-serialize' }), 's:'],
      [easyWeChat6({ marshaller: 'igbinary' }), '\u0000\u0000\u0000\u0002'],
    ] as const;
    for (const [schema, start] of cases) {
      const { appId, secret } = mock.createApp();
      const cache = new MemoryCache();
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema, logger: false });
      const token = await app.accessToken.getToken();
      const raw = (await cache.get(app.accessToken.cacheKey))!;
      expect(raw.startsWith(start)).toBe(true);
      expect(start === 's:' ? raw : igbinaryUnserialize(raw)).toBe(start === 's:' ? `s:${token.length}:"${token}";` : token);
    }
  });

  it('marshaller php-serialize rewrites an igbinary key as serialize(), still reading what was there', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: easyWeChat6({ marshaller: 'php-serialize' }), logger: false });
    await cache.set(app.accessToken.cacheKey, igbinarySerialize('TOKEN_FROM_PHP'), 7000);
    expect(await app.accessToken.getToken()).toBe('TOKEN_FROM_PHP');
    const fresh = await app.accessToken.forceRefresh();
    expect(await cache.get(app.accessToken.cacheKey)).toBe(`s:${fresh.length}:"${fresh}";`);
  });

  it('an igbinary value wxkit cannot read is a logged miss, never an error: sends go on, the entry stays, forceRefresh() included', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const logger = recordingLogger();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: easyWeChat6({ store: 'symfony' }), logger, memoMs: 0 });
    // A PHP reference inside an array: igbinary, but nothing a token cache holds.
    const unreadable = '\u0000\u0000\u0000\u0002\u0014\u0001\u0006\u0000\u0025\u0011\u0001x';
    await cache.set(app.accessToken.cacheKey, unreadable, 7000);
    const token = await app.accessToken.getToken();
    for (let i = 0; i < 3; i += 1) expect(await app.accessToken.getToken()).toBe(token);
    await app.accessToken.forceRefresh();
    expect(await cache.get(app.accessToken.cacheKey)).toBe(unreadable);
    expect(mock.counters(appId).tokenRequests).toBe(2);
    const logged = logger.lines.filter((line) => (line.fields as { event: string }).event === 'cache.foreign_entry');
    expect(logged).toHaveLength(1);
    expect(logged[0]!.message).toContain('igbinary');
  });
});
