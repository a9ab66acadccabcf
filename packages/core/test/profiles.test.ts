import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import {
  CacheError,
  MemoryCache,
  OfficialAccount,
  Work,
  easyWeChat4,
  easyWeChat6,
  nodeEasyWeChat,
  silenceper,
  wechatpy,
  wxJava,
  type EntryField,
  type KeySchema,
  type KeySubject,
} from '../src/index.js';
import { PhpFormatError, phpArray, phpGet, phpSerialize, phpUnserialize } from '../src/php-serialize.js';
import { phpJsonEncode } from '../src/profiles.js';
import { recordingLogger, rejection } from './helpers.js';

const rejectionOf = (make: () => unknown): unknown => {
  try {
    make();
  } catch (error) {
    return error;
  }
  return undefined;
};

const doc = readFileSync(new URL('../../../docs/key-schema.md', import.meta.url), 'utf8');

/** Every table under `### <heading>`, up to the next heading, as rows keyed by column name. */
function tables(heading: string): Record<string, string>[][] {
  const start = doc.indexOf(`### ${heading}\n`);
  if (start < 0) throw new Error(`docs/key-schema.md has no "### ${heading}" section`);
  const rest = doc.slice(start + heading.length + 5);
  const section = rest.slice(0, rest.search(/\n#{2,3} /) >>> 0);
  const result: Record<string, string>[][] = [];
  let current: string[][] = [];
  for (const line of [...section.split('\n'), '']) {
    if (line.startsWith('|')) current.push(line.slice(1, -1).split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/^`(.*)`$/, '$1')));
    else if (current.length) {
      const [header, , ...body] = current;
      result.push(body.map((cells) => Object.fromEntries(header!.map((name, i) => [name, cells[i] ?? '']))));
      current = [];
    }
  }
  return result;
}

const PROFILES: Record<string, (options: never) => KeySchema> = { easyWeChat4, easyWeChat6, nodeEasyWeChat, wechatpy, silenceper, wxJava };
const SECRET = '0123456789abcdef0123456789abcdef';
function subject(description: string): KeySubject {
  if (description.includes('work')) return { kind: 'work', corpId: 'ww4202f388888ab123', agentId: '1000002', secret: 's3cr3t/with-slash_and-ü' };
  const kind = description.startsWith('mini_program') ? 'mini_program' : 'official_account';
  return { kind, appId: 'wx4202f388888ab123', endpoint: description.includes('stable') ? 'stable' : 'classic', secret: SECRET };
}

describe('profile vectors in docs/key-schema.md', () => {
  const [keys, values] = tables('Profile vectors');

  it('keys and locks, byte for byte (the md5 keys as PHP 8.2 computed them)', () => {
    expect(keys!.length).toBeGreaterThanOrEqual(18);
    for (const row of keys!) {
      const schema = PROFILES[row.profile!]!(JSON.parse(row.options!) as never);
      const [, lockOf, ticket, of] = /^(lock of )?(?:(\w+) ticket of )?(.*)$/.exec(row.subject!)!;
      const key = ticket ? schema.ticketKey(subject(of!), ticket) : schema.accessTokenKey(subject(of!));
      expect(lockOf ? schema.lockKey(key) : key, `${row.profile} ${row.subject}`).toBe(row.key);
    }
  });

  it('values and TTLs, byte for byte, and each value reads back', () => {
    expect(values!.length).toBeGreaterThanOrEqual(10);
    for (const row of values!) {
      const schema = PROFILES[row.profile!]!(JSON.parse(row.options!) as never);
      const field = row.field as EntryField;
      const expiresIn = Number(row.expires_in);
      const response = field === 'ticket' ? { errcode: 0, errmsg: 'ok', ticket: row.value, expires_in: expiresIn } : undefined;
      const stored = schema.encode(field, row.value!, expiresIn, 1763996400, { response });
      expect(stored, `${row.profile} ${row.field}`).toBe(row['stored value']);
      expect(schema.ttlSeconds(expiresIn, field), `${row.profile} ${row.field} ttl`).toBe(Number(row.ttl));
      expect(schema.decode(field, stored)?.value).toBe(row.value);
    }
  });
});

