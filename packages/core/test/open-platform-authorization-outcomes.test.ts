import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { MemoryCache, OpenPlatform, type OpenPlatformOptions } from '../src/index.js';
import { componentOptions, nextEvent, rejection, rewritingDispatcher, storeVerifyTicket } from './helpers.js';

// Once api_query_auth has answered, the account is authorized, whatever becomes of the authorization's
// own writes. An account that had revoked the authorization (61003, backed off fleet-wide up to an hour)
// is served again, and every caller of the code learns the account, in this process as in the others.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/** A durable store whose writes of refresh-token records fail while `failing` (a connection reset). */
class FailingRecords extends MemoryCache {
  failing = false;
  #check(key: string): void {
    if (this.failing && key.includes(':authorizer_refresh_token:')) throw new Error('ECONNRESET');
  }
  override async get(key: string): Promise<string | undefined> {
    this.#check(key);
    return super.get(key);
  }
  override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    this.#check(key);
    return super.add(key, value, ttlSeconds);
  }
  override async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    this.#check(key);
    return super.compareAndSet(key, expected, value, ttlSeconds);
  }
  override async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    this.#check(key);
    return super.set(key, value, ttlSeconds);
  }
}

/** A revoked account, backed off for minutes, on a platform whose clock the test moves. */
async function revokedAndBackedOff() {
  const component = mock.createComponent();
  const clock = { now: Date.now() };
  const now = () => clock.now;
  const cache = new MemoryCache({ now });
  const durable = new FailingRecords({ now });
  const platforms: OpenPlatform[] = [];
  const make = (extra: Partial<OpenPlatformOptions> = {}) => {
    const made = new OpenPlatform({ ...componentOptions(mock, component), cache, durableStore: durable, logger: false, now, fallbackDir: false, ...extra });
    platforms.push(made);
    return made;
  };
  const open = make();
  await storeVerifyTicket(mock, component, durable);
  /** The admin authorizes (again): the code handed to `by` (this process, or another one). */
  const authorize = async (authorizerAppId?: string, by: OpenPlatform = open) => {
    const { preAuthCode } = await open.createPreAuthCode();
    const grant = mock.authorize(component.appId, { preAuthCode, ...(authorizerAppId ? { authorizerAppId } : {}) });
    return by.handleAuthorization(grant.authorizationCode);
  };
  const { authorizerAppId: appId } = await authorize();
  const send = () => open.officialAccount(appId).templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
  expect(await send()).toMatchObject({ errcode: 0 });
  mock.revokeAuthorization(appId);
  // Four 61003 in a row, each asked once its pause (1, 2, 4 minutes) was over: the fleet's pause is 8 minutes now.
  for (let round = 0; round < 3; round += 1) {
    expect(await rejection(send())).toMatchObject({ errcode: 61003 });
    clock.now += 2 ** round * 60_000;
  }
  expect(await rejection(send())).toMatchObject({ errcode: 61003 });
  expect(mock.counters(appId).authorizerTokenRequests).toBe(4);
  return { open, cache, component, durable, appId, authorize, send, make, closeAll: () => Promise.all(platforms.map((each) => each.close())) };
}

describe('an account that authorizes again after a revocation', () => {
  it('is served at once when the durable store did not take the refresh token at its authorization (it answers again since)', async () => {
    const { open, cache, component, durable, appId, authorize, send, closeAll } = await revokedAndBackedOff();
    const asked = mock.counters(appId).authorizerTokenRequests;
    durable.failing = true;
    expect(await rejection(authorize(appId))).toMatchObject({ name: 'CacheError', authorizerAppId: appId });
    // The durable store answers again: the account is authorized, and its first refresh (the access
    // token api_query_auth handed out gone from the cache) recovers its refresh token from WeChat rather
    // than failing with the revoked authorization's 61003.
    const recovered = nextEvent(open, 'cache.recovered');
    durable.failing = false;
    await recovered;
    await cache.delete(`wechat:authorizer_access_token:${component.appId}:${appId}`);
    expect(await send()).toMatchObject({ errcode: 0 });
    // The record still holds the revoked authorization's token: 61023, then the current one from WeChat.
    expect(mock.counters(appId).authorizerTokenRequests).toBe(asked + 2);
    expect(mock.counters(appId).errcodes['61023']).toBe(1);
    await closeAll();
  });

  it("is served at once when api_query_auth's answer lacks the refresh token (its first refresh takes it from WeChat)", async () => {
    const { appId, authorize, send, make, closeAll } = await revokedAndBackedOff();
    const asked = mock.counters(appId).authorizerTokenRequests;
    // The answer reaches the process that handles the code with the refresh token's field renamed.
    const dispatcher = rewritingDispatcher('cgi-bin/component/api_query_auth', '"authorizer_refresh_token"', '"authorizer_refresh_tokeX"');
    expect(await rejection(authorize(appId, make({ dispatcher })))).toMatchObject({ name: 'BadResponseError', authorizerAppId: appId });
    expect(await send()).toMatchObject({ errcode: 0 });
    // The record still holds the revoked authorization's token: 61023, then the current one from WeChat.
    expect(mock.counters(appId).authorizerTokenRequests).toBe(asked + 2);
    expect(mock.counters(appId).errcodes['61023']).toBe(1);
    await closeAll();
    await dispatcher.close();
  });
});

