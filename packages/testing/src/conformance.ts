import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { TokenCache } from '@wxkit/core';
import type { StoreSpec } from './processes.js';
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
   * @default { add: true, deleteIfEquals: true, ttl: true, ttlMs: false }
   */
  supports?: { add?: boolean; deleteIfEquals?: boolean; ttl?: boolean; ttlMs?: boolean };
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
    it(`has the declared operations (add: ${supportsAdd}, deleteIfEquals: ${supportsDeleteIfEquals}, ttlMs: ${supportsTtlMs})`, () =>
      withCache(async (cache) => {
        expect(typeof cache.add === 'function').toBe(supportsAdd);
        expect(typeof cache.deleteIfEquals === 'function').toBe(supportsDeleteIfEquals);
        expect(typeof cache.ttlMs === 'function').toBe(supportsTtlMs);
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

    it('values come back byte for byte: 2 KiB, 64 KiB, non-ASCII, JSON, newlines and quotes', () =>
      withCache(async (cache) => {
        const values = [
          'x'.repeat(2048),
          `{"access_token":"${'A'.repeat(65_536)}"}`,
          '微信 access_token 令牌 🚀 e\u0301 \u0301',
          '{"access_token":"86_abc","expires_at":1764003600,"fetched_at":1763996400}',
          'line one\nline two\r\n"quoted" \'single\' \\ back\\slash\ttab',
          ' leading and trailing spaces ',
        ];
        for (const [i, value] of values.entries()) {
          const k = key(`bytes-${i}`);
          await cache.set(k, value, 60);
          const back = await cache.get(k);
          expect(back === undefined ? undefined : Buffer.from(back, 'utf8').equals(Buffer.from(value, 'utf8'))).toBe(true);
        }
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

    it.skipIf(!supportsTtlMs)('ttlMs() tells the life left, and undefined for an absent key', () =>
      withCache(async (cache) => {
        const k = key('ttl-ms');
        await cache.set(k, 'v', 60);
        const left = await cache.ttlMs!(k);
        expect(left).toBeGreaterThan(55_000);
        expect(left).toBeLessThanOrEqual(60_000);
        expect(await cache.ttlMs!(key('ttl-ms-missing'))).toBeUndefined();
      }));

    it('after close(), every method rejects with ERR_WXKIT_CACHE, and close() again resolves', async () => {
      const cache = await options.create();
      await cache.close?.();
      if (!cache.close) return expect(cache.close).toBeUndefined();
      const k = key('closed');
      const calls: Promise<unknown>[] = [cache.get(k), cache.set(k, 'v', 60), cache.delete(k)];
      if (cache.add) calls.push(cache.add(k, 'v', 60));
      if (cache.deleteIfEquals) calls.push(cache.deleteIfEquals(k, 'v'));
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
            child.once('exit', (code) => reject(new Error(`cache child exited (${code}) before it was ready`)));
          }),
      ),
    );
    const results = children.map(
      (child, index) =>
        new Promise<CacheChildResult & { index: number }>((resolve, reject) => {
          child.once('message', (message: CacheChildResult) => resolve({ ...message, index }));
          child.once('exit', (code) => reject(new Error(`cache child exited (${code}) without a result`)));
        }),
    );
    for (const child of children) child.send('go');
    return await Promise.all(results);
  } finally {
    for (const child of children) if (child.exitCode === null) child.kill();
  }
}
