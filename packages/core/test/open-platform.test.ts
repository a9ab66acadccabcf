import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { startMockWeChat, type MockComponent, type MockWeChat } from '@wxkit/testing';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  CacheError,
  ConfigError,
  MemoryCache,
  MessageCrypto,
  OpenPlatform,
  easyWeChat6,
  nativeSchema,
  silenceper,
  TokenUnavailableError,
  wxJava,
  type ClientEvent,
  type KeySchema,
  type AuthorizerRefreshTokenRecoveredEvent,
  type OpenPlatformOptions,
  type TokenCache,
} from '../src/index.js';
import { componentOptions, deferred, endedByClose, errorText, nextEvent, recordingLogger, rejection, rewritingDispatcher, storeVerifyTicket } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

interface Setup {
  component: MockComponent;
  cache: MemoryCache;
  durable: MemoryCache;
  make(extra?: Partial<OpenPlatformOptions>): OpenPlatform;
}

const opened: OpenPlatform[] = [];
afterAll(async () => {
  await Promise.all(opened.map((open) => open.close()));
});

/** A component on the mock, with a cache and a durable store of its own, and a factory of OpenPlatforms on them. */
function setup(durable: MemoryCache = new MemoryCache()): Setup {
  const component = mock.createComponent();
  const cache = new MemoryCache();
  const make = (extra: Partial<OpenPlatformOptions> = {}) => {
    const open = new OpenPlatform({
      ...componentOptions(mock, component),
      cache,
      durableStore: durable,
      logger: false,
      ...extra,
    });
    opened.push(open);
    return open;
  };
  return { component, cache, durable, make };
}

/** A component whose ticket is stored, as if its push had arrived. */
async function withTicket(s: Setup): Promise<void> {
  await storeVerifyTicket(mock, s.component, s.durable);
}

/** An authorized account, through the pre-auth code and api_query_auth. */
async function authorized(s: Setup, open: OpenPlatform): Promise<string> {
  const { preAuthCode } = await open.createPreAuthCode();
  const grant = mock.authorize(s.component.appId, { preAuthCode });
  const { authorizerAppId } = await open.handleAuthorization(grant.authorizationCode);
  expect(authorizerAppId).toBe(grant.authorizerAppId);
  return authorizerAppId;
}

/** An OpenPlatform that holds one client, and the client of authorizer `a`, kept by the test after it was dropped for `b`'s. */
async function heldAfterDrop(s: Setup) {
  await withTicket(s);
  const open = s.make({ maxClients: 1 });
  const [a, b] = [await authorized(s, open), await authorized(s, open)];
  const held = open.officialAccount(a);
  open.officialAccount(b); // a is dropped
  return { open, a, held };
}

/** The component token's key on wxkit's own schema. */
const componentTokenKey = (s: Setup) => nativeSchema().openPlatformKey!('component_access_token', s.component.appId);

/**
 * Another process is fetching the component token: none is stored, and it holds the refresh lock.
 * `waited` resolves once a process of `s` waits for it.
 */
async function componentTokenFetchedElsewhere(s: Setup): Promise<{ waited: Promise<void> }> {
  await s.cache.delete(componentTokenKey(s));
  await s.cache.set(`${componentTokenKey(s)}:lock`, 'elsewhere:1', 60);
  return { waited: waitedOn(s.cache, componentTokenKey(s)) };
}

/** Resolves once a process on `cache` watches `key` for another's write: it is waiting for that process. */
function waitedOn(cache: MemoryCache, key: string): Promise<void> {
  const watched = deferred();
  const watch = cache.watch.bind(cache);
  cache.watch = (watchedKey, onChange) => {
    if (watchedKey === key) watched.resolve();
    return watch(watchedKey, onChange);
  };
  return watched.promise;
}

const send = (open: OpenPlatform, appId: string) => open.officialAccount(appId).templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });

