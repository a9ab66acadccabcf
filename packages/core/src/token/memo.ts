import type { EncodedEntry, EntryStore } from './entry-store.js';
import { ALIVE_MARGIN_MS, NEAR_EXPIRY_MS } from './lifetime.js';
import type { StoredEntry } from './entry.js';
import type { ProtocolSettings, Refreshed } from './refresher.js';

interface Held {
  entry: StoredEntry;
  /** Unix ms when the entry leaves the store (its TTL), if known: refresh-ahead counts from here. */
  staleAt: number | undefined;
  /** Unix ms after which the store is read again. */
  recheckAt: number;
  /** Unix ms until which the value may be served while the store is down. */
  usableUntil: number;
  /** The value lives only in a fallback (or memory): offered to the shared store once it answers. */
  unshared?: EncodedEntry;
}

/** What this process holds of one entry, and for how long it may answer from it. */
export class Memo {
  readonly #entries: EntryStore;
  readonly #settings: ProtocolSettings;
  #held: Held | undefined;
  /** When (unix ms) this process last took an entry from the shared store. */
  #sharedAt: number | undefined;
  /** The value of that entry, or of the one this process last offered to the shared store since. */
  #sharedValue: string | undefined;

  constructor(entries: EntryStore, settings: ProtocolSettings) {
    this.#entries = entries;
    this.#settings = settings;
  }

  get entry(): StoredEntry | undefined {
    return this.#held?.entry;
  }

  get value(): string | undefined {
    return this.#held?.entry.value;
  }

  /** When the entry leaves the store (unix ms), if known. */
  get staleAt(): number | undefined {
    return this.#held?.staleAt;
  }

  /** The value fetched while the store was away, still to be offered to it. */
  get unshared(): EncodedEntry | undefined {
    return this.#held?.unshared;
  }

  /**
   * The value this process last took from the shared store (or offered to it since): older than a value
   * it fetched while the store was away, which came after it.
   */
  get sharedValue(): string | undefined {
    return this.#sharedValue;
  }

  /** The value, while the memo window lasts: no store read needed. */
  fresh(now: number): string | undefined {
    return this.#held && now < this.#held.recheckAt ? this.#held.entry.value : undefined;
  }

  /** The value, while it may still be used when the store cannot be read. */
  usable(now: number): string | undefined {
    return this.#held && now < this.#held.usableUntil ? this.#held.entry.value : undefined;
  }

  /** Forgets the value (all of it, or only if it is `value`). */
  forget(value?: string): void {
    if (value === undefined || this.#held?.entry.value === value) this.#held = undefined;
  }

  /** The unshared value reached the store. */
  published(): void {
    if (!this.#held) return;
    this.#held.unshared = undefined;
    this.#sharedValue = this.#held.entry.value;
  }

  /**
   * Holds a refresh's entry, unless the memo holds a newer token (a read that started before a refresh
   * may end after it) that is not `rejected`. Resolves the value held afterwards.
   */
  remember(refreshed: Refreshed, rejected: (value: string) => boolean): string {
    const previous = this.#held;
    const entry = withKnownDates(refreshed.entry, previous?.entry);
    if (previous && previous.entry.value !== entry.value && !rejected(previous.entry.value) && (previous.entry.fetchedAt ?? 0) > (entry.fetchedAt ?? Infinity)) {
      return previous.entry.value;
    }
    const { expiresAtMs, staleAtMs } = this.#entries.lifetime(entry);
    const now = this.#settings.now();
    const { memoMs } = this.#settings;
    // A value of a fallback is offered to the store by every process that holds it, not only by the one
    // that fetched it: whichever reads the store first once it answers shares it, rather than fetch.
    const unshared =
      refreshed.unshared ??
      (refreshed.tier === 'shared' ? undefined : previous?.entry.value === entry.value && previous.unshared ? previous.unshared : this.#offered(entry));
    if (refreshed.tier === 'shared') {
      this.#sharedAt = now;
      this.#sharedValue = entry.value;
    }
    // A value that came with its last 30 s begun (a token service hands out the value WeChat hands back
    // near its end, having nothing newer) is served until ALIVE_MARGIN_MS before it ends, as the fleet's
    // processes serve theirs: asked for again at every call, its source would get one request per call.
    const nearEnd = (expiresAtMs ?? Infinity) - NEAR_EXPIRY_MS;
    this.#held = {
      entry,
      staleAt: staleAtMs,
      // Never serve from memory past the point where the store itself would have dropped the entry.
      recheckAt: Math.min(now + memoMs, staleAtMs ?? Infinity, nearEnd > now ? nearEnd : expiresAtMs! - ALIVE_MARGIN_MS),
      // While the store is down, a value is usable until shortly before WeChat expires it; a format
      // without an expiry gets the memo window only.
      usableUntil: expiresAtMs === undefined ? now + memoMs : expiresAtMs - NEAR_EXPIRY_MS,
      ...(unshared ? { unshared } : {}),
    };
    return entry.value;
  }

  /**
   * `entry` as it would be written, for an entry read from a fallback; undefined when its dates are
   * unknown, or when it was fetched before this process last took an entry from the shared store (or it
   * never did): that one is no token of this outage, but a leftover of an earlier one, which the store
   * may have replaced since (WeChat having ended it), and which a store that came back empty must not get.
   */
  #offered(entry: StoredEntry): EncodedEntry | undefined {
    const { value, fetchedAt, expiresAt, fetchedBy } = entry;
    if (fetchedAt === undefined || expiresAt === undefined) return undefined;
    if (this.#sharedAt === undefined || fetchedAt < Math.floor(this.#sharedAt / 1000)) return undefined;
    try {
      return this.#entries.encode({ value, expiresIn: expiresAt - fetchedAt }, fetchedAt, fetchedBy ?? '');
    } catch {
      // A schema that cannot write it without WeChat's whole answer: the process that fetched it offers it.
      return undefined;
    }
  }
}

/**
 * `read`, with the dates `known` holds of the same token when `read` records no fetch time: a format
 * that stores the token bare (the PHP and Java profiles) says nothing of its age (its expiry, if any, is
 * only the store's TTL), but the process that fetched it knows both, and its refresh-ahead and its use
 * while the store is down count from them after every re-read.
 */
function withKnownDates(read: StoredEntry, known: StoredEntry | undefined): StoredEntry {
  if (read.fetchedAt !== undefined || known?.fetchedAt === undefined || known.value !== read.value) return read;
  return { ...known, ...read, fetchedAt: known.fetchedAt, expiresAt: known.expiresAt ?? read.expiresAt, fetchedBy: read.fetchedBy ?? known.fetchedBy };
}
