/**
 * Rejects a TTL that no store can honour; wxkit itself never passes one. Every store checks the TTL it is
 * handed with this one rule (the adapters through `@wxkit/core/internal`), so they fail alike.
 */
export function assertTtl(store: string, ttlSeconds: number): void {
  if (typeof ttlSeconds !== 'number' || !Number.isFinite(ttlSeconds) || ttlSeconds <= 0) {
    throw new RangeError(`${store} ttlSeconds must be a finite number > 0 (got ${String(ttlSeconds)})`);
  }
}

/** A hundred years: what a store is asked to keep an entry for at most. */
const LONGEST_MS = 100 * 365 * 24 * 3600 * 1000;

/**
 * A TTL in whole milliseconds for a store that takes them (Redis's PX, a SQL column of expiry times, a
 * Keyv store), checked by assertTtl and held to a hundred years: a TTL meant as "for ever" (2 ** 53 s,
 * Number.MAX_VALUE) then keeps the entry on every store, where Redis and a SQL bigint would refuse it.
 */
export function storeTtlMs(store: string, ttlSeconds: number): number {
  assertTtl(store, ttlSeconds);
  return Math.min(Math.max(1, Math.ceil(ttlSeconds * 1000)), LONGEST_MS);
}
