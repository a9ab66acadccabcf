import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfficialAccount, OpenPlatform, easyWeChat4, easyWeChat6, type KeySchema } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';
import { startMockWeChat, startRedis, type MockApp, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { IGBINARY_HEADER, expectOneEntryAfterPeerRefresh, expectPeerReadsAndSends, gatedPhpPeer, nodeMessage, phpPeer, rawHex, type PhpPeerOptions } from './helpers.js';

// EasyWeChat 5 and 6 on a Symfony Cache RedisAdapter: the peer's own storage code (Debian's
// php-symfony-cache 5.4 with its DefaultMarshaller, on phpredis), EasyWeChat's few lines around it
// (fixtures/easywechat-peer.php), one real redis-server shared with wxkit, the mock WeChat upstream.
//
// Two marshallers: "stock" is what the adapter picks by itself on Debian, igbinary (Debian's php-redis
// cannot load without php-igbinary, so every Debian PHP that talks to Redis has it loaded); "serialize"
// is DefaultMarshaller(false), what symfony/cache 7.2+ writes by default and what a PHP built without
// igbinary writes. Choosing by `php -n` and explicit extensions is not possible here: Debian's redis.so
// refuses to load without igbinary's symbols.

let mock: MockWeChat;
let redis: StoreServer;
const caches: RedisCache[] = [];
beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat(), startRedis()]);
});
afterAll(async () => {
  await Promise.all(caches.map((cache) => cache.close()));
  await Promise.all([mock?.close(), redis?.stop()]);
});

const address = () => `127.0.0.1:${redis.port}`;
// The RedisAdapter each version's cache page shows: EasyWeChat 5 `new RedisAdapter($client)`, no
// namespace; EasyWeChat 6 `new RedisAdapter($redis, 'easywechat', 1500)`, which the adapter joins with ':'.
const NAMESPACE = { '5': '', '6': 'easywechat' } as const;
const wxkitPrefix = (sdk: '5' | '6') => (NAMESPACE[sdk] ? `${NAMESPACE[sdk]}:` : '');

const cases = [
  { sdk: '5', marshaller: 'stock', wxkit: 'igbinary' },
  { sdk: '5', marshaller: 'serialize', wxkit: 'php-serialize' },
  { sdk: '6', marshaller: 'stock', wxkit: 'igbinary' },
  { sdk: '6', marshaller: 'serialize', wxkit: 'php-serialize' },
] as const;

function peerOptions(app: MockApp, sdk: '5' | '6', marshaller: 'stock' | 'serialize'): PhpPeerOptions {
  return { redis: address(), sdk, store: 'symfony', marshaller, prefix: NAMESPACE[sdk], appid: app.appId, secret: app.secret, baseUrl: mock.url };
}

/** The wxkit side: the profile of the peer, constructed as its README says, with the marshaller chosen. */
function node(app: MockApp, sdk: '5' | '6', marshaller: 'igbinary' | 'php-serialize' | 'auto'): { client: OfficialAccount; key: string } {
  // A variable, not a literal: the marshaller option is checked by the profile at run time.
  const options = { prefix: wxkitPrefix(sdk), marshaller };
  const schema: KeySchema = sdk === '5' ? easyWeChat4(options) : easyWeChat6(options);
  const cache = new RedisCache(redis.url);
  caches.push(cache);
  // No tokenEndpoint: each profile defaults to its peer's (EasyWeChat 5 and 6: the classic endpoint).
  const client = new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, logger: false, schema });
  const subject = { kind: 'official_account', appId: app.appId, secret: app.secret, endpoint: 'classic' } as const;
  return { client, key: schema.accessTokenKey(subject) };
}

