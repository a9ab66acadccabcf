import { startMockWeChat, type MockApp, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ClientPool, MemoryCache, MiniProgram, OfficialAccount, TokenUnavailableError, Work, type ClientPoolOptions } from '../src/index.js';
import { deferred, endedByClose, errorText, holdingLock, rejection } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

const pools: ClientPool<never>[] = [];
afterAll(async () => {
  await Promise.all(pools.map((pool) => pool.close()));
});

/** A pool of official accounts on a cache of its own whose resolver reads `accounts`, counting its calls. */
function officialAccounts(accounts: Map<string, MockApp>, extra: Partial<ClientPoolOptions<'officialAccount'>> = {}) {
  const calls: string[] = [];
  const pool = new ClientPool({
    kind: 'officialAccount',
    credentials: async (appId) => {
      calls.push(appId);
      const app = accounts.get(appId);
      return app && { secret: app.secret };
    },
    baseUrl: mock.url,
    cache: new MemoryCache(),
    logger: false,
    ...extra,
  });
  pools.push(pool as ClientPool<never>);
  return { pool, calls };
}

function appsOnMock(count: number): Map<string, MockApp> {
  const apps = new Map<string, MockApp>();
  for (let i = 0; i < count; i += 1) {
    const app = mock.createApp();
    apps.set(app.appId, app);
  }
  return apps;
}

const send = (client: OfficialAccount) => client.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });

