import { describe, expect, it } from 'vitest';
import { CacheError, MemoryCache, OfficialAccount, Work, easyWeChat4, easyWeChat6, nativeSchema, silenceper, wechatpy, wxJava, type KeySchema, type TokenCache } from '../src/index.js';
import { besideKey, endKey } from '../src/token/entry-store.js';
import { leaseMs } from '../src/token/refreshers/locked-fetch/locked-fetch.js';
import { onMockClock, over, recordingLogger } from './helpers.js';

// A JS-SDK ticket's end record, `{key}:end` (docs/key-schema.md, "The end record"): kept beside the
// token protocol, best effort. What it must never do is cost the fleet its shared ticket.


/** `shared`, each call's name and key pushed to `calls`; a call `fail` names an error for rejects with it. */
function counting(shared: MemoryCache, calls: string[], fail: (key: string) => Error | undefined = () => undefined): TokenCache {
  return new Proxy(shared, {
    get(target, name) {
      const value = Reflect.get(target, name, target);
      if (typeof value !== 'function' || name === 'watch') return typeof value === 'function' ? value.bind(target) : value;
      return (key: string, ...rest: unknown[]) => {
        calls.push(`${String(name)} ${key}`);
        const error = fail(key);
        return error ? Promise.reject(error) : value.call(target, key, ...rest);
      };
    },
  }) as unknown as TokenCache;
}

function ticketKeyOf(appId: string): string {
  return nativeSchema().ticketKey({ kind: 'official_account', appId, endpoint: 'stable' }, 'jsapi');
}

function events(lines: { fields: unknown }[]): unknown[] {
  return lines.map((line) => (line.fields as { event?: unknown }).event);
}

describe("a store that fails at a ticket's end record only", () => {
  const failures = {
    // A Redis Cluster shard of its own, a proxy that refuses the key: the rest of the store answers.
    refused: () => Promise.reject(new Error('connect ECONNREFUSED')),
    'that never answers': () => new Promise<never>(() => undefined),
    'that answers something other than a string': () => Promise.resolve(42 as unknown as undefined),
  };
  for (const [name, fail] of Object.entries(failures)) {
    for (const call of ['get', 'set'] as const) {
      // What a write resolves is not read.
      if (call === 'set' && name === 'that answers something other than a string') continue;
      it(`${name} on ${call}: the ticket is fetched and shared, and the store is not taken for down`, async () => {
        await onMockClock(async (local, clock) => {
          const { appId, secret } = local.createApp();
          const shared = new MemoryCache({ now: clock.now });
          const cache = over(shared, {
            get: (key) => (call === 'get' && key.endsWith(':end') ? fail() : shared.get(key)),
            set: (key, value, ttl) => (call === 'set' && key.endsWith(':end') ? (fail() as Promise<void>) : shared.set(key, value, ttl)),
          });
          const logger = recordingLogger();
          const options = { appId, secret, baseUrl: local.url, cache, logger, now: clock.now, cacheTimeoutMs: 100 };
          const app = new OfficialAccount(options);
          const ticket = await app.jssdk.getTicket();
          expect(local.isTicketValid(appId, ticket)).toBe(true);
          // Shared: another process takes it from the store.
          expect(await shared.get(ticketKeyOf(appId))).toContain(ticket);
          expect(events(logger.lines)).not.toContain('cache.unavailable');
          const other = new OfficialAccount({ ...options, logger: false });
          expect(await other.jssdk.getTicket()).toBe(ticket);
          expect(local.counters(appId).ticketRequests).toBe(1);
          await Promise.all([app.close(), other.close()]);
        });
      });
    }
  }
});

describe("a ticket's end record that could not be read", () => {
  it('is not replaced by the end WeChat answered, which nobody checked: the next process that fetches the ticket keeps its end', async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const shared = new MemoryCache({ now: clock.now });
      let failReads = false;
      const cache = over(shared, { get: (key) => (failReads && key.endsWith(':end') ? Promise.reject(new Error('connect ECONNREFUSED')) : shared.get(key)) });
      const options = { appId, secret, baseUrl: local.url, cache, logger: false as const, now: clock.now, cacheTimeoutMs: 100 };
      const first = new OfficialAccount(options);
      const ticket = await first.jssdk.getTicket();
      await first.close();
      const record = await shared.get(endKey(ticketKeyOf(appId)));
      // Its entry has left the store; a process new to it fetches it again, and cannot read the record.
      clock.at(7000_000);
      failReads = true;
      const blind = new OfficialAccount(options);
      expect(await blind.jssdk.getTicket()).toBe(ticket);
      await blind.close();
      expect(await shared.get(endKey(ticketKeyOf(appId)))).toBe(record);
      // Its entry goes (an eviction); the next process reads the record, and keeps the ticket's end.
      await shared.delete(ticketKeyOf(appId));
      failReads = false;
      const next = new OfficialAccount(options);
      expect(await next.jssdk.getTicket()).toBe(ticket);
      clock.at(7260_000);
      const after = await next.jssdk.getTicket();
      expect(after).not.toBe(ticket);
      expect(local.isTicketValid(appId, after)).toBe(true);
      await next.close();
    });
  });
});

