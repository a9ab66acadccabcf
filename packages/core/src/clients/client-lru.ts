import { releaseClient, type WeChatClient } from './wechat-client.js';

/**
 * Clients kept by id for the apps that hold many (OpenPlatform's authorizers, ClientPool's accounts):
 * at most `maxClients`, none unused for longer than `idleMs`. Eviction happens when the map is used,
 * never on a timer, so 10,000 idle accounts cost no timers and keep no event loop awake.
 *
 * A Map iterates in insertion order; a client is re-inserted when used, so the first entries are the
 * least recently used ones and a sweep stops at the first one that stays.
 * @internal
 */
export class ClientLru<T> {
  readonly #entries = new Map<string, { value: T; usedAt: number }>();
  readonly #maxClients: number;
  readonly #idleMs: number;
  readonly #now: () => number;
  readonly #drop: (value: T, id: string) => void;

  constructor(options: { maxClients: number; idleMs: number; now: () => number; drop: (value: T, id: string) => void }) {
    this.#maxClients = options.maxClients;
    this.#idleMs = options.idleMs;
    this.#now = options.now;
    this.#drop = options.drop;
  }

  get size(): number {
    return this.#entries.size;
  }

  /**
   * The client held for `id`, marked as used now; the other idle ones are dropped first. One of `id` unused
   * past idleMs is forgotten and handed back as `idle`, not dropped: its caller makes a new one, and may
   * carry over what the old one learnt. Its own idleness is judged by its own last use, not by where a
   * sweep stops (a clock set back leaves entries out of order).
   */
  get(id: string): { value: T; idle: boolean } | undefined {
    const now = this.#now();
    const held = this.#entries.get(id);
    // Out of the map during the sweep: the caller, not the sweep, lets go of it.
    this.#entries.delete(id);
    this.#sweep(now, 0);
    if (held === undefined) return undefined;
    if (now - held.usedAt > this.#idleMs) return { value: held.value, idle: true };
    held.usedAt = now;
    this.#entries.set(id, held);
    return { value: held.value, idle: false };
  }

  /** Holds `value` for `id` (replacing nothing: call {@link delete} first), making room beyond maxClients. */
  set(id: string, value: T): void {
    const now = this.#now();
    this.#sweep(now, 1);
    this.#entries.set(id, { value, usedAt: now });
  }

  /** Forgets `id` and hands its client back, unclosed. */
  delete(id: string): T | undefined {
    const held = this.#entries.get(id);
    this.#entries.delete(id);
    return held?.value;
  }

  /** Forgets every client and hands them back, unclosed. */
  clear(): T[] {
    const values = [...this.#entries.values()].map((held) => held.value);
    this.#entries.clear();
    return values;
  }

  /** Drops the clients idle past idleMs, and the least recently used while `room` more would exceed maxClients. */
  #sweep(now: number, room: number): void {
    for (const [id, held] of this.#entries) {
      if (this.#entries.size + room <= this.#maxClients && now - held.usedAt <= this.#idleMs) break;
      this.#entries.delete(id);
      this.#drop(held.value, id);
    }
  }
}

/**
 * The secret refusals seen by the clients a pool's sweep dropped (idle, or beyond maxClients, at another
 * account's get()), kept for their account's next client as its own get() carries over an idle one's:
 * that client does not take the fleet's same refusal, read again, as a reason to be made anew once more.
 * A refusal taken for a client the resolver then failed to make is kept again, for the one made next.
 * Bounded for a pool of any number of accounts: at most `max` (the oldest forgotten first), each for
 * `lifeMs` from when it was kept, past which no store holds the marker it names.
 * @internal
 */
export class DroppedRefusals {
  /** By id, in the order kept: the first entries are the oldest. */
  readonly #byId = new Map<string, { failedAt: number; until: number }>();
  readonly #max: number;
  readonly #lifeMs: number;
  readonly #now: () => number;

  constructor(options: { max: number; lifeMs: number; now: () => number }) {
    this.#max = options.max;
    this.#lifeMs = options.lifeMs;
    this.#now = options.now;
  }

  get size(): number {
    return this.#byId.size;
  }

  /** Keeps the refusal (the fleet's failure's `failed_at`) the dropped client of `id` saw, if any. */
  keep(id: string, failedAt: number | undefined): void {
    if (failedAt === undefined) return;
    const now = this.#now();
    this.#byId.delete(id);
    for (const [kept, { until }] of this.#byId) {
      if (this.#byId.size < this.#max && now < until) break;
      this.#byId.delete(kept);
    }
    this.#byId.set(id, { failedAt, until: now + this.#lifeMs });
  }

  /** The refusal kept for `id`, forgotten as it is handed out; undefined when none is, or it expired. */
  take(id: string): number | undefined {
    const kept = this.#byId.get(id);
    this.#byId.delete(id);
    return kept !== undefined && this.#now() < kept.until ? kept.failedAt : undefined;
  }

  /** Forgets `id`'s refusal (its credentials were said to have changed). */
  forget(id: string): void {
    this.#byId.delete(id);
  }

  /** Forgets every refusal. */
  clear(): void {
    this.#byId.clear();
  }
}

/**
 * The clients a pool let go of (beyond maxClients, idle, deleted) while a caller may still hold them:
 * released at once (their calls under way finish), held weakly, and closed with the pool, so that the
 * pool's close() ends their waits too. One collected meanwhile is simply forgotten.
 * @internal
 */
export class LetGo {
  readonly #refs = new Set<WeakRef<WeChatClient>>();
  readonly #collected = new FinalizationRegistry<WeakRef<WeChatClient>>((ref) => this.#refs.delete(ref));

  add(value: WeChatClient): void {
    releaseClient(value);
    const ref = new WeakRef(value);
    this.#refs.add(ref);
    this.#collected.register(value, ref, ref);
  }

  /** Closes the ones not collected yet, and forgets them. */
  async closeAll(): Promise<void> {
    const live: WeChatClient[] = [];
    for (const ref of this.#refs) {
      this.#collected.unregister(ref);
      const value = ref.deref();
      if (value !== undefined) live.push(value);
    }
    this.#refs.clear();
    await Promise.all(live.map((value) => value.close()));
  }
}
