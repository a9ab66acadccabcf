import { startMockWeChat, type MockAuthorizedAccount, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientPool, MemoryCache, OpenPlatform, type ClientPoolOptions, type OfficialAccount } from '../src/index.js';
import { DroppedRefusals } from '../src/clients/client-lru.js';
import { collect, componentOptions, deferred, holdingDispatcher, storeVerifyTicket } from './helpers.js';

// A pooled client unused past clientIdleMs is dropped when its own account is asked for next, and a new
// one is made: what a caller still holding the old one, and the old one's work under way, come to.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

const closers: { close(): Promise<void> }[] = [];
afterAll(async () => {
  await Promise.all(closers.map((each) => each.close()));
});

const send = (client: OfficialAccount) => client.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
/** What a send came to: `ok`, or the errcode it failed with. */
const outcome = (sending: Promise<unknown>) => sending.then(() => 'ok', (error: { errcode?: number }) => error.errcode);

/** A pool of one account on a clock the test moves, with room for many; `calls` counts the resolver's calls. */
function poolOfOne(extra: Partial<ClientPoolOptions<'officialAccount'>> = {}, secret?: () => string) {
  const app = mock.createApp();
  const calls: string[] = [];
  const clock = { now: Date.now() };
  const pool = new ClientPool({
    kind: 'officialAccount',
    credentials: (id) => {
      calls.push(id);
      return { secret: secret ? secret() : app.secret };
    },
    baseUrl: mock.url,
    cache: new MemoryCache(),
    logger: false,
    clientIdleMs: 60_000,
    tokenEndpoint: 'classic',
    now: () => clock.now,
    ...extra,
  });
  closers.push(pool);
  return { app, pool, calls, clock };
}