describe('component_verify_ticket', () => {
  let callback: Server;
  let url: string;
  let handler: (query: URLSearchParams, body: string) => Promise<number>;
  beforeAll(async () => {
    callback = createServer((req, res) => {
      let body = '';
      req.on('data', (chunk) => (body += chunk));
      req.on('end', () => {
        void handler(new URL(req.url ?? '/', 'http://x').searchParams, body).then((status) => {
          res.statusCode = status;
          res.end(status === 200 ? 'success' : 'error');
        });
      });
    });
    await new Promise<void>((resolve) => callback.listen(0, '127.0.0.1', resolve));
    const address = callback.address();
    url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/open`;
  });
  afterAll(() => new Promise((resolve) => callback.close(resolve)));

  it('the pushed ticket is decrypted, stored for every process, and used for the component token', async () => {
    const s = setup();
    const receiver = s.make();
    const events: ClientEvent[] = [];
    receiver.on('component_verify_ticket.received', (event) => events.push(event));
    handler = async (query, body) => (await receiver.handleCallback({ query, body }), 200);
    mock.setComponentCallback(s.component.appId, url);
    const push = await mock.pushVerifyTicket(s.component.appId);
    expect(push.status).toBe(200);
    expect(events).toHaveLength(1);
    expect(JSON.parse((await s.durable.get(`wechat:component_verify_ticket:${s.component.appId}`))!)).toMatchObject({ component_verify_ticket: push.ticket });
    // Another process (another instance on the same stores) reads it.
    const other = s.make();
    expect(await other.componentAccessToken()).toMatch(/^\d{2}_/);
    expect(mock.counters(s.component.appId).componentTokenRequests).toBe(1);
    mock.setComponentCallback(s.component.appId, undefined);
  });

  it('a push with a bad signature is refused with a typed error and stores nothing', async () => {
    const s = setup();
    const receiver = s.make();
    let failure: unknown;
    handler = async (query, body) => {
      query.set('msg_signature', '0'.repeat(40));
      failure = await rejection(receiver.handleCallback({ query, body }));
      return 403;
    };
    mock.setComponentCallback(s.component.appId, url);
    expect((await mock.pushVerifyTicket(s.component.appId)).status).toBe(403);
    expect(failure).toMatchObject({ code: 'ERR_WXKIT_MESSAGE_CRYPTO', reason: 'signature' });
    expect(await s.durable.get(`wechat:component_verify_ticket:${s.component.appId}`)).toBeUndefined();
    mock.setComponentCallback(s.component.appId, undefined);
  });

  it("a pushed ticket ends the fleet's back-off after 61006 on the old one: the next call fetches with it at once", async () => {
    const s = setup();
    // The clock stands still: the back-off of the 61006 would hold for as long as the test runs.
    const now = Date.now();
    const receiver = s.make({ now: () => now });
    await s.durable.set(`wechat:component_verify_ticket:${s.component.appId}`, JSON.stringify({ component_verify_ticket: 'ticket@@@unknown', create_time: Math.floor(Date.now() / 1000) }), 3600);
    expect(await rejection(receiver.componentAccessToken())).toMatchObject({ errcode: 61006 });
    handler = async (query, body) => (await receiver.handleCallback({ query, body }), 200);
    mock.setComponentCallback(s.component.appId, url);
    expect((await mock.pushVerifyTicket(s.component.appId)).status).toBe(200);
    mock.setComponentCallback(s.component.appId, undefined);
    expect(await s.make({ now: () => now }).componentAccessToken()).toMatch(/^\d{2}_/);
    expect(mock.counters(s.component.appId)).toMatchObject({ componentTokenRequests: 2, errcodes: { '61006': 1 } });
  });

  it('without a ticket there is no component token, and WeChat is not asked', async () => {
    const s = setup();
    const error = await rejection(s.make().componentAccessToken());
    expect(error.code).toBe('ERR_WXKIT_NO_TOKEN');
    expect(mock.counters(s.component.appId).componentTokenRequests).toBe(0);
  });
});

describe('component_access_token', () => {
  it('eight processes on one store: one fetch', async () => {
    const s = setup();
    await withTicket(s);
    const fleet = Array.from({ length: 8 }, () => s.make());
    const tokens = await Promise.all(fleet.map((open) => open.componentAccessToken()));
    expect(new Set(tokens).size).toBe(1);
    expect(mock.counters(s.component.appId).componentTokenRequests).toBe(1);
  });

  it('a process on a rotated component secret is not held back by the failure of one still on the old secret', async () => {
    const s = setup();
    await withTicket(s);
    const [stale, fresh] = [s.make({ secret: 'the-secret-before-its-rotation' }), s.make()];
    expect(await rejection(stale.componentAccessToken())).toMatchObject({ errcode: 40125 });
    expect(await fresh.componentAccessToken()).toMatch(/^\d{2}_/);
    expect(mock.counters(s.component.appId).componentTokenRequests).toBe(2);
  });

  it('recovers from 40001 on a stale component token with one fetch', async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    await open.createPreAuthCode();
    mock.invalidateTokens(s.component.appId);
    expect((await open.createPreAuthCode()).preAuthCode).toMatch(/^preauthcode@@@/);
    expect(mock.counters(s.component.appId)).toMatchObject({ componentTokenRequests: 2, errcodes: { '40001': 1 } });
  });

  it('61006 (a ticket WeChat does not know) is a WeChatApiError, shared by the fleet without a second call', async () => {
    const s = setup();
    await s.durable.set(`wechat:component_verify_ticket:${s.component.appId}`, JSON.stringify({ component_verify_ticket: 'ticket@@@unknown', create_time: Math.floor(Date.now() / 1000) }), 3600);
    const [a, b] = [s.make(), s.make()];
    expect(await rejection(a.componentAccessToken())).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 61006 });
    expect(await rejection(b.componentAccessToken())).toMatchObject({ errcode: 61006 });
    expect(mock.counters(s.component.appId).componentTokenRequests).toBe(1);
  });
});

/** An OpenPlatform on a clock the test moves (its stores too), with three authorized accounts. */
async function threeAuthorizers() {
  const component = mock.createComponent();
  const clock = { now: Date.now() };
  const now = () => clock.now;
  const [cache, durable] = [new MemoryCache({ now }), new MemoryCache({ now })];
  const open = new OpenPlatform({ ...componentOptions(mock, component), cache, durableStore: durable, logger: false, now });
  opened.push(open);
  await storeVerifyTicket(mock, component, durable);
  const s = { component, cache, durable, make: () => open };
  const appIds = [await authorized(s, open), await authorized(s, open), await authorized(s, open)];
  return { component, clock, open, appIds, durable };
}

describe('authorizers', () => {
  it("a 40001 on the authorizer token the store holds is logged as superseded from outside, without a client's refresh: 'never' advice", async () => {
    const s = setup();
    await withTicket(s);
    const logger = recordingLogger();
    const open = s.make({ logger });
    const a = await authorized(s, open);
    const client = open.officialAccount(a);
    await client.accessToken.invalidate(await client.accessToken.getToken(), 40001);
    const external = logger.lines.filter((line) => (line.fields as { event?: string }).event === 'authorizer_access_token.invalidated_externally');
    expect(external).toHaveLength(1);
    expect(external[0]!.message).toMatch(/Make that program share this store$/);
  });

  it('a component token WeChat rejects on every authorizer refresh: refetched at once if it had worked, then spaced, not fetched in every round of every refresh', async () => {
    const { component, clock, open, appIds } = await threeAuthorizers();
    const componentTokens = () => mock.counters(component.appId).componentTokenRequests;
    const before = componentTokens();
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/component/api_authorizer_token', times: Infinity });
    try {
      for (const appId of appIds) {
        mock.invalidateTokens(appId);
        await expect(send(open, appId)).rejects.toBeInstanceOf(Error);
      }
      // The component token the authorizations went through with is refetched at once; the one after it
      // was never taken, so the next fetch starts a pause that the other refreshes wait out on the clock.
      expect(componentTokens()).toBe(before + 2);
      clock.now += 1_001;
      mock.invalidateTokens(appIds[0]!);
      await expect(send(open, appIds[0]!)).rejects.toBeInstanceOf(Error);
      expect(componentTokens()).toBe(before + 3);
    } finally {
      mock.clearFaults();
    }
  });

  it('a revoked authorization (61003) is asked again after 1, 2, 4 … minutes, at most once an hour; authorizing again serves at once', async () => {
    const { component, clock, open, appIds, durable } = await threeAuthorizers();
    const appId = appIds[0]!;
    const asked = () => mock.counters(appId).authorizerTokenRequests;
    mock.revokeAuthorization(appId);
    expect(await rejection(send(open, appId))).toMatchObject({ errcode: 61003 });
    // The platform keeps calling for the account, a minute apart: how long until WeChat is asked again.
    const pauses: number[] = [];
    for (let round = 0; round < 8; round += 1) {
      const before = asked();
      let waited = 0;
      while (asked() === before) {
        if (waited > 3 * 3_600_000) throw new Error(`WeChat not asked again within ${waited} ms`);
        clock.now += 60_000;
        waited += 60_000;
        // WeChat pushes a verify ticket every 10 minutes; the stored one lives an hour on the test's clock.
        if (waited % 600_000 === 0) await storeVerifyTicket(mock, component, durable);
        expect(await rejection(send(open, appId))).toMatchObject({ errcode: 61003 });
      }
      expect(asked()).toBe(before + 1);
      pauses.push(waited / 60_000);
    }
    expect(pauses).toEqual([1, 2, 4, 8, 16, 32, 60, 60]);
    // The admin authorizes again: the authorization's own token is served, with no wait for the pause.
    const { preAuthCode } = await open.createPreAuthCode();
    const grant = mock.authorize(component.appId, { preAuthCode, authorizerAppId: appId });
    await open.handleAuthorization(grant.authorizationCode);
    const requests = asked();
    expect(await send(open, appId)).toMatchObject({ errcode: 0 });
    expect(asked()).toBe(requests);
  });

  it("authorizing again ends a revoked authorization's back-off: the account's next refresh reaches WeChat at once", async () => {
    const { component, clock, open, appIds, durable } = await threeAuthorizers();
    const appId = appIds[0]!;
    const asked = () => mock.counters(appId).authorizerTokenRequests;
    mock.revokeAuthorization(appId);
    // Three 61003 in a row: the fleet's pause is 4 minutes now.
    for (let round = 0; round < 3; round += 1) {
      expect(await rejection(send(open, appId))).toMatchObject({ errcode: 61003 });
      clock.now += 2 ** round * 60_000;
    }
    expect(await rejection(send(open, appId))).toMatchObject({ errcode: 61003 });
    await storeVerifyTicket(mock, component, durable);
    const { preAuthCode } = await open.createPreAuthCode();
    const grant = mock.authorize(component.appId, { preAuthCode, authorizerAppId: appId });
    await open.handleAuthorization(grant.authorizationCode);
    expect(await send(open, appId)).toMatchObject({ errcode: 0 });
    // The authorization's token dies (40001): its refresh, with the new refresh token, is not the revoked one's.
    mock.invalidateTokens(appId);
    const before = asked();
    expect(await send(open, appId)).toMatchObject({ errcode: 0 });
    expect(asked()).toBe(before + 1);
  });

  it('a component token that carried an authorizer refresh is refetched at once when it dies, however often', async () => {
    const { component, clock, open, appIds } = await threeAuthorizers();
    const before = mock.counters(component.appId).componentTokenRequests;
    // The clock stands still: a component token that worked only for a refresh, taken for one that
    // never worked, would make the third round wait out a pause.
    for (const [round, appId] of appIds.entries()) {
      mock.invalidateTokens(component.appId);
      mock.invalidateTokens(appId);
      expect(await send(open, appId)).toMatchObject({ errcode: 0 });
      expect(mock.counters(component.appId).componentTokenRequests).toBe(before + round + 1);
    }
  });

  it('api_query_auth stores the refresh token durably and the access token in the cache; the client sends with it', async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    const appId = await authorized(s, open);
    const record = JSON.parse((await s.durable.get(`wechat:authorizer_refresh_token:${s.component.appId}:${appId}`))!);
    expect(record.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(appId));
    expect(record.pending_since).toBeUndefined();
    expect(await s.cache.get(`wechat:authorizer_refresh_token:${s.component.appId}:${appId}`)).toBeUndefined();
    expect(JSON.parse((await s.cache.get(`wechat:authorizer_access_token:${s.component.appId}:${appId}`))!).access_token).toMatch(/^\d{2}_/);
    await send(open, appId);
    expect(await open.officialAccount(appId).jssdk.getTicket('jsapi')).toBeTypeOf('string');
    expect(mock.counters(appId)).toMatchObject({ templateSends: 1, ticketRequests: 1, authorizerTokenRequests: 0 });
  });

  it('40001 on an authorizer token: one refresh with the stored refresh token, and the rotated one is stored', async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    const appId = await authorized(s, open);
    const before = mock.authorizerRefreshToken(appId);
    await send(open, appId);
    mock.invalidateTokens(appId);
    const fleet = [open, s.make(), s.make()];
    await Promise.all(fleet.map((each) => send(each, appId)));
    expect(mock.counters(appId)).toMatchObject({ templateSends: 4, authorizerTokenRequests: 1 });
    const now = mock.authorizerRefreshToken(appId);
    expect(now).not.toBe(before);
    const record = JSON.parse((await s.durable.get(`wechat:authorizer_refresh_token:${s.component.appId}:${appId}`))!);
    expect(record).toMatchObject({ authorizer_refresh_token: now });
    expect(record.pending_since).toBeUndefined();
  });

  it('a refresh token missing from the durable store is taken from WeChat (api_get_authorizer_info), with an event', async () => {
    const s = setup();
    await withTicket(s);
    const appId = await authorized(s, s.make());
    // An evicted or wiped record, and no access token cached: the next send must refresh without it.
    await s.durable.delete(`wechat:authorizer_refresh_token:${s.component.appId}:${appId}`);
    await s.cache.delete(`wechat:authorizer_access_token:${s.component.appId}:${appId}`);
    const fresh = s.make();
    const events: AuthorizerRefreshTokenRecoveredEvent[] = [];
    fresh.on('authorizer_refresh_token.recovered', (event) => events.push(event));
    await send(fresh, appId);
    expect(events.map((event) => event.reason)).toEqual(['missing']);
    expect(mock.counters(appId)).toMatchObject({ templateSends: 1, authorizerTokenRequests: 1 });
    expect(JSON.parse((await s.durable.get(`wechat:authorizer_refresh_token:${s.component.appId}:${appId}`))!).authorizer_refresh_token).toBe(mock.authorizerRefreshToken(appId));
  });

  it('a revoked authorization is a 61003 WeChatApiError, not a loop', async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    const appId = await authorized(s, open);
    mock.revokeAuthorization(appId);
    expect(await rejection(send(open, appId))).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 61003 });
    expect(mock.counters(appId).authorizerTokenRequests).toBe(1);
  });

  it("api_query_auth's access-token write to a store that never answers fails as a CacheError within cacheTimeoutMs, not a hang", async () => {
    const s = setup();
    await withTicket(s);
    // The component token is shared as usual; only the authorizer token's write hangs.
    const hangs = (key: string) => key.includes('authorizer_access_token');
    class HangingWrites extends MemoryCache {
      override set(key: string, value: string, ttlSeconds: number): Promise<void> {
        return hangs(key) ? new Promise<void>(() => {}) : super.set(key, value, ttlSeconds);
      }
      override add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        return hangs(key) ? new Promise<boolean>(() => {}) : super.add(key, value, ttlSeconds);
      }
      override compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
        return hangs(key) ? new Promise<boolean>(() => {}) : super.compareAndSet(key, expected, value, ttlSeconds);
      }
    }
    const open = s.make({ cache: new HangingWrites(), cacheTimeoutMs: 200 });
    const { preAuthCode } = await open.createPreAuthCode();
    const grant = mock.authorize(s.component.appId, { preAuthCode });
    const error = await rejection(open.handleAuthorization(grant.authorizationCode));
    expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'timeout', authorizerAppId: grant.authorizerAppId });
    // The refresh token went to the durable store first, so the authorization is not lost.
    expect(JSON.parse((await s.durable.get(`wechat:authorizer_refresh_token:${s.component.appId}:${grant.authorizerAppId}`))!).authorizer_refresh_token).toBe(
      mock.authorizerRefreshToken(grant.authorizerAppId),
    );
  });

  it("an api_query_auth answer whose access token is unusable still stores the refresh token: the account is authorized, its first send fetches one", async () => {
    const s = setup();
    await withTicket(s);
    // WeChat's answer as it reaches the client: expires_in a string.
    const rewritten = rewritingDispatcher('cgi-bin/component/api_query_auth', '"expires_in":7200', '"expires_in":"72"');
    const open = s.make({ dispatcher: rewritten });
    const { preAuthCode } = await open.createPreAuthCode();
    const grant = mock.authorize(s.component.appId, { preAuthCode });
    const error = await rejection(open.handleAuthorization(grant.authorizationCode));
    // The code is spent: the rejection names the account that authorized.
    expect(error).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE', authorizerAppId: grant.authorizerAppId });
    expect(error.message).toContain(`the account ${grant.authorizerAppId} is authorized (its refresh token is stored)`);
    const record = JSON.parse((await s.durable.get(`wechat:authorizer_refresh_token:${s.component.appId}:${grant.authorizerAppId}`))!);
    expect(record.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(grant.authorizerAppId));
    // Another process, which never saw the authorization, sends for the account: one refresh, no 61023.
    const other = s.make();
    await send(other, grant.authorizerAppId);
    expect(mock.counters(grant.authorizerAppId)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 1 });
    expect(mock.counters(grant.authorizerAppId).errcodes['61023']).toBeUndefined();
    await rewritten.close();
  });

  it("an authorization hands the schema the access token and its life, never api_query_auth's refresh token", async () => {
    const s = setup();
    await withTicket(s);
    const base = nativeSchema();
    const responses: unknown[] = [];
    // A format that stores WeChat's answer, as some peers' ticket formats do.
    const schema: KeySchema = Object.assign(Object.create(base) as KeySchema, {
      encode: (...args: Parameters<KeySchema['encode']>) => {
        if (String(args[4]?.key).includes(':authorizer_access_token:')) responses.push(args[4]?.response);
        return base.encode(...args);
      },
    });
    const open = s.make({ schema });
    const appId = await authorized(s, open);
    expect(responses).toHaveLength(1);
    expect(JSON.stringify(responses)).not.toContain(mock.authorizerRefreshToken(appId)!);
    expect(responses[0]).toMatchObject({ authorizer_access_token: expect.any(String), expires_in: expect.any(Number) });
  });

  it('clients are made on first use, reused, and closed beyond maxClients', async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make({ maxClients: 2 });
    const [a, b, c] = [await authorized(s, open), await authorized(s, open), await authorized(s, open)];
    const first = open.officialAccount(a);
    expect(open.officialAccount(a)).toBe(first);
    open.officialAccount(b);
    open.officialAccount(c);
    expect(open.officialAccount(a)).not.toBe(first);
    await send(open, a);
    expect(mock.counters(a).templateSends).toBe(1);
  });

  it("an authorized mini program's code2Session goes to sns/component/jscode2session with the component token (no AppSecret), which recovers from 40001", async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    const id = await authorized(s, open);
    const mp = open.miniProgram(id);
    const session = await mp.auth.code2Session('code-first');
    expect(session).toMatchObject({ openid: expect.stringMatching(/^o/), session_key: expect.any(String) });
    // A code is single use, as for the mini program's own endpoint.
    expect(await mp.auth.code2Session('code-first').catch((e: unknown) => e)).toMatchObject({ errcode: 40163 });
    mock.invalidateTokens(s.component.appId);
    expect((await mp.auth.code2Session('code-second')).openid).toMatch(/^o/);
    expect(mock.counters(s.component.appId)).toMatchObject({ componentTokenRequests: 2, errcodes: { '40001': 1 } });
    await expect(mp.auth.code2Session('')).rejects.toBeInstanceOf(ConfigError);
  });

  it("an authorized mini program closed by its caller exchanges no more codes: refused by name, never sent", async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    const id = await authorized(s, open);
    const mp = open.miniProgram(id);
    expect((await mp.auth.code2Session('code-first')).openid).toMatch(/^o/);
    const before = mock.counters(s.component.appId).requests;
    await mp.close();
    expect(await mp.auth.code2Session('code-second').catch((e: unknown) => e)).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false, message: expect.stringMatching(/not sent: the client was closed/) });
    expect(mock.counters(s.component.appId).requests).toBe(before);
  });

  it('an authorized mini program closed by its caller asks WeChat for no component token either, where none is stored', async () => {
    const s = setup();
    await withTicket(s);
    const id = await authorized(s, s.make());
    // Another process of the fleet, after the component token's entry went (its TTL, a store restarted empty).
    await s.cache.delete(componentTokenKey(s));
    const open = s.make();
    const mp = open.miniProgram(id);
    await mp.close();
    const before = mock.counters(s.component.appId);
    expect(await mp.auth.code2Session('code-after-close').catch((e: unknown) => e)).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false });
    const after = mock.counters(s.component.appId);
    expect(after.componentTokenRequests).toBe(before.componentTokenRequests);
    expect(after.requests).toBe(before.requests);
  });

  it("an authorized mini program's code2Session with an aborted signal asks WeChat for no component token", async () => {
    const s = setup();
    await withTicket(s);
    const id = await authorized(s, s.make());
    // Another process starts cold: no component token in the store.
    await s.cache.delete(componentTokenKey(s));
    const open = s.make();
    const before = mock.counters(s.component.appId).componentTokenRequests;
    const reason = new Error('the request went away');
    expect(await rejection(open.miniProgram(id).auth.code2Session('code-1', { signal: AbortSignal.abort(reason) }))).toBe(reason);
    // close() waits for every refresh under way: one the aborted call started would be counted by now.
    await open.close();
    expect(mock.counters(s.component.appId).componentTokenRequests).toBe(before);
    expect(await s.cache.get(componentTokenKey(s))).toBeUndefined();
  });

  it("an authorized mini program's code2Session waiting for another process's component token ends with its signal", async () => {
    const s = setup();
    await withTicket(s);
    const id = await authorized(s, s.make());
    const { waited: waiting } = await componentTokenFetchedElsewhere(s);
    const open = s.make({ lockWaitMs: 3_000 });
    const controller = new AbortController();
    const reason = new Error('the request went away');
    const call = rejection(open.miniProgram(id).auth.code2Session('code-2', { signal: controller.signal }));
    await waiting;
    controller.abort(reason);
    // Not the TokenUnavailableError of a wait that ran its lockWaitMs out.
    expect(await call).toBe(reason);
  });

  it("createPreAuthCode() waiting for another process's component token ends with its signal", async () => {
    const s = setup();
    await withTicket(s);
    const { waited: waiting } = await componentTokenFetchedElsewhere(s);
    const open = s.make({ lockWaitMs: 20_000 });
    const controller = new AbortController();
    const reason = new Error('the admin closed the page');
    const call = rejection(open.createPreAuthCode({ signal: controller.signal }));
    await waiting;
    controller.abort(reason);
    expect(await call).toBe(reason);
  });

  it("close() ends an authorizer client's wait for another process's component token, and an authorization's, whose code stays unspent", async () => {
    const s = setup();
    await withTicket(s);
    const id = await authorized(s, s.make());
    await s.cache.delete(`wechat:authorizer_access_token:${s.component.appId}:${id}`);
    const { waited: waiting } = await componentTokenFetchedElsewhere(s);
    const open = s.make({ lockWaitMs: 20_000 });
    const refresh = endedByClose(open.officialAccount(id).accessToken.getToken());
    const grant = mock.authorize(s.component.appId);
    const asked = mock.counters(s.component.appId).queryAuthRequests;
    const authorization = endedByClose(open.handleAuthorization(grant.authorizationCode));
    await waiting;
    await open.close();
    // Each wait ended at close(), not with the TokenUnavailableError of a lockWaitMs run out.
    expect(errorText(await refresh)).toMatch(/closed/);
    expect(errorText(await authorization)).toMatch(/closed/);
    expect(mock.counters(s.component.appId).queryAuthRequests).toBe(asked);
  });

  it("the platform's listeners hear every authorizer client's token events, a client made again after a drop included", async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make({ maxClients: 1 });
    const [a, b] = [await authorized(s, open), await authorized(s, open)];
    const heard: string[] = [];
    open.on('authorizer_access_token.fetched', (event) => heard.push(`fetched ${event.appId}`));
    open.on('jsapi_ticket.fetched', (event) => heard.push(`ticket ${event.appId}`));
    await open.officialAccount(a).accessToken.forceRefresh();
    await open.officialAccount(b).jssdk.getTicket('jsapi'); // a's client is dropped
    await open.officialAccount(a).accessToken.forceRefresh(); // made again
    expect(heard).toEqual([`fetched ${a}`, `ticket ${b}`, `fetched ${a}`]);
    expect(mock.counters(a).authorizerTokenRequests).toBe(2);
  });

  it("the platform's listeners hear a stored authorizer token that is no valid entry (cache.corrupt_entry), with the authorizer's appId", async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    const a = await authorized(s, open);
    const corrupt: (string | undefined)[] = [];
    open.on('cache.corrupt_entry', (event) => corrupt.push(event.appId));
    await s.cache.set(open.officialAccount(a).accessToken.cacheKey, '{"not":"an entry"}', 7000);
    await open.officialAccount(a).accessToken.getToken();
    expect(corrupt).toEqual([a]);
  });

  it("once() hears the next event of the platform's authorizers only", async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    const [a, b] = [await authorized(s, open), await authorized(s, open)];
    const first: (string | undefined)[] = [];
    open.once('authorizer_access_token.fetched', (event) => first.push(event.appId));
    await open.officialAccount(a).accessToken.forceRefresh();
    await open.officialAccount(b).accessToken.forceRefresh();
    expect(first).toEqual([a]);
  });

  it('an authorizer client its caller closed is not handed out again: the next lookup makes a new one, which refreshes', async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    const a = await authorized(s, open);
    const first = open.officialAccount(a);
    await send(open, a);
    await first.close();
    const again = open.officialAccount(a);
    expect(again).not.toBe(first);
    await again.accessToken.forceRefresh();
    await send(open, a);
    expect(mock.counters(a)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 2 });
  });

  it('close() ends the waits of the authorizer clients it dropped, still held by a caller', async () => {
    const s = setup();
    const { open, a, held } = await heldAfterDrop(s);
    // a's token is gone, and another process holds its refresh lock for a minute: the held client waits.
    await s.cache.delete(held.accessToken.cacheKey);
    await s.cache.set(`${held.accessToken.cacheKey}:lock`, 'elsewhere:1', 60);
    const waiting = endedByClose(held.accessToken.getToken());
    await open.close();
    const error = await waiting;
    expect(error).toBeInstanceOf(TokenUnavailableError);
    expect((error as Error).message).toMatch(/closed/);
    expect(mock.counters(a).authorizerTokenRequests).toBe(0);
  });

  it('an authorizer asked for as the other kind: the client of the first kind, still held, finishes its calls', async () => {
    const s = setup();
    await withTicket(s);
    const open = s.make();
    const a = await authorized(s, open);
    const held = open.officialAccount(a);
    open.miniProgram(a); // the official-account client goes
    await s.cache.delete(`wechat:authorizer_access_token:${s.component.appId}:${a}`);
    await held.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(mock.counters(a)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 1 });
  });

  it('a client dropped beyond maxClients while a caller still holds it finishes that caller\'s calls', async () => {
    const s = setup();
    const { open, a, held } = await heldAfterDrop(s);
    // Its token is gone from the store: the held client must fetch one for its call.
    await s.cache.delete(`wechat:authorizer_access_token:${s.component.appId}:${a}`);
    await held.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(mock.counters(a)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 1 });
  });
});

/** `store` as another host reaches it: through a client of its own, whose breaker knows nothing of this host's outages. */
function otherClientOf(store: MemoryCache): TokenCache {
  return {
    get: (key) => store.get(key),
    set: (key, value, ttlSeconds) => store.set(key, value, ttlSeconds),
    delete: (key) => store.delete(key),
    add: (key, value, ttlSeconds) => store.add(key, value, ttlSeconds),
    compareAndSet: (key, expected, value, ttlSeconds) => store.compareAndSet(key, expected, value, ttlSeconds),
  };
}

/**
 * A durable store whose calls on the authorizers' refresh-token records fail on demand: the next
 * `failures` writes of a settled record (no write-ahead mark) fail, and with `outage` set, the first of
 * them starts an outage of the records (every call on them fails, the breaker's probe included) that
 * lasts until `outage` is cleared. `reached` counts the calls on records that reached it, by operation.
 */
class FlakyRecords extends MemoryCache {
  failures = 0;
  /** Failures of the final write that are no outage (a CacheError of reason `type`): the store stays up. */
  refusals = 0;
  outage = false;
  /** Every call on a refresh token fails, reads too (a store that does not answer). */
  unreachable = false;
  reached = { get: 0, add: 0, compareAndSet: 0 };
  #down = false;

  #call(op: keyof FlakyRecords['reached'], key: string, value?: string): void {
    if (!key.includes(':authorizer_refresh_token:')) return;
    this.reached[op] += 1;
    if (this.unreachable) throw new Error('ECONNREFUSED');
    if (this.#down && this.outage) throw new Error('ECONNREFUSED');
    this.#down = false;
    if (value !== undefined && !value.includes('pending_since') && this.refusals > 0) {
      this.refusals -= 1;
      throw new CacheError('another kind of value at that key', { reason: 'type' });
    }
    if (value !== undefined && !value.includes('pending_since') && this.failures > 0) {
      this.failures -= 1;
      this.#down = true;
      throw new Error('ECONNRESET');
    }
  }

  override async get(key: string): Promise<string | undefined> {
    this.#call('get', key);
    return super.get(key);
  }

  override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    this.#call('add', key, value);
    return super.add(key, value, ttlSeconds);
  }

  override async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    this.#call('compareAndSet', key, value);
    return super.compareAndSet(key, expected, value, ttlSeconds);
  }

  /** The record as stored, read past any failure. */
  async record(component: MockComponent, appId: string): Promise<Record<string, unknown>> {
    return JSON.parse((await super.get(`wechat:authorizer_refresh_token:${component.appId}:${appId}`))!) as Record<string, unknown>;
  }
}

describe('refresh tokens the durable store must take', () => {
  /** The account's token as a process of its own gets it, its cached access token dropped first: a refresh. */
  async function refreshIn(s: Setup, open: OpenPlatform, appId: string): Promise<string> {
    await s.cache.delete(`wechat:authorizer_access_token:${s.component.appId}:${appId}`);
    return open.officialAccount(appId).accessToken.getToken();
  }

  /** An account authorized through an OpenPlatform whose durable store is a FlakyRecords, logging to `log`. */
  async function authorizedOnFlakyRecords() {
    const durable = new FlakyRecords();
    const s = setup(durable);
    await withTicket(s);
    const log = recordingLogger();
    const open = s.make({ logger: log });
    const appId = await authorized(s, open);
    return { durable, s, log, open, appId };
  }

  const events = (log: ReturnType<typeof recordingLogger>) => log.lines.map((line) => `${line.level} ${(line.fields as { event: string }).event}`);

  it('a rotated refresh token whose write fails once is sent again and stored: the next refresh sends no 61023', async () => {
    const { durable, s, log, open, appId } = await authorizedOnFlakyRecords();
    const before = mock.authorizerRefreshToken(appId);
    durable.failures = 1;
    durable.reached.compareAndSet = 0;
    await refreshIn(s, open, appId);
    expect(mock.authorizerRefreshToken(appId)).not.toBe(before);
    // The write-ahead, the final write that failed (it took the store for down), and its second attempt.
    expect(durable.reached.compareAndSet).toBe(3);
    const record = await durable.record(s.component, appId);
    expect(record.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(appId));
    expect(record.pending_since).toBeUndefined();
    expect(events(log)).toContain('info authorizer_refresh_token.rotated');
    expect(events(log)).not.toContain('error authorizer_refresh_token.unsaved');
    // Another process refreshes with the stored token: WeChat takes it.
    await refreshIn(s, s.make(), appId);
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: 2, errcodes: {} });
  });

  it('a rotated refresh token the durable store takes at no attempt is kept, and written when the store answers again', async () => {
    const { durable, s, log, open, appId } = await authorizedOnFlakyRecords();
    const before = mock.authorizerRefreshToken(appId);
    const stored = new Promise((resolve) => open.on('authorizer_refresh_token.rotated', resolve));
    durable.failures = 1;
    durable.outage = true;
    durable.reached.compareAndSet = 0;
    // The access token is handed out all the same.
    expect(await refreshIn(s, open, appId)).toMatch(/^\d{2}_/);
    expect(durable.reached.compareAndSet).toBe(1 + 3);
    expect(events(log)).toContain('error authorizer_refresh_token.unsaved');
    expect(events(log)).not.toContain('info authorizer_refresh_token.rotated');
    expect(await durable.record(s.component, appId)).toMatchObject({ authorizer_refresh_token: before, pending_since: expect.any(Number) });
    // The store answers again (its probe gets through): the kept token replaces the write-ahead.
    durable.outage = false;
    await stored;
    const record = await durable.record(s.component, appId);
    expect(record.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(appId));
    expect(record.pending_since).toBeUndefined();
    await refreshIn(s, s.make(), appId);
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: 2, errcodes: {} });
    expect(JSON.stringify(log.lines)).not.toContain(before!);
    expect(JSON.stringify(log.lines)).not.toContain(mock.authorizerRefreshToken(appId)!);
  });

  it('a rotated refresh token whose writes fail while the store stays up (no outage to recover from) is written at a later try', async () => {
    const { durable, s, log, open, appId } = await authorizedOnFlakyRecords();
    const stored = new Promise((resolve) => open.on('authorizer_refresh_token.rotated', resolve));
    durable.refusals = 3;
    await refreshIn(s, open, appId);
    expect(events(log)).toContain('error authorizer_refresh_token.unsaved');
    // No recovery comes (the store was never taken for down): the kept token is written at the next try.
    await stored;
    expect((await durable.record(s.component, appId)).authorizer_refresh_token).toBe(mock.authorizerRefreshToken(appId));
    await refreshIn(s, s.make(), appId);
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: 2, errcodes: {} });
  });

  it('close() sends a rotated refresh token still kept unsaved once more: a process that stops before its next try does not leave it to a 61023', async () => {
    const { durable, s, log, open, appId } = await authorizedOnFlakyRecords();
    durable.refusals = 3;
    await refreshIn(s, open, appId);
    expect(events(log)).toContain('error authorizer_refresh_token.unsaved');
    // The store takes writes again; the process stops before the next try (a second away).
    await open.close();
    const record = await durable.record(s.component, appId);
    expect(record.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(appId));
    expect(record.pending_since).toBeUndefined();
    expect(events(log)).toContain('info authorizer_refresh_token.rotated');
    await refreshIn(s, s.make(), appId);
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: 2, errcodes: {} });
  });

  it('close() logs, at error level and naming the account, a rotated refresh token the durable store does not take at its last try', async () => {
    const { durable, s, log, open, appId } = await authorizedOnFlakyRecords();
    durable.refusals = 4;
    await refreshIn(s, open, appId);
    await open.close();
    expect(durable.refusals).toBe(0);
    const unsaved = log.lines.filter((line) => (line.fields as { event: string }).event === 'authorizer_refresh_token.unsaved');
    expect(unsaved.map((line) => line.level)).toEqual(['error', 'error']);
    expect(unsaved.map((line) => line.fields)).toEqual([
      expect.not.objectContaining({ closed: true }),
      expect.objectContaining({ authorizerAppId: appId, closed: true }),
    ]);
    expect(JSON.stringify(log.lines)).not.toContain(mock.authorizerRefreshToken(appId)!);
  });

  it('close() waits for an authorization whose code is spent to store its refresh token: a program that closes its stores next does not lose it', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let reached!: () => void;
    const reachedRecord = new Promise<void>((resolve) => (reached = resolve));
    /** A durable store whose reads of refresh-token records wait for the test. */
    class HeldRecords extends MemoryCache {
      override async get(key: string): Promise<string | undefined> {
        if (key.includes(':authorizer_refresh_token:')) {
          reached();
          await held;
        }
        return super.get(key);
      }
    }
    const s = setup(new HeldRecords());
    await withTicket(s);
    // A caller's dispatcher, which close() leaves open: close() then does no I/O of its own, so once the
    // promises under way have run (one turn of the event loop), it has resolved unless it waits.
    const dispatcher = new Agent();
    const open = s.make({ dispatcher });
    const { preAuthCode } = await open.createPreAuthCode();
    const grant = mock.authorize(s.component.appId, { preAuthCode });
    const order: string[] = [];
    const authorizing = open.handleAuthorization(grant.authorizationCode).then(() => order.push('authorized'));
    await reachedRecord;
    const closing = open.close().then(() => order.push('closed'));
    await Promise.race([closing, new Promise((resolve) => setImmediate(resolve))]);
    release();
    await Promise.all([authorizing, closing]);
    expect(order).toEqual(['authorized', 'closed']);
    const record = await s.durable.get(`wechat:authorizer_refresh_token:${s.component.appId}:${grant.authorizerAppId}`);
    expect(JSON.parse(record!).authorizer_refresh_token).toBe(mock.authorizerRefreshToken(grant.authorizerAppId));
    await dispatcher.close();
  });

  it('close() waits for a verify-ticket push under way to store its ticket', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let reached!: () => void;
    const reachedTicket = new Promise<void>((resolve) => (reached = resolve));
    /** A durable store whose reads of the verify ticket wait for the test. */
    class HeldTicket extends MemoryCache {
      override async get(key: string): Promise<string | undefined> {
        if (key.includes(':component_verify_ticket:')) {
          reached();
          await held;
        }
        return super.get(key);
      }
    }
    const s = setup(new HeldTicket());
    const dispatcher = new Agent();
    const open = s.make({ dispatcher });
    const { token, encodingAESKey, appId } = componentOptions(mock, s.component);
    const crypto = new MessageCrypto({ token, encodingAESKey, appId });
    const createTime = Math.floor(Date.now() / 1000);
    const encrypt = crypto.encrypt(
      `<xml><AppId><![CDATA[${appId}]]></AppId><CreateTime>${createTime}</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[ticket@@@pushed]]></ComponentVerifyTicket></xml>`,
    );
    const [timestamp, nonce] = [String(createTime), '1234567'];
    const query = new URLSearchParams({ timestamp, nonce, msg_signature: crypto.signature(timestamp, nonce, encrypt) });
    const order: string[] = [];
    const pushed = open.handleCallback({ query, body: `<xml><AppId><![CDATA[${appId}]]></AppId><Encrypt><![CDATA[${encrypt}]]></Encrypt></xml>` }).then(() => order.push('stored'));
    await reachedTicket;
    const closing = open.close().then(() => order.push('closed'));
    await Promise.race([closing, new Promise((resolve) => setImmediate(resolve))]);
    release();
    await Promise.all([pushed, closing]);
    expect(order).toEqual(['stored', 'closed']);
    expect(JSON.parse((await s.durable.get(`wechat:component_verify_ticket:${appId}`))!)).toMatchObject({ component_verify_ticket: 'ticket@@@pushed' });
    await dispatcher.close();
  });

  it('an api_authorizer_token answer whose access token is unusable still stores the new refresh token in it', async () => {
    const s = setup();
    await withTicket(s);
    const appId = await authorized(s, s.make());
    const before = mock.authorizerRefreshToken(appId);
    const rewritten = rewritingDispatcher('cgi-bin/component/api_authorizer_token', '"expires_in":7200', '"expires_in":"72"');
    const error = await rejection(refreshIn(s, s.make({ dispatcher: rewritten }), appId));
    expect(error).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE' });
    expect(mock.authorizerRefreshToken(appId)).not.toBe(before);
    const record = JSON.parse((await s.durable.get(`wechat:authorizer_refresh_token:${s.component.appId}:${appId}`))!);
    expect(record.authorizer_refresh_token).toBe(mock.authorizerRefreshToken(appId));
    expect(record.pending_since).toBeUndefined();
    // A process that gets WeChat's answers whole refreshes with it (forced, past the fleet's back-off
    // after the unusable answer): one call, no 61023.
    const calls = mock.counters(appId).authorizerTokenRequests;
    const other = s.make();
    await other.officialAccount(appId).accessToken.forceRefresh();
    await send(other, appId);
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: calls + 1, templateSends: 1, errcodes: {} });
    await rewritten.close();
  });

  it("an authorization's refresh-token write that fails once is sent again, and the authorization completes", async () => {
    const durable = new FlakyRecords();
    const s = setup(durable);
    await withTicket(s);
    const open = s.make();
    durable.failures = 1;
    const appId = await authorized(s, open);
    // The add that failed (it took the store for down), and its second attempt.
    expect(durable.reached.add).toBe(2);
    expect((await durable.record(s.component, appId)).authorizer_refresh_token).toBe(mock.authorizerRefreshToken(appId));
    await send(open, appId);
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: 0, templateSends: 1, errcodes: {} });
  });

  it("an authorization whose refresh token the durable store does not take rejects naming the account (the code is spent), its access token serves, and the account's first refresh recovers", async () => {
    const durable = new FlakyRecords();
    const s = setup(durable);
    await withTicket(s);
    const log = recordingLogger();
    const open = s.make({ logger: log });
    const { preAuthCode } = await open.createPreAuthCode();
    const grant = mock.authorize(s.component.appId, { preAuthCode });
    durable.failures = 1;
    durable.outage = true;
    const error = await rejection(open.handleAuthorization(grant.authorizationCode));
    expect(error).toMatchObject({ name: 'CacheError', code: 'ERR_WXKIT_CACHE', authorizerAppId: grant.authorizerAppId });
    expect(error.message).toContain(grant.authorizerAppId);
    // Every attempt reached the store: the first one's read and add, then the two further reads (the
    // breaker's probes read the record too).
    expect(durable.reached.add).toBe(1);
    expect(durable.reached.get).toBeGreaterThanOrEqual(3);
    expect(log.lines.filter((line) => line.level === 'error').map((line) => line.fields)).toEqual([
      expect.objectContaining({ event: 'authorizer_refresh_token.unsaved', authorizerAppId: grant.authorizerAppId }),
    ]);
    const refreshToken = mock.authorizerRefreshToken(grant.authorizerAppId)!;
    expect(errorText(error)).not.toContain(refreshToken);
    expect(JSON.stringify(log.lines)).not.toContain(refreshToken);
    // The code is spent, and the account authorized: the other caller of the code (the push, or the
    // redirect) learns it from the code's record in the cache, without asking WeChat again.
    const asked = mock.counters(s.component.appId).queryAuthRequests;
    await expect(open.handleAuthorization(grant.authorizationCode)).resolves.toEqual({ authorizerAppId: grant.authorizerAppId, funcInfo: [1, 2, 3, 4] });
    expect(mock.counters(s.component.appId).queryAuthRequests).toBe(asked);
    // The store answers again: the account's first call takes its refresh token from WeChat.
    const recovered = nextEvent(open, 'cache.recovered');
    durable.outage = false;
    await recovered;
    // The access token api_query_auth handed out went to the cache all the same: it serves, unrefreshed.
    await send(s.make(), grant.authorizerAppId);
    expect(mock.counters(grant.authorizerAppId)).toMatchObject({ authorizerTokenRequests: 0, templateSends: 1 });
    expect(await durable.get(`wechat:authorizer_refresh_token:${s.component.appId}:${grant.authorizerAppId}`)).toBeUndefined();
    // Its first refresh (WeChat ended that token) takes the refresh token from WeChat and stores it.
    mock.invalidateTokens(grant.authorizerAppId);
    await send(s.make(), grant.authorizerAppId);
    expect(mock.counters(grant.authorizerAppId)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 2 });
    expect(mock.counters(grant.authorizerAppId).errcodes['61023']).toBeUndefined();
    expect((await durable.record(s.component, grant.authorizerAppId)).authorizer_refresh_token).toBe(mock.authorizerRefreshToken(grant.authorizerAppId));
  });

  it("a refresh after WeChat rejected a token that fails on the durable store, before WeChat is asked, does not pause the fleet's next one", async () => {
    const durable = new FlakyRecords();
    const s = setup(durable);
    await withTicket(s);
    // The clients' clock stands still: a pause of the fleet's refreshes would still be in force below.
    const clock = { now: Date.now() };
    const open = s.make({ now: () => clock.now });
    const appId = await authorized(s, open);
    // WeChat ends the account's token while the durable store does not answer: the refresh that follows
    // the rejection fails on its first read of the record, and WeChat hands out nothing.
    mock.invalidateTokens(appId);
    durable.unreachable = true;
    expect(await rejection(send(open, appId))).toBeInstanceOf(CacheError);
    expect(mock.counters(appId).authorizerTokenRequests).toBe(0);
    // Another host, whose durable store answers, meets the same rejection: it refreshes at once, not after
    // the pause the fleet keeps after a fetch whose token WeChat rejected in turn.
    durable.unreachable = false;
    const other = s.make({ now: () => clock.now, durableStore: otherClientOf(durable) });
    expect(await send(other, appId)).toMatchObject({ errcode: 0 });
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 1 });
  });
});

describe('on a compatibility profile', () => {
  it('wxJava: the ticket and refresh tokens WxJava stored are used, and what wxkit writes is what WxJava reads (bare, its keys)', async () => {
    const s = setup();
    const open = s.make({ schema: wxJava() });
    const c = s.component.appId;
    // What WxJava's WxOpenInRedisTemplateConfigStorage left in the store: bare strings under its keys.
    await s.durable.set(`wechat_component_verify_ticket:${c}`, mock.issueVerifyTicket(c), 3600);
    const [{ authorizerAppId: a, refreshToken }] = mock.authorizeMany(c, 1) as [{ authorizerAppId: string; refreshToken: string }];
    await s.durable.set(`wechat_authorizer_refresh_token:${c}:${a}`, refreshToken, 3600);
    await send(open, a);
    expect(mock.counters(a)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 1 });
    // WeChat rotated the refresh token: the new one is stored bare, where WxJava reads it.
    expect(await s.durable.get(`wechat_authorizer_refresh_token:${c}:${a}`)).toBe(mock.authorizerRefreshToken(a));
    expect(mock.authorizerRefreshToken(a)).not.toBe(refreshToken);
    const componentToken = await s.cache.get(`wechat_component_access_token:${c}`);
    expect(componentToken).toMatch(/^\d{2}_/);
    expect(await s.cache.get(`wechat_authorizer_access_token:${c}:${a}`)).toMatch(/^\d{2}_/);
    // The TTL WxJava gives them: expires_in − 200.
    expect(await s.cache.ttlMs!(`wechat_authorizer_access_token:${c}:${a}`)).toBeLessThanOrEqual((7200 - 200) * 1000);
  });

  it('wxJava: a bare refresh token WeChat no longer takes (a Java refresh died after WeChat rotated it) is recovered, not lost', async () => {
    const s = setup();
    const open = s.make({ schema: wxJava({ openKeyPrefix: 'shop1' }) });
    const c = s.component.appId;
    await s.durable.set(`shop1:wechat_component_verify_ticket:${c}`, mock.issueVerifyTicket(c), 3600);
    const [{ authorizerAppId: a, refreshToken }] = mock.authorizeMany(c, 1) as [{ authorizerAppId: string; refreshToken: string }];
    await s.durable.set(`shop1:wechat_authorizer_refresh_token:${c}:${a}`, 'refreshtoken@@@rotated-away', 3600);
    expect(refreshToken).not.toBe('refreshtoken@@@rotated-away');
    const events: AuthorizerRefreshTokenRecoveredEvent[] = [];
    open.on('authorizer_refresh_token.recovered', (event) => events.push(event));
    await send(open, a);
    expect(events.map((event) => event.reason)).toEqual(['rejected']);
    expect(await s.durable.get(`shop1:wechat_authorizer_refresh_token:${c}:${a}`)).toBe(mock.authorizerRefreshToken(a));
    expect(mock.counters(a)).toMatchObject({ templateSends: 1, errcodes: { '61023': 1 } });
  });

  it('easyWeChat6: the verify ticket and the component token under EasyWeChat 6\'s keys, PHP-serialised', async () => {
    const s = setup();
    const c = s.component.appId;
    // EasyWeChat 6's VerifyTicket::setTicket() through a ThinkPHP cache with prefix think:
    await s.durable.set(`think:open_platform.verify_ticket.${c}`, phpString(mock.issueVerifyTicket(c)), 3600);
    const open = s.make({ schema: easyWeChat6({ prefix: 'think:' }) });
    const token = await open.componentAccessToken();
    expect(await s.cache.get(`think:open_platform.component_access_token.${c}`)).toBe(phpString(token));
    expect(mock.counters(c).componentTokenRequests).toBe(1);
  });

  it("easyWeChat6: an authorizer's access token is also copied where EasyWeChat 6's getAuthorizerAccessToken() looks (md5 of the refresh token), at authorization and at every refresh", async () => {
    const s = setup();
    await s.durable.set(`think:open_platform.verify_ticket.${s.component.appId}`, phpString(mock.issueVerifyTicket(s.component.appId)), 3600);
    const open = s.make({ schema: easyWeChat6({ prefix: 'think:' }) });
    const a = await authorized(s, open);
    const copy = (refreshToken: string) => `think:open-platform.authorizer_access_token.${a}.${createHash('md5').update(refreshToken).digest('hex')}`;
    const client = open.officialAccount(a);
    // The token api_query_auth handed out, copied under the refresh token it came with.
    const first = await client.accessToken.getToken();
    const authorizedWith = mock.authorizerRefreshToken(a)!;
    expect(await s.cache.get(copy(authorizedWith))).toBe(phpString(first));
    expect(mock.counters(a).authorizerTokenRequests).toBe(0);
    // A refresh writes the new token there too, for EasyWeChat's expires_in − 500 s.
    const second = await client.accessToken.forceRefresh();
    expect(second).not.toBe(first);
    expect(mock.counters(a).authorizerTokenRequests).toBe(1);
    const now = mock.authorizerRefreshToken(a)!;
    expect(await s.cache.get(copy(now))).toBe(phpString(second));
    expect(await s.cache.get(copy(authorizedWith))).toBe(phpString(second));
    const ttl = (await s.cache.ttlMs(copy(now)))!;
    expect(ttl).toBeGreaterThan(6_690_000);
    expect(ttl).toBeLessThanOrEqual(6_700_000);
    // wxkit's own entry is where it was, and lives as long as the copy.
    const own = `wechat:authorizer_access_token:${s.component.appId}:${a}`;
    expect(await s.cache.get(own)).toBe(phpString(second));
    expect(Math.abs((await s.cache.ttlMs(own))! - ttl)).toBeLessThan(5_000);
  });

  it('easyWeChat6: a token EasyWeChat 6 fetched on its own is taken from its copy, not fetched again; a rejected or forced one never', async () => {
    const s = setup();
    const c = s.component.appId;
    await s.durable.set(`think:open_platform.verify_ticket.${c}`, phpString(mock.issueVerifyTicket(c)), 3600);
    const open = s.make({ schema: easyWeChat6({ prefix: 'think:' }) });
    const a = await authorized(s, open);
    const refreshToken = mock.authorizerRefreshToken(a)!;
    const copy = `think:open-platform.authorizer_access_token.${a}.${createHash('md5').update(refreshToken).digest('hex')}`;
    const own = `wechat:authorizer_access_token:${c}:${a}`;
    // EasyWeChat's getAuthorizerAccessToken() met no copy: it refreshed with the refresh token its caller
    // gave it, and wrote the token there for expires_in − 500 s. wxkit's own entry has run out meanwhile.
    await s.cache.delete(copy);
    const answer = (await (
      await fetch(`${mock.url}/cgi-bin/component/api_authorizer_token?component_access_token=${await open.componentAccessToken()}`, {
        method: 'POST',
        body: JSON.stringify({ component_appid: c, authorizer_appid: a, authorizer_refresh_token: refreshToken }),
      })
    ).json()) as { authorizer_access_token: string; expires_in: number };
    await s.cache.set(copy, phpString(answer.authorizer_access_token), answer.expires_in - 500);
    await s.cache.delete(own);
    expect(mock.counters(a).authorizerTokenRequests).toBe(1);

    // Another wxkit process needs a token: it takes EasyWeChat's, which a fetch would have invalidated.
    const other = s.make({ schema: easyWeChat6({ prefix: 'think:' }) });
    const events: ClientEvent[] = [];
    other.officialAccount(a).on('authorizer_access_token.fetched', (event) => events.push(event));
    expect(await other.officialAccount(a).accessToken.getToken()).toBe(answer.authorizer_access_token);
    await send(other, a);
    expect(mock.counters(a)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 1 });
    expect(events).toMatchObject([{ source: 'peer' }]);
    expect(await s.cache.get(own)).toBe(phpString(answer.authorizer_access_token));
    // Its life is what the copy has left plus EasyWeChat's 500 s: wxkit's entry runs out with the copy.
    expect(Math.abs((await s.cache.ttlMs(own))! - (await s.cache.ttlMs(copy))!)).toBeLessThan(5_000);

    // WeChat rejects it (a program outside both fetched): the copy holds the rejected token, so the
    // recovery fetches a new one, and copies it back. (The mock rotated the refresh token at EasyWeChat's
    // refresh, which wxkit's record does not know: 61023, the current one from api_get_authorizer_info,
    // then the refresh.)
    mock.invalidateTokens(a);
    await send(other, a);
    expect(mock.counters(a)).toMatchObject({ authorizerTokenRequests: 3, templateSends: 2, errcodes: { '61023': 1 } });
    const fresh = await other.officialAccount(a).accessToken.getToken();
    expect(fresh).not.toBe(answer.authorizer_access_token);
    const copyNow = `think:open-platform.authorizer_access_token.${a}.${createHash('md5').update(mock.authorizerRefreshToken(a)!).digest('hex')}`;
    expect(await s.cache.get(copyNow)).toBe(phpString(fresh));

    // A forced refresh asks WeChat, whatever the copy holds.
    expect(await other.officialAccount(a).accessToken.forceRefresh()).not.toBe(fresh);
    expect(mock.counters(a).authorizerTokenRequests).toBe(4);
  });

  it('easyWeChat6: a copy without an expiry (a TTL the store calls infinite) is not taken, and the store stays up', async () => {
    const s = setup();
    const c = s.component.appId;
    await s.durable.set(`open_platform.verify_ticket.${c}`, phpString(mock.issueVerifyTicket(c)), 3600);
    // A PHP side that wrote its copy without a TTL: RedisCache reports such a key's TTL as Infinity.
    class Timeless extends MemoryCache {
      override async ttlMs(key: string): Promise<number | undefined> {
        return key.includes('open-platform.authorizer_access_token.') ? Infinity : super.ttlMs(key);
      }
    }
    const cache = new Timeless();
    const logger = recordingLogger();
    const open = s.make({ schema: easyWeChat6(), cache, logger });
    const a = await authorized(s, open);
    const first = await open.officialAccount(a).accessToken.getToken();
    await cache.delete(`wechat:authorizer_access_token:${c}:${a}`);
    const other = s.make({ schema: easyWeChat6(), cache, logger });
    const token = await other.officialAccount(a).accessToken.getToken();
    expect(token).not.toBe(first);
    expect(mock.counters(a).authorizerTokenRequests).toBe(1);
    await send(other, a);
    expect(logger.lines.filter((line) => (line.fields as { event?: string }).event === 'cache.unavailable')).toEqual([]);
  });

  it("easyWeChat6: a store that refuses the copy for EasyWeChat costs a warning, not the refresh", async () => {
    const s = setup();
    await s.durable.set(`open_platform.verify_ticket.${s.component.appId}`, phpString(mock.issueVerifyTicket(s.component.appId)), 3600);
    class NoCopies extends MemoryCache {
      refused = 0;
      override set(key: string, value: string, ttlSeconds: number): Promise<void> {
        if (!key.includes('open-platform.authorizer_access_token.')) return super.set(key, value, ttlSeconds);
        this.refused += 1;
        return Promise.reject(new Error('READONLY You can\'t write against a read only replica.'));
      }
    }
    const cache = new NoCopies();
    const logger = recordingLogger();
    const open = s.make({ schema: easyWeChat6(), cache, logger });
    const a = await authorized(s, open);
    const authorizedWith = mock.authorizerRefreshToken(a);
    const token = await open.officialAccount(a).accessToken.forceRefresh();
    // One copy for the authorization, one per refresh token of the refresh (two when WeChat rotated it).
    const copies = 1 + (mock.authorizerRefreshToken(a) === authorizedWith ? 1 : 2);
    expect(mock.isTokenValid(a, token)).toBe(true);
    await send(open, a);
    // No refused copy took the store for down: the send read the refreshed token from it, and nothing
    // was fetched twice.
    expect(cache.refused).toBe(copies);
    expect(mock.counters(a).authorizerTokenRequests).toBe(1);
    const warnings = logger.lines.filter((line) => (line.fields as { event?: string }).event === 'authorizer_access_token.copy_failed');
    expect(warnings).toHaveLength(copies);
    expect(JSON.stringify(warnings)).not.toContain(mock.authorizerRefreshToken(a)!);
  });

  it('easyWeChat6: on a store whose get() answers Buffers, the copy EasyWeChat keeps is read as its bytes and taken', async () => {
    const s = setup();
    await s.durable.set(`open_platform.verify_ticket.${s.component.appId}`, phpString(mock.issueVerifyTicket(s.component.appId)), 3600);
    class Bytes extends MemoryCache {
      override async get(key: string): Promise<string | undefined> {
        const value = await super.get(key);
        return (value === undefined ? null : Buffer.from(value, 'latin1')) as unknown as string | undefined;
      }
    }
    const cache = new Bytes();
    const logger = recordingLogger();
    const open = s.make({ schema: easyWeChat6(), cache, logger });
    const a = await authorized(s, open);
    const first = await open.officialAccount(a).accessToken.getToken();
    // wxkit's entry is gone; EasyWeChat's copy of the same token is left: another instance takes it.
    await cache.delete(open.officialAccount(a).accessToken.cacheKey);
    const other = s.make({ schema: easyWeChat6(), cache, logger });
    expect(await other.officialAccount(a).accessToken.getToken()).toBe(first);
    expect(mock.counters(a).authorizerTokenRequests).toBe(0);
    expect(logger.lines.map((line) => (line.fields as { event?: string }).event)).not.toContain('authorizer_access_token.copy_failed');
  });

  it("easyWeChat6: a refresh left under way (its holder died after WeChat rotated the refresh token) does not take the copy kept under the old one", async () => {
    const s = setup();
    const c = s.component.appId;
    await s.durable.set(`think:open_platform.verify_ticket.${c}`, phpString(mock.issueVerifyTicket(c)), 3600);
    const open = s.make({ schema: easyWeChat6({ prefix: 'think:' }) });
    const a = await authorized(s, open);
    const first = await open.officialAccount(a).accessToken.getToken();
    const authorizedWith = mock.authorizerRefreshToken(a)!;
    const copy = `think:open-platform.authorizer_access_token.${a}.${createHash('md5').update(authorizedWith).digest('hex')}`;
    expect(await s.cache.get(copy)).toBe(phpString(first));
    // A holder wrote its write-ahead mark, called api_authorizer_token (WeChat handed out a new access
    // token and rotated the refresh token), and died before it wrote either.
    const recordKey = `wechat:authorizer_refresh_token:${c}:${a}`;
    const record = JSON.parse((await s.durable.get(recordKey))!) as Record<string, unknown>;
    await s.durable.set(recordKey, JSON.stringify({ ...record, pending_since: Math.floor(Date.now() / 1000), pending_by: 'gone:1' }), 86_400);
    const answer = await fetch(`${mock.url}/cgi-bin/component/api_authorizer_token?component_access_token=${await open.componentAccessToken()}`, {
      method: 'POST',
      body: JSON.stringify({ component_appid: c, authorizer_appid: a, authorizer_refresh_token: authorizedWith }),
    });
    expect(((await answer.json()) as { errcode?: number }).errcode ?? 0).toBe(0);
    expect(mock.authorizerRefreshToken(a)).not.toBe(authorizedWith);
    await s.cache.delete(`wechat:authorizer_access_token:${c}:${a}`);

    // The copy under the marked record's token still holds the token of before, with most of its TTL: a
    // refresh that took it would hand out a token WeChat has replaced. The next one recovers instead.
    const other = s.make({ schema: easyWeChat6({ prefix: 'think:' }) });
    const fetched: ClientEvent[] = [];
    other.officialAccount(a).on('authorizer_access_token.fetched', (event) => fetched.push(event));
    const recovered: AuthorizerRefreshTokenRecoveredEvent[] = [];
    other.on('authorizer_refresh_token.recovered', (event) => recovered.push(event));
    const token = await other.officialAccount(a).accessToken.getToken();
    expect(token).not.toBe(first);
    expect(mock.isTokenValid(a, token)).toBe(true);
    expect(fetched).toHaveLength(1);
    expect(fetched[0]).not.toMatchObject({ source: 'peer' });
    expect(recovered.map((event) => event.reason)).toEqual(['interrupted']);
    await send(other, a);
    expect(mock.counters(a).templateSends).toBe(1);
  });

  it("easyWeChat6: a refresh ahead of expiry does not take the copy of the token it is to replace", async () => {
    const s = setup();
    const c = s.component.appId;
    await s.durable.set(`think:open_platform.verify_ticket.${c}`, phpString(mock.issueVerifyTicket(c)), 3600);
    let now = Date.now();
    const open = s.make({ schema: easyWeChat6({ prefix: 'think:' }), now: () => now, refreshAheadSeconds: 600, refreshAheadJitterMs: 0 });
    const a = await authorized(s, open);
    const client = open.officialAccount(a);
    const ahead = new Promise<ClientEvent>((resolve) => client.on('authorizer_access_token.fetched', (event) => event.ahead && resolve(event)));
    // This process fetches the token, so it knows its age (EasyWeChat's format stores it bare).
    const first = await client.accessToken.forceRefresh();
    expect(mock.counters(a).authorizerTokenRequests).toBe(1);
    const copy = () => `think:open-platform.authorizer_access_token.${a}.${createHash('md5').update(mock.authorizerRefreshToken(a)!).digest('hex')}`;
    // The copy holds the current token with hours of TTL left in the store (whose clock does not move).
    expect(await s.cache.get(copy())).toBe(phpString(first));
    // 500 s before the entry (6700 s) runs out: inside the 600 s window. The read goes to the store
    // (past the memo window) and finds the token bare; the window still opens.
    now += 6_200_000;
    expect(await client.accessToken.getToken()).toBe(first);
    const event = await Promise.race([ahead, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no background refresh began')), 10_000).unref())]);
    expect(event).not.toMatchObject({ source: 'peer' });
    expect(mock.counters(a).authorizerTokenRequests).toBe(2);
    const second = (await s.cache.get(`wechat:authorizer_access_token:${c}:${a}`))!.replace(/^s:\d+:"(.*)";$/, '$1');
    expect(second).not.toBe(first);
    expect(mock.isTokenValid(a, second)).toBe(true);
    expect(await s.cache.get(copy())).toBe(phpString(second));
  });

  it('easyWeChat6: a holder that outlived its lock lease writes no copy for EasyWeChat (it may no longer know what the store holds)', async () => {
    const s = setup();
    const c = s.component.appId;
    await s.durable.set(`think:open_platform.verify_ticket.${c}`, phpString(mock.issueVerifyTicket(c)), 3600);
    // The cache as the holder sees it: its write of the refreshed entry waits, once armed, while the
    // clock its lease runs on jumps past the lease (a pause: GC, a stopped process, a saturated host).
    const realNow = performance.now.bind(performance);
    let skew = 0;
    const clock = vi.spyOn(performance, 'now').mockImplementation(() => realNow() + skew);
    let armed: string | undefined;
    class Pausing extends MemoryCache {
      #pause(key: string): void {
        if (key !== armed) return;
        armed = undefined;
        skew += 3_600_000;
      }
      override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        this.#pause(key);
        return super.add(key, value, ttlSeconds);
      }
      override async set(key: string, value: string, ttlSeconds: number): Promise<void> {
        this.#pause(key);
        return super.set(key, value, ttlSeconds);
      }
    }
    const cache = new Pausing();
    try {
      const open = s.make({ schema: easyWeChat6({ prefix: 'think:' }), cache, clientIdleMs: 86_400_000 });
      const a = await authorized(s, open);
      const first = await open.officialAccount(a).accessToken.getToken();
      const authorizedWith = mock.authorizerRefreshToken(a)!;
      const copy = (refreshToken: string) => `think:open-platform.authorizer_access_token.${a}.${createHash('md5').update(refreshToken).digest('hex')}`;
      expect(await cache.get(copy(authorizedWith))).toBe(phpString(first));
      const entryKey = `wechat:authorizer_access_token:${c}:${a}`;
      await cache.delete(entryKey);
      armed = entryKey;
      const second = await open.officialAccount(a).accessToken.forceRefresh();
      expect(armed).toBeUndefined();
      expect(second).not.toBe(first);
      expect(mock.counters(a).authorizerTokenRequests).toBe(1);
      // Its entry went in (nothing newer was there), but no copy: the one under the refresh token it used
      // is what the authorization wrote, and none is under the new one.
      expect(await cache.get(entryKey)).toBe(phpString(second));
      expect(await cache.get(copy(authorizedWith))).toBe(phpString(first));
      const rotated = mock.authorizerRefreshToken(a)!;
      if (rotated !== authorizedWith) expect(await cache.get(copy(rotated))).toBeUndefined();
    } finally {
      clock.mockRestore();
    }
  });

  it('silenceper: the component token bare under component_access_token_{appid}, the ticket under wxkit\'s key', async () => {
    const s = setup();
    const c = s.component.appId;
    await withTicket(s);
    const token = await s.make({ schema: silenceper() }).componentAccessToken();
    expect(await s.cache.get(`component_access_token_${c}`)).toBe(token);
  });
});

/** A string as PHP's serialize() writes it. */
const phpString = (value: string) => `s:${Buffer.byteLength(value)}:"${value}";`;

describe('options', () => {
  it('durableStore is required, and bad keys are ConfigErrors naming the option', () => {
    const s = setup();
    expect(() => s.make({ durableStore: undefined })).toThrow(/options\.durableStore is required/);
    expect(() => s.make({ encodingAESKey: 'short' })).toThrow(/OpenPlatform options\.encodingAESKey/);
    expect(() => s.make({ maxClients: 0 })).toThrow(/options\.maxClients/);
  });

  it("tokenSource is a ConfigError: a token service would hand out an access token of the component's AppID as its component token", () => {
    const s = setup();
    const tokenSource = { fetch: async () => ({ value: 'an-access-token-of-the-appid', expiresIn: 7200 }), invalidate: async () => undefined };
    expect(() => s.make({ tokenSource })).toThrow(expect.objectContaining({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'tokenSource' }));
  });
});

describe('a refresh every caller gave up on while it looked for a peer SDK\'s copy', () => {
  it('asks WeChat nothing: the lock is let go without a refresh of the authorizer token for nobody', async () => {
    const s = setup();
    await s.durable.set(`think:open_platform.verify_ticket.${s.component.appId}`, phpString(mock.issueVerifyTicket(s.component.appId)), 3600);
    const open = s.make({ schema: easyWeChat6({ prefix: 'think:' }), memoMs: 0 });
    const a = await authorized(s, open);
    const client = open.officialAccount(a);
    await client.accessToken.getToken();
    const own = client.accessToken.cacheKey;
    await s.cache.delete(own);
    // Nor has the peer a copy: the refresh looks for one, then would fetch.
    const refreshToken = mock.authorizerRefreshToken(a)!;
    await s.cache.delete(`think:open-platform.authorizer_access_token.${a}.${createHash('md5').update(refreshToken).digest('hex')}`);
    // The look at the peer's copy starts under the lock with a read of the refresh-token record, held here.
    const reading = deferred();
    const gate = deferred();
    const get = s.durable.get.bind(s.durable);
    s.durable.get = async (key) => {
      if (key.includes('authorizer_refresh_token')) {
        reading.resolve();
        await gate.promise;
      }
      return get(key);
    };
    const controller = new AbortController();
    const reason = new Error('the caller gave up');
    const call = rejection(client.accessToken.getToken({ signal: controller.signal }));
    await reading.promise;
    expect(await s.cache.get(`${own}:lock`)).toBeDefined();
    controller.abort(reason);
    expect(await call).toBe(reason);
    gate.resolve();
    // The refresh ends and lets go of its lock, whatever it did.
    while ((await s.cache.get(`${own}:lock`)) !== undefined) await new Promise((resolve) => setTimeout(resolve, 5));
    // Nothing was asked of WeChat for nobody, and the refresh token was not rotated under the fleet.
    expect(mock.counters(a).authorizerTokenRequests).toBe(0);
    expect(mock.authorizerRefreshToken(a)).toBe(refreshToken);
    // The next caller's refresh fetches as ever.
    expect(await client.accessToken.getToken()).toMatch(/^\d{2}_/);
    expect(mock.counters(a).authorizerTokenRequests).toBe(1);
  });
});