describe.each(cases)('EasyWeChat $sdk on Symfony RedisAdapter, $marshaller marshaller', ({ sdk, marshaller, wxkit }) => {
  const format = marshaller === 'stock' ? 'igbinary' : 'serialize';
  const expectFormat = (hex: string) =>
    format === 'igbinary' ? expect(hex.startsWith(IGBINARY_HEADER), hex).toBe(true) : expect(Buffer.from(hex, 'hex').toString('latin1')).toMatch(/^[as]:\d+:/);

  it('the peer fetches and stores; wxkit reads it, with no fetch of its own, and sends', async () => {
    const app = mock.createApp();
    const php = peerOptions(app, sdk, marshaller);
    const { token } = await phpPeer(php, 'refresh');
    const { client, key } = node(app, sdk, wxkit);
    expectFormat(await rawHex(address(), key));

    expect(await client.accessToken.getToken()).toBe(token);
    await client.templateMessage.send(nodeMessage);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 1, rejectedCalls: 0 });
  });

  it('wxkit fetches and stores; the peer reads it, with no fetch of its own, and sends', async () => {
    const app = mock.createApp();
    const { client, key } = node(app, sdk, wxkit);
    const token = await client.accessToken.getToken();
    expect(token.length).toBeGreaterThan(127); // real length: igbinary's length byte is ≥ 0x80
    expectFormat(await rawHex(address(), key));

    const php = peerOptions(app, sdk, marshaller);
    expect(await phpPeer(php, 'read')).toEqual({ token, unparseable: 0 });
    expect(await phpPeer(php, 'send', '2')).toEqual({ sent: 2, failed: 0, fetches: 0, rejected: 0, unparseable: 0 });
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 2, rejectedCalls: 0 });
  });

  it('both refresh at the same moment: wxkit loses no send, the peer parses every value it meets', async () => {
    const app = mock.createApp();
    const php = peerOptions(app, sdk, marshaller);
    const { client, key } = node(app, sdk, wxkit);
    await client.accessToken.getToken();
    // Slow answers keep both fetches in flight together, whichever leaves first.
    mock.setLatency(40);
    try {
      for (let round = 0; round < 3; round += 1) {
        const peer = await gatedPhpPeer(php, 'refresh');
        const [figures, fresh, sends] = await Promise.all([
          peer.go(),
          client.accessToken.forceRefresh(),
          Promise.all(Array.from({ length: 5 }, () => client.templateMessage.send(nodeMessage))),
        ]);
        expect(figures.unparseable, `round ${round}`).toBe(0);
        expect(typeof fresh).toBe('string');
        expect(sends).toHaveLength(5);
        expectFormat(await rawHex(address(), key));
        // Whatever the last write was, each side reads a token WeChat accepts, and sends with it.
        await expectPeerReadsAndSends(php, mock, app.appId);
      }
    } finally {
      mock.setLatency(0);
    }
    // One fetch per refresh and side (1 first + 3 PHP + 3 wxkit): nobody fetched again over a value it
    // could not read.
    expect(mock.counters(app.appId).tokenRequests).toBe(7);

    await expectOneEntryAfterPeerRefresh(php, mock, app.appId, client);
  });
});

describe('the auto marshaller on a stock Debian PHP (igbinary)', () => {
  it('reads the igbinary entry the peer wrote, and a refresh writes igbinary back, which the peer reads', async () => {
    for (const sdk of ['5', '6'] as const) {
      const app = mock.createApp();
      const php = peerOptions(app, sdk, 'stock');
      const { token } = await phpPeer(php, 'refresh');
      const { client, key } = node(app, sdk, 'auto');
      expect(await client.accessToken.getToken(), `EasyWeChat ${sdk}`).toBe(token);

      const fresh = await client.accessToken.forceRefresh();
      expect(fresh).not.toBe(token);
      expect((await rawHex(address(), key)).startsWith(IGBINARY_HEADER), `EasyWeChat ${sdk}`).toBe(true);
      expect(await phpPeer(php, 'read')).toEqual({ token: fresh, unparseable: 0 });
    }
  });

  it('a refresh on the peer side is picked up by wxkit', async () => {
    const app = mock.createApp();
    const php = peerOptions(app, '6', 'stock');
    const { client } = node(app, '6', 'auto');
    const first = await client.accessToken.getToken();
    const { token: fresh } = await phpPeer(php, 'refresh');
    expect(fresh).not.toBe(first);
    // wxkit's memo still holds the first token; WeChat now refuses it only after the grace window,
    // which the mock ends here: the rejected send finds the peer's token in the store and resends with it.
    mock.invalidateTokens(app.appId);
    const { token: after } = await phpPeer(php, 'refresh');
    await client.templateMessage.send(nodeMessage);
    expect(await client.accessToken.getToken()).toBe(after);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 3, templateSends: 1 });
  });
});

