import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { describe, expect, it, vi } from 'vitest';
import { nativeSchema, type TokenCache } from '@wxkit/core';
import { settleWithin, type StoreSpec } from './processes.js';
import type { CacheChildOp, CacheChildResult } from './cache-child.js';

/** Options of {@link describeTokenCache}. */
export interface DescribeTokenCacheOptions {
  /** A new client of the same shared store on every call (several may be open at once). */
  create: () => TokenCache | Promise<TokenCache>;
  /**
   * How a child process builds an equivalent client of the same store, for the cross-process tests.
   * Omit for a store that lives in one process. A function is called when the tests run, for stores
   * whose address is known only then.
   */
  shared?: StoreSpec | (() => StoreSpec | Promise<StoreSpec>);
  /** Seconds a store may keep an entry past its TTL (Memcached counts whole seconds). @default 1 */
  ttlSlackSeconds?: number;
  /**
   * Which optional atomic operations the store has. A test checks the instance matches; tests of an
   * operation the store lacks are skipped, and show as skipped.
   * `ttl: false` is for stores that keep entries until they are overwritten (wxkit's readers then go
   * by the expiry inside the value).
   * `ttlMs`: the optional remaining-life query.
   * `compareAndSet`: the optional atomic replace-if-equal.
   * `watch`: the optional write notifications (a waiter wakes on another's write instead of polling).
   * `partition`: the optional naming of the part (server) that holds a key, for stores that fail a part at a time.
   * @default { add: true, deleteIfEquals: true, compareAndSet: false, ttl: true, ttlMs: false, watch: false, partition: false }
   */
  supports?: { add?: boolean; deleteIfEquals?: boolean; compareAndSet?: boolean; ttl?: boolean; ttlMs?: boolean; watch?: boolean; partition?: boolean };
  /**
   * Stops and restarts the store's server, for the check that a store which is down rejects every
   * call (a miss would send every process to WeChat) and works again once it is back. Omit for stores
   * without a server.
   */
  outage?: { stop(): Promise<void>; start(): Promise<void> };
  /**
   * The bytes the store holds under `key`, read around the adapter (redis-cli, a raw client, the file),
   * or undefined when absent: the check that a value is stored byte for byte, as another language's
   * client reads it. Omit for a store that lives in one process; the test then shows as skipped.
   */
  rawBytes?: (key: string) => Promise<Buffer | undefined>;
  /**
   * The store keeps text, not bytes (a SQL TEXT column): values whose bytes are UTF-8 are held as that
   * text, and the raw-bytes check covers those only; other bytes are held in the adapter's own form and
   * must still come back byte for byte. @default false
   */
  textStore?: boolean;
}

/**
 * The TokenCache contract, as tests: every adapter runs this once in its own test file, then adds only
 * what is specific to its store. Each test uses its own random keys, so tests never depend on each
 * other's leftovers and no flush is needed. Where the instance has no `add` or `deleteIfEquals`, those
 * tests are skipped visibly, never counted as passes.
 *
 * @example
 * ```ts
 * describeTokenCache('FileCache', { create: () => new FileCache({ dir }) });
 * ```
 */
