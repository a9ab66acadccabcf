import { createCipheriv } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryCache, MessageCrypto, MessageCryptoError, OpenPlatform } from '../src/index.js';
import { cdata, parseFlatXml } from '../src/open-platform/xml.js';
import { recordingLogger } from './helpers.js';

// The callback as a hostile network sees it: every request that is not a fresh push of WeChat's for this
// component must be refused with a MessageCryptoError, leave a stored ticket as it was, and name neither
// the EncodingAESKey, the callback token nor the component secret in an error or a log line.
const KEY = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG';
const COMPONENT = 'wxcomponent0000004';
const TOKEN = 'callback-token-hostile';
const SECRET = 'component-secret-hostile';
const TICKET_KEY = `wechat:component_verify_ticket:${COMPONENT}`;
const NOW_S = 1_700_000_000;
const crypto = new MessageCrypto({ token: TOKEN, encodingAESKey: KEY, appId: COMPONENT });
const aesKey = Buffer.from(`${KEY}=`, 'base64');
const log = recordingLogger();
const durable = new MemoryCache();
const open = new OpenPlatform({
  appId: COMPONENT,
  secret: SECRET,
  token: TOKEN,
  encodingAESKey: KEY,
  baseUrl: 'http://127.0.0.1:9',
  cache: new MemoryCache(),
  durableStore: durable,
  logger: log,
  now: () => NOW_S * 1000,
});
afterAll(() => open.close());

/** AES-256-CBC of `plain` (whole blocks) under the key, as WeChat's format does, without any padding of its own. */
function seal(plain: Buffer): string {
  const cipher = createCipheriv('aes-256-cbc', aesKey, aesKey.subarray(0, 16)).setAutoPadding(false);
  return Buffer.concat([cipher.update(plain), cipher.final()]).toString('base64');
}
/** WeChat's plaintext layout: 20-byte header with the length field, body, trailing app id, and a pad of `pad(n)` (default: n bytes of n). */
function layout(body: Buffer, { length = body.length, appId = COMPONENT, pad }: { length?: number; appId?: string | Buffer; pad?: (n: number) => Buffer } = {}): Buffer {
  const header = Buffer.alloc(20, 7);
  header.writeUInt32BE(length, 16);
  const plain = Buffer.concat([header, body, Buffer.from(appId)]);
  const n = 32 - (plain.length % 32);
  return Buffer.concat([plain, pad ? pad(n) : Buffer.alloc(n, n)]);
}
/** The request WeChat would send for `encrypt`, correctly signed at `signedAt`. */
function request(encrypt: string, signedAt = NOW_S) {
  const timestamp = String(signedAt);
  const nonce = '385716249';
  return {
    query: { msg_signature: crypto.signature(timestamp, nonce, encrypt), timestamp, nonce, encrypt_type: 'aes' },
    body: `<xml><AppId>${cdata(COMPONENT)}</AppId><Encrypt>${cdata(encrypt)}</Encrypt></xml>`,
  };
}
const ticketXml = (ticket: string, createTime: number) =>
  `<xml><AppId>${cdata(COMPONENT)}</AppId><CreateTime>${createTime}</CreateTime><InfoType>${cdata('component_verify_ticket')}</InfoType><ComponentVerifyTicket>${cdata(ticket)}</ComponentVerifyTicket></xml>`;
const storedTicket = async () => JSON.parse(Buffer.from((await durable.get(TICKET_KEY))!, 'latin1').toString('utf8')).component_verify_ticket as string;
async function reasonOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'accepted';
  } catch (error) {
    for (const secret of [KEY, TOKEN, SECRET]) expect((error as Error).message).not.toContain(secret);
    return error instanceof MessageCryptoError ? error.reason : `not a MessageCryptoError: ${String(error)}`;
  }
}

