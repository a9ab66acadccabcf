import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { Agent, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { MemoryCache, OpenPlatform, wxJava, type AuthorizerAuthorizedEvent, type AuthorizerEvent, type AuthorizerRefreshTokenRecoveredEvent, type TokenCache } from '../src/index.js';
import { refreshOrigin } from '../src/open-platform/records.js';
import { componentOptions, storeVerifyTicket } from './helpers.js';

// An admin authorizes the component again (handleAuthorization: api_query_auth hands out a new refresh
// token, and the old one answers 61023 from then on) while another process is refreshing the same
// authorizer's access token. Whichever of the two writes the durable record first, the record must end
// holding the refresh token WeChat accepts: a stale one costs a 61023 at the next refresh, and one that
// cannot be had back costs the account a manual authorization. The mock knows which token is current.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/** A dispatcher that holds api_authorizer_token requests, before they reach WeChat, while it is closed. */
function gatedDispatcher() {
  const agent = new Agent();
  let open = true;
  let release = () => {};
  let released = Promise.resolve();
  let arrived = 0;
  const dispatch = agent.dispatch.bind(agent);
  agent.dispatch = (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) => {
    if (open || !String(options.path).includes('/cgi-bin/component/api_authorizer_token')) return dispatch(options, handler);
    arrived += 1;
    void released.then(() => dispatch(options, handler));
    return true;
  };
  return {
    agent,
    close() {
      open = false;
      released = new Promise<void>((resolve) => (release = resolve));
    },
    release() {
      open = true;
      release();
    },
    arrived: () => arrived,
  };
}

interface Hold {
  /** Resolves once a matching write has arrived and is held. */
  reached: Promise<void>;
  release(): void;
}

/**
 * The durable store as one process sees it: a write of the authorizer's refresh-token record that
 * matches an armed hold (its first match only) waits until the hold is released.
 */
class HoldingStore implements TokenCache {
  #hold: { match: (value: string) => boolean; reached: () => void; released: Promise<void> } | undefined;

  constructor(private readonly inner: MemoryCache) {}

  hold(match: (value: string) => boolean): Hold {
    let reached!: () => void;
    let release!: () => void;
    const hold: Hold = { reached: new Promise<void>((resolve) => (reached = resolve)), release: () => release() };
    this.#hold = { match, reached, released: new Promise<void>((resolve) => (release = resolve)) };
    return hold;
  }

  async #gate(key: string, value: string): Promise<void> {
    const hold = this.#hold;
    if (!hold || !key.includes(':authorizer_refresh_token:') || !hold.match(value)) return;
    this.#hold = undefined;
    hold.reached();
    await hold.released;
  }

  get(key: string) {
    return this.inner.get(key);
  }
  async set(key: string, value: string, ttlSeconds: number) {
    await this.#gate(key, value);
    return this.inner.set(key, value, ttlSeconds);
  }
  delete(key: string) {
    return this.inner.delete(key);
  }
  async add(key: string, value: string, ttlSeconds: number) {
    await this.#gate(key, value);
    return this.inner.add(key, value, ttlSeconds);
  }
  deleteIfEquals(key: string, expected: string) {
    return this.inner.deleteIfEquals(key, expected);
  }
  async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number) {
    await this.#gate(key, value);
    return this.inner.compareAndSet(key, expected, value, ttlSeconds);
  }
}

/** A record that is no write-ahead: the final write of a refresh, or an authorization's. */
const settledRecord = (value: string) => !value.includes('pending_since');
const writeAhead = (value: string) => value.includes('pending_since');

const outcome = (promise: Promise<unknown>) =>
  promise.then(
    () => 'ok',
    (error: { code?: string }) => error.code ?? String(error),
  );

/**
 * Two processes on one cache and one durable store: `refresher`, whose api_authorizer_token calls can be
 * held at the gate and whose record writes can be held in its view of the store, and `admin`, which
 * completes authorizations and whose record writes can be held too. One account authorized, its access
 * token gone, so the refresher's next send refreshes; or (`authorized: false`) one whose admin has just
 * approved the component at WeChat, the authorization code not yet taken (`firstCode`).
 */
