import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpenPlatform, WeChatApiError } from '@wxkit/core';
import { startMockWeChat, startRedis, type MockComponent, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { RedisCache } from '../src/index.js';

// WeChat hands one authorization code to the `authorized` push and to the redirect, and answers its
// second use with 61009. Two OpenPlatforms, each with its own RedisCache clients on one redis-server,
// are the push handler's process and the redirect handler's: both get the account, WeChat is asked once.

let redis: StoreServer;
let mock: MockWeChat;
const closing: (() => Promise<unknown>)[] = [];
beforeAll(async () => {
  [redis, mock] = await Promise.all([startRedis(), startMockWeChat()]);
});
afterAll(async () => {
  for (const close of closing.reverse()) await close();
  await Promise.all([redis?.stop(), mock?.close()]);
});

/** A process of the platform: its own connections to the shared Redis (cache and durable store). */
function process(component: MockComponent): OpenPlatform {
  const cache = new RedisCache(redis.url);
  const durable = new RedisCache(redis.url);
  const open = new OpenPlatform({
    appId: component.appId,
    secret: component.secret,
    token: component.token,
    encodingAESKey: component.encodingAESKey,
    baseUrl: mock.url,
    cache,
    durableStore: durable,
    logger: false,
  });
  closing.push(() => cache.close(), () => durable.close(), () => open.close());
  return open;
}

async function component(): Promise<MockComponent> {
  const made = mock.createComponent();
  const durable = new RedisCache(redis.url);
  const ticket = mock.issueVerifyTicket(made.appId);
  await durable.set(`wechat:component_verify_ticket:${made.appId}`, JSON.stringify({ component_verify_ticket: ticket, create_time: Math.floor(mock.now() / 1000) }), 3600);
  await durable.close();
  return made;
}

describe('one authorization code, two processes on one Redis', () => {
  it('concurrently: one api_query_auth, the same answer for both', async () => {
    const c = await component();
    const [push, redirect] = [process(c), process(c)];
    await Promise.all([push.componentAccessToken(), redirect.componentAccessToken()]);
    const grant = mock.authorize(c.appId, { funcInfo: [1, 15] });
    const [a, b] = await Promise.all([push.handleAuthorization(grant.authorizationCode), redirect.handleAuthorization(grant.authorizationCode)]);
    expect(a).toEqual({ authorizerAppId: grant.authorizerAppId, funcInfo: [1, 15] });
    expect(b).toEqual(a);
    expect(mock.counters(c.appId).queryAuthRequests).toBe(1);
  });

  it('one after the other: one api_query_auth, the same answer', async () => {
    const c = await component();
    const [push, redirect] = [process(c), process(c)];
    const grant = mock.authorize(c.appId);
    const first = await redirect.handleAuthorization(grant.authorizationCode);
    await expect(push.handleAuthorization(grant.authorizationCode)).resolves.toEqual(first);
    expect(first.authorizerAppId).toBe(grant.authorizerAppId);
    expect(mock.counters(c.appId).queryAuthRequests).toBe(1);
  });

  it('a code spent with no record left still fails with 61009', async () => {
    const c = await component();
    const grant = mock.authorize(c.appId);
    await process(c).handleAuthorization(grant.authorizationCode);
    // The record gone (as if the cache had lost it): the code is spent all the same.
    const cache = new RedisCache(redis.url);
    closing.push(() => cache.close());
    const key = `wechat:authorization_code:${c.appId}:${createHash('sha256').update(grant.authorizationCode).digest('hex')}`;
    expect(await cache.get(key)).toBeDefined();
    await cache.delete(key);
    const error = await process(c).handleAuthorization(grant.authorizationCode).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(WeChatApiError);
    expect((error as WeChatApiError).errcode).toBe(61009);
    expect(mock.counters(c.appId).queryAuthRequests).toBe(2);
  });
});