describe('ClientPool: the client of an idle account, asked for again', () => {
  it('a caller still holding the client its account was made anew for sends on it: no send lost, no token fetched again', async () => {
    const { app, pool, calls, clock } = poolOfOne();
    const held = await pool.get(app.appId);
    await send(held);
    clock.now += 60_001;
    const again = await pool.get(app.appId);
    expect(again).not.toBe(held);
    const results = await Promise.allSettled([send(held), send(again), send(held)]);
    expect(results.filter((result) => result.status === 'rejected')).toEqual([]);
    expect(calls).toHaveLength(2);
    expect(mock.counters(app.appId)).toMatchObject({ classicTokenRequests: 1, templateSends: 4 });
  });

  it('a fetch under way on the old client when its account is made anew: the new one waits for it, one fetch, the lock released', async () => {
    const gate = deferred();
    const writing = deferred();
    let key = '';
    // The old client's fetched token is written only once the gate opens: its refresh holds the lock until then.
    class Gated extends MemoryCache {
      override async add(at: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (at === key) {
          writing.resolve();
          await gate.promise;
        }
        return super.add(at, value, ttlSeconds);
      }
    }
    const cache = new Gated();
    const { app, pool, calls, clock } = poolOfOne({ cache });
    key = `wechat:access_token:${app.appId}`;
    const old = await pool.get(app.appId);
    const first = old.accessToken.getToken();
    await writing.promise;
    clock.now += 60_001;
    const made = await pool.get(app.appId);
    expect(made).not.toBe(old);
    const second = made.accessToken.getToken();
    gate.resolve();
    const [a, b] = await Promise.all([first, second]);
    expect(b).toBe(a);
    expect(calls).toHaveLength(2);
    expect(mock.counters(app.appId).classicTokenRequests).toBe(1);
    expect(await cache.get(`${key}:lock`)).toBeUndefined();
  });

  it('concurrent get() of an idle account: one resolver call, one new client', async () => {
    const { app, pool, calls, clock } = poolOfOne();
    const first = await pool.get(app.appId);
    clock.now += 60_001;
    const clients = await Promise.all(Array.from({ length: 20 }, () => pool.get(app.appId)));
    expect(new Set(clients).size).toBe(1);
    expect(clients[0]).not.toBe(first);
    expect(calls).toHaveLength(2);
  });

  it('a client idle past clientIdleMs is made anew though one used before it stays, on a clock set back meanwhile', async () => {
    const [a, b] = [mock.createApp(), mock.createApp()];
    const secrets = new Map([a, b].map((app) => [app.appId, app.secret]));
    const calls: string[] = [];
    let now = Date.now();
    const pool = new ClientPool({
      kind: 'officialAccount',
      credentials: (id) => (calls.push(id), { secret: secrets.get(id) }),
      baseUrl: mock.url,
      cache: new MemoryCache(),
      logger: false,
      clientIdleMs: 60_000,
      now: () => now,
    });
    closers.push(pool);
    await pool.get(a.appId);
    now -= 10_000; // the clock is set back
    const first = await pool.get(b.appId);
    now += 60_001; // b's client unused past clientIdleMs; a's used 50,001 ms ago on this clock
    expect(await pool.get(b.appId)).not.toBe(first);
    expect(calls).toEqual([a.appId, b.appId, b.appId]);
  });

  it('a get() whose signal is already aborted lets go of nothing: the idle client is still the one a later get() finds idle', async () => {
    const { app, pool, calls, clock } = poolOfOne();
    await pool.get(app.appId);
    clock.now += 60_001;
    const aborted = AbortSignal.abort(new Error('gone'));
    await expect(pool.get(app.appId, { signal: aborted })).rejects.toThrow('gone');
    expect(pool.size).toBe(1);
    expect(calls).toHaveLength(1);
  });

  it('a secret WeChat refused, on a client idle past clientIdleMs: the client made anew costs one resolver call, not one more at the next get()', async () => {
    const { app, pool, calls, clock } = poolOfOne({ clientIdleMs: 1000 }, () => 'a-wrong-secret-0123456789abcdef');
    expect(await outcome(send(await pool.get(app.appId)))).toBe(40125);
    clock.now += 1001;
    const results: unknown[] = [];
    for (let i = 0; i < 3; i += 1) results.push(await outcome(send(await pool.get(app.appId))));
    expect(results).toEqual([40125, 40125, 40125]);
    // The first client's, then the one made anew once idle; the fleet's back-off holds the refused secret.
    expect(calls).toHaveLength(2);
    // Idle once more: the client made anew for that failure hands it on, though it was not refused itself.
    clock.now += 1001;
    for (let i = 0; i < 2; i += 1) results.push(await outcome(send(await pool.get(app.appId))));
    expect(results).toEqual([40125, 40125, 40125, 40125, 40125]);
    expect(calls).toHaveLength(3);
    expect(mock.counters(app.appId).tokenRequests).toBe(1);
  });

  /**
   * A pool of two accounts on a clock the test moves: `refused`, whose record holds a secret WeChat
   * refuses (what `record.answer()` gives, which a test may change), and `other`, whose record is right.
   * `calls` counts the resolver's calls per account.
   */
  function poolOfTwo(extra: Partial<ClientPoolOptions<'officialAccount'>> = {}) {
    const [refused, other] = [mock.createApp(), mock.createApp()];
    const calls = { refused: 0, other: 0 };
    const clock = { now: Date.now() };
    const record = { answer: (): { secret: string } => ({ secret: 'a-wrong-secret-0123456789abcdef' }) };
    const pool = new ClientPool({
      kind: 'officialAccount',
      credentials: (id) => {
        if (id === refused.appId) return (calls.refused += 1), record.answer();
        return (calls.other += 1), { secret: other.secret };
      },
      baseUrl: mock.url,
      cache: new MemoryCache(),
      logger: false,
      clientIdleMs: 1000,
      tokenEndpoint: 'classic',
      now: () => clock.now,
      ...extra,
    });
    closers.push(pool);
    return { refused, other, pool, calls, clock, record };
  }

  /**
   * Three get() and sends of the refused account after its client was dropped: refused each time, for one
   * resolver call in all beyond the first client's (the client made anew), and no token request beyond
   * the first: the fleet's back-off holds the refused secret.
   */
  async function expectOneMoreCall(pool: ClientPool<'officialAccount'>, appId: string, calls: { refused: number }) {
    const results: unknown[] = [];
    for (let i = 0; i < 3; i += 1) results.push(await outcome(send(await pool.get(appId))));
    expect(results).toEqual([40125, 40125, 40125]);
    expect(calls.refused).toBe(2);
    expect(mock.counters(appId).tokenRequests).toBe(1);
  }

  it("a refused secret's client swept as idle by another account's get(): the account's next client costs one resolver call, not one more at the get() after", async () => {
    const { refused, other, pool, calls, clock } = poolOfTwo();
    expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    clock.now += 1001;
    // The other account's get() drops the refused account's idle client, not that account's own get().
    expect(await outcome(send(await pool.get(other.appId)))).toBe('ok');
    expect(pool.size).toBe(1);
    await expectOneMoreCall(pool, refused.appId, calls);
  });

  it("a refused secret's client dropped beyond maxClients by another account's get(): the same, one resolver call for the client made anew", async () => {
    const { refused, other, pool, calls } = poolOfTwo({ maxClients: 1 });
    expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    expect(await outcome(send(await pool.get(other.appId)))).toBe('ok');
    expect(pool.size).toBe(1);
    await expectOneMoreCall(pool, refused.appId, calls);
  });

  it("a refused secret's client dropped, then the account's record fixed: the next get() takes the new secret and sends, the kept refusal no hold on it", async () => {
    const { refused, other, pool, calls, clock, record } = poolOfTwo();
    expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    clock.now += 1001;
    await pool.get(other.appId);
    record.answer = () => ({ secret: refused.secret });
    for (let i = 0; i < 2; i += 1) expect(await outcome(send(await pool.get(refused.appId)))).toBe('ok');
    // The fleet's back-off holds the refused secret only: the new one is fetched at once, once.
    expect(calls.refused).toBe(2);
    expect(mock.counters(refused.appId).tokenRequests).toBe(2);
  });

  it("a refused secret's client dropped, then concurrent get() of the account: one client takes the refusal, one resolver call", async () => {
    const { refused, other, pool, calls, clock } = poolOfTwo();
    expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    clock.now += 1001;
    await pool.get(other.appId);
    const clients = await Promise.all(Array.from({ length: 5 }, () => pool.get(refused.appId)));
    expect(new Set(clients).size).toBe(1);
    expect(await Promise.all(clients.map((client) => outcome(send(client))))).toEqual(Array(5).fill(40125));
    for (let i = 0; i < 2; i += 1) expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    expect(calls.refused).toBe(2);
    expect(mock.counters(refused.appId).tokenRequests).toBe(1);
  });

  /**
   * The resolver fails the refused account's next get(); then three get() and sends are refused, for 3
   * resolver calls in all (the first client's, the failed one, the one made anew: none more for the
   * fleet's same refusal) and one token request.
   */
  async function expectRefusalThroughFailedCall(pool: ClientPool<'officialAccount'>, appId: string, calls: { refused: number }, record: { answer: unknown }) {
    const answer = record.answer;
    record.answer = () => {
      throw new Error('the database is down');
    };
    await expect(pool.get(appId)).rejects.toMatchObject({ code: 'ERR_WXKIT_CREDENTIALS', reason: 'failed' });
    record.answer = answer;
    const results: unknown[] = [];
    for (let i = 0; i < 3; i += 1) results.push(await outcome(send(await pool.get(appId))));
    expect(results).toEqual([40125, 40125, 40125]);
    expect(calls.refused).toBe(3);
    expect(mock.counters(appId).tokenRequests).toBe(1);
  }

  it("a refused secret's client dropped, then a resolver call that fails: the client made after it takes the refusal over all the same", async () => {
    const { refused, other, pool, calls, clock, record } = poolOfTwo();
    expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    clock.now += 1001;
    await pool.get(other.appId);
    await expectRefusalThroughFailedCall(pool, refused.appId, calls, record);
  });

  it("a held client whose secret WeChat refused, then a resolver call that fails: the same, the refusal is not lost with the call", async () => {
    const { refused, pool, calls, record } = poolOfTwo();
    expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    await expectRefusalThroughFailedCall(pool, refused.appId, calls, record);
  });

  it('a refusal kept through a failed resolver call is forgotten by delete(id) made during that call', async () => {
    const { refused, pool, calls, record } = poolOfTwo();
    expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    const answer = record.answer;
    const failing = deferred();
    // The resolver answers (with its failure) once delete() came.
    record.answer = (() => failing.promise.then(() => Promise.reject(new Error('the database is down')))) as never;
    const getting = pool.get(refused.appId);
    const deleting = pool.delete(refused.appId);
    failing.resolve();
    await expect(getting).rejects.toBeDefined();
    await deleting;
    record.answer = answer;
    // delete(): nothing carried over, as after delete() of a held client; the fleet's refusal read as news.
    for (let i = 0; i < 2; i += 1) expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    expect(calls.refused).toBe(4);
  });

  it("delete(id) forgets the refusal a dropped client saw: the client made after it takes the fleet's refusal as news, and the next get() asks again", async () => {
    const { refused, other, pool, calls, clock } = poolOfTwo();
    expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    clock.now += 1001;
    await pool.get(other.appId);
    await pool.delete(refused.appId);
    for (let i = 0; i < 2; i += 1) expect(await outcome(send(await pool.get(refused.appId)))).toBe(40125);
    // As after delete() of a held client: the record was said to have changed, so nothing is carried over.
    expect(calls.refused).toBe(3);
    expect(mock.counters(refused.appId).tokenRequests).toBe(1);
  });

  it('an account asked for after each idle period, 300 times: the clients made anew are collected', async () => {
    const { app, pool, calls, clock } = poolOfOne();
    const refs: WeakRef<object>[] = [];
    await (async () => {
      for (let i = 0; i < 300; i += 1) {
        const client = await pool.get(app.appId);
        await send(client);
        refs.push(new WeakRef(client));
        clock.now += 60_001;
      }
    })();
    await collect();
    expect(calls).toHaveLength(300);
    // Only the one held.
    expect(refs.filter((ref) => ref.deref() !== undefined)).toHaveLength(1);
  });
});

