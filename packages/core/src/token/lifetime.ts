/**
 * An entry's life as every reader judges it, in one place for the library and the `wxkit` command. The
 * entry and the schema's TTL rule are passed as plain values (no schema types): `@wxkit/core/internal`
 * hands these to the CLI, and a type shared with the public entry point would move into a chunk both share.
 */

/** An entry is not served in its last 30 s: a request signed with it may arrive after it ends. */
export const NEAR_EXPIRY_MS = 30_000;

/**
 * A value WeChat hands back with too little life to keep (an endpoint that hands back its value until it
 * ends) is served until this close to its end: a call sent with it then still reaches WeChat before it ends.
 */
export const ALIVE_MARGIN_MS = 5_000;

/** The times an entry records, unix seconds. */
export interface EntryTimes {
  expiresAt?: number | undefined;
  fetchedAt?: number | undefined;
}

/**
 * WeChat's expiry (unix ms), and when the schema's TTL rule ends the entry (`ttlSeconds` of its
 * `expires_in`), known when it records fetched_at: a store without TTL, or one written with a longer TTL,
 * still holds it past that.
 */
export function lifetimeOf(entry: EntryTimes, ttlSeconds: (expiresIn: number) => number): { expiresAtMs: number | undefined; staleAtMs: number | undefined } {
  const { expiresAt, fetchedAt } = entry;
  return {
    expiresAtMs: expiresAt === undefined ? undefined : expiresAt * 1000,
    staleAtMs: expiresAt !== undefined && fetchedAt !== undefined && expiresAt > fetchedAt ? (fetchedAt + ttlSeconds(expiresAt - fetchedAt)) * 1000 : undefined,
  };
}

/** Whether an entry is served at `now` (unix ms): before its TTL rule ended it, and not within 30 s of WeChat's expiry. */
export function inLife(entry: EntryTimes, ttlSeconds: (expiresIn: number) => number, now: number): boolean {
  const { expiresAtMs, staleAtMs } = lifetimeOf(entry, ttlSeconds);
  return !((staleAtMs !== undefined && now >= staleAtMs) || (expiresAtMs !== undefined && expiresAtMs - now <= NEAR_EXPIRY_MS));
}
