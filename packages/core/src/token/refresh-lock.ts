import { randomBytes } from 'node:crypto';
import { flattened, textToBinary } from '../bytes.js';
import { CacheError } from '../errors.js';
import type { Log } from '../logger.js';
import { neverSent, type GuardedStore } from '../store.js';
import { PROCESS_ID } from './identity.js';

/** A held lock: release it when done, and stop trusting it once its lease has passed. */
export interface LockHandle {
  readonly owner: string;
  readonly leaseMs: number;
  /**
   * Milliseconds the store is known to keep the lock ours, by this process's monotonic clock (never
   * negative): the lease, or for a kept-alive lock the short lease its last renewal set.
   */
  remainingMs(): number;
  /**
   * Milliseconds the hold may still last: the lease's end for a kept-alive lock while it is held (its
   * renewals carry it there), else {@link remainingMs}.
   */
  maxRemainingMs(): number;
  /** Deletes the lock if it is still ours. Never throws; a failed release is cleaned up later. */
  release(): Promise<void>;
}

export type LockAttempt = LockHandle | 'held' | 'unavailable';

/** A kept-alive lock is renewed this many times per short lease: two renewals may fail in a row. */
const RENEWALS_PER_LEASE = 4;
/**
 * How long a lock value kept without expiry is seen before it is taken over: longer than any holder's
 * lease (twice its timeoutMs, seven cacheTimeoutMs and a second: 35 s by default) with deadlines in reason.
 */
export const ENDLESS_AFTER_MS = 10 * 60_000;
/** The longest delay a Node.js timer takes (a longer one fires after 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1;
// A refusal of the lock's `add` this late may answer a resent command whose first copy took the lock
// (a client that replays what it sent before a reconnect takes tens of ms at least).
const RETRIED_ADD_MS = 50;

/**
 * The short lease a holder keeps renewing where the store can compare-and-set: three store deadlines and
 * a second, so that renewed every quarter of it, a lock outlives a renewal that failed after the store's
 * whole deadline, or two that failed at once. What a holder that died holds up the others: 7 s with the defaults, where a
 * token's whole lease is 35 s. Never longer than the whole lease `leaseMs`.
 */
export function keepAliveMs(cacheTimeoutMs: number, leaseMs: number): number {
  return Math.min(leaseMs, 3 * cacheTimeoutMs + 1_000);
}

/**
 * How a lock's value is made: `owner`, a string unique to the attempt; `expiry-ms`, the lease's end in
 * unix milliseconds as decimal digits, as jedis-lock 1.0.0 writes it (WxJava's Jedis config).
 */
export type LockValue = 'owner' | 'expiry-ms';

/**
 * The value jedis-lock reads from a lock, as Java's `Long.parseLong` would: an optional sign and decimal
 * digits within a signed 64-bit integer. Undefined where Java would throw NumberFormatException.
 */
export function parseJavaLong(value: string): bigint | undefined {
  if (!/^[+-]?\d{1,19}$/.test(value)) return undefined;
  const n = BigInt(value);
  return n >= -(2n ** 63n) && n <= 2n ** 63n - 1n ? n : undefined;
}

/**
 * The refresh lock of one entry, `{key}:lock` in the store: `add` with a unique owner and a lease,
 * released with compare-and-delete against that owner.
 *
 * In the `expiry-ms` dialect (jedis-lock) the value is the lease's end, `now + lease + 1` in unix ms,
 * which a Java peer parses with `Long.parseLong` and compares with its clock; wxkit knows its hold by the
 * exact digits it wrote, and releases by compare-and-delete on them. jedis-lock writes its lock without
 * a TTL and takes over a lock whose time has passed (GETSET); wxkit does the same with compare-and-set,
 * so a Java process that died holding it stops nobody for longer than its lease. Only with the store's
 * own atomic compareAndSet: on a store without one the takeover is refused (and logged).
 *
 * A lock write whose answer was lost (a timeout on `add` that still reached the store, a release that
 * failed) may have left our owner in the store. Each such owner is remembered and deleted, by owner,
 * once the store answers again, so nobody waits for a lease that nobody holds.
 *
 * Kept alive (`keepAliveMs`, on a store with an atomic compareAndSet, `owner` dialect): the lock is
 * written with that short lease and renewed every quarter of it, by compare-and-set on our owner, until
 * released or until the whole lease has passed (the last renewal ends the lock there). A holder that
 * works is never overtaken before the lease's end, and one that died (SIGKILL, a crash, a lost host)
 * holds up the others for the short lease, not the whole one.
 */
