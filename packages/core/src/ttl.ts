/**
 * Rejects a TTL that no store can honour; wxkit itself never passes one. Every store checks the TTL it is
 * handed with this one rule (the adapters through `@wxkit/core/internal`), so they fail alike.
 */
export function assertTtl(store: string, ttlSeconds: number): void {
  if (typeof ttlSeconds !== 'number' || !Number.isFinite(ttlSeconds) || ttlSeconds <= 0) {
    throw new RangeError(`${store} ttlSeconds must be a finite number > 0 (got ${String(ttlSeconds)})`);
  }
}