describe('PHP formats', () => {
  it('serialize and unserialize as PHP does, counting UTF-8 bytes', () => {
    const value = phpArray({ access_token: '令牌🚀', expires_in: 7200, ok: true, none: null, ratio: 0.5 });
    const bytes = phpSerialize(value);
    // The stored form is bytes (a binary string): the UTF-8 of what PHP prints.
    expect(Buffer.from(bytes, 'latin1').toString('utf8')).toBe(
      'a:5:{s:12:"access_token";s:10:"令牌🚀";s:10:"expires_in";i:7200;s:2:"ok";b:1;s:4:"none";N;s:5:"ratio";d:0.5;}',
    );
    expect(phpUnserialize(bytes)).toEqual(value);
    expect(phpUnserialize('a:1:{i:0;s:1:"x";}')).toEqual({ __php: 'array', entries: [[0, 'x']] });
  });

  it('refuses objects, references, wrong lengths and trailing bytes', () => {
    for (const bad of ['O:8:"stdClass":0:{}', 'a:1:{i:0;r:1;}', 's:9:"TOKEN123";', 's:8:"TOKEN123";x', 'a:2:{s:1:"a";i:1;}', 'i:99999999999999999999;']) {
      expect(() => phpUnserialize(bad), bad).toThrow();
    }
  });

  it('refuses a negative string length or array count as PHP does, rather than reading the same bytes again', () => {
    // s:-13 stepped back onto the `";` of the entry before, and the array read its last entry again for
    // as many entries as it declared (a:9007199254740991 held the process for ever, filling its memory).
    const looping = 'a:100000:{i:0;s:0:"";i:1;s:-13:"}';
    expect(() => phpUnserialize(looping)).toThrow(PhpFormatError);
    expect(() => phpUnserialize(looping)).toThrow('not a length at byte 31');
    expect(() => phpUnserialize('a:-1:{}')).toThrow('not a length');
    expect(() => phpUnserialize('s:+3:"abc";')).toThrow('not a length');
    expect(easyWeChat4().decode('access_token', looping)).toBeUndefined();
  });

  it('refuses a double literal longer than PHP writes before matching it (the match took time quadratic in its length)', () => {
    const long = `d:${'1'.repeat(1100)}x;`;
    expect(() => phpUnserialize(long)).toThrow(PhpFormatError);
    expect(() => phpUnserialize(long)).toThrow('a number longer than PHP writes');
    expect(() => phpUnserialize(`a:1:{s:12:"access_token";d:${'1'.repeat(5_000)};}`)).toThrow('a number longer than PHP writes');
    // What PHP writes at the highest serialize_precision (777 characters for -2.2250738585072009E-308) is still read.
    const widest = `-2.${'2'.repeat(766)}E-308`;
    expect(phpUnserialize(`d:${widest};`)).toBe(Number(widest));
  });

  it('an array that names a key twice reads as PHP reads it: the last one wins', () => {
    const twice = 'a:2:{s:12:"access_token";s:3:"old";s:12:"access_token";s:3:"new";}';
    expect(phpGet(phpUnserialize(twice), 'access_token')).toBe('new');
    expect(phpGet(phpUnserialize('a:2:{i:1;s:1:"a";s:1:"1";s:1:"b";}'), '1')).toBe('b');
  });

  it('an igbinary value whose back-references spell out more than 1 MiB of text is a CacheError, before that text is made', () => {
    // One string of 60 000 bytes, then 19 entries naming it again by its number: 2 bytes each. Each was
    // turned into text on its own, so a megabyte of such entries held the process for hours and filled
    // its memory.
    const long = 60_000;
    const entries = 20;
    const length = Buffer.alloc(4);
    length.writeUInt32BE(long);
    const raw = Buffer.concat([
      Buffer.from([0, 0, 0, 2, 0x14, entries, 0x06, 0, 0x13]),
      length,
      Buffer.alloc(long, 0xe9),
      ...Array.from({ length: entries - 1 }, (_, i) => Buffer.from([0x06, i + 1, 0x0e, 0x00])),
    ]).toString('latin1');
    for (const profile of [easyWeChat4(), easyWeChat6()]) {
      const error = rejectionOf(() => profile.decode('access_token', raw));
      expect(error).toBeInstanceOf(CacheError);
      expect((error as Error).message).toMatch(/profile found an igbinary value spelling out more than 1 MiB of text/);
    }
    // 17 of them (under 1 MiB) are read as ever: an array, no token in it.
    const fewer = Buffer.from(raw, 'latin1');
    fewer[5] = 17;
    expect(easyWeChat6().decode('access_token', fewer.subarray(0, 13 + long + 16 * 4).toString('latin1'))).toBeUndefined();
  });

  it("json_encode's default flags for the key: / as \\/, non-ASCII as lowercase \\uXXXX", () => {
    expect(phpJsonEncode({ s: '中文🚀/x' })).toBe('{"s":"\\u4e2d\\u6587\\ud83d\\ude80\\/x"}');
  });

  it('a value in another serializer, broken igbinary or a PHP object is a CacheError naming the profile; garbage is a miss', () => {
    const profile = easyWeChat4();
    expect(() => profile.decode('access_token', '\u0000\u0000\u0000\u0002\u0014\u0002\u0011\u000caccess_token')).toThrow(/easyWeChat4 profile could not read this igbinary value \(truncated/);
    expect(() => profile.decode('access_token', '\u0082\u00acaccess_token\u00a8TOKEN123')).toThrow(/easyWeChat4 profile reads values written with PHP's serialize\(\) or igbinary/);
    expect(() => profile.decode('access_token', 'O:8:"stdClass":1:{s:12:"access_token";s:1:"x";}')).toThrow(/found a PHP object/);
    // Symfony's TagAwareMarshaller, as Debian's symfony/cache 5.4 writes an item with its value and no
    // tags: over igbinary (the stock marshaller with the extension loaded) and over serialize().
    for (const hex of ['9de8030000000000055f000000000000021108544f4b454e313233', '9de8030000000000055f000000733a383a22544f4b454e313233223b']) {
      for (const schema of [easyWeChat4(), easyWeChat6()]) {
        expect(() => schema.decode('access_token', Buffer.from(hex, 'hex').toString('latin1'))).toThrow(/value written by a tag-aware Symfony pool \(RedisTagAwareAdapter/);
      }
    }
    expect(profile.decode('access_token', 'not php at all')).toBeUndefined();
    expect(profile.decode('access_token', 'a:1:{s:10:"expires_in";i:7200;}')).toBeUndefined();
  });

  it('a profile that stores the token bare takes no encoded value for one: a JSON string or object, a PHP-serialized string', () => {
    const encoded = ['"TOKEN123"', 's:8:"TOKEN123";', '{"data":"TOKEN123","lifeTime":1764003600}', '{"value":"TOKEN123","expires":1764003600000}', '["TOKEN123"]'];
    for (const schema of [nodeEasyWeChat(), silenceper(), wxJava()]) {
      expect(schema.decode('access_token', 'TOKEN123'), schema.name).toEqual({ value: 'TOKEN123' });
      for (const raw of encoded) expect(schema.decode('access_token', raw), `${schema.name}: ${raw}`).toBeUndefined();
    }
    // Inside the formats that unwrap one, the same: a token encoded twice is no token.
    expect(wechatpy().decode('access_token', JSON.stringify('"TOKEN123"'))).toBeUndefined();
    expect(easyWeChat6().decode('access_token', 's:15:"s:8:"TOKEN123";";')).toBeUndefined();
  });
});

describe('profiles in the token protocol', () => {
  let mock: MockWeChat;
  beforeAll(async () => {
    mock = await startMockWeChat();
  });
  afterAll(async () => {
    await mock.close();
  });

  it("every profile built with no options uses its peer's default key and endpoint, as the peer's source builds them", async () => {
    const { appId, secret } = mock.createApp();
    const md5 = (text: string) => createHash('md5').update(text).digest('hex');
    // Each key is the peer's own format applied to the same credentials; the endpoint is the peer's default.
    const rows: [string, KeySchema, string][] = [
      // EasyWeChat 4.2.12 src/Kernel/AccessToken.php:66 (cachePrefix) and :230 (md5(json_encode(credentials)));
      // src/OfficialAccount/Auth/AccessToken.php:26 (cgi-bin/token) and :34–36 (credentials in this order).
      ['easyWeChat4', easyWeChat4(), `easywechat.kernel.access_token.${md5(`{"grant_type":"client_credential","appid":"${appId}","secret":"${secret}"}`)}`],
      // EasyWeChat 6.19.1 src/OfficialAccount/AccessToken.php:43 (sprintf('%s.access_token.%s.%s.%s', …, (int) $this->stable)),
      // :35 ($stable = false); src/OfficialAccount/Application.php:138 (use_stable_access_token, default false).
      ['easyWeChat6', easyWeChat6(), `official_account.access_token.${appId}.${secret}.0`],
      // node-easywechat 3.6.2 dist/OfficialAccount/AccessToken.js:39 (`${prefix}.access_token.${appId}.${secret}.${stable ? 1 : 0}`),
      // dist/OfficialAccount/Application.js:97 (use_stable_access_token, default false).
      ['nodeEasyWeChat', nodeEasyWeChat(), `official_account.access_token.${appId}.${secret}.0`],
      // wechatpy 1.8.18 wechatpy/session/redisstorage.py:10 (prefix='wechatpy') and :17 ('{0}:{1}'),
      // wechatpy/client/base.py:60 (access_token_key: '{0}_access_token'); wechatpy/client/__init__.py:61 (cgi-bin/token).
      ['wechatpy', wechatpy(), `wechatpy:${appId}_access_token`],
      // silenceper/wechat v2.1.6 credential/default_access_token.go:22 ("gowechat_officialaccount_"),
      // :68 (fmt.Sprintf("%s_access_token_%s", prefix, appID)), :16 (cgi-bin/token).
      ['silenceper', silenceper(), `gowechat_officialaccount__access_token_${appId}`],
      // WxJava 4.7.2.B weixin-java-mp/.../WxMpRedisConfigImpl.java:25 ("%s:access_token:%s"), the spring-boot
      // starter's WxMpProperties.java:72 (keyPrefix = "wx"); WxMpServiceImpl fetches on cgi-bin/token.
      ['wxJava', wxJava(), `wx:access_token:${appId}`],
    ];
    for (const [name, schema, key] of rows) {
      const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), schema, logger: false });
      expect(app.accessToken.cacheKey, name).toBe(key);
      const before = mock.counters(appId);
      await app.accessToken.getToken();
      const after = mock.counters(appId);
      expect(after.classicTokenRequests - before.classicTokenRequests, name).toBe(1);
      expect(after.stableTokenRequests - before.stableTokenRequests, name).toBe(0);
    }
    // WeCom under legacyTtl: EasyWeChat 4.2.11 src/Work/Auth/AccessToken.php:31 ($safeSeconds = 0) kept expires_in.
    const legacy = easyWeChat4({ legacyTtl: true });
    const workKey = legacy.accessTokenKey({ kind: 'work', corpId: 'ww4202f388888ab123', agentId: '1000002', secret: 's' });
    const oaKey = legacy.accessTokenKey({ kind: 'official_account', appId, endpoint: 'classic', secret });
    expect(legacy.ttlSeconds(7200, 'access_token', workKey)).toBe(7200);
    expect(legacy.ttlSeconds(7200, 'access_token', oaKey)).toBe(6700);
  });

  it('easyWeChat4 fetches on the classic endpoint, stores the PHP array, and reads one PHP wrote', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const schema = easyWeChat4({ prefix: 'think:' });
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema, logger: false });
    const key = app.accessToken.cacheKey;
    expect(key).toMatch(/^think:easywechat\.kernel\.access_token\.[0-9a-f]{32}$/);
    const token = await app.accessToken.getToken();
    expect(mock.counters(appId)).toMatchObject({ classicTokenRequests: 1, stableTokenRequests: 0 });
    expect(await cache.get(key)).toBe(`a:2:{s:12:"access_token";s:${token.length}:"${token}";s:10:"expires_in";i:7200;}`);
    expect(await cache.ttlMs(key)).toBeGreaterThan(7_190_000);

    const other = mock.createApp();
    const php = new MemoryCache();
    const phpKey = schema.accessTokenKey({ kind: 'official_account', appId: other.appId, endpoint: 'classic', secret: other.secret });
    await php.set(phpKey, 'a:2:{s:12:"access_token";s:11:"FROM_PHP_01";s:10:"expires_in";i:7200;}', 7100);
    const reader = new OfficialAccount({ ...other, baseUrl: mock.url, cache: php, schema, logger: false });
    expect(await reader.accessToken.getToken()).toBe('FROM_PHP_01');
    expect(mock.counters(other.appId).tokenRequests).toBe(0);
  });

  it('a PHP value in a foreign serializer is a miss, logged once, never overwritten; the token fetched serves from memory', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const logger = recordingLogger();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: easyWeChat4(), logger, memoMs: 0 });
    const foreign = '\u0000\u0000\u0000\u0002\u0014\u0002';
    await cache.set(app.accessToken.cacheKey, foreign, 600);
    const token = await app.accessToken.getToken();
    expect(mock.isTokenValid(appId, token)).toBe(true);
    // memoMs 0: every call reads the store, finds the foreign value again, and keeps the token it has.
    for (let i = 0; i < 5; i += 1) expect(await app.accessToken.getToken()).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(await cache.get(app.accessToken.cacheKey)).toBe(foreign);
    const corrupt = logger.lines.filter((line) => (line.fields as { event: string }).event === 'cache.foreign_entry');
    expect(corrupt).toHaveLength(1);
    expect(corrupt[0]!.message).toContain('easyWeChat4');
    expect(corrupt[0]!.fields).toMatchObject({ foreign: true });
    // forceRefresh() fetches, but still leaves the entry it could not read to the program that wrote it.
    const forced = await app.accessToken.forceRefresh();
    expect(forced).not.toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(2);
    expect(await cache.get(app.accessToken.cacheKey)).toBe(foreign);
  });

  it('wechatpy writes the token as a JSON string and its expires_at companion', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema: wechatpy(), logger: false });
    const token = await app.accessToken.getToken();
    expect(await cache.get(`wechatpy:${appId}_access_token`)).toBe(JSON.stringify(token));
    const expiresAt = Number(await cache.get(`wechatpy:${appId}_access_token_expires_at`));
    expect(expiresAt - Math.floor(Date.now() / 1000)).toBeGreaterThan(7190);
  });

  it('easyWeChat6 keeps the secret out of logs, events and errors', async () => {
    const { appId, secret } = mock.createApp();
    const logger = recordingLogger();
    const refuse = async () => {
      throw new Error('ECONNREFUSED');
    };
    const app = new OfficialAccount({
      appId,
      secret,
      baseUrl: mock.url,
      logger,
      schema: easyWeChat6(),
      refresh: 'auto',
      cache: { get: refuse, set: refuse, delete: refuse, add: refuse, deleteIfEquals: refuse },
    });
    expect(app.accessToken.cacheKey).toContain(secret);
    const events: unknown[] = [];
    app.on('access_token.fetched', (event) => events.push(event));
    await app.accessToken.getToken();
    const text = JSON.stringify([logger.lines, events]);
    expect(text).toContain('official_account.access_token.');
    expect(text).toContain('***');
    expect(text).not.toContain(secret);
  });

  it("WeCom keys: wechatpy's and WxJava's hold one token per agent, as those SDKs key them, and two agents of one corp never share one", async () => {
    const corpId = 'ww4202f388888ab123';
    const subject: KeySubject = { kind: 'work', corpId, agentId: '1000002', secret: 's3cr3t/with-slash_and-ü' };
    // wechatpy 1.8.18 wechatpy/work/client/__init__.py: f"{self.corp_id}_{self.secret[:10]}_access_token";
    // wechatpy/work/client/api/jsapi.py: f"{corp_id}_jsapi_ticket".
    expect(wechatpy().accessTokenKey(subject)).toBe(`wechatpy:${corpId}_s3cr3t/wit_access_token`);
    expect(wechatpy().ticketKey(subject, 'jsapi')).toBe(`wechatpy:${corpId}_jsapi_ticket`);
    expect(() => wechatpy().ticketKey(subject, 'agent_jsapi')).toThrow(/covers a WeCom corp's jsapi ticket only/);
    expect(() => wechatpy().accessTokenKey({ ...subject, secret: undefined })).toThrow(/give the client options\.secret/);
    // WxJava 4.7 weixin-java-cp/…/AbstractWxCpInRedisConfigImpl.java::setAgentId(): keyPrefix, ':', then
    // wechat_cp_access_token_key: and so on with corpId:agentId; the locks are lockKey + ':accessToken' ….
    // The prefix is the cp starter's (WxCpProperties: keyPrefix = "wx:cp"), none when blank.
    const java = wxJava();
    const token = java.accessTokenKey(subject);
    expect(token).toBe(`wx:cp:wechat_cp_access_token_key:${corpId}:1000002`);
    expect(java.lockKey(token)).toBe(`wx:cp:wechat_cp_lock:${corpId}:1000002:accessToken`);
    expect(java.ticketKey(subject, 'jsapi')).toBe(`wx:cp:wechat_cp_jsapi_ticket_key:${corpId}:1000002`);
    expect(java.lockKey(java.ticketKey(subject, 'jsapi'))).toBe(`wx:cp:wechat_cp_lock:${corpId}:1000002:jsapiTicket`);
    expect(java.lockKey(java.ticketKey(subject, 'agent_jsapi'))).toBe(`wx:cp:wechat_cp_lock:${corpId}:1000002:agentJsapiTicket`);
    expect(wxJava({ cpKeyPrefix: 'cp:' }).accessTokenKey(subject)).toBe(`cp:wechat_cp_access_token_key:${corpId}:1000002`);
    for (const blank of ['', '  ']) expect(wxJava({ cpKeyPrefix: blank }).accessTokenKey(subject)).toBe(`wechat_cp_access_token_key:${corpId}:1000002`);
    // An Integer agentId, as Java prints it.
    expect(java.accessTokenKey({ ...subject, agentId: '01000002' })).toBe(token);
    // The cp configs keep WeCom's tickets for expires_in; the official account's for expires_in − 200.
    expect(java.ttlSeconds(7200, 'ticket', java.ticketKey(subject, 'jsapi'))).toBe(7200);
    expect(java.ttlSeconds(7200, 'ticket', java.ticketKey({ kind: 'official_account', appId: 'wx4202f388888ab123', endpoint: 'classic' }, 'jsapi'))).toBe(7000);
    // wechatpy's companion is named by the corp alone (wechatpy/client/base.py: access_token_expires_at_key).
    const py = wechatpy();
    expect(py.companions!(py.accessTokenKey(subject), 'access_token', 'T', 7200, 1_700_000_000)[0]!.key).toBe(`wechatpy:${corpId}_access_token_expires_at`);
    // A secret's part that overlaps another's is masked whole.
    py.accessTokenKey({ kind: 'work', corpId: 'wwother', agentId: '1', secret: 'efg_hijklmXXXX' });
    const overlapping = py.accessTokenKey({ kind: 'work', corpId: 'wwabcdefg', agentId: '2', secret: 'hijklmnopqYYYY' });
    expect(py.redactKey!(overlapping)).toBe('wechatpy:wwabcd***_access_token');

    const first = mock.createWorkApp();
    const second = mock.createWorkApp({ corpId: first.corpId });
    for (const schema of [wechatpy(), wxJava()]) {
      const cache = new MemoryCache();
      const [a, b] = [first, second].map((app) => new Work({ ...app, baseUrl: mock.url, cache, logger: false, schema }));
      const tokens = [await a!.accessToken.getToken(), await b!.accessToken.getToken()];
      expect(mock.isTokenValid(`${first.corpId}:${first.agentId}`, tokens[0]!), schema.name).toBe(true);
      expect(mock.isTokenValid(`${second.corpId}:${second.agentId}`, tokens[1]!), schema.name).toBe(true);
      await Promise.all([a!.close(), b!.close()]);
    }
  });

  it("silenceper: wxkit takes the tickets silenceper stored, under silenceper's keys, without a fetch", async () => {
    const oa = mock.createApp();
    const work = mock.createWorkApp();
    const cache = new MemoryCache();
    // As silenceper's Redis cache stores them: the ticket raw, TTL expires_in − 1500.
    await cache.set(`gowechat_officialaccount__jsapi_ticket_${oa.appId}`, 'TICKET_OF_GO', 5700);
    await cache.set(`gowechat_work__corp_jsapi_ticket_${work.corpId}`, 'CORP_TICKET_OF_GO', 5700);
    await cache.set(`gowechat_work__agent_jsapi_ticket_${work.corpId}_${work.agentId}`, 'AGENT_TICKET_OF_GO', 5700);
    const account = new OfficialAccount({ ...oa, baseUrl: mock.url, cache, logger: false, schema: silenceper() });
    const agent = new Work({ ...work, baseUrl: mock.url, cache, logger: false, schema: silenceper() });
    try {
      expect(await account.jssdk.getTicket()).toBe('TICKET_OF_GO');
      expect(await agent.jssdk.getTicket('jsapi')).toBe('CORP_TICKET_OF_GO');
      expect(await agent.jssdk.getTicket('agent_jsapi')).toBe('AGENT_TICKET_OF_GO');
      expect(mock.counters(oa.appId).ticketRequests + mock.counters(`${work.corpId}:${work.agentId}`).ticketRequests).toBe(0);
    } finally {
      await Promise.all([account.close(), agent.close()]);
    }
  });

  it("wechatpy keeps the part of a WeCom secret its key holds out of logs and events", async () => {
    const app = mock.createWorkApp();
    const logger = recordingLogger();
    const work = new Work({ ...app, baseUrl: mock.url, cache: new MemoryCache(), logger, schema: wechatpy() });
    const events: unknown[] = [];
    work.on('access_token.fetched', (event) => events.push(event));
    await work.accessToken.getToken();
    await work.close();
    const part = Array.from(app.secret).slice(0, 10).join('');
    expect(work.accessToken.cacheKey).toContain(part);
    const text = JSON.stringify([logger.lines, events]);
    expect(text).toContain(`${app.corpId}_***_access_token`);
    expect(text).not.toContain(part);
  });

  it('a misspelt or unknown option name is a ConfigError naming it, never dropped (the keys would be no peer\'s)', () => {
    const cases: Array<[() => unknown, RegExp]> = [
      [() => easyWeChat4({ prefx: 'think:' } as never), /^easyWeChat4 options\.prefx is not an option \(did you mean prefix\?\)$/],
      [() => easyWeChat6({ marshaler: 'igbinary' } as never), /^easyWeChat6 options\.marshaler is not an option \(did you mean marshaller\?\)$/],
      [() => nodeEasyWeChat({ store: 'symfony' } as never), /^nodeEasyWeChat options\.store is not an option; the options are prefix$/],
      [() => wechatpy({ keyPrefix: 'x' } as never), /^wechatpy options\.keyPrefix is not an option/],
      [() => silenceper({ stor: 'memcached' } as never), /^silenceper options\.stor is not an option \(did you mean store\?\)$/],
      [() => wxJava({ keyprefix: 'shop' } as never), /^wxJava options\.keyprefix is not an option \(did you mean keyPrefix\?\)$/],
    ];
    for (const [make, message] of cases) expect(make).toThrow(message);
    for (const [make] of cases) expect(rejectionOf(make)).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION' });
    // An option left undefined is no option given.
    expect(() => easyWeChat4({ prefix: undefined, legacyTtl: undefined })).not.toThrow();
  });

  it('a profile that keys on the secret needs it even in follower mode', () => {
    expect(() => new OfficialAccount({ appId: 'wx1', refresh: 'never', schema: easyWeChat4() })).toThrow(/builds its keys from the secret/);
    expect(() => new OfficialAccount({ appId: 'wx1', refresh: 'never', schema: wxJava() })).not.toThrow();
  });
});
