import { afterAll, describe, expect, it } from 'vitest';
import { MemoryCache, MessageCrypto, OpenPlatform } from '../src/index.js';

// The callback's query as web frameworks parse it: Express hands `req.query` over as qs's `ParsedQs`
// (nested objects and arrays), and a parser that converts digits gives numbers. docs/open-platform.md
// passes `req.query` as it is, so the type must take it (the root type check compiles this file) and
// the push must still be read.
const KEY = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG';
const APP_ID = 'wxcomponent0000001';
const open = new OpenPlatform({
  appId: APP_ID,
  secret: 'component-secret',
  token: 'callback-token',
  encodingAESKey: KEY,
  baseUrl: 'http://127.0.0.1:9',
  cache: new MemoryCache(),
  durableStore: new MemoryCache(),
  logger: false,
  // The pushes below were signed at 1700000000: the platform's clock reads a minute later.
  now: () => 1_700_000_060_000,
});
afterAll(() => open.close());

/** qs's ParsedQs, as @types/qs declares it: the type of Express's `req.query`. */
interface ParsedQs {
  [key: string]: undefined | string | ParsedQs | (string | ParsedQs)[];
}

const crypto = new MessageCrypto({ token: 'callback-token', encodingAESKey: KEY, appId: APP_ID });
const encrypt = crypto.encrypt(`<xml><AppId><![CDATA[${APP_ID}]]></AppId><InfoType><![CDATA[unauthorized]]></InfoType><AuthorizerAppid><![CDATA[wx0123456789abcdef]]></AuthorizerAppid></xml>`);
const body = `<xml><AppId><![CDATA[${APP_ID}]]></AppId><Encrypt><![CDATA[${encrypt}]]></Encrypt></xml>`;
const timestamp = '1700000000';
const nonce = '123456789';
const signature = crypto.signature(timestamp, nonce, encrypt);

describe('handleCallback with a query a framework parsed', () => {
  it("takes Express's req.query (ParsedQs): repeated values count by their first, nested objects are ignored", async () => {
    const query: ParsedQs = { msg_signature: signature, timestamp, nonce: [nonce, 'other'], encrypt_type: 'aes', extra: { a: '1' } };
    await expect(open.handleCallback({ query, body })).resolves.toMatchObject({ infoType: 'unauthorized', fields: { AuthorizerAppid: 'wx0123456789abcdef' } });
  });

  it('takes a timestamp and a nonce parsed into numbers, as their digits', async () => {
    const query: Record<string, unknown> = { msg_signature: signature, timestamp: Number(timestamp), nonce: Number(nonce) };
    await expect(open.handleCallback({ query, body })).resolves.toMatchObject({ infoType: 'unauthorized' });
  });
});
