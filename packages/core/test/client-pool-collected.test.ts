import { startMockWeChat, type MockAuthorizedAccount, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ClientPool, MemoryCache, OpenPlatform, TokenUnavailableError, type AccessToken } from '../src/index.js';
import { collect, componentOptions, storeVerifyTicket } from './helpers.js';

// A pool holds the clients it let go of weakly, and a caller that awaits a token or a send holds that
// promise, not the client: such a client may be collected while its refresh, or the report of a token
// WeChat rejected, is under way. The pool's close() must still end that refresh's wait, and wait for its
// lock's release and for the report's delete.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/** A promise's outcome, readable at any time: undefined while it is pending. */
function outcome(promise: Promise<unknown>): { value?: { ok: unknown } | { error: unknown } } {
  const seen: { value?: { ok: unknown } | { error: unknown } } = {};
  promise.then(
    (ok) => (seen.value = { ok }),
    (error: unknown) => (seen.value = { error }),
  );
  return seen;
}

/**
 * Asks `token` for its value from a scope of its own and hands back only the pending call and a weak
 * reference to the client, so the caller holds what a program awaiting a token holds.
 */
async function askedAndDropped(client: () => Promise<{ accessToken: AccessToken }>) {
  const held = await client();
  return { asked: outcome(held.accessToken.getToken()), ref: new WeakRef(held), lock: `${held.accessToken.cacheKey}:lock` };
}

/** Two apps, and a ClientPool of them on `cache` with room for one client: taking b's client lets go of a's. */
function poolOfTwo(cache: MemoryCache) {
  const [a, b] = [mock.createApp(), mock.createApp()];
  const secrets = new Map([a, b].map((app) => [app.appId, app.secret]));
  const pool = new ClientPool({ kind: 'officialAccount', credentials: (id) => ({ secret: secrets.get(id) }), baseUrl: mock.url, cache, logger: false, maxClients: 1, tokenEndpoint: 'classic' });
  return { a, b, pool };
}

/** Takes b's client (`takeB`), which lets go of a's, and checks that nothing holds a's (`ref`) any more. */
async function letGoOfA(takeB: () => unknown, ref: WeakRef<object>): Promise<void> {
  await takeB();
  await collect();
  expect(ref.deref()).toBeUndefined();
}

/** A promise and the function that resolves it. */
function latch(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

describe('a client let go of and collected while its refresh or report is under way', () => {
  it('ClientPool: close() ends its wait for another process\'s lock', async () => {
    const cache = new MemoryCache();
    const adds = vi.spyOn(cache, 'add');
    const { a, b, pool } = poolOfTwo(cache);
    const lockKey = `wechat:access_token:${a.appId}:lock`;
    // Another process holds a's refresh lock for a minute.
    await cache.set(lockKey, 'elsewhere:1', 60);
    const { asked, ref, lock } = await askedAndDropped(() => pool.get(a.appId));
    expect(lock).toBe(lockKey);
    await vi.waitFor(() => expect(adds.mock.calls.some(([key]) => key === lockKey)).toBe(true));
    await letGoOfA(() => pool.get(b.appId), ref);
    await pool.close();
    await new Promise((resolve) => setImmediate(resolve));
    expect(asked.value).toMatchObject({ error: expect.any(TokenUnavailableError) });
    expect(String((asked.value as { error: Error }).error.message)).toMatch(/closed/);
    expect(mock.counters(a.appId).classicTokenRequests).toBe(0);
  });

  it('ClientPool: close() resolves after its lock holder wrote the token and released the lock', async () => {
    const order: string[] = [];
    const gate = latch();
    const writing = latch();
    // a's token is written only once the gate opens: its refresh holds the lock until then.
    class Gated extends MemoryCache {
      override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (key === `wechat:access_token:${a.appId}`) {
          writing.open();
          await gate.promise;
        }
        return super.add(key, value, ttlSeconds);
      }
      override async deleteIfEquals(key: string, expected: string): Promise<boolean> {
        order.push(`release ${key}`);
        return super.deleteIfEquals(key, expected);
      }
    }
    const cache = new Gated();
    const { a, b, pool } = poolOfTwo(cache);
    const { asked, ref, lock } = await askedAndDropped(() => pool.get(a.appId));
    await writing.promise;
    await letGoOfA(() => pool.get(b.appId), ref);
    const closed = pool.close().then(() => order.push('closed'));
    // The gate opens on a timer of its own: close() cannot open it, nor wait for it unless it waits for the refresh.
    setTimeout(gate.open, 50);
    await closed;
    expect(order).toEqual([`release ${lock}`, 'closed']);
    expect(await cache.get(lock)).toBeUndefined();
    expect(asked.value).toEqual({ ok: await cache.get(`wechat:access_token:${a.appId}`).then((raw) => JSON.parse(raw!).access_token) });
    expect(mock.counters(a.appId).classicTokenRequests).toBe(1);
  });

  it('ClientPool: close() resolves after the report of the token WeChat rejected deleted it from the store', async () => {
    const order: string[] = [];
    const gate = latch();
    const deleting = latch();
    // The compare-and-delete of a's rejected token lands only once the gate opens.
    class Gated extends MemoryCache {
      override async deleteIfEquals(k: string, expected: string): Promise<boolean> {
        if (k === key) {
          deleting.open();
          await gate.promise;
          order.push('deleted');
        }
        return super.deleteIfEquals(k, expected);
      }
    }
    const cache = new Gated();
    const { a, b, pool } = poolOfTwo(cache);
    const key = `wechat:access_token:${a.appId}`;
    await (await pool.get(a.appId)).templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    mock.invalidateTokens(a.appId);
    // The caller holds its pending send, not the client.
    const { sent, ref } = await (async () => {
      const held = await pool.get(a.appId);
      return { sent: outcome(held.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} })), ref: new WeakRef(held) };
    })();
    await deleting.promise;
    await letGoOfA(() => pool.get(b.appId), ref);
    const closed = pool.close().then(() => order.push('closed'));
    // The gate opens on a timer of its own: close() cannot open it, nor wait for it unless it waits for the report.
    setTimeout(gate.open, 50);
    await closed;
    expect(order).toEqual(['deleted', 'closed']);
    expect(await cache.get(key)).toBeUndefined();
    await vi.waitFor(() => expect(sent.value).toMatchObject({ error: expect.any(TokenUnavailableError) }));
  });

  it('OpenPlatform: close() ends its wait for another process\'s lock', async () => {
    const component = mock.createComponent();
    const cache = new MemoryCache();
    const durable = new MemoryCache();
    await storeVerifyTicket(mock, component, durable);
    const [a, b] = mock.authorizeMany(component.appId, 2) as [MockAuthorizedAccount, MockAuthorizedAccount];
    const open = new OpenPlatform({ ...componentOptions(mock, component), cache, durableStore: durable, logger: false, maxClients: 1 });
    const adds = vi.spyOn(cache, 'add');
    const lockKey = `wechat:authorizer_access_token:${component.appId}:${a.authorizerAppId}:lock`;
    await cache.set(lockKey, 'elsewhere:1', 60);
    const { asked, ref, lock } = await askedAndDropped(async () => open.officialAccount(a.authorizerAppId));
    expect(lock).toBe(lockKey);
    await vi.waitFor(() => expect(adds.mock.calls.some(([key]) => key === lockKey)).toBe(true));
    await letGoOfA(() => open.officialAccount(b.authorizerAppId), ref);
    await open.close();
    await new Promise((resolve) => setImmediate(resolve));
    expect(asked.value).toMatchObject({ error: expect.any(TokenUnavailableError) });
    expect(mock.counters(a.authorizerAppId).authorizerTokenRequests).toBe(0);
  });
});

