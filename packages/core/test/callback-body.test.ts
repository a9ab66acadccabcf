import { createServer } from 'node:http';
import { inspect } from 'node:util';
import { runInNewContext } from 'node:vm';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryCache, MessageCrypto, MessageCryptoError, OpenPlatform } from '../src/index.js';
import { cdata, parseFlatXml } from '../src/open-platform/xml.js';
import { errorText, rejection } from './helpers.js';

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

  it("a call without its { query, body } (null, undefined, a number, the body alone) is a 'body' error that says what it got, not a TypeError or a format error", async () => {
    for (const [request, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [42, 'number'],
      ['<xml></xml>', 'string: the body alone?'],
    ] as const) {
      const error = await rejection(open.handleCallback(request as never));
      expect(error, String(request)).toBeInstanceOf(MessageCryptoError);
      expect(error, String(request)).toMatchObject({ code: 'ERR_WXKIT_MESSAGE_CRYPTO', reason: 'body' });
      expect((error as Error).message, String(request)).toMatch(/^handleCallback\(\) takes one argument, the request as \{ query, body \}/);
      expect((error as Error).message, String(request)).toContain(`(got ${got}`);
    }
  });

  it("a body a parser already read (an object, undefined, a number) is a 'body' error that says to hand over the raw body", async () => {
    // express.json()/urlencoded() hand over an object; no parser (or express.text() without a type that
    // matches WeChat's text/xml) leaves undefined, or {} under Express 4. Nothing of the body is quoted.
    for (const parsed of [{ xml: { Encrypt: 'secret-looking-value' } }, {}, undefined, null, 42, [encrypted]]) {
      const error = await rejection(open.handleCallback({ query, body: parsed as never }));
      expect(error, String(parsed)).toBeInstanceOf(MessageCryptoError);
      expect(error, String(parsed)).toMatchObject({ code: 'ERR_WXKIT_MESSAGE_CRYPTO', reason: 'body' });
      expect((error as Error).message).toMatch(/raw body.*a string or its bytes \(a Buffer, Uint8Array or ArrayBuffer\)/);
      expect((error as Error).message).toContain("express.text({ type: '*/*' })");
      // Nowhere in the error: its message, stack, cause, JSON, or what a logger prints of it.
      const text = `${errorText(error)}\n${inspect(error, { depth: 10 })}`;
      expect(text).not.toContain('secret-looking-value');
      expect(text).not.toContain(encrypted);
    }
  });

  it("bytes that are not a push's own (a Uint16Array, a DataView) are a 'body' error too", async () => {
    const bytes = Buffer.from(body(1000));
    for (const view of [new Uint16Array(bytes.buffer, bytes.byteOffset, 500), new DataView(bytes.buffer, bytes.byteOffset, bytes.length)]) {
      expect(await rejection(open.handleCallback({ query, body: view as never }))).toMatchObject({ reason: 'body' });
    }
  });

  it('counts a string by its UTF-8 bytes: one of 30,000 CJK characters (90 KB) is over 64 KB, however many characters', async () => {
    const payload = body(1000) + '中'.repeat(30_000);
    expect(payload.length).toBeLessThan(64 * 1024);
    expect(await rejection(open.handleCallback({ query, body: payload }))).toMatchObject({ reason: 'format' });
  });

  it('an empty body (a string or no bytes) holds no Encrypt: a format error, not a body one', async () => {
    for (const payload of ['', Buffer.alloc(0), new Uint8Array(0)]) {
      expect(await rejection(open.handleCallback({ query, body: payload }))).toMatchObject({ reason: 'format' });
    }
  });

  it('finds no Encrypt in a body of unclosed tags', async () => {
    const error = await rejection(open.handleCallback({ query, body: `<xml>${'<a>'.repeat(20_000)}</xml>` }));
    expect(error).toMatchObject({ reason: 'format' });
  });
});

describe('handleCallback on the raw body as each kind of server hands it over', () => {
  const APP_ID = 'wxcomponent0000001';
  const signed = new OpenPlatform({ appId: APP_ID, secret: 'component-secret', token: 'callback-token', encodingAESKey: KEY, baseUrl: 'http://127.0.0.1:9', cache: new MemoryCache(), durableStore: new MemoryCache(), logger: false, now: () => 1_700_000_060_000 });
  afterAll(() => signed.close());
  const crypto = new MessageCrypto({ token: 'callback-token', encodingAESKey: KEY, appId: APP_ID });
  const encrypt = crypto.encrypt(`<xml><AppId><![CDATA[${APP_ID}]]></AppId><InfoType><![CDATA[unauthorized]]></InfoType><AuthorizerAppid><![CDATA[wx0123456789abcdef]]></AuthorizerAppid></xml>`);
  const push = `<xml><AppId><![CDATA[${APP_ID}]]></AppId><Encrypt><![CDATA[${encrypt}]]></Encrypt></xml>`;
  const [timestamp, nonce] = ['1700000000', '123456789'];
  const pushQuery = { msg_signature: crypto.signature(timestamp, nonce, encrypt), timestamp, nonce };

  it("takes the push's bytes however they come: a Buffer, a subclass of it, a Uint8Array (a view into a larger buffer, another realm's), an ArrayBuffer (a web Request's)", async () => {
    class Body extends Buffer {}
    const own = Buffer.from(push);
    const larger = new Uint8Array(own.length + 10);
    larger.set(own, 5);
    const bodies: [string, unknown][] = [
      ['Buffer', own],
      ['a subclass of Buffer', Object.setPrototypeOf(Buffer.from(push), Body.prototype)],
      ['Uint8Array', new Uint8Array(own)],
      ['a view into a larger buffer', larger.subarray(5, 5 + own.length)],
      ["another realm's Uint8Array", runInNewContext('Uint8Array.from(bytes)', { bytes: [...own] })],
      ['ArrayBuffer', new Uint8Array(own).buffer],
      ["a web Request's arrayBuffer()", await new Request('http://x', { method: 'POST', body: push }).arrayBuffer()],
    ];
    for (const [name, payload] of bodies) {
      await expect(signed.handleCallback({ query: pushQuery, body: payload as never }), name).resolves.toMatchObject({ infoType: 'unauthorized' });
    }
  });

  it("Node's own server handing the body over as the Buffer it read: the push is taken and answered 'success'", async () => {
    const refused: unknown[] = [];
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        signed.handleCallback({ query: new URL(req.url ?? '/', 'http://x').searchParams, body: Buffer.concat(chunks) }).then(
          () => res.end('success'),
          (error: unknown) => (refused.push(error), (res.statusCode = 403), res.end()),
        );
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as { port: number };
      const res = await fetch(`http://127.0.0.1:${port}/wechat/open?${new URLSearchParams(pushQuery)}`, { method: 'POST', headers: { 'content-type': 'text/xml' }, body: push });
      expect(refused).toEqual([]);
      expect([res.status, await res.text()]).toEqual([200, 'success']);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
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