describe.each(['stock', 'serialize'] as const)("an item Symfony's Contracts get() wrote, with its metadata, %s marshaller", (marshaller) => {
  it('wxkit takes the token out of the item envelope, with no fetch of its own, and sends', async () => {
    const app = mock.createApp();
    const php = peerOptions(app, '6', marshaller);
    const { token } = await phpPeer(php, 'refresh');
    expect(await phpPeer(php, 'write-item', token!, '7000')).toEqual({ unparseable: 0 });
    const { client, key } = node(app, '6', 'auto');
    // Symfony 5.4's envelope: a one-entry array whose 10-byte key starts with 0x9D.
    const raw = Buffer.from(await rawHex(address(), key), 'hex').toString('latin1');
    expect(raw).toMatch(marshaller === 'serialize' ? /^a:1:\{s:10:"\x9d/ : /^\x00\x00\x00\x02\x14\x01\x11\x0a\x9d/);

    expect(await client.accessToken.getToken()).toBe(token);
    await client.templateMessage.send(nodeMessage);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 1, rejectedCalls: 0 });
  });
});

describe.each(['stock', 'serialize'] as const)('EasyWeChat 6 on a tag-aware Symfony pool (RedisTagAwareAdapter), %s marshaller', (marshaller) => {
  it('wxkit says which pool wrote the entry it cannot share, and leaves it to the peer, whose token goes on working', async () => {
    const app = mock.createApp();
    const php = { ...peerOptions(app, '6', marshaller), tags: true };
    const { token } = await phpPeer(php, 'refresh');
    const schema = easyWeChat6({ prefix: wxkitPrefix('6') });
    const key = schema.accessTokenKey({ kind: 'official_account', appId: app.appId, secret: app.secret, endpoint: 'classic' });
    const before = await rawHex(address(), key);
    // TagAwareMarshaller's compact form: 0x9D, 8 bytes of metadata, 0x5F over the tags' length.
    expect(before.slice(0, 2)).toBe('9d');
    expect(before.slice(18, 20)).toBe('5f');
    const cache = new RedisCache(redis.url);
    caches.push(cache);
    const warnings: { event?: string; message: string }[] = [];
    const warn = (fields: unknown, message: string) => void warnings.push({ event: (fields as { event?: string }).event, message });
    const logger = { debug: () => undefined, info: () => undefined, warn, error: warn };
    const client = new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, logger, schema });
    try {
      await client.templateMessage.send(nodeMessage);
      const foreign = warnings.filter((line) => line.event === 'cache.foreign_entry');
      expect(foreign).toHaveLength(1);
      expect(foreign[0]!.message).toMatch(/written by a tag-aware Symfony pool \(RedisTagAwareAdapter.*plain RedisAdapter/);
      expect(foreign[0]!.message).not.toMatch(/msgpack/);
      // Left as the peer wrote it: the peer reads its own token, with no fetch of its own.
      expect(await rawHex(address(), key)).toBe(before);
      expect(await phpPeer(php, 'read')).toEqual({ token, unparseable: 0 });
    } finally {
      await client.close();
    }
  });
});