describe('handleCallback against a hostile network', () => {
  it('refuses every malformed push with its reason, keeps the good ticket, and logs no secret', async () => {
    await open.handleCallback(request(crypto.encrypt(ticketXml('ticket-good', NOW_S - 60))));
    expect(await storedTicket()).toBe('ticket-good');
    const evil = Buffer.from(ticketXml('ticket-evil', NOW_S));
    const good = crypto.encrypt(ticketXml('ticket-evil', NOW_S), Buffer.alloc(16, 1));
    expect(good).toMatch(/[+/]/);
    const blocks = Buffer.from(good, 'base64');
    const cases: [string, ReturnType<typeof request>, string][] = [
      ['no signature', { ...request(good), query: { timestamp: String(NOW_S), nonce: '1' } as never }, 'signature'],
      ['a signature of other fields', { ...request(good), query: { ...request(good).query, nonce: '1' } }, 'signature'],
      ['a signature made with another token', { ...request(good), query: { ...request(good).query, msg_signature: new MessageCrypto({ token: 'guess', encodingAESKey: KEY, appId: COMPONENT }).signature(String(NOW_S), '385716249', good) } }, 'signature'],
      ['a replay 6 minutes late', request(good, NOW_S - 360), 'expired'],
      ['a timestamp 6 minutes ahead', request(good, NOW_S + 360), 'expired'],
      ['a timestamp that is no number', request(good, 'soon' as never), 'expired'],
      ['no Encrypt field', { ...request(good), body: '<xml><Encrypted>x</Encrypted></xml>' }, 'format'],
      ['truncated base64', request(good.slice(0, -7)), 'format'],
      ['base64 of whole blocks, cut short by a block', request(blocks.subarray(0, blocks.length - 16).toString('base64')), 'padding'],
      ['not a multiple of 16 bytes', request(blocks.subarray(0, blocks.length - 5).toString('base64')), 'format'],
      ['url-safe base64', request(good.replaceAll('+', '-').replaceAll('/', '_')), 'format'],
      ['pad byte 0', request(seal(layout(evil, { pad: (n) => Buffer.alloc(n, 0) }))), 'padding'],
      ['pad byte 33', request(seal(layout(evil, { pad: (n) => Buffer.alloc(n + 32, 33) }))), 'padding'],
      ['pad bytes that differ', request(seal(layout(evil, { pad: (n) => Buffer.concat([Buffer.alloc(n + 31, 1), Buffer.from([32])]) }))), 'padding'],
      ['a length field past the end', request(seal(layout(evil, { length: evil.length + COMPONENT.length + 1 }))), 'length'],
      ['a length field of 2^32 - 1', request(seal(layout(evil, { length: 0xffffffff }))), 'length'],
      ['another component app id', request(new MessageCrypto({ token: TOKEN, encodingAESKey: KEY, appId: 'wxcomponent0000009' }).encrypt(evil.toString())), 'appid'],
      ['our app id with more after it', request(seal(layout(evil, { appId: `${COMPONENT}x` }))), 'appid'],
      ['a prefix of our app id', request(seal(layout(evil, { appId: COMPONENT.slice(0, -1) }))), 'appid'],
      ['no app id', request(seal(layout(evil, { appId: '' }))), 'appid'],
      ['an app id in bytes that are not UTF-8', request(seal(layout(evil, { appId: Buffer.from([0xff, 0xfe]) }))), 'appid'],
      ['a body over 64 KB', { ...request(good), body: `<xml><Encrypt>${cdata(good)}</Encrypt>${'x'.repeat(65_536)}</xml>` }, 'format'],
    ];
    const reasons: string[] = [];
    for (const [, req] of cases) reasons.push(await reasonOf(open.handleCallback(req)));
    expect(Object.fromEntries(cases.map(([name], i) => [name, reasons[i]]))).toEqual(Object.fromEntries(cases.map(([name, , reason]) => [name, reason])));
    // Each bit of the last two ciphertext blocks flipped, and the result signed (as only a holder of the
    // token could): the pad, the app id or the length breaks, and nothing is stored.
    const flipped = new Set<string>();
    for (let bit = 0; bit < 256; bit += 1) {
      const tampered = Buffer.from(blocks);
      tampered[tampered.length - 32 + (bit >> 3)]! ^= 1 << (bit & 7);
      flipped.add(await reasonOf(open.handleCallback(request(tampered.toString('base64')))));
    }
    expect([...flipped].filter((reason) => !['padding', 'appid', 'length'].includes(reason))).toEqual([]);
    expect(await storedTicket()).toBe('ticket-good');
    for (const line of log.lines) for (const secret of [KEY, TOKEN, SECRET]) expect(JSON.stringify(line)).not.toContain(secret);
  });

  it('expands no entity and reads no DTD in a push (XXE, billion laughs): the text stays as sent', async () => {
    const laughs = `<!DOCTYPE xml [<!ENTITY l0 "lol">${Array.from({ length: 9 }, (_, i) => `<!ENTITY l${i + 1} "${`&l${i};`.repeat(10)}">`).join('')}<!ENTITY xxe SYSTEM "file:///etc/passwd">]>`;
    const xml = `${laughs}<xml><InfoType>&l9;</InfoType><AuthorizerAppid>&xxe;</AuthorizerAppid></xml>`;
    const push = await open.handleCallback(request(crypto.encrypt(xml)));
    expect(push).toEqual({ infoType: '&l9;', fields: { InfoType: '&l9;', AuthorizerAppid: '&xxe;' } });
  });

  it('a CDATA section cannot end a field early or open a second one, and a repeated field counts by its first', () => {
    expect(parseFlatXml('<xml><Ticket><![CDATA[a</Ticket><Ticket>b]]></Ticket><Ticket>c</Ticket></xml>')).toEqual({ Ticket: 'a</Ticket><Ticket>b' });
    expect(parseFlatXml('<xml><A><![CDATA[</xml><B>1</B>]]></A></xml>')).toEqual({ A: '</xml><B>1</B>' });
  });
});

