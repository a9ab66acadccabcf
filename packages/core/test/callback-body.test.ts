import { afterAll, describe, expect, it } from 'vitest';
import { MemoryCache, MessageCrypto, MessageCryptoError, OpenPlatform } from '../src/index.js';
import { cdata, parseFlatXml } from '../src/open-platform/xml.js';
import { rejection } from './helpers.js';

// handleCallback reads the request body before its signature can be checked, so the body is what anyone
// on the internet sends: its size is capped and its parse is one linear pass (see src/open-platform/xml.ts).
const KEY = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG';
const open = new OpenPlatform({
  appId: 'wxcomponent0000001',
  secret: 'component-secret',
  token: 'callback-token',
  encodingAESKey: KEY,
  baseUrl: 'http://127.0.0.1:9',
  cache: new MemoryCache(),
  durableStore: new MemoryCache(),
  logger: false,
});
afterAll(() => open.close());

const query = { msg_signature: '0'.repeat(40), timestamp: '1700000000', nonce: 'n' };
const encrypted = new MessageCrypto({ token: 'callback-token', encodingAESKey: KEY, appId: 'wxcomponent0000001' }).encrypt('<xml><InfoType>x</InfoType></xml>');
/** A push-shaped body of `bytes` bytes: the Encrypt field, then filler fields. */
function body(bytes: number): string {
  const head = `<xml><ToUserName><![CDATA[wxcomponent0000001]]></ToUserName><Encrypt><![CDATA[${encrypted}]]></Encrypt>`;
  const tail = '</xml>';
  return `${head}<Pad>${'p'.repeat(bytes - head.length - tail.length - 11)}</Pad>${tail}`;
}

describe('handleCallback on an unauthenticated body', () => {
  it('refuses a body over 64 KB unread, as a format error', async () => {
    for (const payload of [body(64 * 1024 + 1), Buffer.from(body(100_000))]) {
      const error = await rejection(open.handleCallback({ query, body: payload }));
      expect(error).toBeInstanceOf(MessageCryptoError);
      expect(error).toMatchObject({ code: 'ERR_WXKIT_MESSAGE_CRYPTO', reason: 'format' });
    }
  });

  it('reads a 60 KB body to its signature check, which refuses it', async () => {
    expect(body(60 * 1024)).toHaveLength(60 * 1024);
    const error = await rejection(open.handleCallback({ query, body: body(60 * 1024) }));
    expect(error).toMatchObject({ code: 'ERR_WXKIT_MESSAGE_CRYPTO', reason: 'signature' });
  });

  it('a call without its { query, body } (null, a string) is a format error, not a TypeError', async () => {
    for (const request of [null, undefined, 'body']) {
      const error = await rejection(open.handleCallback(request as never));
      expect(error, String(request)).toMatchObject({ code: 'ERR_WXKIT_MESSAGE_CRYPTO', reason: 'format', message: expect.stringMatching(/takes \{ query, body \}/) });
    }
  });

  it("a body a parser already read (an object, undefined, a number) is a 'body' error that says to hand over the raw body", async () => {
    // express.json()/urlencoded() hand over an object; no parser (or express.text() without a type that
    // matches WeChat's text/xml) leaves undefined, or {} under Express 4. Nothing of the body is quoted.
    for (const parsed of [{ xml: { Encrypt: 'secret-looking-value' } }, {}, undefined, null, 42, [encrypted]]) {
      const error = await rejection(open.handleCallback({ query, body: parsed as never }));
      expect(error, String(parsed)).toBeInstanceOf(MessageCryptoError);
      expect(error, String(parsed)).toMatchObject({ code: 'ERR_WXKIT_MESSAGE_CRYPTO', reason: 'body' });
      expect((error as Error).message).toMatch(/raw body.*string or Buffer/);
      expect((error as Error).message).toContain("express.text({ type: '*/*' })");
      expect((error as Error).message).not.toContain('secret-looking-value');
      expect((error as Error).message).not.toContain(encrypted);
    }
  });

  it('finds no Encrypt in a body of unclosed tags', async () => {
    const error = await rejection(open.handleCallback({ query, body: `<xml>${'<a>'.repeat(20_000)}</xml>` }));
    expect(error).toMatchObject({ reason: 'format' });
  });
});

describe('parseFlatXml', () => {
  it("reads WeChat's flat messages: CDATA, plain text with entities, the first of a repeated tag", () => {
    const xml = '<xml>\n  <ToUserName><![CDATA[gh_1]]></ToUserName>\n  <CreateTime>1700000000</CreateTime>\n  <Content>a &lt;b&gt; &amp; c</Content>\n  <Content>second</Content>\n</xml>';
    expect(parseFlatXml(xml)).toEqual({ ToUserName: 'gh_1', CreateTime: '1700000000', Content: 'a <b> & c' });
  });

  it('returns a nested element as its raw inner text, and skips what is not a tag', () => {
    const xml = '<xml><?pi?><!-- c --><ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType></ScanCodeInfo><N a="1">x</N><Id>7</Id></xml>';
    expect(parseFlatXml(xml)).toEqual({ ScanCodeInfo: '<ScanType><![CDATA[qrcode]]></ScanType>', Id: '7' });
  });

  it('round-trips a value holding "]]>" through cdata()', () => {
    const value = 'a]]>b<c>&amp;';
    expect(parseFlatXml(`<xml><Reply>${cdata(value)}</Reply></xml>`).Reply).toBe(value);
  });

  it('ends an element at its own closing tag, however many tags were left open inside it', () => {
    expect(parseFlatXml(`<xml><A>${'<b>'.repeat(1000)}x</A>${'</c>'.repeat(1000)}<B>y &amp; z</B></xml>`)).toEqual({ A: `${'<b>'.repeat(1000)}x`, B: 'y & z' });
    expect(parseFlatXml('<xml><A>x</xml>')).toEqual({});
    expect(parseFlatXml('no xml here')).toEqual({});
  });
});
