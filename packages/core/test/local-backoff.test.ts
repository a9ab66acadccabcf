import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Agent, buildConnector } from 'undici';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { ClientPool, HttpError, MemoryCache, OfficialAccount, type TokenEvents } from '../src/index.js';
import { LocalBackoff, LocalBackoffs } from '../src/token/local-backoff.js';
import { rejection, slotWinnerLocksSecond } from './helpers.js';

// A fetch whose request never left the process (connection refused, DNS, connect timeout) tells nothing
// about WeChat: it writes no shared failure marker, so the rest of the fleet still refreshes, and the
// failing process backs off on its own. These tests count connection attempts and the mock's token
// requests; the clock is the clients' `now`.

let mock: MockWeChat;
/** A port nothing listens on: a server was started there, then closed. */
let closedPort = 0;
const agents: Agent[] = [];
beforeAll(async () => {
  mock = await startMockWeChat();
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closedPort = (server.address() as AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
});
afterEach(() => mock.clearFaults());
afterAll(async () => {
  await Promise.all(agents.map((agent) => agent.close()));
  await mock.close();
});

/**
 * A dispatcher whose connections go to the closed port while `blocked` (refused, for real), and to the
 * mock otherwise. No keep-alive: every request opens a connection, so `connects` counts the requests
 * that tried to leave.
 */
function gatedDispatcher() {
  const connect = buildConnector({});
  let holding: { arrived: () => void; released: Promise<void> } | undefined;
  const gate = {
    blocked: true,
    connects: 0,
    /** The next connection attempts wait for `release()`; `reached` resolves when one does. */
    hold() {
      let arrived!: () => void;
      let release!: () => void;
      const reached = new Promise<void>((resolve) => (arrived = resolve));
      holding = { arrived, released: new Promise<void>((resolve) => (release = resolve)) };
      return {
        reached,
        release: () => {
          holding = undefined;
          release();
        },
      };
    },
  };
  const agent = new Agent({
    pipelining: 0,
    connect: (options, callback) => {
      gate.connects += 1;
      const go = () => connect(gate.blocked ? { ...options, hostname: '127.0.0.1', port: String(closedPort) } : options, callback);
      if (!holding) return go();
      holding.arrived();
      void holding.released.then(go);
    },
  });
  agents.push(agent);
  return { agent, gate };
}

function twoProcesses(now?: () => number) {
  const { appId, secret } = mock.createApp();
  const cache = new MemoryCache(now ? { now } : {});
  const { agent, gate } = gatedDispatcher();
  const base = { appId, secret, baseUrl: mock.url, cache, logger: false as const, memoMs: 0, ...(now ? { now } : {}) };
  const cutOff = new OfficialAccount({ ...base, dispatcher: agent });
  const healthy = new OfficialAccount(base);
  return { appId, cache, gate, cutOff, healthy, failedKey: `${cutOff.accessToken.cacheKey}:failed` };
}

describe('a fetch that never left this process', () => {
  it('writes no failure marker: another process on the same store gets a token with one request to WeChat', async () => {
    const { appId, cache, gate, cutOff, healthy, failedKey } = twoProcesses();
    const events: TokenEvents['access_token.fetch_failed'][] = [];
    cutOff.on('access_token.fetch_failed', (event) => events.push(event));
    const error = await rejection(cutOff.accessToken.getToken());
    expect(error).toBeInstanceOf(HttpError);
    expect(error).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false, path: 'cgi-bin/stable_token' });
    expect(gate.connects).toBe(1);
    expect(await cache.get(failedKey)).toBeUndefined();
    expect(await cache.get(`${cutOff.accessToken.cacheKey}:lock`)).toBeUndefined();
    expect(mock.counters(appId).tokenRequests).toBe(0);

    const token = await healthy.accessToken.getToken();
    expect(mock.isTokenValid(appId, token)).toBe(true);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    // The token the healthy process wrote serves the cut-off one too: its pause holds back fetches only.
    expect(await cutOff.accessToken.getToken()).toBe(token);
    expect(gate.connects).toBe(1);
    expect(events.map((event) => [event.code, event.sent])).toEqual([['ERR_WXKIT_HTTP', false]]);
    // The line says why, as the error does: a background refresh (wxkit serve) is seen in it only.
    expect(events[0]!.error).toBe(error.message);
    expect(events[0]!.error).toMatch(/failed before WeChat answered/);
    await Promise.all([cutOff.close(), healthy.close()]);
  });

  it('its holder releases the lock: a process waiting for it takes it and fetches, instead of taking the failure', async () => {
    const { appId, cache, gate, cutOff, healthy, failedKey } = twoProcesses();
    const lockKey = `${cutOff.accessToken.cacheKey}:lock`;
    // The healthy process's lock attempt that finds the lock held.
    let lost!: () => void;
    const lockLost = new Promise<void>((resolve) => (lost = resolve));
    const add = cache.add.bind(cache);
    cache.add = async (key, value, ttl) => {
      const added = await add(key, value, ttl);
      if (!added && key === lockKey) lost();
      return added;
    };
    const held = gate.hold();
    const failing = rejection(cutOff.accessToken.getToken());
    // The cut-off process holds the lock while its connection attempt waits.
    await held.reached;
    expect(await cache.get(lockKey)).toBeDefined();
    const waiting = healthy.accessToken.getToken();
    await lockLost;
    held.release();
    expect(await failing).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false });
    expect(mock.isTokenValid(appId, await waiting)).toBe(true);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(gate.connects).toBe(1);
    expect(await cache.get(failedKey)).toBeUndefined();
    await Promise.all([cutOff.close(), healthy.close()]);
  });

  it('backs off this process alone: calls during the pause fail at once with the typed error, then it tries once more', async () => {
    let now = Date.now();
    const { appId, cache, gate, cutOff, failedKey } = twoProcesses(() => now);
    await rejection(cutOff.accessToken.getToken());
    expect(gate.connects).toBe(1);
    // The first pause is 1 s ± 20 %: five calls within 0.5 s open no connection.
    for (let call = 0; call < 5; call += 1) {
      now += 100;
      const error = await rejection(cutOff.accessToken.getToken());
      expect(error).toBeInstanceOf(HttpError);
      expect(error).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false, path: 'cgi-bin/stable_token' });
      expect(error.message).toMatch(/^This host could not reach WeChat: .*other processes are not held back/);
    }
    expect(gate.connects).toBe(1);
    // Past the first pause: one more attempt. The next pause is 2 s ± 20 %.
    now += 800;
    await rejection(cutOff.accessToken.getToken());
    expect(gate.connects).toBe(2);
    now += 1_500;
    await rejection(cutOff.accessToken.getToken());
    expect(gate.connects).toBe(2);
    now += 1_000;
    await rejection(cutOff.accessToken.getToken());
    expect(gate.connects).toBe(3);
    expect(await cache.get(failedKey)).toBeUndefined();

    // forceRefresh() passes the pause, as it passes a shared transient marker.
    expect(await rejection(cutOff.accessToken.forceRefresh())).toMatchObject({ sent: false });
    expect(gate.connects).toBe(4);

    // The network is back: after the pause, a token; and a success forgets the failures in a row, so
    // the next unsent fetch pauses 1 s again, not 8.
    gate.blocked = false;
    now += 20_000;
    expect(mock.isTokenValid(appId, await cutOff.accessToken.getToken())).toBe(true);
    expect(gate.connects).toBe(5);
    expect(mock.counters(appId).tokenRequests).toBe(1);
    gate.blocked = true;
    await cache.delete(cutOff.accessToken.cacheKey);
    await rejection(cutOff.accessToken.getToken());
    expect(gate.connects).toBe(6);
    now += 1_300;
    await rejection(cutOff.accessToken.getToken());
    expect(gate.connects).toBe(7);
    await cutOff.close();
  });

  it('a failure WeChat answered (HTTP 500, errcode -1) still writes the shared marker, which holds every process back', async () => {
    let now = Date.now();
    const { appId, cache, gate, cutOff, healthy, failedKey } = twoProcesses(() => now);
    gate.blocked = false;
    mock.injectFault({ kind: 'http-500', path: 'cgi-bin/stable_token', times: 1 });
    expect(await rejection(cutOff.accessToken.getToken())).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 500, sent: true });
    expect(JSON.parse((await cache.get(failedKey))!)).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 500, attempt: 1 });
    expect(await rejection(healthy.accessToken.getToken())).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 500 });
    expect(mock.counters(appId).tokenRequests).toBe(1);
    now += 1_300;
    mock.injectFault({ kind: 'errcode', errcode: -1, path: 'cgi-bin/stable_token', times: 1 });
    expect(await rejection(healthy.accessToken.getToken())).toMatchObject({ errcode: -1 });
    expect(JSON.parse((await cache.get(failedKey))!)).toMatchObject({ errcode: -1, attempt: 2 });
    expect(await rejection(cutOff.accessToken.getToken())).toMatchObject({ errcode: -1 });
    expect(mock.counters(appId).tokenRequests).toBe(2);
    expect(gate.connects).toBe(1);
    await Promise.all([cutOff.close(), healthy.close()]);
  });
});