export function describeTokenCache(name: string, options: DescribeTokenCacheOptions): void {
  const slack = options.ttlSlackSeconds ?? 1;
  const supportsAdd = options.supports?.add ?? true;
  const supportsDeleteIfEquals = options.supports?.deleteIfEquals ?? true;
  const supportsTtl = options.supports?.ttl ?? true;
  const supportsTtlMs = options.supports?.ttlMs ?? false;
  const supportsCompareAndSet = options.supports?.compareAndSet ?? false;
  const supportsWatch = options.supports?.watch ?? false;
  const supportsPartition = options.supports?.partition ?? false;
  const textStore = options.textStore ?? false;

  const key = (label: string) => `wxkit-test:${randomBytes(6).toString('hex')}:${label}`;
  async function withCache<T>(fn: (cache: TokenCache) => Promise<T>): Promise<T> {
    const cache = await options.create();
    try {
      return await fn(cache);
    } finally {
      await cache.close?.();
    }
  }

  describe(`TokenCache conformance: ${name}`, () => {
    it(`has the declared operations (add: ${supportsAdd}, deleteIfEquals: ${supportsDeleteIfEquals}, compareAndSet: ${supportsCompareAndSet}, ttlMs: ${supportsTtlMs}, watch: ${supportsWatch}, partition: ${supportsPartition})`, () =>
      withCache(async (cache) => {
        expect(typeof cache.add === 'function').toBe(supportsAdd);
        expect(typeof cache.deleteIfEquals === 'function').toBe(supportsDeleteIfEquals);
        expect(typeof cache.compareAndSet === 'function').toBe(supportsCompareAndSet);
        expect(typeof cache.ttlMs === 'function').toBe(supportsTtlMs);
        expect(typeof cache.watch === 'function').toBe(supportsWatch);
        expect(typeof cache.partition === 'function').toBe(supportsPartition);
      }));

    it('get of a missing key resolves undefined', () =>
      withCache(async (cache) => {
        expect(await cache.get(key('missing'))).toBeUndefined();
      }));

    it('set then get returns the value; a second set overwrites it', () =>
      withCache(async (cache) => {
        const k = key('roundtrip');
        await cache.set(k, 'first', 60);
        expect(await cache.get(k)).toBe('first');
        await cache.set(k, 'second', 60);
        expect(await cache.get(k)).toBe('second');
      }));

    it('another client of the same store sees the value', async () => {
      const [a, b] = [await options.create(), await options.create()];
      try {
        const k = key('two-clients');
        await a.set(k, 'shared', 60);
        expect(await b.get(k)).toBe('shared');
      } finally {
        await Promise.all([a.close?.(), b.close?.()]);
      }
    });

    it('delete removes the key; deleting a missing key resolves', () =>
      withCache(async (cache) => {
        const k = key('delete');
        await cache.set(k, 'v', 60);
        await cache.delete(k);
        expect(await cache.get(k)).toBeUndefined();
        await expect(cache.delete(k)).resolves.toBeUndefined();
      }));

    it.skipIf(!supportsTtl)('an entry is gone once its TTL has passed; a longer one set at the same time stays', () =>
      withCache(async (cache) => {
        const [short, long] = [key('ttl-short'), key('ttl-long')];
        await cache.set(short, 'short', 1);
        await cache.set(long, 'long', 60);
        expect(await cache.get(short)).toBe('short');
        await until(async () => (await cache.get(short)) === undefined, (1 + slack) * 1000 + 1500);
        expect(await cache.get(short)).toBeUndefined();
        expect(await cache.get(long)).toBe('long');
      }));

    it('a fractional TTL is accepted', () =>
      withCache(async (cache) => {
        const k = key('fraction');
        await cache.set(k, 'v', 1.5);
        expect(await cache.get(k)).toBe('v');
      }));

    // A TTL no store can honour is the caller's bug: every store rejects it with the same RangeError
    // (core's assertTtl), never a CacheError that would take the store for down, and stores nothing.
    it(`set${supportsAdd ? ' and add' : ''} with a TTL of 0, -1 or NaN reject with a RangeError and store nothing`, () =>
      withCache(async (cache) => {
        for (const ttlSeconds of [0, -1, Number.NaN]) {
          const k = key(`bad-ttl-${ttlSeconds}`);
          await expect(cache.set(k, 'v', ttlSeconds)).rejects.toThrow(RangeError);
          if (supportsAdd) await expect(cache.add!(k, 'v', ttlSeconds)).rejects.toThrow(RangeError);
          expect(await cache.get(k)).toBeUndefined();
        }
      }));

    // A store's own limit (Redis's PX, a SQL bigint of milliseconds) is not the caller's business: a
    // TTL meant as "for ever" keeps the entry on every store, never a CacheError that takes it for down.
    it(`a TTL meant as "for ever" (1e16 s, 2 ** 53 s, Number.MAX_VALUE) keeps the entry${supportsAdd ? ', and add still lets one caller win' : ''}`, () =>
      withCache(async (cache) => {
        for (const ttlSeconds of [1e16, 2 ** 53, Number.MAX_VALUE]) {
          const k = key(`forever-${ttlSeconds}`);
          await cache.set(k, 'v', ttlSeconds);
          expect(await cache.get(k)).toBe('v');
          if (!supportsAdd) continue;
          expect(await cache.add!(`${k}:lock`, 'a', ttlSeconds)).toBe(true);
          expect(await cache.add!(`${k}:lock`, 'b', ttlSeconds)).toBe(false);
          expect(await cache.get(`${k}:lock`)).toBe('a');
        }
      }));

    it.skipIf(!supportsAdd && !supportsCompareAndSet)('a bad TTL is a RangeError whatever the key holds, for add and compareAndSet too', () =>
      withCache(async (cache) => {
        const k = key('bad-ttl-held');
        await cache.set(k, 'v', 60);
        if (supportsAdd) await expect(cache.add!(k, 'x', 0)).rejects.toThrow(RangeError);
        if (supportsCompareAndSet) {
          await expect(cache.compareAndSet!(k, 'other', 'x', -1)).rejects.toThrow(RangeError);
          await expect(cache.compareAndSet!(k, 'v', 'x', Number.NaN)).rejects.toThrow(RangeError);
        }
        expect(await cache.get(k)).toBe('v');
      }));

    it('values come back byte for byte: 2 KiB, 64 KiB, UTF-8 text, JSON, newlines and quotes', () =>
      withCache(async (cache) => {
        const values = [
          'x'.repeat(2048),
          `{"access_token":"${'A'.repeat(65_536)}"}`,
          // Values are binary strings: text goes in as its UTF-8 bytes, one character per byte.
          utf8('微信 access_token 令牌 🚀 e\u0301 \u0301'),
          '{"access_token":"86_abc","expires_at":1764003600,"fetched_at":1763996400}',
          'line one\nline two\r\n"quoted" \'single\' \\ back\\slash\ttab',
          ' leading and trailing spaces ',
        ];
        for (const [i, value] of values.entries()) {
          const k = key(`bytes-${i}`);
          await cache.set(k, value, 60);
          expect(await cache.get(k)).toBe(value);
        }
      }));

    it('all 256 byte values come back as they went in, alone and in an igbinary-shaped value', () =>
      withCache(async (cache) => {
        const every = Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('latin1');
        // igbinary: version 2 header, string8 type, a length byte of 0x88 (a 136-character token).
        const igbinary = Buffer.concat([Buffer.from([0, 0, 0, 2, 0x11, 0x88]), Buffer.alloc(136, 0x41)]).toString('latin1');
        const values = [every, every.split('').reverse().join(''), igbinary, '\u0000', '\u00ff\u00fe\u0080', '\u00e8\u00ae\u00a2'];
        for (const [i, value] of values.entries()) {
          const k = key(`bytes256-${i}`);
          await cache.set(k, value, 60);
          const back = await cache.get(k);
          expect(back?.length).toBe(value.length);
          expect(back === undefined ? undefined : Buffer.from(back, 'latin1').equals(Buffer.from(value, 'latin1'))).toBe(true);
        }
        if (supportsCompareAndSet) {
          const k = key('bytes256-cas');
          await cache.set(k, igbinary, 60);
          expect(await cache.compareAndSet!(k, igbinary, every, 60)).toBe(true);
          expect(await cache.get(k)).toBe(every);
        }
        if (supportsDeleteIfEquals) {
          const k = key('bytes256-cad');
          await cache.set(k, every, 60);
          expect(await cache.deleteIfEquals!(k, igbinary)).toBe(false);
          expect(await cache.deleteIfEquals!(k, every)).toBe(true);
          expect(await cache.get(k)).toBeUndefined();
        }
      }));

    it.skipIf(!options.rawBytes)(`the store holds the bytes themselves: a native entry with non-ASCII is its UTF-8 JSON${textStore ? '' : ', igbinary its bytes'}`, () =>
      withCache(async (cache) => {
        const k = key('raw-bytes');
        const encoded = nativeSchema().encode('access_token', 'TOKEN123', 7200, 1763996400, { fetchedBy: 'web-1:4242:订单服务' });
        await cache.set(k, encoded, 60);
        const json = '{"access_token":"TOKEN123","expires_at":1764003600,"fetched_at":1763996400,"fetched_by":"web-1:4242:订单服务"}';
        expect((await options.rawBytes!(k))?.toString('hex')).toBe(Buffer.from(json, 'utf8').toString('hex'));
        expect(nativeSchema().decode('access_token', (await cache.get(k))!)?.fetchedBy).toBe('web-1:4242:订单服务');
        if (textStore) return;
        const binary = Buffer.from([0, 0, 0, 2, 0x11, 0x88, 0xff, 0x00, 0xc3]);
        await cache.set(k, binary.toString('latin1'), 60);
        expect((await options.rawBytes!(k))?.toString('hex')).toBe(binary.toString('hex'));
      }));

    it('keys with colons, slashes, dots, percent signs and unicode are distinct and work', () =>
      withCache(async (cache) => {
        const base = key('shape');
        // No spaces or control characters: no schema key has them, and memcached forbids them.
        const suffixes = [':a:b', '/a/b', 'a%2Fb', '../../x', '..', '%', '%%', '微信', '~guard', '.hidden', 'A', 'a', 'x'.repeat(200)];
        for (const [i, suffix] of suffixes.entries()) await cache.set(`${base}${suffix}`, `value-${i}`, 60);
        for (const [i, suffix] of suffixes.entries()) expect(await cache.get(`${base}${suffix}`)).toBe(`value-${i}`);
      }));

    it.skipIf(!supportsAdd || !supportsTtl)('add stores only when absent, again after delete and after expiry', () =>
      withCache(async (cache) => {
        const k = key('add');
        expect(await cache.add!(k, 'one', 60)).toBe(true);
        expect(await cache.add!(k, 'two', 60)).toBe(false);
        expect(await cache.get(k)).toBe('one');
        await cache.delete(k);
        expect(await cache.add!(k, 'three', 60)).toBe(true);
        expect(await cache.get(k)).toBe('three');
        const expiring = key('add-expiry');
        expect(await cache.add!(expiring, 'old', 1)).toBe(true);
        await until(async () => (await cache.get(expiring)) === undefined, (1 + slack) * 1000 + 1500);
        expect(await cache.add!(expiring, 'new', 60)).toBe(true);
        expect(await cache.get(expiring)).toBe('new');
      }));

    it.skipIf(!supportsAdd)('50 concurrent adds through 5 clients: exactly one winner, and its value is stored', async () => {
      const clients = await Promise.all(Array.from({ length: 5 }, () => options.create()));
      try {
        const k = key('add-race');
        const results = await Promise.all(
          Array.from({ length: 50 }, (_, i) => clients[i % 5]!.add!(k, `owner-${i}`, 60).then((won) => ({ won, i }))),
        );
        const winners = results.filter((r) => r.won);
        expect(winners).toHaveLength(1);
        expect(await clients[0]!.get(k)).toBe(`owner-${winners[0]!.i}`);
      } finally {
        await Promise.all(clients.map((client) => client.close?.()));
      }
    });

    it.skipIf(!options.shared || !supportsAdd)(
      'add across 4 processes started together: exactly one winner',
      async () => {
        const spec = typeof options.shared === 'function' ? await options.shared() : options.shared!;
        const k = key('add-processes');
        const results = await inChildren(spec, 4, (i) => ({ op: 'add', key: k, value: `process-${i}`, ttlSeconds: 60 }));
        const winners = results.filter((r) => r.result === true);
        expect(results.every((r) => r.error === undefined)).toBe(true);
        expect(winners).toHaveLength(1);
        await withCache(async (cache) => expect(await cache.get(k)).toBe(`process-${winners[0]!.index}`));
      },
    );

    it.skipIf(!supportsDeleteIfEquals)(
      'deleteIfEquals deletes only an equal value',
      () =>
        withCache(async (cache) => {
          const k = key('die');
          await cache.set(k, 'current', 60);
          expect(await cache.deleteIfEquals!(k, 'other')).toBe(false);
          expect(await cache.get(k)).toBe('current');
          expect(await cache.deleteIfEquals!(k, 'current')).toBe(true);
          expect(await cache.get(k)).toBeUndefined();
          expect(await cache.deleteIfEquals!(k, 'current')).toBe(false);
        }),
    );

    it.skipIf(!supportsDeleteIfEquals)(
      '20 concurrent deleteIfEquals of one value: exactly one true',
      async () => {
        const clients = await Promise.all(Array.from({ length: 4 }, () => options.create()));
        try {
          const k = key('die-race');
          await clients[0]!.set(k, 'lock-owner', 60);
          const results = await Promise.all(Array.from({ length: 20 }, (_, i) => clients[i % 4]!.deleteIfEquals!(k, 'lock-owner')));
          expect(results.filter(Boolean)).toHaveLength(1);
          expect(await clients[0]!.get(k)).toBeUndefined();
        } finally {
          await Promise.all(clients.map((client) => client.close?.()));
        }
      },
    );

    it.skipIf(!supportsDeleteIfEquals)(
      'deleteIfEquals racing a set of a newer value never removes the newer value',
      async () => {
        const [a, b] = [await options.create(), await options.create()];
        try {
          for (let round = 0; round < 30; round += 1) {
            const k = key(`die-vs-set-${round}`);
            await a.set(k, 'old', 60);
            await Promise.all([a.deleteIfEquals!(k, 'old'), b.set(k, 'new', 60)]);
            // Either order is fine: delete-then-set leaves "new"; set-then-delete finds "new" and keeps it.
            expect(await a.get(k)).toBe('new');
          }
        } finally {
          await Promise.all([a.close?.(), b.close?.()]);
        }
      },
    );

    it.skipIf(!supportsCompareAndSet)('compareAndSet replaces only an equal value, never creates an absent key, and sets the new TTL', () =>
      withCache(async (cache) => {
        const k = key('cas');
        expect(await cache.compareAndSet!(k, 'anything', 'new', 60)).toBe(false);
        expect(await cache.get(k)).toBeUndefined();
        await cache.set(k, 'current', 60);
        expect(await cache.compareAndSet!(k, 'other', 'new', 60)).toBe(false);
        expect(await cache.get(k)).toBe('current');
        expect(await cache.compareAndSet!(k, 'current', 'next', 60)).toBe(true);
        expect(await cache.get(k)).toBe('next');
        expect(await cache.compareAndSet!(k, 'current', 'again', 60)).toBe(false);
        expect(await cache.get(k)).toBe('next');
        if (supportsTtl) {
          // The replacement carries its own TTL: a short one ends the entry.
          expect(await cache.compareAndSet!(k, 'next', 'short', 1)).toBe(true);
          await until(async () => (await cache.get(k)) === undefined, (1 + slack) * 1000 + 1500);
          expect(await cache.get(k)).toBeUndefined();
        }
      }));

    it.skipIf(!supportsCompareAndSet || !supportsTtl)('compareAndSet of a value onto itself moves its expiry (how a lock is renewed)', () =>
      withCache(async (cache) => {
        const [renewed, sibling] = [key('renewed'), key('sibling')];
        await Promise.all([cache.set(renewed, 'owner', 1), cache.set(sibling, 'owner', 1)]);
        expect(await cache.compareAndSet!(renewed, 'owner', 'owner', 60)).toBe(true);
        // Once the sibling's TTL has passed, the renewed key's first one has too.
        await until(async () => (await cache.get(sibling)) === undefined, (1 + slack) * 1000 + 1500);
        expect(await cache.get(renewed)).toBe('owner');
      }));

    it.skipIf(!supportsCompareAndSet)('30 concurrent compareAndSet of one value through 3 clients: exactly one wins, and its value is stored', async () => {
      const clients = await Promise.all(Array.from({ length: 3 }, () => options.create()));
      try {
        const k = key('cas-race');
        await clients[0]!.set(k, 'base', 60);
        const results = await Promise.all(
          Array.from({ length: 30 }, (_, i) => clients[i % 3]!.compareAndSet!(k, 'base', `writer-${i}`, 60).then((won) => ({ won, i }))),
        );
        const winners = results.filter((r) => r.won);
        expect(winners).toHaveLength(1);
        expect(await clients[1]!.get(k)).toBe(`writer-${winners[0]!.i}`);
      } finally {
        await Promise.all(clients.map((client) => client.close?.()));
      }
    });

    it.skipIf(!options.shared || !supportsCompareAndSet)('compareAndSet across 4 processes started together: exactly one winner', async () => {
      const spec = typeof options.shared === 'function' ? await options.shared() : options.shared!;
      const k = key('cas-processes');
      await withCache((cache) => cache.set(k, 'base', 60));
      const results = await inChildren(spec, 4, (i) => ({ op: 'compareAndSet', key: k, expected: 'base', value: `process-${i}`, ttlSeconds: 60 }));
      expect(results.map((r) => r.error)).toEqual([undefined, undefined, undefined, undefined]);
      const winners = results.filter((r) => r.result === true);
      expect(winners).toHaveLength(1);
      await withCache(async (cache) => expect(await cache.get(k)).toBe(`process-${winners[0]!.index}`));
    });

    it.skipIf(!options.shared)('a process that used the store and closed it exits on its own, without process.exit()', async () => {
      const spec = typeof options.shared === 'function' ? await options.shared() : options.shared!;
      const k = key('exit');
      const ops: CacheChildOp[] = [
        { op: 'set', key: k, value: 'v', ttlSeconds: 60 },
        { op: 'get', key: k },
      ];
      if (supportsAdd) ops.push({ op: 'add', key: `${k}:lock`, value: 'owner', ttlSeconds: 60 });
      if (supportsDeleteIfEquals) ops.push({ op: 'deleteIfEquals', key: `${k}:lock`, value: 'owner' });
      const { code, results, resources } = await childThatExitsByItself(spec, ops);
      expect(results.map((r) => r.error)).toEqual(ops.map(() => undefined));
      expect(results[1]!.result).toBe('v');
      // The child never calls process.exit(): it ends only when nothing the store opened keeps it alive.
      // `resources` is what it still had open right after close(), shown when it did not exit.
      expect({ code, resources: code === 0 ? [] : resources }).toEqual({ code: 0, resources: [] });
    });

    // watch() is best effort and may call onChange more often than there were writes (a subscriber that
    // just connected tells every watcher to look), never less: these tests count calls, at least one per
    // write, and wait for them as events (a bound on a failure, not a measurement).
    const calledAtLeast = (count: () => number, n: number) => vi.waitFor(() => expect(count()).toBeGreaterThanOrEqual(n), { timeout: 10_000, interval: 5 });

    it.skipIf(!supportsWatch)('watch: every kind of write or delete of the key, by another client or this one, calls onChange', () =>
      withCache(async (watcher) =>
        withCache(async (writer) => {
          const k = key('watch');
          // A store may need a first use before it can watch (FileCache makes its directory then).
          await watcher.set(key('first-use'), 'x', 60);
          let calls = 0;
          const stop = watcher.watch!(k, () => (calls += 1));
          try {
            const writes: [string, () => Promise<unknown>][] = [
              ['set by another client', () => writer.set(k, 'one', 60)],
              ['set by the watching client', () => watcher.set(k, 'two', 60)],
              ['delete', () => writer.delete(k)],
            ];
            if (supportsAdd) writes.push(['add', () => writer.add!(k, 'three', 60)]);
            if (supportsCompareAndSet) writes.push(['compareAndSet', () => writer.compareAndSet!(k, 'three', 'four', 60)]);
            if (supportsDeleteIfEquals) writes.push(['deleteIfEquals', () => writer.deleteIfEquals!(k, supportsCompareAndSet ? 'four' : 'three')]);
            for (const [what, write] of writes) {
              const before = calls;
              await write();
              await calledAtLeast(() => calls, before + 1).catch(() => {
                throw new Error(`watch() was not told of ${what}`);
              });
            }
          } finally {
            stop();
          }
        }),
      ));

    it.skipIf(!supportsWatch)('watch: after unsubscribing, onChange is no longer called; another watcher of the key still is', () =>
      withCache(async (watcher) =>
        withCache(async (writer) => {
          const k = key('unwatch');
          let stopped = 0;
          let kept = 0;
          const stop = watcher.watch!(k, () => (stopped += 1));
          const keep = watcher.watch!(k, () => (kept += 1));
          try {
            await writer.set(k, 'one', 60);
            await calledAtLeast(() => stopped, 1);
            stop();
            const [stoppedBefore, keptBefore] = [stopped, kept];
            await writer.set(k, 'two', 60);
            // The watcher still subscribed hears of the write: had the other one been, it would have too.
            await calledAtLeast(() => kept, keptBefore + 1);
            expect(stopped).toBe(stoppedBefore);
            stop(); // twice: harmless
          } finally {
            keep();
          }
        }),
      ));

    it.skipIf(!supportsWatch || !options.shared)('watch: a write from another process calls onChange', () =>
      withCache(async (watcher) => {
        const spec = typeof options.shared === 'function' ? await options.shared() : options.shared!;
        const k = key('watch-process');
        let calls = 0;
        const stop = watcher.watch!(k, () => (calls += 1));
        try {
          // A first write from here: once it is reported, the subscription is in place.
          await watcher.set(k, 'here', 60);
          await calledAtLeast(() => calls, 1);
          const before = calls;
          const [result] = await inChildren(spec, 1, () => ({ op: 'set', key: k, value: 'there', ttlSeconds: 60 }));
          expect(result!.error).toBeUndefined();
          await calledAtLeast(() => calls, before + 1);
          expect(await watcher.get(k)).toBe('there');
        } finally {
          stop();
        }
      }));

    it.skipIf(!supportsTtlMs)('ttlMs() tells the life left, and undefined for an absent key', () =>
      withCache(async (cache) => {
        const k = key('ttl-ms');
        await cache.set(k, 'v', 60);
        const left = await cache.ttlMs!(k);
        expect(left).toBeGreaterThan(55_000);
        expect(left).toBeLessThanOrEqual(60_000);
        expect(await cache.ttlMs!(key('ttl-ms-missing'))).toBeUndefined();
      }));

    it.skipIf(!supportsPartition)('partition() names a part for each key, the same for an entry and each of its companions', () =>
      withCache(async (cache) => {
        for (const entry of [key('part'), `${key('part')}-other`, key('access_token:wx0123456789abcdef')]) {
          const part = cache.partition!(entry);
          expect(typeof part).toBe('string');
          for (const companion of [':lock', ':failed', ':refetch', ':forced', ':end', ':wxkit', ':wxkit:lock', ':wxkit:failed']) {
            expect(cache.partition!(`${entry}${companion}`), `${entry}${companion}`).toBe(part);
          }
        }
      }));

    it.skipIf(!options.outage)('while the server is down every call rejects with ERR_WXKIT_CACHE, never a miss; once it is back the same client works', async () => {
      const cache = await options.create();
      const k = key('outage');
      try {
        await cache.set(k, 'before', 60);
        await options.outage!.stop();
        const calls: Promise<unknown>[] = [cache.get(k), cache.set(k, 'v', 60), cache.delete(k)];
        if (cache.add) calls.push(cache.add(`${k}:lock`, 'v', 60));
        if (cache.deleteIfEquals) calls.push(cache.deleteIfEquals(`${k}:lock`, 'v'));
        if (cache.compareAndSet) calls.push(cache.compareAndSet(k, 'before', 'w', 60));
        const settled = await Promise.allSettled(calls);
        expect(settled.map((call) => call.status)).toEqual(calls.map(() => 'rejected'));
        for (const call of settled) expect((call as PromiseRejectedResult).reason).toMatchObject({ code: 'ERR_WXKIT_CACHE' });
        await options.outage!.start();
        await until(async () => (await cache.set(k, 'after', 60).then(() => true, () => false)), 10_000);
        expect(await cache.get(k)).toBe('after');
      } finally {
        await cache.close?.();
      }
    });

    it('after close(), every method rejects with ERR_WXKIT_CACHE, and close() again resolves', async () => {
      const cache = await options.create();
      await cache.close?.();
      if (!cache.close) return expect(cache.close).toBeUndefined();
      const k = key('closed');
      const calls: Promise<unknown>[] = [cache.get(k), cache.set(k, 'v', 60), cache.delete(k)];
      if (cache.add) calls.push(cache.add(k, 'v', 60));
      if (cache.deleteIfEquals) calls.push(cache.deleteIfEquals(k, 'v'));
      if (cache.compareAndSet) calls.push(cache.compareAndSet(k, 'v', 'w', 60));
      for (const call of await Promise.allSettled(calls)) {
        expect(call.status).toBe('rejected');
        expect((call as PromiseRejectedResult).reason).toMatchObject({ code: 'ERR_WXKIT_CACHE' });
      }
      await expect(cache.close()).resolves.toBeUndefined();
    });
  });
}