async function scenario({ authorized = true, refresherClockAheadMs = 0 } = {}) {
  const component = mock.createComponent();
  const cache = new MemoryCache();
  const durable = new MemoryCache();
  const gate = gatedDispatcher();
  const refresherStore = new HoldingStore(durable);
  const adminStore = new HoldingStore(durable);
  const platforms: OpenPlatform[] = [];
  const make = (durableStore: TokenCache, dispatcher?: Dispatcher, now?: () => number) => {
    const open = new OpenPlatform({
      ...componentOptions(mock, component),
      cache,
      durableStore,
      fallbackDir: false,
      logger: false,
      ...(dispatcher ? { dispatcher } : {}),
      ...(now ? { now } : {}),
    });
    platforms.push(open);
    return open;
  };
  await storeVerifyTicket(mock, component, durable);
  const refresher = make(refresherStore, gate.agent, refresherClockAheadMs ? () => Date.now() + refresherClockAheadMs : undefined);
  const admin = make(adminStore);
  const { preAuthCode } = await admin.createPreAuthCode();
  const grant = mock.authorize(component.appId, { preAuthCode });
  const appId = grant.authorizerAppId;
  if (authorized) await admin.handleAuthorization(grant.authorizationCode);
  const recordKey = `wechat:authorizer_refresh_token:${component.appId}:${appId}`;
  const tokenKey = `wechat:authorizer_access_token:${component.appId}:${appId}`;
  // The access token dies and leaves the cache: the refresher's next send refreshes with the refresh token.
  mock.invalidateTokens(appId);
  await cache.delete(tokenKey);
  const superseded: AuthorizerEvent[] = [];
  refresher.on('authorizer_refresh_token.superseded', (event) => superseded.push(event));
  const recovered: AuthorizerRefreshTokenRecoveredEvent[] = [];
  refresher.on('authorizer_refresh_token.recovered', (event) => recovered.push(event));

  const send = (open: OpenPlatform) => open.officialAccount(appId).templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
  const record = async () => JSON.parse((await durable.get(recordKey))!) as Record<string, unknown>;
  const accessToken = async () => (JSON.parse((await cache.get(tokenKey))!) as { access_token: string }).access_token;
  return {
    appId,
    firstCode: grant.authorizationCode,
    gate,
    refresherStore,
    adminStore,
    refresher,
    admin,
    superseded,
    recovered,
    record,
    /** The authorizer access token the cache holds. */
    accessToken,
    /** The refresher's send, its outcome ('ok' or the error's code). */
    refresherSends: () => outcome(send(refresher)),
    /** The account's admin authorizes again at WeChat: the code for api_query_auth, and the refresh token it hands out. */
    reauthorize() {
      const code = mock.authorize(component.appId, { authorizerAppId: appId }).authorizationCode;
      return { code, refreshToken: mock.authorizerRefreshToken(appId)! };
    },

    /**
     * After both: the record holds the refresh token WeChat accepts, unmarked; the account is still
     * authorized; every process serves an access token WeChat accepts; and the next refresh, by a process
     * that knows only the store, is taken by WeChat at once (no 61023, nothing recovered).
     */
    async check() {
      const current = mock.authorizerRefreshToken(appId);
      expect(current).toBeDefined();
      const stored = await record();
      expect(stored.authorizer_refresh_token).toBe(current);
      expect(stored.pending_since).toBeUndefined();
      for (const open of [refresher, admin, make(durable)]) {
        const token = await open.officialAccount(appId).accessToken.getToken();
        expect(mock.isTokenValid(appId, token)).toBe(true);
      }
      const before = mock.counters(appId);
      mock.invalidateTokens(appId);
      await cache.delete(tokenKey);
      const next = make(durable);
      const nextRecovered: AuthorizerRefreshTokenRecoveredEvent[] = [];
      next.on('authorizer_refresh_token.recovered', (event) => nextRecovered.push(event));
      await send(next);
      expect(nextRecovered).toEqual([]);
      const after = mock.counters(appId);
      expect(after.authorizerTokenRequests).toBe(before.authorizerTokenRequests + 1);
      expect(after.errcodes['61023'] ?? 0).toBe(before.errcodes['61023'] ?? 0);
      expect(after.templateSends).toBe(before.templateSends + 1);
      expect((await record()).authorizer_refresh_token).toBe(mock.authorizerRefreshToken(appId));
    },
    close: () => Promise.all([...platforms.map((open) => open.close()), gate.agent.close()]),
  };
}