export class RefreshLock {
  readonly key: string;
  readonly #logKey: string;
  readonly #log: Log;
  readonly #appId: string;
  /** Owners that may be in a store without our knowing: deleted once that store answers. */
  #lost: Map<string, GuardedStore> | undefined;

  readonly #value: LockValue;
  /** The key schema's name, for the event that reports another program's value under the key. */
  readonly #schema: string;

  constructor(key: string, logKey: string, log: Log, appId: string, value: LockValue = 'owner', schema = '') {
    this.#value = value;
    this.#schema = schema;
    this.key = flattened(key);
    this.#logKey = logKey === key ? this.key : flattened(logKey);
    this.#log = log;
    this.#appId = appId;
  }

  /**
   * One attempt: the lock, `held` by another owner, or `unavailable` when the store has no atomic add or
   * the lock's key holds another kind of value (a Redis hash: the store's CacheError reason `type`).
   * Rejects with a CacheError when the store fails (the owner is then remembered for clean-up).
   * `keepAliveMs`: hold it with that short lease, renewed up to `leaseMs`, where the store can.
   */
  async tryAcquire(store: GuardedStore, leaseMs: number, keepAliveMs?: number): Promise<LockAttempt> {
    await this.cleanUp();
    const owner =
      this.#value === 'expiry-ms'
        ? // jedis-lock's own value: System.currentTimeMillis() + expireMsecs + 1, compared with Java's clock.
          String(Date.now() + Math.ceil(leaseMs) + 1)
        : ownerValue();
    // jedis-lock's value is its expiry: renewing it would mean a new value, which a Java peer's GETSET
    // may be racing; it keeps the whole lease.
    const kept =
      keepAliveMs !== undefined && keepAliveMs < leaseMs && keepAliveMs / RENEWALS_PER_LEASE <= MAX_TIMER_MS && this.#value === 'owner' && store.atomicCompareAndSet;
    const firstMs = kept ? keepAliveMs : leaseMs;
    const added = store.add(this.key, owner, firstMs / 1000);
    if (added === undefined) return 'unavailable';
    const started = performance.now();
    let won: boolean;
    try {
      won = await added;
      if (!won && this.#value === 'expiry-ms') won = await this.#takeOverExpired(store, owner, leaseMs);
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      // The lock's key holds another kind of value (a Redis hash or list: another program's data, never a
      // lock, and with no lease to run out): no lock can be held there, as on a store without atomic add.
      if (error.reason === 'type') {
        if (!this.#reportedOtherKind) {
          this.#reportedOtherKind = true;
          this.#log.warn(
            { event: 'cache.foreign_entry', appId: this.#appId, key: this.#logKey, schema: this.#schema, bytes: 0, foreign: true },
            "The refresh lock's key holds another kind of value than a string (another program's data); it is left as it is, and refreshes go on without the shared lock",
          );
        }
        return 'unavailable';
      }
      // The answer was lost, not necessarily the write: the lock may be ours in the store.
      if (!neverSent(error)) this.#remember(owner, store);
      throw error;
    }
    if (!won) {
      // A store that sends an `add` again after a timeout of its own (a reconnect that replays its queue)
      // may have written the first and answered the second: the lock would be this owner's, and this
      // process would wait its whole lease for itself. Such an answer comes late: the owner of a slow
      // refusal is deleted if the store holds it, before the next attempt (cleanUp()). A prompt refusal,
      // the usual contention, costs no store call more.
      if (this.#value === 'owner' && performance.now() - started >= RETRIED_ADD_MS) (this.#lost ??= new Map()).set(owner, store);
      return 'held';
    }
    if (kept) return new KeptAlive(this.key, owner, store, started, leaseMs, keepAliveMs, () => this.#release(owner, store));
    return this.#leased(owner, store, leaseMs, started);
  }

  /** Who holds the lock now (the owner string), for messages; undefined when free or unreadable. */
  async holder(store: GuardedStore): Promise<string | undefined> {
    try {
      return await store.get(this.key);
    } catch {
      return undefined;
    }
  }

  /** A lock value seen kept without expiry at the end of a wait, and when (the client's clock, unix ms). */
  #endless: { value: string; at: number } | undefined;

  /**
   * A lock that would never end: its key holds a value the store keeps without expiry, which no holder
   * of the protocol writes (every lock is written with its lease; an operator's leftover, a PERSIST, a
   * store that dropped the TTL). Waited for, it would fail every refresh of the fleet for good. Called
   * at the end of each wait that ran out: the first time it sees such a value it notes it, and answers
   * `{ endless: value }`; seen still there {@link ENDLESS_AFTER_MS} later, longer than any holder's lease lasts, it replaces it
   * by compare-and-set on that value, as jedis-lock's expired lock is, and the lock is ours (a live
   * holder's lock, even on a store that drops every lock's TTL, is never taken). Undefined where the
   * store cannot tell (no `ttlMs`), where the lock has an expiry, and without the store's own atomic
   * compareAndSet.
   */
  async takeOverEndless(store: GuardedStore, leaseMs: number, now: number): Promise<LockHandle | { endless: string } | undefined> {
    if (this.#value !== 'owner' || !store.atomicCompareAndSet) return undefined;
    let current: string | undefined;
    try {
      current = await store.get(this.key);
      // Read after the value: a holder of the protocol that took the lock meanwhile has a lease, and it stays.
      if (current === undefined || (await store.ttlMs(this.key)) !== Number.POSITIVE_INFINITY) {
        this.#endless = undefined;
        return undefined;
      }
    } catch {
      return undefined;
    }
    const seen = this.#endless;
    if (seen?.value !== current) {
      this.#endless = { value: current, at: now };
      return { endless: current };
    }
    if (now - seen.at < ENDLESS_AFTER_MS) return { endless: current };
    const owner = ownerValue();
    const started = performance.now();
    try {
      if (!(await store.compareAndSet(this.key, current, owner, leaseMs / 1000))) return undefined;
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      if (!neverSent(error)) this.#remember(owner, store);
      return undefined;
    }
    this.#endless = undefined;
    this.#log.warn(
      { event: 'lock.taken_over', appId: this.#appId, key: this.#logKey, reason: 'no_expiry' },
      'Took over a refresh lock that the store had kept without expiry for 10 minutes, which no wxkit process writes (a key left by hand, a PERSIST, a store that drops TTLs)',
    );
    return this.#leased(owner, store, leaseMs, started);
  }

  /** A lock held for its whole lease from `started`, not renewed: what the store is known to keep is all the hold may last. */
  #leased(owner: string, store: GuardedStore, leaseMs: number, started: number): LockHandle {
    const remainingMs = () => Math.max(0, leaseMs - (performance.now() - started));
    return { owner, leaseMs, remainingMs, maxRemainingMs: remainingMs, release: () => this.#release(owner, store) };
  }

  /** Deletes the owners whose lock write went unanswered, where their store answers now. */
  async cleanUp(): Promise<void> {
    if (!this.#lost) return;
    for (const [owner, store] of [...this.#lost]) {
      if (store.downFor(this.key)) continue;
      try {
        const deleted = await store.deleteIfEquals(this.key, owner);
        this.#lost?.delete(owner);
        if (deleted) {
          this.#log.info(
            { event: 'lock.cleaned_up', appId: this.#appId, key: this.#logKey },
            'Removed a refresh lock this process had taken while the store did not answer, or answered that it had not taken it',
          );
        }
      } catch {
        // Still down: tried again when it answers.
      }
    }
  }

  /** Whether a lock key holding another kind of value was logged. */
  #reportedOtherKind = false;

  /** The expired lock value last refused a takeover, so each one is logged once. */
  #refusedTakeover: string | undefined;

  /**
   * jedis-lock's takeover: a lock whose timestamp has passed is anyone's (Java writes it without a TTL,
   * so one left by a dead process would stay for ever). Replaced only if it still holds what was read.
   */
  async #takeOverExpired(store: GuardedStore, owner: string, leaseMs: number): Promise<boolean> {
    const current = await store.get(this.key);
    if (current === undefined) return false;
    const expiry = parseJavaLong(current);
    if (expiry === undefined || expiry >= BigInt(Date.now())) return false;
    // Without an atomic compareAndSet the replacement would be a read then a write, and two takers
    // (or a taker and jedis-lock's GETSET) could both believe they won.
    if (!store.atomicCompareAndSet) {
      if (this.#refusedTakeover !== current) {
        this.#refusedTakeover = current;
        this.#log.warn(
          { event: 'lock.takeover_refused', appId: this.#appId, key: this.#logKey },
          'A jedis-lock refresh lock has passed its expiry, but this store has no atomic compareAndSet, so wxkit does not take it over; delete the lock key, or use a store with compareAndSet (RedisCache)',
        );
      }
      return false;
    }
    const taken = await store.compareAndSet(this.key, current, owner, leaseMs / 1000);
    if (taken) {
      this.#log.info(
        { event: 'lock.taken_over', appId: this.#appId, key: this.#logKey, reason: 'expired' },
        'Took over a refresh lock whose jedis-lock expiry had passed, as jedis-lock does',
      );
    }
    return taken;
  }

  async #release(owner: string, store: GuardedStore): Promise<void> {
    try {
      await store.deleteIfEquals(this.key, owner);
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      this.#remember(owner, store);
    }
  }

  #remember(owner: string, store: GuardedStore): void {
    (this.#lost ??= new Map()).set(owner, store);
    store.onRecovered(() => void this.cleanUp(), this.key);
  }
}

/**
 * A lock held with a short lease and renewed every quarter of it (compare-and-set on its owner, the TTL
 * never past the whole lease's end), so that a holder that died stops holding up the others soon. Two
 * renewals in a row may fail (a store slow for a moment) before the lock ends.
 */
class KeptAlive implements LockHandle {
  readonly owner: string;
  readonly leaseMs: number;
  /** Where the whole lease ends, and where the last renewal the store took lets the lock end. */
  readonly #end: number;
  #until: number;
  /** The last renewal did not land: the lock may end at #until. */
  #missed = false;
  readonly #timer: NodeJS.Timeout;
  /** The renewal under way: release() waits for it, or a compare-and-set store could refuse the delete. */
  #renewing: Promise<void> | undefined;
  readonly #release: () => Promise<void>;

  constructor(key: string, owner: string, store: GuardedStore, started: number, leaseMs: number, keepAliveMs: number, release: () => Promise<void>) {
    this.owner = owner;
    this.leaseMs = leaseMs;
    this.#end = started + leaseMs;
    this.#until = started + keepAliveMs;
    this.#release = release;
    this.#timer = setInterval(() => {
      // A renewal still unanswered (a slow store): the next one waits, rather than pile up.
      this.#renewing ??= this.#renew(key, store, keepAliveMs).finally(() => (this.#renewing = undefined));
    }, keepAliveMs / RENEWALS_PER_LEASE);
    // The holder's own work keeps the process alive; a renewal must not.
    this.#timer.unref?.();
  }

  remainingMs(): number {
    return Math.max(0, Math.min(this.#until, this.#end) - performance.now());
  }

  maxRemainingMs(): number {
    if (this.#missed) return this.remainingMs();
    return this.remainingMs() > 0 ? Math.max(0, this.#end - performance.now()) : 0;
  }

  async release(): Promise<void> {
    clearInterval(this.#timer);
    // On a store whose compare-and-set and compare-and-delete each read a version first (Memcached's
    // CAS), a renewal landing between the release's read and its delete would make the delete fail,
    // and the lock outlive its holder by a short lease.
    await this.#renewing;
    return this.#release();
  }

  async #renew(key: string, store: GuardedStore, keepAliveMs: number): Promise<void> {
    const sent = performance.now();
    const leftMs = this.#end - sent;
    // Past its lease, or lost: nothing to renew (the lock ends by its TTL, or is another's).
    if (leftMs <= 0 || this.remainingMs() === 0) {
      clearInterval(this.#timer);
      return;
    }
    const ms = Math.min(keepAliveMs, leftMs);
    try {
      if (await store.renew(key, this.owner, ms / 1000)) {
        this.#until = Math.max(this.#until, sent + ms);
        this.#missed = false;
      } else {
        // Another owner, or none: the lease ran out (a stalled process) and the lock is no longer ours.
        this.#until = 0;
        clearInterval(this.#timer);
      }
    } catch {
      // The store did not answer: the lock ends with its last renewal unless a later one lands.
      this.#missed = true;
    }
  }
}

/** An owner string unique to one attempt: this process's id and random bytes. */
function ownerValue(): string {
  return textToBinary(`${PROCESS_ID}:${randomBytes(6).toString('hex')}`);
}