describe('one authorization code handed twice to one process (the push and the redirect) at once', () => {
  it('the caller that joined the ask gets the account from the code\'s record, though the ask\'s refresh-token write failed', async () => {
    const component = mock.createComponent();
    const durable = new FailingRecords();
    const open = new OpenPlatform({ ...componentOptions(mock, component), cache: new MemoryCache(), durableStore: durable, logger: false, fallbackDir: false });
    await storeVerifyTicket(mock, component, durable);
    const { preAuthCode } = await open.createPreAuthCode();
    const grant = mock.authorize(component.appId, { preAuthCode, funcInfo: [1, 15] });
    durable.failing = true;
    const outcome = (call: Promise<unknown>) => call.then((value) => ({ value }), (error: unknown) => ({ error }));
    const [push, redirect] = await Promise.all([outcome(open.handleAuthorization(grant.authorizationCode)), outcome(open.handleAuthorization(grant.authorizationCode))]);
    // The caller that asked gets its own rejection, naming the account; the other one, the account, as a
    // caller in another process gets it from the record.
    expect(push).toMatchObject({ error: { name: 'CacheError', authorizerAppId: grant.authorizerAppId } });
    expect(redirect).toEqual({ value: { authorizerAppId: grant.authorizerAppId, funcInfo: [1, 15] } });
    expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
    await open.close();
  });

  it('the caller that joined the ask gets the account from the record when close() runs meanwhile, as a caller in another process does', async () => {
    const component = mock.createComponent();
    const durable = new FailingRecords();
    const cache = new MemoryCache();
    const open = new OpenPlatform({ ...componentOptions(mock, component), cache, durableStore: durable, logger: false, fallbackDir: false });
    await storeVerifyTicket(mock, component, durable);
    const { preAuthCode } = await open.createPreAuthCode();
    const grant = mock.authorize(component.appId, { preAuthCode, funcInfo: [1] });
    durable.failing = true;
    const outcome = (call: Promise<unknown>) => call.then((value) => ({ value }), (error: unknown) => ({ error }));
    // WeChat's answer is on its way when close() is called: close() lets the ask finish (its writes fail).
    mock.setLatency(300);
    try {
      const push = outcome(open.handleAuthorization(grant.authorizationCode));
      const redirect = outcome(open.handleAuthorization(grant.authorizationCode));
      await vi.waitFor(() => expect(mock.counters(component.appId).queryAuthRequests).toBe(1));
      const closed = open.close();
      expect(await push).toMatchObject({ error: { name: 'CacheError', authorizerAppId: grant.authorizerAppId } });
      expect(await redirect).toEqual({ value: { authorizerAppId: grant.authorizerAppId, funcInfo: [1] } });
      await closed;
    } finally {
      mock.setLatency(0);
    }
    // A caller in another process sharing the cache gets the same account, WeChat not asked again.
    const other = new OpenPlatform({ ...componentOptions(mock, component), cache, durableStore: new MemoryCache(), logger: false, fallbackDir: false });
    expect(await other.handleAuthorization(grant.authorizationCode)).toEqual({ authorizerAppId: grant.authorizerAppId, funcInfo: [1] });
    expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
    await other.close();
  });

  it('a code WeChat refuses (61009: spent elsewhere, no record) rejects both callers with it', async () => {
    const component = mock.createComponent();
    const durable = new MemoryCache();
    const open = new OpenPlatform({ ...componentOptions(mock, component), cache: new MemoryCache(), durableStore: durable, logger: false, fallbackDir: false });
    await storeVerifyTicket(mock, component, durable);
    const [push, redirect] = await Promise.all([rejection(open.handleAuthorization('queryauthcode@@@unknown')), rejection(open.handleAuthorization('queryauthcode@@@unknown'))]);
    expect(push).toMatchObject({ errcode: 61009 });
    expect(redirect).toBe(push);
    expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
    await open.close();
  });
});
