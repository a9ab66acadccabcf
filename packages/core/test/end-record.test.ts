import { describe, expect, it } from 'vitest';
import { MemoryCache, OfficialAccount, nativeSchema, type TokenCache } from '../src/index.js';
import { endKey } from '../src/token/entry-store.js';
import { onMockClock, recordingLogger } from './helpers.js';

// A JS-SDK ticket's end record, `{key}:end` (docs/key-schema.md, "The end record"): kept beside the
// token protocol, best effort. What it must never do is cost the fleet its shared ticket.

/** `shared` with `methods` in place of its own. */
function over(shared: MemoryCache, methods: Partial<TokenCache>): TokenCache {
  return new Proxy(shared, {
    get(target, name) {
      if (name in methods) return (methods as Record<string | symbol, unknown>)[name];
      const value = Reflect.get(target, name, target);
      return typeof value === 'function' ? value.bind(target) : value;
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
