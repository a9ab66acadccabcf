import { MemoryCache, type TokenCache } from '@wxkit/core';

/** A store that can be taken down and brought back, for outage tests in one process. */
export interface SwitchableStore {
  /** The TokenCache to hand to a client: every call fails with ECONNREFUSED while the store is down. */
  readonly cache: TokenCache;
  /** What the store holds, reachable whether it is up or down. */
  readonly inner: MemoryCache;
  down(): void;
  up(): void;
}

/**
 * A MemoryCache behind a switch: while down, every call rejects as a refused connection would. Its
 * operations are those of the stores that hold a lock (`add`, `deleteIfEquals`, `compareAndSet`).
 */
export function switchableStore({ up = true }: { up?: boolean } = {}): SwitchableStore {
  const inner = new MemoryCache();
  let isUp = up;
  const gate =
    <A extends unknown[], R>(fn: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      if (!isUp) throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
      return fn(...args);
    };
  const cache: TokenCache = {
    get: gate((key: string) => inner.get(key)),
    set: gate((key: string, value: string, ttl: number) => inner.set(key, value, ttl)),
    delete: gate((key: string) => inner.delete(key)),
    add: gate((key: string, value: string, ttl: number) => inner.add(key, value, ttl)),
    deleteIfEquals: gate((key: string, expected: string) => inner.deleteIfEquals(key, expected)),
    compareAndSet: gate((key: string, expected: string, value: string, ttl: number) => inner.compareAndSet(key, expected, value, ttl)),
  };
  return {
    cache,
    inner,
    down: () => void (isUp = false),
    up: () => void (isUp = true),
  };
}