describe('ClientPool', () => {
  it('makes a client on first use from the resolver, then reuses it: one resolver call and one token per account', async () => {
    const apps = appsOnMock(20);
    const { pool, calls } = officialAccounts(apps);
    for (let round = 0; round < 3; round += 1) {
      await Promise.all([...apps.keys()].map(async (appId) => send(await pool.get(appId))));
    }
    expect(calls).toHaveLength(20);
    expect(pool.size).toBe(20);
    for (const appId of apps.keys()) expect(mock.counters(appId)).toMatchObject({ tokenRequests: 1, templateSends: 3 });
  });

  it('concurrent first use of one account makes one client', async () => {
    const apps = appsOnMock(1);
    const [appId] = apps.keys();
    const { pool, calls } = officialAccounts(apps);
    const clients = await Promise.all(Array.from({ length: 50 }, () => pool.get(appId!)));
    expect(new Set(clients).size).toBe(1);
    expect(clients[0]).toBeInstanceOf(OfficialAccount);
    expect(calls).toEqual([appId]);
    await Promise.all(clients.map(send));
    expect(mock.counters(appId).tokenRequests).toBe(1);
  });

  it('drops the least recently used client beyond maxClients and the idle ones at the next get, without timers', async () => {
    const apps = appsOnMock(4);
    const [a, b, c, d] = [...apps.keys()] as [string, string, string, string];
    let now = Date.now();
    const { pool, calls } = officialAccounts(apps, { maxClients: 2, clientIdleMs: 60_000, now: () => now });
    const first = await pool.get(a);
    await send(first);
    await pool.get(b);
    expect(await pool.get(a)).toBe(first);
    await pool.get(c); // b was the least recently used
    expect(pool.size).toBe(2);
    expect(calls).toEqual([a, b, c]);
    now += 60_001; // a and c idle
    await pool.get(d);
    expect(pool.size).toBe(1);
    const again = await pool.get(a);
    expect(again).not.toBe(first);
    expect(calls).toEqual([a, b, c, d, a]);
    // The new client takes the token the first one left in the store.
    await send(again);
    expect(mock.counters(a).tokenRequests).toBe(1);
  });

  it('a client idle past clientIdleMs is made anew when its own account is asked for next, its token taken from the store', async () => {
    const apps = appsOnMock(1);
    const [a] = [...apps.keys()] as [string];
    let now = Date.now();
    const { pool, calls } = officialAccounts(apps, { clientIdleMs: 60_000, now: () => now });
    const first = await pool.get(a);
    await send(first);
    now += 60_001;
    const again = await pool.get(a);
    expect(again).not.toBe(first);
    expect(calls).toEqual([a, a]);
    expect(pool.size).toBe(1);
    await send(again);
    expect(mock.counters(a).tokenRequests).toBe(1);
    // Within clientIdleMs the client held is handed out, and the resolver is not asked.
    now += 60_000;
    expect(await pool.get(a)).toBe(again);
    expect(calls).toEqual([a, a]);
  });

  it('a client dropped beyond maxClients while its caller still uses it finishes the calls: no send lost', async () => {
    const apps = appsOnMock(6);
    const { pool } = officialAccounts(apps, { maxClients: 2 });
    // Six first uses at once: each client is made, then dropped by the next ones, before its send.
    const results = await Promise.allSettled([...apps.keys()].map(async (appId) => send(await pool.get(appId))));
    expect(results.filter((result) => result.status === 'rejected')).toEqual([]);
    for (const appId of apps.keys()) expect(mock.counters(appId)).toMatchObject({ tokenRequests: 1, templateSends: 1 });
    expect(pool.size).toBe(2);
  });

  it('a dropped client starts no background refresh: neither the one it had scheduled, nor one on a later use', async () => {
    const apps = appsOnMock(3);
    const [a, b, c] = [...apps.keys()] as [string, string, string];
    const cache = new MemoryCache();
    let now = Date.now();
    const { pool } = officialAccounts(apps, { cache, now: () => now, maxClients: 2, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, tokenEndpoint: 'classic' });
    const scheduled = await pool.get(a);
    await scheduled.accessToken.getToken();
    const later = await pool.get(b);
    await later.accessToken.getToken();
    const adds = vi.spyOn(cache, 'add');
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      now += (6900 - 500) * 1000; // inside the refresh-ahead window, and both idle past clientIdleMs
      await scheduled.accessToken.getToken(); // schedules a background refresh of a, due at once
      await pool.get(c); // drops a and b, before that refresh runs
      await later.accessToken.getToken(); // b's caller goes on using it, inside the window
      // Every timer due runs: a background refresh would have tried the lock.
      await vi.runOnlyPendingTimersAsync();
      expect(adds.mock.calls.filter(([key]) => key.includes(a) || key.includes(b))).toEqual([]);
    } finally {
      vi.useRealTimers();
    }
    expect(mock.counters(a).classicTokenRequests).toBe(1);
    expect(mock.counters(b).classicTokenRequests).toBe(1);
  });

  it('a dropped client starts no background refresh of a JS-SDK ticket its caller first asks for after the drop', async () => {
    const apps = appsOnMock(2);
    const [a, b] = [...apps.keys()] as [string, string];
    const cache = new MemoryCache();
    let now = Date.now();
    const { pool } = officialAccounts(apps, { cache, now: () => now, maxClients: 1, refreshAheadSeconds: 600, refreshAheadJitterMs: 0, tokenEndpoint: 'classic' });
    const dropped = await pool.get(a);
    await pool.get(b); // a is let go of; its caller keeps it
    await dropped.jssdk.getTicket(); // the ticket's manager is made now, after the drop
    const adds = vi.spyOn(cache, 'add');
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      now += (6900 - 500) * 1000; // inside the refresh-ahead window
      await dropped.jssdk.getTicket();
      // Every timer due runs: a background refresh would have tried the lock.
      await vi.runOnlyPendingTimersAsync();
      expect(adds.mock.calls.filter(([key]) => key.includes(a))).toEqual([]);
    } finally {
      vi.useRealTimers();
    }
    expect(mock.counters(a).ticketRequests).toBe(1);
  });

  it('close() ends the waits of the clients it let go of too: a caller still holding one is not kept waiting', async () => {
    const apps = appsOnMock(2);
    const [a, b] = [...apps.keys()] as [string, string];
    const cache = new MemoryCache();
    const { pool } = officialAccounts(apps, { cache, maxClients: 1, tokenEndpoint: 'classic' });
    const held = await pool.get(a);
    await pool.get(b); // a is let go of
    // Another process holds a's refresh lock for a minute: the held client waits for its entry.
    await cache.set(`${held.accessToken.cacheKey}:lock`, 'elsewhere:1', 60);
    const waiting = endedByClose(held.accessToken.getToken());
    await pool.close();
    const error = await waiting;
    expect(error).toBeInstanceOf(TokenUnavailableError);
    expect((error as Error).message).toMatch(/closed/);
    expect(mock.counters(a).classicTokenRequests).toBe(0);
  });

  it('close() closes every client and the pool; get() after it is a typed error', async () => {
    const apps = appsOnMock(3);
    const { pool } = officialAccounts(apps);
    const clients = await Promise.all([...apps.keys()].map((appId) => pool.get(appId)));
    const spies = clients.map((client) => vi.spyOn(client, 'close'));
    await pool.close();
    for (const spy of spies) expect(spy).toHaveBeenCalledTimes(1);
    expect(pool.size).toBe(0);
    expect(await rejection(pool.get([...apps.keys()][0]!))).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION' });
  });

  /** A pool whose resolver holds its answer for `app` until `answer()`; its deadline is far off. */
  function answeringLate() {
    const app = mock.createApp();
    let answer!: (credentials: { secret: string }) => void;
    const resolver = vi.fn(() => new Promise<{ secret: string }>((resolve) => (answer = resolve)));
    const pool = new ClientPool({ kind: 'officialAccount', credentials: resolver, credentialsTimeoutMs: 600_000, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    pools.push(pool as ClientPool<never>);
    return { app, pool, resolver, answer: () => answer({ secret: app.secret }) };
  }

  it('close() while the resolver has not answered settles the callers at once, and makes no client of a late answer', async () => {
    // Only close() can end the wait.
    const { app, pool, resolver, answer } = answeringLate();
    const waiting = [rejection(pool.get(app.appId)), rejection(pool.get(app.appId))];
    await vi.waitFor(() => expect(resolver).toHaveBeenCalledTimes(1));
    await pool.close();
    for (const error of await Promise.all(waiting)) expect(error).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', message: expect.stringMatching(/closed/) });
    answer();
    await Promise.resolve();
    expect(pool.size).toBe(0);
    expect(mock.counters(app.appId).requests).toBe(0);
  });

  it("a get() whose signal aborts stops that caller's wait with the signal's reason; the resolver's answer still makes the client the others get", async () => {
    const { app, pool, resolver, answer } = answeringLate();
    const leaving = new AbortController();
    const left = rejection(pool.get(app.appId, { signal: leaving.signal }));
    const staying = pool.get(app.appId);
    await vi.waitFor(() => expect(resolver).toHaveBeenCalledTimes(1));
    const reason = new Error('the browser went away');
    leaving.abort(reason);
    expect(await left).toBe(reason);
    answer();
    const client = await staying;
    expect(await pool.get(app.appId)).toBe(client);
    expect(resolver).toHaveBeenCalledTimes(1);
    // Aborted already: no resolver call; not a signal: a ConfigError.
    expect(await rejection(pool.get(mock.createApp().appId, { signal: AbortSignal.abort(reason) }))).toBe(reason);
    expect(await rejection(pool.get(app.appId, { signal: 'stop' as never }))).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'signal' });
    expect(resolver).toHaveBeenCalledTimes(1);
  });

  it('many accounts resolved at once raise no MaxListenersExceededWarning (a "memory leak" the process does not have)', async () => {
    const apps = appsOnMock(30);
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on('warning', onWarning);
    try {
      const answers: (() => void)[] = [];
      const { pool } = officialAccounts(apps, {
        credentials: (appId) => new Promise((resolve) => answers.push(() => resolve({ secret: apps.get(appId)!.secret }))),
      });
      const clients = Promise.all([...apps.keys()].map((appId) => pool.get(appId)));
      await vi.waitFor(() => expect(answers).toHaveLength(30));
      for (const answer of answers) answer();
      await clients;
      expect(pool.size).toBe(30);
      // process.emitWarning reports on the next tick: one more turn of the loop and it would be here.
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings.filter((warning) => warning.name === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('delete() lets go of an account\'s client; the next get asks the resolver again (rotated credentials)', async () => {
    const apps = appsOnMock(1);
    const [appId] = apps.keys() as IterableIterator<string>;
    const { pool, calls } = officialAccounts(apps);
    const first = await pool.get(appId!);
    await pool.delete(appId!);
    expect(await pool.get(appId!)).not.toBe(first);
    expect(calls).toHaveLength(2);
    // A caller that still holds the old client finishes its call.
    await send(first);
    expect(mock.counters(appId!)).toMatchObject({ tokenRequests: 1, templateSends: 1 });
  });

  it('a get() after delete() asks the resolver again, even while the first use of the account is still resolving its old credentials', async () => {
    const [app] = appsOnMock(1).values() as IterableIterator<MockApp>;
    let secret = 'the-secret-before-its-rotation';
    let answerFirst!: () => void;
    const firstAnswered = new Promise<void>((resolve) => (answerFirst = resolve));
    let firstRead!: () => void;
    const firstReading = new Promise<void>((resolve) => (firstRead = resolve));
    const calls: string[] = [];
    const pool = new ClientPool({
      kind: 'officialAccount',
      credentials: async () => {
        const answer = { secret };
        calls.push(answer.secret);
        if (calls.length === 1) {
          firstRead();
          await firstAnswered;
        }
        return answer;
      },
      baseUrl: mock.url,
      cache: new MemoryCache(),
      logger: false,
    });
    pools.push(pool as ClientPool<never>);
    const before = pool.get(app!.appId);
    await firstReading;
    // The account's secret is rotated after the first use read it, before the resolver answered.
    secret = app!.secret;
    const deleted = pool.delete(app!.appId);
    const current = await pool.get(app!.appId);
    // The old answer comes last: it is dropped, and the callers that asked before delete() get the
    // client of the new one, which works (a client of the old secret would fail its fetch, 40125, and back
    // the account off fleet-wide for a minute).
    answerFirst();
    await deleted;
    const early = await before;
    expect(calls).toEqual(['the-secret-before-its-rotation', app!.secret]);
    expect(early).toBe(current);
    expect(await pool.get(app!.appId)).toBe(current);
    expect(pool.size).toBe(1);
    await send(early);
    await send(current);
    expect(mock.counters(app!.appId)).toMatchObject({ tokenRequests: 1, templateSends: 2 });
  });

  it('a get() waits credentialsTimeoutMs at most, though a delete() comes during each of the resolver\'s answers; the resolver is nobody\'s method', async () => {
    const [app] = appsOnMock(1).values() as IterableIterator<MockApp>;
    const seen: unknown[] = [];
    const answers: Promise<unknown>[] = [];
    let pool!: ClientPool<'officialAccount'>;
    pool = new ClientPool({
      kind: 'officialAccount',
      credentials(this: unknown, appId) {
        seen.push(this);
        // A rotation reported while each answer is on its way: the answer is dropped, and asked again.
        void pool.delete(appId);
        const answer = new Promise<{ secret: string }>((resolve) => setImmediate(() => resolve({ secret: app!.secret })));
        answers.push(answer);
        return answer;
      },
      credentialsTimeoutMs: 200,
      baseUrl: mock.url,
      cache: new MemoryCache(),
      logger: false,
    });
    pools.push(pool as ClientPool<never>);
    const error = await rejection(pool.get(app!.appId));
    expect(error).toMatchObject({ code: 'ERR_WXKIT_CREDENTIALS', reason: 'timeout', id: app!.appId });
    expect(seen[0]).toBeUndefined();
    // Past the deadline, the resolver is asked no more: once the answers given have come, and the pool
    // has had a turn to act on them, nobody has asked again.
    const asked = seen.length;
    await Promise.all(answers);
    await new Promise((resolve) => setImmediate(resolve));
    expect(seen.length).toBe(asked);
  });

  it("a get() that joined a client under way has its own credentialsTimeoutMs: the first caller's running out does not end its wait", async () => {
    const [app] = appsOnMock(1).values() as IterableIterator<MockApp>;
    const answers: Array<(answer: { secret: string }) => void> = [];
    const asked: Array<() => void> = [];
    const nextCall = () => new Promise<void>((resolve) => asked.push(resolve));
    const pool = new ClientPool({
      kind: 'officialAccount',
      credentials: () =>
        new Promise<{ secret: string }>((resolve) => {
          answers.push(resolve);
          asked.shift()?.();
        }),
      credentialsTimeoutMs: 1_000,
      baseUrl: mock.url,
      cache: new MemoryCache(),
      logger: false,
    });
    pools.push(pool as ClientPool<never>);
    const id = app!.appId;
    let called = nextCall();
    const first = rejection(pool.get(id));
    await called;
    // A rotation during the first answer: it is dropped, and the resolver asked again for the first caller.
    void pool.delete(id);
    called = nextCall();
    answers[0]!({ secret: 'the-secret-before-its-rotation' });
    await called;
    // Half the first caller's time later, a second caller joins that answer.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const second = pool.get(id);
    // The first caller's time runs out; another rotation drops the answer under way as well.
    expect(await first).toMatchObject({ reason: 'timeout' });
    void pool.delete(id);
    called = nextCall();
    answers[1]!({ secret: 'the-secret-before-its-rotation' });
    // The second caller, its own time not up, asks again and gets the client of the new answer.
    await called;
    answers[2]!({ secret: app!.secret });
    await send(await second);
  });

  it('a client its caller closed is not handed out again: the next get() makes a new one, which refreshes', async () => {
    const apps = appsOnMock(1);
    const [appId] = apps.keys() as IterableIterator<string>;
    const { pool, calls } = officialAccounts(apps);
    const first = await pool.get(appId!);
    await send(first);
    await first.close();
    const again = await pool.get(appId!);
    expect(again).not.toBe(first);
    expect(pool.size).toBe(1);
    expect(calls).toHaveLength(2);
    // The new client takes the token the first one left in the store, and starts refreshes of its own.
    await send(again);
    await again.accessToken.forceRefresh();
    expect(mock.counters(appId!)).toMatchObject({ tokenRequests: 2, templateSends: 2 });
  });

  it("a client its caller closed sends nothing more, as a plain client's close() ends its sends: a call after it is refused by name, never sent", async () => {
    const apps = appsOnMock(1);
    const [appId] = apps.keys() as IterableIterator<string>;
    const { pool } = officialAccounts(apps);
    const client = await pool.get(appId!);
    // The token is in the client's memo: nothing but the send itself is left to refuse.
    await send(client);
    await client.close();
    expect(await rejection(send(client))).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false, message: expect.stringMatching(/not sent: the client was closed/) });
    expect(mock.counters(appId!)).toMatchObject({ tokenRequests: 1, templateSends: 1 });

    const mp = mock.createApp();
    const miniPrograms = new ClientPool({ kind: 'miniProgram', credentials: () => ({ secret: mp.secret }), baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    pools.push(miniPrograms as ClientPool<never>);
    const miniProgram = await miniPrograms.get(mp.appId);
    await miniProgram.close();
    expect(await rejection(miniProgram.auth.code2Session('code-1'))).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false });
    expect(mock.counters(mp.appId).requests).toBe(0);
  });

  it("close() while another client's refresh holds it: a send made meanwhile on a client it closed is refused, never sent", async () => {
    const apps = appsOnMock(2);
    const [a, b] = [...apps.keys()] as [string, string];
    // A store whose answer to a's lock attempt waits until the test lets it go: a's refresh is under way
    // until then, and the pool's close() waits for it.
    const gate = holdingLock();
    const { pool } = officialAccounts(apps, { cache: gate.cache });
    const ready = await pool.get(b);
    await ready.accessToken.getToken();
    const busy = await pool.get(a);
    gate.lock(`${busy.accessToken.cacheKey}:lock`);
    const refreshing = rejection(busy.accessToken.getToken());
    await gate.arrived;
    let closed = false;
    const closing = pool.close().then(() => (closed = true));
    const refused = await rejection(send(ready));
    expect(closed).toBe(false);
    gate.release();
    await closing;
    expect(refused).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false, message: expect.stringMatching(/not sent: the client was closed/) });
    expect(await refreshing).toBeInstanceOf(TokenUnavailableError);
    expect(mock.counters(b)).toMatchObject({ tokenRequests: 1, templateSends: 0 });
    expect(mock.counters(a).tokenRequests).toBe(0);
  });

  it("pool.on() hears the token events of every account's client, one made anew after it was dropped too, and a client's own listener goes with it", async () => {
    const apps = appsOnMock(2);
    const [a, b] = [...apps.keys()] as [string, string];
    let now = Date.now();
    const { pool } = officialAccounts(apps, { clientIdleMs: 60_000, now: () => now });
    const heard: (string | undefined)[] = [];
    const listener = (event: { appId?: string }) => void heard.push(event.appId);
    pool.on('access_token.fetched', listener);
    const first = await pool.get(a);
    let own = 0;
    first.on('access_token.fetched', () => (own += 1));
    await send(first);
    await send(await pool.get(b));
    expect(heard).toEqual([a, b]);
    expect(own).toBe(1);
    // a's client is dropped when idle and made anew; its next token is fetched by the new client.
    now += 60_001;
    const again = await pool.get(a);
    expect(again).not.toBe(first);
    mock.invalidateTokens(a);
    await send(again);
    expect(heard).toEqual([a, b, a]);
    expect(own).toBe(1);
    pool.off('access_token.fetched', listener);
    mock.invalidateTokens(b);
    await send(await pool.get(b));
    expect(heard).toEqual([a, b, a]);
    expect(mock.counters(b).tokenRequests).toBe(2);
  });

  it('its clients share the pool\'s store: setCache() on one is a ConfigError, not a silent split', async () => {
    const apps = appsOnMock(1);
    const { pool } = officialAccounts(apps);
    const client = await pool.get([...apps.keys()][0]!);
    expect(() => client.setCache(new MemoryCache())).toThrow(expect.objectContaining({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'cache' }));
    await send(client);
  });

  it('makes mini programs and WeCom apps', async () => {
    const mp = mock.createApp();
    const miniPrograms = new ClientPool({ kind: 'miniProgram', credentials: () => ({ secret: mp.secret }), baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    pools.push(miniPrograms as ClientPool<never>);
    const client = await miniPrograms.get(mp.appId);
    expect(client).toBeInstanceOf(MiniProgram);
    await client.subscribeMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(mock.counters(mp.appId)).toMatchObject({ tokenRequests: 1, messageSends: 1 });

    const work = mock.createWorkApp();
    const id = `${work.corpId}:${work.agentId}`;
    const resolver = vi.fn((name: string) => (name === id ? { corpId: work.corpId, agentId: work.agentId, secret: work.secret } : undefined));
    const corps = new ClientPool({ kind: 'work', credentials: resolver, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    pools.push(corps as ClientPool<never>);
    const agent = await corps.get(id);
    expect(agent).toBeInstanceOf(Work);
    await agent.message.send({ touser: 'u1', msgtype: 'text', text: { content: 'hi' } });
    expect(mock.counters(id)).toMatchObject({ tokenRequests: 1, messageSends: 1 });
    expect(await rejection(corps.get('ww-unknown:1'))).toMatchObject({ code: 'ERR_WXKIT_CREDENTIALS', reason: 'unknown', id: 'ww-unknown:1' });
    expect(resolver).toHaveBeenCalledTimes(2);
  });
});

describe('ClientPool: a resolver that fails or answers garbage', () => {
  const SECRET = 'resolver-secret-0123456789abcdef';

  /** A pool whose resolver is `answer`; each failure checked for its reason, for no secret, and for not being remembered. */
  async function failure(answer: (appId: string) => unknown, extra: Partial<ClientPoolOptions<'officialAccount'>> = {}) {
    const appId = mock.createApp().appId;
    const resolver = vi.fn(answer);
    const pool = new ClientPool({ kind: 'officialAccount', credentials: resolver as never, baseUrl: mock.url, cache: new MemoryCache(), logger: false, ...extra });
    pools.push(pool as ClientPool<never>);
    const [one, two] = await Promise.all([rejection(pool.get(appId)), rejection(pool.get(appId))]);
    // Concurrent callers share the one resolver call and its failure…
    expect(two).toBe(one);
    expect(resolver).toHaveBeenCalledTimes(1);
    // …which is not remembered: the next get asks again.
    await rejection(pool.get(appId));
    expect(resolver).toHaveBeenCalledTimes(2);
    expect(pool.size).toBe(0);
    expect(mock.counters(appId).requests).toBe(0);
    expect(one).toMatchObject({ name: 'CredentialsError', code: 'ERR_WXKIT_CREDENTIALS', id: appId });
    expect(one.message).not.toContain(SECRET);
    return one;
  }

  it('unknown account (undefined or null)', async () => {
    expect((await failure(() => undefined)).reason).toBe('unknown');
    expect((await failure(async () => null)).reason).toBe('unknown');
  });

  it('a resolver that throws or rejects: reason failed, its error as the cause', async () => {
    const cause = new Error('connection refused');
    const thrown = await failure(() => {
      throw cause;
    });
    expect(thrown).toMatchObject({ reason: 'failed', cause });
    expect((await failure(() => Promise.reject(cause))).reason).toBe('failed');
  });

  it('an answer whose fields cannot be read (a getter or a proxy that throws): reason failed, the error as the cause', async () => {
    const cause = new Error('decryption failed');
    const getter = await failure(() => ({
      get secret(): string {
        throw cause;
      },
    }));
    expect(getter).toMatchObject({ reason: 'failed', cause });
    const throwing = {
      get(): never {
        throw cause;
      },
    };
    const proxy = await failure(() => new Proxy({}, throwing));
    expect(proxy).toMatchObject({ reason: 'failed', cause });
  });

  it('a resolver that never answers: reason timeout, no hang', async () => {
    const error = await failure(() => new Promise(() => undefined), { credentialsTimeoutMs: 20 });
    expect(error.reason).toBe('timeout');
  });

  it('garbage: not an object, a secret of the wrong type or empty; never echoed', async () => {
    for (const answer of ['just-a-string', 42, [SECRET], { secret: 12345 }, { secret: '' }, { app_secret: SECRET }]) {
      const error = await failure(() => answer);
      expect(error.reason).toBe('invalid');
      expect(errorText(error)).not.toContain(SECRET);
      expect(errorText(error)).not.toContain('12345');
    }
  });

  it('bad ids and options are ConfigErrors, before any resolver call', async () => {
    const resolver = vi.fn(() => ({ secret: SECRET }));
    const pool = new ClientPool({ kind: 'officialAccount', credentials: resolver, baseUrl: mock.url, logger: false });
    pools.push(pool as ClientPool<never>);
    expect(await rejection(pool.get('wx bad/../id'))).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'id' });
    expect(resolver).not.toHaveBeenCalled();
    const make = (options: Record<string, unknown>) => () => new ClientPool({ kind: 'officialAccount', credentials: resolver, ...options } as never);
    expect(make({ kind: undefined })).toThrow(/options\.kind is required/);
    expect(make({ kind: 'openPlatform' })).toThrow(/options\.kind must be/);
    expect(make({ credentials: { [SECRET]: SECRET } })).toThrow(/options\.credentials must be a function/);
    expect(make({ maxClients: 0 })).toThrow(/options\.maxClients/);
    // The bounds docs/open-platform.md's ClientPool table gives: an integer ≥ 1; whole ms, 1 to 2³¹ − 1.
    expect(make({ maxClients: 1.5 })).toThrow(/options\.maxClients must be an integer from 1 /);
    for (const name of ['clientIdleMs', 'credentialsTimeoutMs']) {
      for (const bad of [0, 1.5, 2 ** 31]) expect(make({ [name]: bad }), `${name} ${bad}`).toThrow(new RegExp(`options\\.${name} must be an integer from 1 to ${2 ** 31 - 1} \\(ms\\)`));
    }
    for (const good of [{ maxClients: 1 }, { clientIdleMs: 1, credentialsTimeoutMs: 2 ** 31 - 1 }]) pools.push(make(good)() as ClientPool<never>);
    expect(make({ timeoutMs: -1 })).toThrow(/ClientPool options\.timeoutMs/);
    expect(make({ secret: SECRET })).toThrow(/options\.secret is not an option/);
    expect(make({ kind: 'work', tokenEndpoint: 'stable' })).toThrow(/tokenEndpoint/);
  });
});