describe('handleAuthorization while another process refreshes the same authorizer', () => {
  describe('WeChat took the re-authorization first; the refresh call, held until then, answers 61023', () => {
    it("the authorization's write lands first: the refresher goes on with the token it wrote, which WeChat names current", async () => {
      const s = await scenario();
      s.gate.close();
      const refreshed = s.refresherSends();
      // The refresher wrote its write-ahead and its call waits at the gate.
      await vi.waitFor(() => expect(s.gate.arrived()).toBe(1));
      expect(await s.record()).toMatchObject({ pending_since: expect.any(Number) });
      const granted = s.reauthorize();
      await s.admin.handleAuthorization(granted.code);
      expect(await s.record()).toMatchObject({ authorizer_refresh_token: granted.refreshToken, origin: refreshOrigin(granted.refreshToken) });
      // 61023 for the old token; api_get_authorizer_info names the authorization's, which the record
      // holds unmarked: the refresher marks it, refreshes with it, and stores the rotation.
      s.gate.release();
      expect(await refreshed).toBe('ok');
      expect(s.recovered.map((event) => event.reason)).toEqual(['rejected']);
      expect(s.superseded).toEqual([]);
      expect(mock.counters(s.appId)).toMatchObject({ authorizerTokenRequests: 2, errcodes: { '61023': 1 } });
      expect(await s.record()).toMatchObject({ origin: refreshOrigin(granted.refreshToken) });
      await s.check();
      await s.close();
    });

    it("the refresher's write lands first: it recovered the authorization's token and rotated it; the authorization does not put the old one back", async () => {
      const s = await scenario();
      s.gate.close();
      const refreshed = s.refresherSends();
      await vi.waitFor(() => expect(s.gate.arrived()).toBe(1));
      // api_query_auth answered; the authorization's record write waits.
      const adminHeld = s.adminStore.hold(settledRecord);
      const granted = s.reauthorize();
      const authorized = outcome(s.admin.handleAuthorization(granted.code));
      await adminHeld.reached;
      // 61023 for the old token, the current one from api_get_authorizer_info, a rotation, the final write.
      s.gate.release();
      expect(await refreshed).toBe('ok');
      expect(s.recovered.map((event) => event.reason)).toEqual(['rejected']);
      expect(mock.counters(s.appId)).toMatchObject({ authorizerTokenRequests: 2, errcodes: { '61023': 1 } });
      expect(mock.authorizerRefreshToken(s.appId)).not.toBe(granted.refreshToken);
      expect(await s.record()).toMatchObject({ authorizer_refresh_token: mock.authorizerRefreshToken(s.appId), origin: refreshOrigin(granted.refreshToken) });
      adminHeld.release();
      expect(await authorized).toBe('ok');
      expect(s.superseded).toEqual([]);
      await s.check();
      await s.close();
    });

    it("the authorization's write lands between the refresher's write-ahead and its final write: the rotation is kept", async () => {
      const s = await scenario();
      s.gate.close();
      const refreshed = s.refresherSends();
      await vi.waitFor(() => expect(s.gate.arrived()).toBe(1));
      const adminHeld = s.adminStore.hold(settledRecord);
      const granted = s.reauthorize();
      const authorized = outcome(s.admin.handleAuthorization(granted.code));
      await adminHeld.reached;
      // The refresher recovers the authorization's token, marks it, WeChat rotates it, and the refresher's
      // final write waits; then the authorization's write lands, on a record marked with its own token.
      const refresherHeld = s.refresherStore.hold(settledRecord);
      s.gate.release();
      await refresherHeld.reached;
      expect(mock.counters(s.appId).authorizerTokenRequests).toBe(2);
      expect(await s.record()).toMatchObject({ authorizer_refresh_token: granted.refreshToken, pending_since: expect.any(Number) });
      adminHeld.release();
      expect(await authorized).toBe('ok');
      refresherHeld.release();
      expect(await refreshed).toBe('ok');
      expect(s.superseded).toEqual([]);
      await s.check();
      await s.close();
    });
  });

  describe('WeChat rotated the token for the refresh first; the re-authorization came after', () => {
    it("the authorization's write lands first: the refresher's final write finds the record changed and leaves it", async () => {
      const s = await scenario();
      const refresherHeld = s.refresherStore.hold(settledRecord);
      const refreshed = s.refresherSends();
      // WeChat rotated the refresh token for the refresher; its final write waits.
      await refresherHeld.reached;
      expect(mock.counters(s.appId).authorizerTokenRequests).toBe(1);
      const granted = s.reauthorize();
      await s.admin.handleAuthorization(granted.code);
      refresherHeld.release();
      expect(await refreshed).toBe('ok');
      expect(s.superseded.map((event) => event.authorizerAppId)).toEqual([s.appId]);
      expect(await s.record()).toMatchObject({ authorizer_refresh_token: granted.refreshToken });
      expect(mock.counters(s.appId).errcodes['61023']).toBeUndefined();
      await s.check();
      await s.close();
    });

    it("the refresher's write lands first: the authorization's token replaces it", async () => {
      const s = await scenario();
      const refresherHeld = s.refresherStore.hold(settledRecord);
      const refreshed = s.refresherSends();
      await refresherHeld.reached;
      const adminHeld = s.adminStore.hold(settledRecord);
      const granted = s.reauthorize();
      const authorized = outcome(s.admin.handleAuthorization(granted.code));
      await adminHeld.reached;
      refresherHeld.release();
      expect(await refreshed).toBe('ok');
      expect(s.superseded).toEqual([]);
      adminHeld.release();
      expect(await authorized).toBe('ok');
      expect(await s.record()).toMatchObject({ authorizer_refresh_token: granted.refreshToken });
      expect(mock.counters(s.appId).errcodes['61023']).toBeUndefined();
      await s.check();
      await s.close();
    });
  });

  describe("the account's first authorization, while a client already refreshes it (no record: the token from api_get_authorizer_info)", () => {
    it("the refresher's write lands first: the authorization does not put back the token WeChat rotated away", async () => {
      const s = await scenario({ authorized: false });
      const granted = mock.authorizerRefreshToken(s.appId)!;
      const adminHeld = s.adminStore.hold(settledRecord);
      const authorized = outcome(s.admin.handleAuthorization(s.firstCode));
      await adminHeld.reached;
      expect(await s.refresherSends()).toBe('ok');
      expect(s.recovered.map((event) => event.reason)).toEqual(['missing']);
      expect(mock.counters(s.appId).authorizerTokenRequests).toBe(1);
      expect(await s.record()).toMatchObject({ authorizer_refresh_token: mock.authorizerRefreshToken(s.appId), origin: refreshOrigin(granted) });
      adminHeld.release();
      expect(await authorized).toBe('ok');
      await s.check();
      await s.close();
    });

    it("the authorization's write lands first: the refresher's write-ahead finds it and goes on with the same token", async () => {
      const s = await scenario({ authorized: false });
      const granted = mock.authorizerRefreshToken(s.appId)!;
      // The refresher took the token from api_get_authorizer_info; its write-ahead (an add) waits.
      const refresherHeld = s.refresherStore.hold(writeAhead);
      const refreshed = s.refresherSends();
      await refresherHeld.reached;
      expect(await s.admin.handleAuthorization(s.firstCode)).toMatchObject({ authorizerAppId: s.appId });
      expect(await s.record()).toMatchObject({ authorizer_refresh_token: granted });
      refresherHeld.release();
      expect(await refreshed).toBe('ok');
      expect(s.superseded).toEqual([]);
      expect(mock.counters(s.appId).authorizerTokenRequests).toBe(1);
      expect(await s.record()).toMatchObject({ origin: refreshOrigin(granted) });
      await s.check();
      await s.close();
    });
  });

  describe('the access token api_query_auth hands out', () => {
    it('does not replace one a refresh fetched after it, which landed first', async () => {
      // The refresher's clock runs 2 s ahead, so that its fetch is dated later than api_query_auth
      // whatever second both fall in (the entries are dated to the second).
      const s = await scenario({ refresherClockAheadMs: 2_000 });
      const authorizedEvents: AuthorizerAuthorizedEvent[] = [];
      s.admin.on('authorizer.authorized', (event) => authorizedEvents.push(event));
      const adminHeld = s.adminStore.hold(settledRecord);
      const granted = s.reauthorize();
      const authorized = outcome(s.admin.handleAuthorization(granted.code));
      // api_query_auth answered; its record write, and so its access-token write, wait.
      await adminHeld.reached;
      expect(await s.refresherSends()).toBe('ok');
      const refreshed = await s.accessToken();
      expect(await s.refresher.officialAccount(s.appId).accessToken.getToken()).toBe(refreshed);
      adminHeld.release();
      expect(await authorized).toBe('ok');
      expect(await s.accessToken()).toBe(refreshed);
      expect(authorizedEvents).toEqual([expect.objectContaining({ authorizerAppId: s.appId, stored: false, keptNewer: true })]);
      await s.check();
      await s.close();
    });
  });
});