describe('the refusals a pool keeps for the clients its sweep dropped', () => {
  it('stay at most max for 10,000 accounts, the latest kept; each is handed out once', () => {
    const refusals = new DroppedRefusals({ max: 1000, lifeMs: 60_000, now: () => 0 });
    for (let i = 0; i < 10_500; i += 1) refusals.keep(`wx${i}`, i);
    expect(refusals.size).toBe(1000);
    expect(refusals.take('wx0')).toBeUndefined();
    expect(refusals.take('wx9499')).toBeUndefined();
    expect(refusals.take('wx9500')).toBe(9500);
    expect(refusals.take('wx9500')).toBeUndefined();
    expect(refusals.take('wx10499')).toBe(10_499);
    expect(refusals.size).toBe(998);
  });

  it('stay at most max on a clock that goes back and forth', () => {
    let now = 1e9;
    const refusals = new DroppedRefusals({ max: 100, lifeMs: 60_000, now: () => now });
    for (let i = 0; i < 10_000; i += 1) {
      refusals.keep(`wx${i}`, i);
      now += i % 2 === 0 ? -70_000 : 50_000;
      expect(refusals.size).toBeLessThanOrEqual(100);
    }
  });

  it('keep nothing for a client that saw no refusal, and expire lifeMs after they were kept', () => {
    let now = 0;
    const refusals = new DroppedRefusals({ max: 1000, lifeMs: 60_000, now: () => now });
    refusals.keep('wxnone', undefined);
    expect(refusals.size).toBe(0);
    for (let i = 0; i < 10; i += 1) refusals.keep(`wx${i}`, i);
    now = 59_999;
    expect(refusals.take('wx0')).toBe(0);
    now = 60_000;
    expect(refusals.take('wx1')).toBeUndefined();
    // Those expired are forgotten when another is kept, though nobody asks for them.
    refusals.keep('wxlater', 7);
    expect(refusals.size).toBe(1);
    refusals.forget('wxlater');
    expect(refusals.take('wxlater')).toBeUndefined();
  });
});