/** What a send came to: `ok`, or the errcode it failed with. */
const outcome = (sending: Promise<unknown>) => sending.then(
  () => 'ok',
  (error: { errcode?: number }) => error.errcode,
);

describe('ClientPool: a secret WeChat refuses', () => {
  it('once WeChat refused the resolved secret (40125), the next get() asks the resolver again instead of keeping the refused client', async () => {
    const app = mock.createApp();
    // The account's record holds a secret WeChat no longer takes (reset by the account's admin, or mistyped)...
    let secret = 'an-old-secret-0123456789abcdef';
    const calls: string[] = [];
    const pool = new ClientPool({
      kind: 'officialAccount',
      credentials: (id) => {
        calls.push(id);
        return { secret };
      },
      baseUrl: mock.url,
      cache: new MemoryCache(),
      logger: false,
    });
    const stale = await pool.get(app.appId);
    expect(await rejection(send(stale))).toMatchObject({ errcode: 40125 });
    // ...and is fixed while the service runs: no delete(id) needed in every process.
    secret = app.secret;
    const results: unknown[] = [];
    for (let i = 0; i < 3; i += 1) results.push(await outcome(send(await pool.get(app.appId))));
    await pool.close();
    expect({ resolverCalls: calls.length, results }).toEqual({ resolverCalls: 2, results: ['ok', 'ok', 'ok'] });
    expect(mock.counters(app.appId)).toMatchObject({ templateSends: 3 });
  });

  it('WeCom: once gettoken refused the resolved corpsecret (40001), the next get() asks the resolver again', async () => {
    const work = mock.createWorkApp();
    const id = `${work.corpId}:${work.agentId}`;
    let secret = 'an-old-corpsecret-0123456789abcdef';
    const calls: string[] = [];
    const pool = new ClientPool({
      kind: 'work',
      credentials: (name) => {
        calls.push(name);
        return { corpId: work.corpId, agentId: work.agentId, secret };
      },
      baseUrl: mock.url,
      cache: new MemoryCache(),
      logger: false,
    });
    const message = { touser: 'u1', msgtype: 'text', text: { content: 'hi' } } as const;
    expect(await rejection((await pool.get(id)).message.send(message))).toMatchObject({ errcode: 40001 });
    secret = work.secret;
    const results: unknown[] = [];
    for (let i = 0; i < 2; i += 1) results.push(await outcome((await pool.get(id)).message.send(message)));
    await pool.close();
    expect({ resolverCalls: calls.length, results }).toEqual({ resolverCalls: 2, results: ['ok', 'ok'] });
  });

  /** Two pools on one store, as two processes of a fleet, whose resolvers answer `secret()`; `calls` counts each one's. */
  function fleetOfTwo(secret: () => string) {
    const cache = new MemoryCache();
    const calls = { a: 0, b: 0 };
    const pool = (name: 'a' | 'b') =>
      new ClientPool({
        kind: 'officialAccount',
        credentials: () => {
          calls[name] += 1;
          return { secret: secret() };
        },
        baseUrl: mock.url,
        cache,
        logger: false,
      });
    return { pools: [pool('a'), pool('b')] as const, calls };
  }

  it("another process's refused fetch with the same secret counts too: once the record is fixed, the next get() asks the resolver again", async () => {
    const app = mock.createApp();
    let secret = 'an-old-secret-0123456789abcdef';
    const { pools: [a, b], calls } = fleetOfTwo(() => secret);
    // B holds a client of the old secret, which WeChat refuses to A's fetch (the fleet's marker names it)...
    await b.get(app.appId);
    expect(await outcome(send(await a.get(app.appId)))).toBe(40125);
    // ...and the record is fixed: B's first send takes the fleet's refusal, and B makes its client anew.
    secret = app.secret;
    const results: unknown[] = [];
    for (let i = 0; i < 3; i += 1) results.push(await outcome(send(await b.get(app.appId))));
    await Promise.all([a.close(), b.close()]);
    expect({ resolverCalls: calls.b, results }).toEqual({ resolverCalls: 2, results: [40125, 'ok', 'ok'] });
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 2, templateSends: 2 });
  });

  it("a record that stays wrong in every process costs each one resolver call per refused fetch, not one per send, though they read each other's refusal", async () => {
    const app = mock.createApp();
    const { pools, calls } = fleetOfTwo(() => 'a-wrong-secret-0123456789abcdef');
    for (let round = 0; round < 5; round += 1) {
      const results = await Promise.all(pools.flatMap((each) => Array.from({ length: 10 }, async () => outcome(send(await each.get(app.appId))))));
      expect(new Set(results)).toEqual(new Set([40125]));
    }
    await Promise.all(pools.map((each) => each.close()));
    expect(calls.a).toBeLessThanOrEqual(2);
    expect(calls.b).toBeLessThanOrEqual(2);
    expect(mock.counters(app.appId).tokenRequests).toBe(1);
  });

  it('a record that stays wrong costs one resolver call per refused fetch, not one per send (no storm)', async () => {
    const app = mock.createApp();
    const calls: string[] = [];
    const pool = new ClientPool({
      kind: 'officialAccount',
      credentials: (id) => {
        calls.push(id);
        return { secret: 'a-wrong-secret-0123456789abcdef' };
      },
      baseUrl: mock.url,
      cache: new MemoryCache(),
      logger: false,
    });
    for (let round = 0; round < 5; round += 1) {
      const results = await Promise.all(Array.from({ length: 20 }, async () => outcome(send(await pool.get(app.appId)))));
      expect(new Set(results)).toEqual(new Set([40125]));
    }
    await pool.close();
    expect(calls.length).toBeLessThanOrEqual(2);
    expect(mock.counters(app.appId).tokenRequests).toBe(1);
  });
});
