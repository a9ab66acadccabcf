/**
 * The part of `cache` that holds `key` (TokenCache.partition), or undefined for a store that fails as a
 * whole (or whose partition() throws). Typed by the one method it reads: `@wxkit/core/internal`, which
 * the CLI takes it from, then declares no store type of its own.
 */
export function partitionOf(cache: { readonly partition?: (key: string) => string }, key: string): string | undefined {
  const partition: unknown = cache.partition;
  if (typeof partition !== 'function') return undefined;
  try {
    const part: unknown = partition.call(cache, key);
    return typeof part === 'string' ? part : undefined;
  } catch {
    return undefined;
  }
}
