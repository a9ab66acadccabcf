import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OpenPlatform, type AuthorizerEvent, type AuthorizerRefreshTokenRecoveredEvent, type TokenCache } from '../src/index.js';
import { componentOptions, storeVerifyTicket } from './helpers.js';

// A refresh holder stalled past its lease (a long queue, a GC pause, a slow durable store) must not write
// its refresh token over the newer one of the holder that took over: WeChat rotated that token away, and
// the account would have to authorize again (61023 on every refresh until it is recovered).

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/**
 * The durable store as one process sees it: the final write of a refresh (a record without
 * `pending_since`) waits until `release()` once the gate is armed.
 */
class StallingStore implements TokenCache {
  armed = false;
  #blocked!: () => void;
  readonly blocked = new Promise<void>((resolve) => (this.#blocked = resolve));
  #release!: () => void;
  readonly #released = new Promise<void>((resolve) => (this.#release = resolve));

  constructor(private readonly inner: MemoryCache) {}

  release(): void {
    this.#release();
  }

  async #gate(value: string): Promise<void> {
    if (!this.armed || value.includes('pending_since')) return;
    this.armed = false;
    this.#blocked();
    await this.#released;
  }

  get(key: string) {
    return this.inner.get(key);
  }
  async set(key: string, value: string, ttlSeconds: number) {
    await this.#gate(value);
    return this.inner.set(key, value, ttlSeconds);
  }
  delete(key: string) {
    return this.inner.delete(key);
  }
  async add(key: string, value: string, ttlSeconds: number) {
    await this.#gate(value);
    return this.inner.add(key, value, ttlSeconds);
  }
  deleteIfEquals(key: string, expected: string) {
    return this.inner.deleteIfEquals(key, expected);
  }
  async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number) {
    await this.#gate(value);
    return this.inner.compareAndSet(key, expected, value, ttlSeconds);
  }
}

describe('a refresh holder stalled past its lease', () => {
  it('finds the record changed and leaves the newer refresh token in place; one 61023 in all', async () => {
    const component = mock.createComponent();
    const cache = new MemoryCache();
    const durable = new MemoryCache();
    const stalling = new StallingStore(durable);
    const platforms: OpenPlatform[] = [];
    const make = (durableStore: TokenCache) => {
      const open = new OpenPlatform({
        ...componentOptions(mock, component),
        cache,
        durableStore,
        fallbackDir: false,
        logger: false,
      });
      platforms.push(open);
      return open;
    };
    await storeVerifyTicket(mock, component, durable);
    const a = make(stalling);
    const b = make(durable);
    const { preAuthCode } = await a.createPreAuthCode();
    const { authorizerAppId: appId } = await a.handleAuthorization(mock.authorize(component.appId, { preAuthCode }).authorizationCode);
    const recordKey = `wechat:authorizer_refresh_token:${component.appId}:${appId}`;
    const tokenKey = `wechat:authorizer_access_token:${component.appId}:${appId}`;
    // The access token dies and leaves the cache: the next send refreshes with the refresh token.
    mock.invalidateTokens(appId);
    await cache.delete(tokenKey);

    const superseded: AuthorizerEvent[] = [];
    a.on('authorizer_refresh_token.superseded', (event) => superseded.push(event));
    const recovered: AuthorizerRefreshTokenRecoveredEvent[] = [];
    b.on('authorizer_refresh_token.recovered', (event) => recovered.push(event));

    // A: write-ahead, api_authorizer_token (WeChat rotates the refresh token), then stalls before its final write.
    stalling.armed = true;
    const send = (open: OpenPlatform) => open.officialAccount(appId).templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    const aSend = send(a).then(
      () => 'ok',
      (error: { code?: string }) => error.code,
    );
    await stalling.blocked;
    expect(mock.counters(appId).authorizerTokenRequests).toBe(1);
    // Its lease runs out: the lock is gone (as a lease that ends does), and B takes it.
    expect(await cache.get(`${tokenKey}:lock`)).toBeDefined();
    await cache.delete(`${tokenKey}:lock`);

    // B: the record is still marked with the token WeChat rotated away: 61023, recovery, a new rotation.
    await send(b);
    expect(recovered.map((event) => event.reason)).toEqual(['interrupted']);
    expect(mock.counters(appId).authorizerTokenRequests).toBe(3);
    const current = mock.authorizerRefreshToken(appId);
    expect(JSON.parse((await durable.get(recordKey))!).authorizer_refresh_token).toBe(current);

    // A resumes: its final write finds B's record and writes nothing; its send still goes out.
    stalling.release();
    expect(await aSend).toBe('ok');
    expect(superseded.map((event) => event.authorizerAppId)).toEqual([appId]);
    const record = JSON.parse((await durable.get(recordKey))!);
    expect(record.authorizer_refresh_token).toBe(current);
    expect(record.pending_since).toBeUndefined();

    // A third process refreshes with what the store holds: WeChat takes it, no 61023.
    mock.invalidateTokens(appId);
    await cache.delete(tokenKey);
    const c = make(durable);
    const cRecovered: AuthorizerRefreshTokenRecoveredEvent[] = [];
    c.on('authorizer_refresh_token.recovered', (event) => cRecovered.push(event));
    await send(c);
    expect(cRecovered).toEqual([]);
    expect(mock.counters(appId).authorizerTokenRequests).toBe(4);
    await Promise.all(platforms.map((open) => open.close()));
  });
});
