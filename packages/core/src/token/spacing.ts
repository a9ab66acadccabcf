import type { GuardedStore } from '../store.js';

/**
 * Spacing of fetches that cost everyone else: a slot beside the entry, `{key}:{suffix}`, that a fetch
 * takes with an atomic write, and until whose end nobody takes another. docs/key-schema.md documents the
 * slots for other languages.
 */

const MINUTE_MS = 60_000;
const DAY_MS = 86_400_000;

/** The key of the fleet's pause of fetches after a rejected token: `{key}:refetch`, in every schema. */
export function refetchPauseKey(entryKey: string): string {
  return refetchPause(entryKey).key;
}

/**
 * That pause: a spacing slot beside the entry, which the holder of its lock reads and writes beside the
 * token protocol (its calls' failures are theirs alone: they do not take the store for down).
 */
export function refetchPause(entryKey: string): FetchSpacing {
  return new FetchSpacing(entryKey, 'refetch', true);
}

/** A pause as stored (docs/key-schema.md), or undefined when there is none or it cannot be read. */
export function decodePause(raw: string | undefined, now: number): SpacingSlot | undefined {
  return decodeSlot(raw, now);
}

/** The longest pause of fetches after rejected tokens. */
export const REFETCH_PAUSE_MAX_MS = 60_000;
// How far ahead of a reader's clock a writer's may be for its pause to count (as for a failure marker).
const PAUSE_CLOCK_AHEAD_MS = 60_000;

/**
 * The pause a reader keeps of a stored one, on its own clock: none for a slot of another kind, or one
 * that ends further ahead than its step and a minute (a clock far ahead, a value no wxkit wrote); else
 * its end held to one step from `now` (the writer's clock may be ahead of ours). So a host's clock holds
 * no one back by more than a step and a minute, and the store lets the slot go two steps after its write.
 */
export function heldPause(slot: SpacingSlot | undefined, now: number): { until: number; step: number } | undefined {
  if (slot === undefined || slot.reason !== undefined) return undefined;
  const step = Math.min(slot.step, REFETCH_PAUSE_MAX_MS);
  if (slot.until - now > step + PAUSE_CLOCK_AHEAD_MS) return undefined;
  return { until: Math.min(slot.until, now + step), step };
}

/** A spacing slot as stored: until when (unix ms), how long it was, and why it was closed early. */
export interface SpacingSlot {
  until: number;
  step: number;
  reason?: 'quota';
}

/**
 * Spacing of fetches that cost everyone else: WeChat's force_refresh (20 a day, ignored when less than
 * 30 s apart), classic fetches while the shared store is down (each invalidates the token the hosts
 * that cannot see it hold), and fetches that follow a rejected token (the fleet's pause, written under
 * the refresh lock). A fetch takes a slot with an atomic write; until the slot ends nobody takes another.
 */
export class FetchSpacing {
  readonly #entryKey: string;
  readonly #suffix: string;
  /** Read, put and released beside the token protocol (see refetchPause()); take() and block() are not. */
  readonly #beside: boolean;
  /** The last slot take() wrote or found past its end, and when (this process's clock) it first did. */
  #lingering: { raw: string; since: number } | undefined;

  constructor(entryKey: string, suffix: string, beside = false) {
    this.#entryKey = entryKey;
    this.#suffix = suffix;
    this.#beside = beside;
  }

  /** `{key}:{suffix}`, made when used: an idle account keeps no copy of it. */
  get key(): string {
    return `${this.#entryKey}:${this.#suffix}`;
  }

  async slot(store: GuardedStore, now: number): Promise<SpacingSlot | undefined> {
    return (await this.read(store, now)).slot;
  }

  /** The slot as stored, and decoded. */
  async read(store: GuardedStore, now: number): Promise<{ raw: string | undefined; slot: SpacingSlot | undefined }> {
    const raw = await (this.#beside ? store.getBeside(this.key) : store.get(this.key));
    return { raw, slot: decodeSlot(raw, now) };
  }

  /** Sets the slot's key, beside the token protocol or not as this spacing is. */
  #set(store: GuardedStore, value: string, ttlSeconds: number): Promise<void> {
    return this.#beside ? store.setBeside(this.key, value, ttlSeconds) : store.set(this.key, value, ttlSeconds);
  }

  /** When the current slot ends (unix ms), or undefined when a fetch may go now. */
  async busyUntil(store: GuardedStore, now: number): Promise<number | undefined> {
    const slot = await this.slot(store, now);
    return slot && slot.until > now ? slot.until : undefined;
  }