describe('a writer of a ticket that dies as it writes it', () => {
  it("once the first of its entry and its end record reached the store: a process that never read the entry keeps the ticket's end", async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const shared = new MemoryCache({ now: clock.now });
      const key = ticketKeyOf(appId);
      // The writer's process is killed as soon as one of the two writes reached the store: nothing of it
      // reaches the store after that.
      let dead = false;
      const dying = <A extends [string, ...unknown[]], R>(call: (...args: A) => Promise<R>, write = false) =>
        async (...args: A): Promise<R> => {
          if (dead) return new Promise<never>(() => undefined);
          const result = await call(...args);
          if (write && (args[0] === key || args[0] === endKey(key))) dead = true;
          return result;
        };
      const cache = over(shared, {
        get: dying((k: string) => shared.get(k)),
        set: dying((k: string, value: string, ttl: number) => shared.set(k, value, ttl), true),
        add: dying((k: string, value: string, ttl: number) => shared.add(k, value, ttl), true),
        compareAndSet: dying((k: string, expected: string, value: string, ttl: number) => shared.compareAndSet(k, expected, value, ttl), true),
        deleteIfEquals: dying((k: string, expected: string) => shared.deleteIfEquals(k, expected)),
      });
      const writer = new OfficialAccount({ appId, secret, baseUrl: local.url, cache, logger: false, now: clock.now, cacheTimeoutMs: 50, fallbackDir: false });
      await writer.jssdk.getTicket().catch(() => undefined);
      expect(dead).toBe(true);
      expect(local.counters(appId).ticketRequests).toBe(1);
      // A process started in the ticket's last minutes (its entry, if it was written, has left the store)
      // is handed the same ticket with expires_in 7200.
      clock.at(7000_000);
      const late = new OfficialAccount({ appId, secret, baseUrl: local.url, cache: shared, logger: false, now: clock.now });
      const handed = await late.jssdk.getTicket();
      expect(local.counters(appId).ticketRequests).toBe(2);
      // Kept for what is left of it: once it ended, the next one is served.
      clock.at(7260_000);
      expect(local.isTicketValid(appId, handed)).toBe(false);
      const next = await late.jssdk.getTicket();
      expect(local.isTicketValid(appId, next)).toBe(true);
      await Promise.all([late.close(), writer.close().catch(() => undefined)]);
    });
  });
});

