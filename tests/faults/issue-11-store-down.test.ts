import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { OfficialAccount } from '@wxkit/core';
import { redisCli, startMockWeChat, startRedis, switchableStore, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { errorsOf, okOf, redisSpec, workerPool } from './helpers.js';

// Issue 11, item 1: with the shared store down, a token killed upstream must not turn into a fetch per
// process (on the classic endpoint each fetch kills the others' tokens): the processes of one host share
// one fetch through the host's fallback directory, and fetch again at most once per back-off step.

let mock: MockWeChat;
let redis: StoreServer;
const dirs: string[] = [];
const pool = workerPool(() => ({ baseUrl: mock.url }));
const fallbackDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'wxkit-fallback-'));
  dirs.push(dir);
  return dir;
};

beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat({ latencyMs: 5 }), startRedis()]);
});
afterEach(async () => {
  await pool.stop();
  await redis.start();
});
afterAll(async () => {
  await Promise.all([mock?.close(), redis?.stop()]);
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('item 1: store down, classic endpoint, tokens killed upstream', () => {
  it('8 processes × 20 sends after the store died and the token was killed: 1 fetch for the host, 0 lost; killed again: 1 more', async () => {
    const app = mock.createApp();
    const group = await pool.start(8, { ...app, tokenEndpoint: 'classic', store: redisSpec(redis.url), clientOptions: { fallbackDir: fallbackDir() } });
    expect(errorsOf(await group.run('send', 2))).toEqual([]);
    expect(mock.counters(app.appId).classicTokenRequests).toBe(1);

    await redis.stop('SIGKILL');
    mock.invalidateTokens(app.appId);
    const first = await group.run('send', 20, group.all, 4);
    expect(errorsOf(first)).toEqual([]);
    expect(okOf(first)).toBe(160);
    expect(mock.counters(app.appId).classicTokenRequests).toBe(2);

    // Another program kills it again while the store is still down: one more fetch for the host, once
    // the back-off step since the last one has passed; the sends wait for it rather than fail.
    mock.invalidateTokens(app.appId);
    const second = await group.run('send', 20, group.all, 4);
    expect(errorsOf(second)).toEqual([]);
    expect(mock.counters(app.appId).classicTokenRequests).toBe(3);
  });
});

describe('the store comes back', () => {
  it('a Redis restarted empty while every process holds a good token: each serves it for its memo window, then one fetch for the fleet, 0 lost sends', async () => {
    const app = mock.createApp();
    const key = `wechat:access_token:${app.appId}`;
    const group = await pool.start(6, { ...app, tokenEndpoint: 'classic', store: redisSpec(redis.url), clockControl: 'frozen' });
    expect(errorsOf(await group.run('send', 2))).toEqual([]);
    expect(mock.counters(app.appId).classicTokenRequests).toBe(1);

    await redis.stop('SIGKILL');
    await redis.start();
    // Within the memo window each process serves the token it holds: nothing read, nothing fetched.
    const within = await group.run('send', 10, group.all, 2);
    expect(errorsOf(within)).toEqual([]);
    expect(okOf(within)).toBe(60);
    expect(mock.counters(app.appId).classicTokenRequests).toBe(1);
    expect(redisCli(redis.port, 'EXISTS', key)).toBe('0');

    // Past it, every process reads the empty store: one of them fetches under the lock, the others take
    // its token (on the classic endpoint a fetch per process would end the tokens of the others).
    await group.advance(31_000);
    const after = await group.run('send', 10, group.all, 2);
    expect(errorsOf(after)).toEqual([]);
    expect(okOf(after)).toBe(60);
    expect(mock.counters(app.appId).classicTokenRequests).toBe(2);
    const stored = JSON.parse(redisCli(redis.port, 'GET', key)).access_token as string;
    expect(new Set((await group.run('getToken', 1)).flatMap((result) => result.values))).toEqual(new Set([stored]));

    await group.advance(31_000);
    expect(errorsOf(await group.run('send', 10, group.all, 2))).toEqual([]);
    expect(mock.counters(app.appId).classicTokenRequests).toBe(2);
  });

  it('a token fetched while the store was down is offered to it (add) once it answers, instead of fetching again', async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore({ up: false });
    const { inner } = store;
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: store.cache, memoMs: 0, fallbackDir: fallbackDir(), logger: false });
    const token = await app.accessToken.getToken();
    expect(await inner.get(app.accessToken.cacheKey)).toBeUndefined();
    const recovered = new Promise((resolve) => app.on('cache.recovered', resolve));
    store.up();
    await recovered;
    expect(await app.accessToken.getToken()).toBe(token);
    expect(JSON.parse((await inner.get(app.accessToken.cacheKey))!).access_token).toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await app.close();
  });

  it("the host's outage token is offered by whichever process reads the store first, not only by the one that fetched it", async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    const dir = fallbackDir();
    const client = () =>
      new OfficialAccount({ appId, secret, baseUrl: mock.url, tokenEndpoint: 'classic', cache: store.cache, memoMs: 0, fallbackDir: dir, logger: false });
    const [fetcher, other] = [client(), client()];
    const message = { touser: 'oUser', template_id: 'TPL', data: { first: { value: 'hello' } } };
    const old = await fetcher.accessToken.getToken();
    expect(await other.accessToken.getToken()).toBe(old);

    // Down, and the token killed upstream: both are rejected with it, one fetch for the host.
    store.down();
    mock.invalidateTokens(appId);
    await fetcher.templateMessage.send(message);
    await other.templateMessage.send(message);
    const outage = await fetcher.accessToken.getToken();
    expect(await other.accessToken.getToken()).toBe(outage);
    expect(mock.counters(appId).tokenRequests).toBe(2);
    // The store still holds the token both saw rejected.
    expect(JSON.parse((await store.inner.get(fetcher.accessToken.cacheKey))!).access_token).toBe(old);

    const recovered = Promise.all([fetcher, other].map((app) => new Promise((resolve) => app.on('cache.recovered', resolve))));
    store.up();
    await recovered;
    // The process that did not fetch reads the store first: it shares the host's token rather than fetch.
    expect(await other.accessToken.getToken()).toBe(outage);
    expect(await fetcher.accessToken.getToken()).toBe(outage);
    expect(JSON.parse((await store.inner.get(fetcher.accessToken.cacheKey))!).access_token).toBe(outage);
    expect(mock.counters(appId).tokenRequests).toBe(2);
    await Promise.all([fetcher.close(), other.close()]);
  });

  it("a token the host's directory still holds from an earlier outage, since rejected, is not what a store that came back empty gets", async () => {
    const { appId, secret } = mock.createApp();
    const store = switchableStore();
    const dir = fallbackDir();
    const client = () => new OfficialAccount({ appId, secret, baseUrl: mock.url, tokenEndpoint: 'classic', cache: store.cache, memoMs: 0, fallbackDir: dir, logger: false });
    const recovered = (app: OfficialAccount) => new Promise((resolve) => app.once('cache.recovered', resolve));
    const message = { touser: 'oUser', template_id: 'TPL', data: { first: { value: 'hello' } } };
    const stored = async () => JSON.parse((await store.inner.get(fetcher.accessToken.cacheKey)) ?? '{}').access_token as string | undefined;
    const fetcher = client();
    // An outage: the host fetches through its directory, and the store gets that token once back.
    store.down();
    const outage = await fetcher.accessToken.getToken();
    const back = recovered(fetcher);
    store.up();
    await back;
    expect(await fetcher.accessToken.getToken()).toBe(outage);
    expect(await stored()).toBe(outage);
    // Another program's fetch ends it; the fleet replaces it in the store.
    mock.invalidateTokens(appId);
    await fetcher.templateMessage.send(message);
    const current = await fetcher.accessToken.getToken();
    expect(current).not.toBe(outage);
    expect(mock.counters(appId).tokenRequests).toBe(2);
    // The store goes down again and comes back empty (a memcached restarted); a process started since
    // read the host's directory meanwhile.
    store.down();
    await store.inner.delete(fetcher.accessToken.cacheKey);
    const late = client();
    await late.accessToken.getToken().catch(() => undefined);
    const again = recovered(late);
    store.up();
    await again;
    await late.accessToken.getToken().catch(() => undefined);
    // What the store holds for the fleet is no token WeChat has ended.
    expect(await stored()).not.toBe(outage);
    await Promise.all([fetcher.close(), late.close()]);
  });
});