/** Polls `condition` every 100 ms until it holds or `timeoutMs` passes. */
async function until(condition: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const started = Date.now();
  while (!(await condition()) && Date.now() - started < timeoutMs) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Every write of `cache` with a value no store can hold (a character above U+00FF) or a bad TTL (0,
 * -1, NaN): what each rejected with (undefined for one that resolved). A store refuses each with a
 * RangeError, before any request: give it a server that is not there to show that none was sent.
 */
export async function badWriteRefusals(cache: TokenCache): Promise<unknown[]> {
  const calls = await Promise.allSettled([
    cache.set('k', '\u4e2d', 60),
    cache.add?.('k', '\u4e2d', 60),
    cache.deleteIfEquals?.('k', '\u4e2d'),
    cache.compareAndSet?.('k', 'v', '\u4e2d', 60),
    cache.set('k', 'v', 0),
    cache.add?.('k', 'v', -1),
    cache.compareAndSet?.('k', 'v', 'w', Number.NaN),
  ]);
  return calls.map((call) => (call.status === 'rejected' ? call.reason : undefined));
}

/**
 * Runs `ops` in a child process that then closes its store and lets go of its parent, without calling
 * process.exit(): it exits only if the store left nothing open. Resolves its exit code (null when it had
 * not exited `graceMs` after it closed the store, and was killed) and the resources it still held right
 * after close() (`process.getActiveResourcesInfo()`), to tell what kept it alive.
 */
export async function childThatExitsByItself(
  spec: StoreSpec,
  ops: CacheChildOp[],
  graceMs = 15_000,
): Promise<{ code: number | null; results: CacheChildResult[]; resources: string[] }> {
  const script = fileURLToPath(new URL('./cache-child.js', import.meta.url));
  const child = fork(script, [], {
    env: { ...process.env, WXKIT_CACHE_CHILD: JSON.stringify({ spec, ops, exitByItself: true }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  // 'close', not 'exit': a report sent just before the child exits may still be in the channel at 'exit'.
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const report = new Promise<{ results: CacheChildResult[]; resources: string[] }>((resolve, reject) => {
    child.on('message', (message: { ready?: boolean; results?: CacheChildResult[]; resources?: string[] }) => {
      if (message.ready) child.send('go');
      else resolve({ results: message.results ?? [], resources: message.resources ?? [] });
    });
    void exited.then(() => reject(new Error('cache child exited without a report')));
  });
  // Bounds on a failure, not measurements: a child whose operations (or close()) never end, or that
  // still runs this long after close(), is reported with what it held, instead of timing the test out.
  const { results, resources } = await settleWithin(report, graceMs, { results: [], resources: ['(no report: the operations or close() never ended)'] });
  const code = await settleWithin(exited, graceMs, null);
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  return { code, results, resources };
}

/**
 * Runs one operation in each of `count` child processes, started together: each builds its client and
 * reports ready; only then are all told to go, so the operations race for real.
 */
export async function inChildren(
  spec: StoreSpec,
  count: number,
  op: (index: number) => CacheChildOp,
): Promise<(CacheChildResult & { index: number })[]> {
  const script = fileURLToPath(new URL('./cache-child.js', import.meta.url));
  const children = Array.from({ length: count }, (_, index) =>
    fork(script, [], { env: { ...process.env, WXKIT_CACHE_CHILD: JSON.stringify({ spec, op: op(index) }) }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
  );
  try {
    await Promise.all(
      children.map(
        (child) =>
          new Promise<void>((resolve, reject) => {
            child.once('message', () => resolve());
            child.once('close', (code) => reject(new Error(`cache child exited (${code}) before it was ready`)));
          }),
      ),
    );
    const results = children.map(
      (child, index) =>
        new Promise<CacheChildResult & { index: number }>((resolve, reject) => {
          child.once('message', (message: CacheChildResult) => resolve({ ...message, index }));
          // 'close': its result, sent just before it exits, may still be in the channel at 'exit'.
          child.once('close', (code) => reject(new Error(`cache child exited (${code}) without a result`)));
        }),
    );
    for (const child of children) child.send('go');
    return await Promise.all(results);
  } finally {
    for (const child of children) if (child.exitCode === null) child.kill();
  }
}

/** The binary string of a text's UTF-8 bytes, as a codec hands it to a store. */
function utf8(text: string): string {
  return Buffer.from(text, 'utf8').toString('latin1');
}