// wxkit's marshaller: `auto` (the default) writes the copy with serialize(), which every PHP reads; the
// two explicit ones write what they name.
describe.each([
  { marshaller: 'stock', wxkit: 'auto', copy: 'serialize' },
  { marshaller: 'stock', wxkit: 'igbinary', copy: 'igbinary' },
  { marshaller: 'serialize', wxkit: 'php-serialize', copy: 'serialize' },
] as const)('EasyWeChat 6 open platform on Symfony RedisAdapter, $marshaller marshaller, wxkit $wxkit', ({ marshaller, wxkit, copy }) => {
  it("an authorizer's token wxkit refreshed is what EasyWeChat 6's getAuthorizerAccessToken() finds (no refresh of its own), and one it refreshed on its own is what wxkit takes", async () => {
    const component = mock.createComponent();
    const cache = new RedisCache(redis.url);
    caches.push(cache);
    const options = {
      appId: component.appId,
      secret: component.secret,
      token: component.token,
      encodingAESKey: component.encodingAESKey,
      baseUrl: mock.url,
      logger: false,
      schema: easyWeChat6({ prefix: wxkitPrefix('6'), marshaller: wxkit }),
    } as const;
    const open = new OpenPlatform({ ...options, cache, durableStore: cache });
    try {
      // The verify ticket where EasyWeChat 6's VerifyTicket keeps it, as its push handler would have stored it.
      const ticket = mock.issueVerifyTicket(component.appId);
      await cache.set(`${wxkitPrefix('6')}open_platform.verify_ticket.${component.appId}`, `s:${ticket.length}:"${ticket}";`, 3600);
      const { preAuthCode } = await open.createPreAuthCode();
      const grant = mock.authorize(component.appId, { preAuthCode });
      const { authorizerAppId: a } = await open.handleAuthorization(grant.authorizationCode);
      const token = await open.officialAccount(a).accessToken.forceRefresh();
      expect(mock.counters(a).authorizerTokenRequests).toBe(1);

      // The PHP side is given the refresh token its own database holds, as EasyWeChat's caller passes it.
      const php = { redis: address(), sdk: '6', store: 'symfony', marshaller, prefix: NAMESPACE['6'], appid: a, secret: '', baseUrl: mock.url } as const;
      const refreshToken = mock.authorizerRefreshToken(a)!;
      const hex = await rawHex(address(), `${wxkitPrefix('6')}open-platform.authorizer_access_token.${a}.${createHash('md5').update(refreshToken).digest('hex')}`);
      expect(copy === 'igbinary' ? hex.startsWith(IGBINARY_HEADER) : Buffer.from(hex, 'hex').toString('latin1').startsWith('s:'), hex).toBe(true);
      const figures = await phpPeer(php, 'authorizer-send', a, refreshToken, component.appId, '2');
      expect(figures).toEqual({ token, sent: 2, failed: 0, fetches: 0, unparseable: 0 });
      expect(mock.counters(a)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 2, rejectedCalls: 0 });

      // The other way: EasyWeChat's copy runs out while no wxkit process uses the account, and PHP
      // refreshes on its own, in its own form. wxkit's entry has run out too: the next wxkit process
      // takes PHP's token, where a fetch would have invalidated it.
      const copyKey = `${wxkitPrefix('6')}open-platform.authorizer_access_token.${a}.${createHash('md5').update(refreshToken).digest('hex')}`;
      await cache.delete(copyKey);
      const own = await phpPeer(php, 'authorizer-send', a, refreshToken, component.appId, '1');
      expect(own).toMatchObject({ sent: 1, fetches: 1, unparseable: 0 });
      await cache.delete(`wechat:authorizer_access_token:${component.appId}:${a}`);
      const later = new OpenPlatform({ ...options, cache, durableStore: cache });
      try {
        expect(await later.officialAccount(a).accessToken.getToken()).toBe(own.token);
        await later.officialAccount(a).templateMessage.send(nodeMessage);
        expect(mock.counters(a)).toMatchObject({ authorizerTokenRequests: 2, templateSends: 4, rejectedCalls: 0 });
      } finally {
        await later.close();
      }
    } finally {
      await open.close();
    }
  });
});