describe('the pause of a ClientPool account', () => {
  it('holds the client the pool makes anew for the account, after it let go of the one that failed (beyond maxClients)', async () => {
    const now = Date.now();
    const apps = [mock.createApp(), mock.createApp(), mock.createApp()];
    const secrets = new Map(apps.map((app) => [app.appId, app.secret]));
    const { agent, gate } = gatedDispatcher();
    let resolved = 0;
    const pool = new ClientPool({
      kind: 'officialAccount',
      credentials: (appId) => (resolved++, { secret: secrets.get(appId) }),
      baseUrl: mock.url,
      dispatcher: agent,
      cache: new MemoryCache({ now: () => now }),
      logger: false,
      fallbackDir: false,
      maxClients: 2,
      now: () => now,
    });
    const failed: string[] = [];
    // Three accounts in turn through a pool of two: each one's client was let go of before its next use.
    for (let round = 0; round < 3; round += 1) {
      for (const app of apps) {
        const client = await pool.get(app.appId);
        client.on('access_token.fetch_failed', () => failed.push(app.appId));
        expect(await rejection(client.accessToken.getToken())).toMatchObject({ code: 'ERR_WXKIT_HTTP', sent: false });
      }
    }
    expect(resolved).toBe(9);
    // The clock stands still, within the first pause: one connection attempt and one line per account.
    expect(gate.connects).toBe(3);
    expect(failed).toEqual(apps.map((app) => app.appId));
    expect(mock.counters(apps[0]!.appId).tokenRequests).toBe(0);
    await pool.close();
  });
});