describe('two authorizations of one account, completed in the other order', () => {
  /**
   * The admin authorizes: api_query_auth hands out the first token, and its write waits. The admin
   * authorizes once more, completed on the other host (`options`: its clock): the first token answers 61023
   * from then on, and the later authorization stores the second one. Then the first write lands.
   */
  async function laterLandsFirst(options: Parameters<typeof scenario>[0] = {}) {
    const s = await scenario(options);
    const first = s.reauthorize();
    const held = s.adminStore.hold(settledRecord);
    const earlier = outcome(s.admin.handleAuthorization(first.code));
    await held.reached;
    const second = s.reauthorize();
    expect(second.refreshToken).not.toBe(first.refreshToken);
    expect(await outcome(s.refresher.handleAuthorization(second.code))).toBe('ok');
    held.release();
    expect(await earlier).toBe('ok');
    await s.check();
    await s.close();
  }

  it("the earlier one, whose write lands last, does not put back the refresh token the later one replaced", async () => {
    await laterLandsFirst();
  });

  it("nor when the later one's host runs 2 minutes behind (its record's updated_at on that clock)", async () => {
    await laterLandsFirst({ refresherClockAheadMs: -120_000 });
  });
});

describe('two authorizations of one account, completed in the other order, under a peer layout (WxJava: bare records)', () => {
  it('the earlier one does not put back the refresh token the later one replaced', async () => {
    const component = mock.createComponent();
    const cache = new MemoryCache();
    const durable = new MemoryCache();
    // The admin's view of the durable store: its next write of `gated` waits until released.
    let gated: string | undefined;
    let reached!: () => void;
    let release!: () => void;
    const atGate = new Promise<void>((resolve) => (reached = resolve));
    const released = new Promise<void>((resolve) => (release = resolve));
    const gate = async (key: string) => {
      if (key !== gated) return;
      gated = undefined;
      reached();
      await released;
    };
    const adminStore: TokenCache = {
      get: (key) => durable.get(key),
      set: async (key, value, ttl) => (await gate(key), durable.set(key, value, ttl)),
      delete: (key) => durable.delete(key),
      add: async (key, value, ttl) => (await gate(key), durable.add(key, value, ttl)),
      deleteIfEquals: (key, expected) => durable.deleteIfEquals(key, expected),
      compareAndSet: async (key, expected, value, ttl) => (await gate(key), durable.compareAndSet(key, expected, value, ttl)),
    };
    await durable.set(`wechat_component_verify_ticket:${component.appId}`, mock.issueVerifyTicket(component.appId), 3600);
    const make = (durableStore: TokenCache) =>
      new OpenPlatform({ ...componentOptions(mock, component), cache, durableStore, schema: wxJava(), fallbackDir: false, logger: false });
    const admin = make(adminStore);
    const other = make(durable);
    const { preAuthCode } = await admin.createPreAuthCode();
    const grant = mock.authorize(component.appId, { preAuthCode });
    const appId = grant.authorizerAppId;
    await admin.handleAuthorization(grant.authorizationCode);
    const recordKey = `wechat_authorizer_refresh_token:${component.appId}:${appId}`;
    expect(await durable.get(recordKey)).toBe(mock.authorizerRefreshToken(appId));
    // The admin authorizes again; the write of the token api_query_auth handed out waits. It authorizes
    // once more, completed by another process: the first token answers 61023 from now on.
    gated = recordKey;
    const earlier = outcome(admin.handleAuthorization(mock.authorize(component.appId, { authorizerAppId: appId }).authorizationCode));
    await atGate;
    expect(await outcome(other.handleAuthorization(mock.authorize(component.appId, { authorizerAppId: appId }).authorizationCode))).toBe('ok');
    expect(await durable.get(recordKey)).toBe(mock.authorizerRefreshToken(appId));
    release();
    expect(await earlier).toBe('ok');
    expect(await durable.get(recordKey)).toBe(mock.authorizerRefreshToken(appId));
    await Promise.all([admin.close(), other.close()]);
  });
});