  /**
   * Takes the slot for `pauseMs`, doubling the pause (up to `maxMs`) while slots follow each other
   * closely. Resolves the slot as written (for {@link release}), or undefined when someone holds a slot
   * that has not ended.
   */
  async take(store: GuardedStore, now: number, pauseMs: number, maxMs = pauseMs): Promise<string | undefined> {
    const raw = await store.get(this.key);
    const previous = decodeSlot(raw, now);
    if (previous && previous.until > now) return undefined;
    // The store lets a slot go two steps after its write: one still there whose end lies more than a step
    // behind this clock was written by a clock behind ours, at most two steps ago. It may not have ended.
    // Unless this process has seen that very slot stored for longer than a store keeps one: a store that
    // keeps entries past their TTL (a Keyv store without TTL support) would otherwise stop forced fetches for good.
    if (previous && previous.reason === undefined && now - previous.until >= previous.step && !this.#outlived(raw!, previous.step, now)) return undefined;
    const step = previous ? Math.min(previous.step * 2, maxMs) : pauseMs;
    const value = JSON.stringify({ until: now + step, step });
    // The slot is remembered for one more step after it ends, so the next one in a row grows.
    const ttlSeconds = (2 * step) / 1000;
    let taken: string | undefined = value;
    if (raw !== undefined) taken = (await store.compareAndSet(this.key, raw, value, ttlSeconds)) ? value : undefined;
    else {
      const added = store.add(this.key, value, ttlSeconds);
      if (added !== undefined) taken = (await added) ? value : undefined;
      else await store.set(this.key, value, ttlSeconds);
    }
    if (taken !== undefined) this.#lingering = { raw: taken, since: now };
    return taken;
  }

  /**
   * Whether this process has seen the slot `raw` stored for longer than a store keeps a slot (two steps,
   * and a step more for a store that drops it late), by its own clock: then the store keeps entries past
   * their TTL, and the slot ended long ago. The first sight of a slot starts the count.
   */
  #outlived(raw: string, step: number, now: number): boolean {
    if (this.#lingering?.raw !== raw) {
      this.#lingering = { raw, since: now };
      return false;
    }
    return now - this.#lingering.since >= 3 * step;
  }

  /**
   * Writes the slot from `now` for `step` ms, whatever the store held: for a writer that holds the
   * entry's refresh lock, which has read the slot under it and decided. Remembered one more step after it
   * ends, as take()'s. `value` is what it writes (see restore()); `written` settles when the write does.
   */
  put(store: GuardedStore, now: number, step: number): { value: string; written: Promise<void> } {
    const value = JSON.stringify({ until: now + step, step });
    const ttlSeconds = (2 * step) / 1000;
    return { value, written: this.#set(store, value, ttlSeconds) };
  }

  /**
   * Takes back a slot put() wrote (`ours`), by the holder of the lock it was written under: the slot it
   * replaced (`previous`, as read under the same lock) goes back while still remembered (until its end
   * and one step more, on this clock), else ours is deleted if the store holds it. Sent whatever ours's
   * write answered: a write that timed out may still have landed.
   */
  async restore(store: GuardedStore, ours: string, previous: string | undefined, now: number): Promise<void> {
    const slot = decodeSlot(previous, now);
    const leftMs = slot === undefined || slot.reason !== undefined ? 0 : Math.min(slot.until + slot.step - now, 2 * slot.step);
    if (previous !== undefined && leftMs >= 1000) {
      await this.#set(store, previous, Math.floor(leftMs / 1000));
      return;
    }
    await this.release(store, ours);
  }

  /** Gives back a slot `take()` or `put()` wrote, if the store still holds it: the fetch it was for never left, or fetched nothing. */
  async release(store: GuardedStore, taken: string): Promise<void> {
    await (this.#beside ? store.deleteBesideIfEquals(this.key, taken) : store.deleteIfEquals(this.key, taken));
  }

  /** Closes the slot until `until`: after a 45009 on a forced fetch, none before the quota day ends. */
  async block(store: GuardedStore, now: number, until: number, reason: 'quota'): Promise<void> {
    await store.set(this.key, JSON.stringify({ until, step: until - now, reason }), (until - now) / 1000).catch(() => undefined);
  }
}

/**
 * The slot stored, or none when it is unreadable or ends further ahead than any slot can: the longest
 * is a quota's, to the next Beijing midnight (a day at most), and a minute more for clocks that differ.
 * A slot dated beyond that (a peer's garbage, a clock far ahead) would stop forced fetches for good.
 */
function decodeSlot(raw: string | undefined, now: number): SpacingSlot | undefined {
  if (raw === undefined) return undefined;
  try {
    const parsed = JSON.parse(raw) as { until?: unknown; step?: unknown; reason?: unknown };
    if (typeof parsed.until !== 'number' || typeof parsed.step !== 'number' || !(parsed.step > 0)) return undefined;
    if (!(parsed.until <= now + DAY_MS + MINUTE_MS) || !(parsed.step <= DAY_MS + MINUTE_MS)) return undefined;
    return { until: parsed.until, step: parsed.step, ...(parsed.reason === 'quota' ? { reason: 'quota' as const } : {}) };
  } catch {
    return undefined;
  }
}