describe('a forced refresh whose fetch never left', () => {
  it("gives the fleet's 30 s slot back: the forced refresh that lost the slot but took the lock first forces one itself, and does not hand out the token its caller wants rid of", async () => {
    const { agent, gate } = gatedDispatcher();
    gate.blocked = false;
    // The cut-off client takes the slot, then is slow to take the lock: the healthy one gets the lock first.
    const { appId, winner, loser, slotWritten, arm } = slotWinnerLocksSecond(mock, { winner: { dispatcher: agent, lockWaitMs: 3_000 }, loser: { lockWaitMs: 3_000 } });
    const before = await winner.accessToken.getToken();
    expect(await loser.accessToken.getToken()).toBe(before);
    gate.blocked = true;
    arm();
    const first = rejection(winner.accessToken.forceRefresh());
    await slotWritten;
    const second = loser.accessToken.forceRefresh();
    expect(await first).toBeInstanceOf(HttpError);
    expect(await second).not.toBe(before);
    expect(mock.counters(appId).forceRefreshes).toBe(1);
    await Promise.all([winner.close(), loser.close()]);
  });
});

describe('the record of unsent fetches', () => {
  const unsent = () => new HttpError('ERR_WXKIT_HTTP', 'connect ECONNREFUSED', { path: 'cgi-bin/token', sent: false });

  it('is forgotten once a shared marker of it would be: an unsent fetch after a long quiet starts again at the first pause', () => {
    const backoff = new LocalBackoff('access_token');
    const t0 = Date.now();
    for (let i = 0; i < 5; i += 1) backoff.record(unsent(), t0 + i, 'host:1');
    expect(backoff.active(t0 + 5)?.attempt).toBe(5);
    // Eleven minutes later (a marker is kept 10 minutes past its pause): a first failure again.
    const later = t0 + 11 * 60_000;
    backoff.record(unsent(), later, 'host:1');
    expect(backoff.active(later)?.attempt).toBe(1);
  });

  /** The records of `accounts` accounts whose fetch failed unsent at once (at `t0`). */
  const failedUnsent = (accounts: number) => {
    const records = new LocalBackoffs();
    const t0 = Date.now();
    for (let i = 0; i < accounts; i += 1) records.record(`wechat:stable_access_token:wx${i}`, 'access_token', unsent(), t0, 'host:1');
    expect(records.size).toBe(accounts);
    return { records, t0 };
  };

  it('of the entries of a pool is bounded: the records past remembering are dropped when a new one is made, and a fetch that reached WeChat drops its own', () => {
    const { records, t0 } = failedUnsent(5_000);
    records.clear('wechat:stable_access_token:wx0');
    expect(records.of('wechat:stable_access_token:wx0', t0)).toBeUndefined();
    expect(records.size).toBe(4_999);
    // Eleven minutes later, one more account's fetch fails unsent: the 4,999 forgotten ones go.
    records.record('wechat:stable_access_token:wxlate', 'access_token', unsent(), t0 + 11 * 60_000, 'host:1');
    expect(records.size).toBe(1);
  });

  it('of the entries of a pool is bounded once the way out works again: the records past remembering are dropped as a refresh reads its own, with no new one made', () => {
    const { records, t0 } = failedUnsent(5_000);
    // Eleven minutes later another account refreshes, and its fetch reaches WeChat: the 5,000 accounts
    // that failed are never used again.
    expect(records.of('wechat:stable_access_token:wxother', t0 + 11 * 60_000)).toBeUndefined();
    expect(records.size).toBe(0);
  });
});
