import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BadResponseError, MemoryCache, OpenPlatform } from '../src/index.js';
import { componentOptions, rejection, storeVerifyTicket } from './helpers.js';

// The refresh token is the account's only way back without its admin: an answer of WeChat's whose
// refresh token is no token (of another type, with spaces or control characters, far too long, the
// access token again) is a BadResponseError, and never replaces the one stored.

let mock: MockWeChat;
beforeAll(async () => {
  // WeChat keeps the refresh token: the one stored stays good after any refresh, garbled or not.
  mock = await startMockWeChat({ rotateRefreshTokens: false });
});
afterAll(async () => {
  await mock.close();
});

const opened: OpenPlatform[] = [];
afterAll(() => Promise.all(opened.map((open) => open.close())));

const GARBAGE: [string, unknown][] = [
  ['a number', 12345],
  ['an object', { token: 'x' }],
  ['a string with a space', 'refreshtoken@@@ab cd'],
  ['a string with a newline', 'refreshtoken@@@ab\ncd'],
  ['a string with a control character', 'refreshtoken@@@ab\u0001cd'],
  ['a string of 100,000 characters', 'x'.repeat(100_000)],
];
const ACCESS_TOKEN = Symbol('the access token of the same answer');

async function setup() {
  const component = mock.createComponent();
  const cache = new MemoryCache();
  const durable = new MemoryCache();
  const open = new OpenPlatform({ ...componentOptions(mock, component), cache, durableStore: durable, logger: false, fallbackDir: false });
  opened.push(open);
  await storeVerifyTicket(mock, component, durable);
  const recordKey = (appId: string) => `wechat:authorizer_refresh_token:${component.appId}:${appId}`;
  const record = async (appId: string) => {
    const raw = await durable.get(recordKey(appId));
    return raw === undefined ? undefined : (JSON.parse(raw) as Record<string, unknown>);
  };
  /** The account's token as a process without it in the cache gets it: a refresh. */
  const refresh = async (appId: string) => {
    await cache.delete(`wechat:authorizer_access_token:${component.appId}:${appId}`);
    // A process of its own: no back-off of this one's failures holds it.
    const other = new OpenPlatform({ ...componentOptions(mock, component), cache: new MemoryCache(), durableStore: durable, logger: false, fallbackDir: false });
    opened.push(other);
    return other.officialAccount(appId).accessToken.getToken();
  };
  const authorize = async () => {
    const { preAuthCode } = await open.createPreAuthCode();
    return mock.authorize(component.appId, { preAuthCode });
  };
  return { component, open, durable, record, refresh, authorize };
}

/** WeChat acts on the next request to `path`, and its answer's `field` arrives as `value` ('access token': the answer's own access token). */
function garbled(path: string, field: string, value: unknown): void {
  const accessToken = field.replace(/authorizer_refresh_token$/, 'authorizer_access_token');
  mock.injectFault({ kind: 'field', path, field, ...(value === ACCESS_TOKEN ? { from: accessToken } : { value }) });
}

describe('an api_authorizer_token answer whose refresh token is no token', () => {
  it.each([...GARBAGE, ['the access token of the same answer', ACCESS_TOKEN]])('(%s) is a BadResponseError, and the stored refresh token stays', async (_, value) => {
    const { open, record, refresh, authorize } = await setup();
    const { authorizationCode } = await authorize();
    const { authorizerAppId: appId } = await open.handleAuthorization(authorizationCode);
    const good = mock.authorizerRefreshToken(appId);
    expect((await record(appId))?.authorizer_refresh_token).toBe(good);
    garbled('cgi-bin/component/api_authorizer_token', 'authorizer_refresh_token', value);
    const error = await rejection(refresh(appId));
    expect(error).toMatchObject({ name: 'BadResponseError', code: 'ERR_WXKIT_BAD_RESPONSE', path: 'cgi-bin/component/api_authorizer_token' });
    // The record keeps the token its refresh sent, marked as a refresh under way with it (WeChat may have rotated it).
    expect(await record(appId)).toMatchObject({ authorizer_refresh_token: good, pending_since: expect.any(Number) });
    // The next refresh goes on with it: WeChat takes it, no 61023, no recovery.
    const asked = mock.counters(appId).authorizerTokenRequests;
    expect(await refresh(appId)).toMatch(/^\d{2}_/);
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: asked + 1, errcodes: {} });
    expect(await record(appId)).toMatchObject({ authorizer_refresh_token: good });
    expect((await record(appId))?.pending_since).toBeUndefined();
  });
});

describe('an api_query_auth answer whose refresh token is no token', () => {
  it.each([...GARBAGE, ['the access token of the same answer', ACCESS_TOKEN]])('(%s) is a BadResponseError naming the account, stores none, and the first refresh takes it from WeChat', async (_, value) => {
    const { open, record, refresh, authorize } = await setup();
    const { authorizationCode, authorizerAppId: appId } = await authorize();
    garbled('cgi-bin/component/api_query_auth', 'authorization_info.authorizer_refresh_token', value);
    const error = await rejection(open.handleAuthorization(authorizationCode));
    expect(error).toMatchObject({ name: 'BadResponseError', path: 'cgi-bin/component/api_query_auth', authorizerAppId: appId });
    expect(await record(appId)).toBeUndefined();
    // api_get_authorizer_info names the current one, and the refresh goes on with it: no 61023.
    expect(await refresh(appId)).toMatch(/^\d{2}_/);
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: 1, errcodes: {} });
    expect(await record(appId)).toMatchObject({ authorizer_refresh_token: mock.authorizerRefreshToken(appId) });
  });
});

describe('an api_get_authorizer_info answer whose refresh token is no token', () => {
  it.each(GARBAGE)('(%s) is a BadResponseError: WeChat is not sent it, and nothing is stored', async (_, value) => {
    const { open, durable, component, record, refresh, authorize } = await setup();
    const { authorizationCode } = await authorize();
    const { authorizerAppId: appId } = await open.handleAuthorization(authorizationCode);
    // The record is gone: the refresh asks WeChat which token is current.
    await durable.delete(`wechat:authorizer_refresh_token:${component.appId}:${appId}`);
    garbled('cgi-bin/component/api_get_authorizer_info', 'authorization_info.authorizer_refresh_token', value);
    const error = await rejection(refresh(appId));
    expect(error).toBeInstanceOf(BadResponseError);
    expect(error).toMatchObject({ code: 'ERR_WXKIT_BAD_RESPONSE', path: 'cgi-bin/component/api_get_authorizer_info' });
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: 0, errcodes: {} });
    expect(await record(appId)).toBeUndefined();
  });
});