// More of WeChat's published vectors, beyond message-crypto.test.ts: the Java sample's second (XML)
// message byte for byte, the URL-check echostr (WeCom's sample, same format), the C++ sample's message,
// and the open-platform documentation's end-to-end example with its all-"A" key (32 zero bytes).
describe('MessageCrypto against further official vectors', () => {
  it("encrypts the Java sample's XML reply byte for byte, and decrypts it back", () => {
    const java = new MessageCrypto({ token: 'pamtest', encodingAESKey: KEY, appId: 'wxb11529c136998cb6' });
    const reply =
      '<xml><ToUserName><![CDATA[oia2Tj我是中文jewbmiOUlr6X-1crbLOvLw]]></ToUserName><FromUserName><![CDATA[gh_7f083739789a]]></FromUserName><CreateTime>1407743423</CreateTime><MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[eYJ1MbwPRJtOvIEabaxHs7TX2D-HV71s79GUxqdUkjm6Gs2Ed1KF3ulAOA9H1xG0]]></MediaId><Title><![CDATA[testCallBackReplyVideo]]></Title><Description><![CDATA[testCallBackReplyVideo]]></Description></Video></xml>';
    const encrypted =
      'jn1L23DB+6ELqJ+6bruv23M2GmYfkv0xBh2h+XTBOKVKcgDFHle6gqcZ1cZrk3e1qjPQ1F4RsLWzQRG9udbKWesxlkupqcEcW7ZQweImX9+wLMa0GaUzpkycA8+IamDBxn5loLgZpnS7fVAbExOkK5DYHBmv5tptA9tklE/fTIILHR8HLXa5nQvFb3tYPKAlHF3rtTeayNf0QuM+UW/wM9enGIDIJHF7CLHiDNAYxr+r+OrJCmPQyTy8cVWlu9iSvOHPT/77bZqJucQHQ04sq7KZI27OcqpQNSto2OdHCoTccjggX5Z9Mma0nMJBU+jLKJ38YB1fBIz+vBzsYjrTmFQ44YfeEuZ+xRTQwr92vhA9OxchWVINGC50qE/6lmkwWTwGX9wtQpsJKhP+oS7rvTY8+VdzETdfakjkwQ5/Xka042OlUb1/slTwo4RscuQ+RdxSGvDahxAJ6+EAjLt9d8igHngxIbf6YyqqROxuxqIeIch3CssH/LqRs+iAcILvApYZckqmA7FNERspKA5f8GoJ9sv8xmGvZ9Yrf57cExWtnX8aCMMaBropU/1k+hKP5LVdzbWCG0hGwx/dQudYR/eXp3P0XxjlFiy+9DMlaFExWUZQDajPkdPrEeOwofJb';
    expect(java.encrypt(reply, Buffer.from('aaaabbbbccccdddd'))).toBe(encrypted);
    expect(java.decryptText(encrypted)).toBe(reply);
  });

  it('verifies and decrypts the URL-check echostr sample', () => {
    const wecom = new MessageCrypto({ token: 'QDG6eK', encodingAESKey: 'jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C', appId: 'wx5823bf96d3bd56c7' });
    const message = { msgSignature: '5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3', timestamp: '1409659589', nonce: '263014780', encrypt: 'P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==' };
    expect(wecom.decrypt(message)).toBe('1616140317555161061');
  });

  it("decrypts the C++ sample's message", () => {
    const cpp = new MessageCrypto({ token: 'spamtest', encodingAESKey: KEY, appId: 'wx2c2769f8efd9abc2' });
    const xml = cpp.decrypt({
      msgSignature: '003fee52ecc56afb46c00b5c7721be87860ce785',
      timestamp: '1410349438',
      nonce: '298025754',
      encrypt:
        'mfBCs65c67CeJw22u4VT2TD73q5H06+ocrAIxswCaeZ/d/Lw0msSZFHY0teqgSYiI1zR2gD2DKrB3TIrmX/liNSDrGqS8jSI/WPeKB5VPr7Ezr7gomZAyGCwJSgT1TRFWPfONGJMxuj2nk4faTuspAuVIFQ6SHwZuJBZC7mcJp7Cgr9cUhATQWDbOPaE7ukZBTV2YqyzH+UI2AK+J1S47cE79k1RX8t0hcTz/O0hlK8DGXKnvYv88qKQcI7z4iaajqHfRVZKBNyOODabs+It+ZfM3dWTeFcPgDbGtIEnpt/EDtuuA/zMvtkaKdHdswPnVZQ+xdwbYr3ldGvfT8HlEYEgkgKaThxTFobVlwzu2ZkXCjicbP3xdr15Iq48ObgzPpqYuZ3IEoyggZDKClquk0u0orMck4GTF/XyE8yGzc4=',
    });
    expect(parseFlatXml(xml)).toMatchObject({ ToUserName: 'gh_10f6c3c3ac5a', CreateTime: '1410349438', Content: 'abcdteT', MsgId: '6057404712141979648' });
  });

  it("round-trips the documentation's example with a key of 43 A's, the push and the signed reply", () => {
    const doc = new MessageCrypto({ token: 'AAAAA', encodingAESKey: 'A'.repeat(43), appId: 'wx134c8103faa5a59e' });
    const body =
      '<xml><ToUserName><![CDATA[gh_97417a04a28d]]></ToUserName><Encrypt><![CDATA[D7yzvUNAL930rd28wf21s4hvXhz0L6Uit/p2Di6C5DHyYGpEgdBRnKjBec34JwoQXicwaZC7fOVihW80F4VtsdvE//1vr7oAbqjDv8KenVp+ajKYpJnyQ4zMRhIC+a31fCVOMC03FfzV/QuC94kBP55a+Za3sJgvAn+ZbsNqZI5DkyuzkhQN8OBqCzFhizGmy0xpM0MEA4agpvE+RuNO1rhHTtuJB5yltw1FiYzecSXJ+y/D2r81VkRn2eYjh2ltsoyfbDR7Is6ookXIFxTfyeNyeHxMeT4KN5WpCDmSbTcUYrbBUlkGLJ9n/rU8YOywma6G7aTb7KZKOqCxgfoUlYEZPk4FUL/TK7ShriFDMVCLyjQJ15Ob++agDWtcxhfUfe6HIoIpRW8mKNBQiY/Jd1svvuskA1wLef1RTtzKfMpagSCX/laZINmdnX4zrF6kIaR9P4xQrWXbsTFHTYe0Mg==]]></Encrypt></xml>';
    const xml = doc.decrypt({ msgSignature: '6c12a4205838198b8fa631b3220723bb07f1015c', timestamp: '1715943329', nonce: '1590219412', encrypt: parseFlatXml(body).Encrypt! });
    expect(Buffer.byteLength(xml)).toBe(292);
    expect(parseFlatXml(xml)).toMatchObject({ MsgType: 'event', Event: 'debug_demo', debug_str: 'hello world' });
    const reply = doc.encrypt('<xml><demo_resp>[CDATA[good luck]]</demo_resp></xml>', Buffer.from('999951349e8ee746'));
    expect(reply).toBe('hE8R6mGXHkJJjU72KxzKUd1GEkKJaEZq7vRL8XgK3o+00k8JGq6+pZJUIlTSyhsX+bxIBQ72g3GyvDdIZcr6+3HAZbSvPT9t/o11MI7d6WELwqrGd7jMnV0zv3Zc9Nq7');
    expect(doc.signature('1713424427', '415670741', reply)).toBe('03e0812039325c2712ef5f0f980fd14c70d6e307');
  });
});