describe('many accounts through a small pool', () => {
  /** Weak references to a client and to its core, which the pool holds while a refresh or report of it is under way. */
  const refsOf = (client: object) => [new WeakRef(client), new WeakRef((client as unknown as { core: object }).core)];

  it('ClientPool: the clients it let go of, and their cores, are collected once their calls ended; only maxClients stay', async () => {
    const apps = Array.from({ length: 600 }, () => mock.createApp());
    const secrets = new Map(apps.map((app) => [app.appId, app.secret]));
    const pool = new ClientPool({ kind: 'officialAccount', credentials: (id) => ({ secret: secrets.get(id) }), baseUrl: mock.url, cache: new MemoryCache(), logger: false, maxClients: 20, tokenEndpoint: 'classic' });
    const refs: WeakRef<object>[] = [];
    await (async () => {
      for (const [i, app] of apps.entries()) {
        // Every tenth account's token is rejected at its send: the send recovers (a report, a refresh).
        if (i % 10 === 0) await (await pool.get(app.appId)).accessToken.getToken();
        if (i % 10 === 0) mock.invalidateTokens(app.appId);
        const client = await pool.get(app.appId);
        await client.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
        refs.push(...refsOf(client));
      }
    })();
    await collect();
    expect(pool.size).toBe(20);
    // The 20 held, each a client and its core.
    expect(refs.filter((ref) => ref.deref() !== undefined)).toHaveLength(40);
    expect(mock.counters(apps[0]!.appId)).toMatchObject({ classicTokenRequests: 2, templateSends: 1 });
    await pool.close();
  });

  it('OpenPlatform: the authorizer clients it let go of, and their cores, are collected; only maxClients stay', async () => {
    const component = mock.createComponent();
    const durable = new MemoryCache();
    await storeVerifyTicket(mock, component, durable);
    const open = new OpenPlatform({ ...componentOptions(mock, component), cache: new MemoryCache(), durableStore: durable, logger: false, maxClients: 5 });
    const accounts = mock.authorizeMany(component.appId, 60);
    const refs: WeakRef<object>[] = [];
    await (async () => {
      for (const { authorizerAppId } of accounts) {
        const client = open.officialAccount(authorizerAppId);
        await client.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
        refs.push(...refsOf(client));
      }
    })();
    await collect();
    expect(refs.filter((ref) => ref.deref() !== undefined)).toHaveLength(10);
    await open.close();
  });
});