describe("a ticket's end record", () => {
  it('costs a ticket fetch one read and one write at {key}:end, a refetch of a ticket this process knows one write; no access token or WeCom ticket fetch touches it', async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const calls: string[] = [];
      const cache = counting(new MemoryCache({ now: clock.now }), calls);
      const at = (key: string) => calls.filter((call) => call.endsWith(` ${key}`));
      for (const tokenEndpoint of ['stable', 'classic'] as const) {
        const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache, logger: false, now: clock.now, tokenEndpoint });
        await app.accessToken.getToken();
        await app.close();
      }
      expect(calls.filter((call) => call.endsWith(':end'))).toEqual([]);
      const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache, logger: false, now: clock.now, memoMs: 0 });
      await app.jssdk.getTicket();
      const end = endKey(ticketKeyOf(appId));
      expect(at(end)).toEqual([`get ${end}`, `set ${end}`]);
      // Its entry left the store (its TTL's margin): the same ticket is handed back, and its end is known here.
      calls.length = 0;
      clock.at(7000_000);
      await app.jssdk.getTicket();
      expect(local.counters(appId).ticketRequests).toBe(2);
      expect(at(end)).toEqual([`set ${end}`]);
      await app.close();
      // WeCom's ticket endpoints answer what is left: no record.
      calls.length = 0;
      const corp = local.createWorkApp();
      const work = new Work({ ...corp, baseUrl: local.url, cache, logger: false, now: clock.now });
      await work.jssdk.getTicket('jsapi');
      await work.jssdk.getTicket('agent_jsapi');
      expect(calls.length).toBeGreaterThan(0);
      expect(calls.filter((call) => call.endsWith(':end'))).toEqual([]);
      await work.close();
    });
  });

  const where: [string, () => KeySchema, ((key: string) => boolean)?][] = [
    ['wxJava', () => wxJava()],
    ['easyWeChat4', () => easyWeChat4()],
    ['easyWeChat6', () => easyWeChat6()],
    ['silenceper', () => silenceper()],
    ['wechatpy', () => wechatpy()],
    // A Redis hash of another program's at the key: the fleet shares its ticket beside it ({key}:wxkit).
    ["the native schema, the key holding another program's value", () => nativeSchema(), (key) => /^wechat:jsapi_ticket:wx[0-9a-f]+$/.test(key)],
  ];
  for (const [name, schema, otherKind] of where) {
    it(`is kept under the ticket's key (${name}): a process started in the ticket's last minutes keeps its end`, async () => {
      await onMockClock(async (local, clock) => {
        const { appId, secret } = local.createApp();
        const calls: string[] = [];
        const shared = new MemoryCache({ now: clock.now });
        const cache = counting(shared, calls, (key) => (otherKind?.(key) ? new CacheError('WRONGTYPE Operation against a key holding the wrong kind of value', { reason: 'type' }) : undefined));
        const options = { appId, secret, baseUrl: local.url, cache, schema: schema(), memoMs: 0, logger: false as const, now: clock.now };
        const writer = new OfficialAccount(options);
        const ticket = await writer.jssdk.getTicket();
        await writer.close();
        const key = options.schema.ticketKey({ kind: 'official_account', appId, endpoint: options.schema.defaultEndpoint ?? 'stable' }, 'jsapi');
        expect(await shared.get(endKey(key))).toContain('"value_digest"');
        if (otherKind) expect(await shared.get(besideKey(key))).toContain(ticket);
        // 100 s before the ticket's end its entry has left the store (its TTL's margin, or an eviction).
        clock.at(7100_000);
        await shared.delete(key);
        await shared.delete(besideKey(key));
        const late = new OfficialAccount(options);
        expect(await late.jssdk.getTicket()).toBe(ticket);
        expect(local.counters(appId).ticketRequests).toBe(2);
        clock.at(7260_000);
        const next = await late.jssdk.getTicket();
        expect(next).not.toBe(ticket);
        expect(local.isTicketValid(appId, next)).toBe(true);
        await late.close();
      });
    });
  }
});

describe("a ticket's end record and a forced refresh", () => {
  it('names its own ticket only: a new one another program got is served for its own life, and a refresh that gets the same one back keeps its end', async () => {
    await onMockClock(async (local, clock) => {
      const { appId, secret } = local.createApp();
      const cache = new MemoryCache({ now: clock.now });
      const options = { appId, secret, baseUrl: local.url, cache, memoMs: 0, logger: false as const, now: clock.now };
      const first = new OfficialAccount(options);
      const old = await first.jssdk.getTicket();
      await first.close();
      // Another program gets WeChat to hand out a new ticket; wx.config refuses the old one, and the page
      // asks for a new one. The old ticket's record says nothing of it.
      clock.at(1000_000);
      const issued = local.issueTicket(appId);
      const refreshing = new OfficialAccount(options);
      expect(await refreshing.jssdk.refreshTicket()).toBe(issued);
      await refreshing.close();
      // In its last minutes (its entry gone), a process that never saw it refreshes it: WeChat hands the
      // same one back with expires_in 7200, and its end stands.
      clock.at(8100_000);
      const late = new OfficialAccount(options);
      expect(await late.jssdk.refreshTicket()).toBe(issued);
      clock.at(8260_000);
      const next = await late.jssdk.getTicket();
      expect(next).not.toBe(issued);
      expect(local.isTicketValid(appId, next)).toBe(true);
      await late.close();
    });
  });
});

describe("a ticket's refresh lock", () => {
  it("covers the end record's two store calls in its lease (docs/key-schema.md: 35 s, a ticket's 39 s)", () => {
    // The HTTP call's wait for a connection and its exchange, 10 s each; store deadlines of 2 s.
    expect(leaseMs(20_000, 2_000)).toBe(35_000);
    expect(leaseMs(20_000, 2_000, true)).toBe(39_000);
  });
});