describe('OpenPlatform: the authorizer client of an idle account, asked for again', () => {
  async function platform(extra: Record<string, unknown> = {}) {
    const component = mock.createComponent();
    const durable = new MemoryCache();
    await storeVerifyTicket(mock, component, durable);
    const [account] = mock.authorizeMany(component.appId, 1) as [MockAuthorizedAccount];
    const open = new OpenPlatform({ ...componentOptions(mock, component), cache: new MemoryCache(), durableStore: durable, logger: false, clientIdleMs: 1, ...extra });
    closers.push(open);
    const recordKey = `wechat:authorizer_refresh_token:${component.appId}:${account.authorizerAppId}`;
    const stored = async () => (JSON.parse((await durable.get(recordKey))!) as { authorizer_refresh_token: string }).authorizer_refresh_token;
    return { open, appId: account.authorizerAppId, stored };
  }

  /** Lets clientIdleMs (1 ms) pass on the platform's clock. */
  const idle = () => {
    const start = performance.now();
    while (performance.now() - start < 2);
  };

  it('an authorizer refresh under way on the old client (refresh token rotated): the new client waits for it; one refresh, the rotated token stored', async () => {
    const held = holdingDispatcher('cgi-bin/component/api_authorizer_token');
    const { open, appId, stored } = await platform({ dispatcher: held.agent });
    const old = open.officialAccount(appId);
    const first = old.accessToken.getToken();
    const fetched: (string | undefined)[] = [];
    open.on('authorizer_access_token.fetched', (event) => fetched.push(event.appId));
    // The component's token first, then the authorizer's refresh, which the dispatcher holds.
    await expect.poll(() => held.arrived()).toBe(1);
    idle();
    const made = open.officialAccount(appId);
    expect(made).not.toBe(old);
    const second = made.accessToken.getToken();
    held.release();
    const [a, b] = await Promise.all([first, second]);
    expect(b).toBe(a);
    expect(mock.counters(appId).authorizerTokenRequests).toBe(1);
    expect(await stored()).toBe(mock.authorizerRefreshToken(appId));
    expect(fetched).toEqual([appId]);
    idle();
    // A third client, made anew again, refreshes with the rotated token when WeChat kills the access token.
    mock.invalidateTokens(appId);
    await send(open.officialAccount(appId));
    expect(mock.counters(appId).authorizerTokenRequests).toBe(2);
    expect(await stored()).toBe(mock.authorizerRefreshToken(appId));
    await open.close();
    await held.agent.close();
  });

  it('a caller still holding the old authorizer client sends on it after the account was made anew: no send lost', async () => {
    const { open, appId } = await platform();
    const old = open.officialAccount(appId);
    await send(old);
    idle();
    const made = open.officialAccount(appId);
    expect(made).not.toBe(old);
    const results = await Promise.allSettled([send(old), send(made)]);
    expect(results.filter((result) => result.status === 'rejected')).toEqual([]);
    expect(mock.counters(appId)).toMatchObject({ authorizerTokenRequests: 1, templateSends: 3 });
  });
});
