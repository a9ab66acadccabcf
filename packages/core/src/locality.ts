/**
 * Where a store keeps its entries, for the stores that say: this process's (a MemoryCache), or this
 * host's, in a directory (a FileCache). Told by a brand, `Symbol.for('wxkit.cache.locality')`, rather
 * than by `instanceof`: a program that loads both the ESM and the CJS build of `@wxkit/core` has two
 * copies of each class, and a wrapper of a store (wxkit serve's, which counts its reads) is no instance
 * of it, though each keeps its entries where the store does.
 */
export type Locality = { readonly scope: 'process' } | { readonly scope: 'host'; readonly dir: string };

const LOCALITY = Symbol.for('wxkit.cache.locality');

/** Brands `cache` with where it keeps its entries (not enumerable, not writable). */
export function markLocality(cache: object, locality: Locality): void {
  Object.defineProperty(cache, LOCALITY, { value: Object.freeze({ ...locality }) });
}

/** Where `cache` keeps its entries, if it says. */
export function localityOf(cache: unknown): Locality | undefined {
  if (typeof cache !== 'object' || cache === null) return undefined;
  const locality = (cache as Record<symbol, unknown>)[LOCALITY] as Locality | undefined;
  if (locality?.scope === 'process') return locality;
  if (locality?.scope === 'host' && typeof locality.dir === 'string') return locality;
  return undefined;
}
