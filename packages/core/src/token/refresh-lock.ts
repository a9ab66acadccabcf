import { randomBytes } from 'node:crypto';
import { textToBinary } from '../bytes.js';
import { CacheError } from '../errors.js';
import type { Log } from '../logger.js';
import { neverSent, type GuardedStore } from '../store.js';
import { PROCESS_ID } from './identity.js';

/** A held lock: release it when done, and stop trusting it once its lease has passed. */
export interface LockHandle {
  readonly owner: string;
  readonly leaseMs: number;
  /** Milliseconds left of the lease, by this process's monotonic clock (never negative). */
  remainingMs(): number;
  /** Deletes the lock if it is still ours. Never throws; a failed release is cleaned up later. */
  release(): Promise<void>;
}

export type LockAttempt = LockHandle | 'held' | 'unavailable';

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
 */
export class RefreshLock {
  readonly key: string;
  readonly #logKey: string;
  readonly #log: Log;
  readonly #appId: string;
  /** Owners that may be in a store without our knowing: deleted once that store answers. */
  #lost: Map<string, GuardedStore> | undefined;

  readonly #value: LockValue;

  constructor(key: string, logKey: string, log: Log, appId: string, value: LockValue = 'owner') {
    this.#value = value;
    this.key = key;
    this.#logKey = logKey;
    this.#log = log;
    this.#appId = appId;
  }

  /**
   * One attempt: the lock, `held` by another owner, or `unavailable` when the store has no atomic add.
   * Rejects with a CacheError when the store fails (the owner is then remembered for clean-up).
   */
  async tryAcquire(store: GuardedStore, leaseMs: number): Promise<LockAttempt> {
    await this.cleanUp();
    const owner =
      this.#value === 'expiry-ms'
        ? // jedis-lock's own value: System.currentTimeMillis() + expireMsecs + 1, compared with Java's clock.
          String(Date.now() + Math.ceil(leaseMs) + 1)
        : textToBinary(`${PROCESS_ID}:${randomBytes(6).toString('hex')}`);
    const added = store.add(this.key, owner, leaseMs / 1000);
    if (added === undefined) return 'unavailable';
    const started = performance.now();
    let won: boolean;
    try {
      won = await added;
      if (!won && this.#value === 'expiry-ms') won = await this.#takeOverExpired(store, owner, leaseMs);
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      // The answer was lost, not necessarily the write: the lock may be ours in the store.
      if (!neverSent(error)) this.#remember(owner, store);
      throw error;
    }
    if (!won) return 'held';
    return {
      owner,
      leaseMs,
      remainingMs: () => Math.max(0, leaseMs - (performance.now() - started)),
      release: () => this.#release(owner, store),
    };
  }

  /** Who holds the lock now (the owner string), for messages; undefined when free or unreadable. */
  async holder(store: GuardedStore): Promise<string | undefined> {
    try {
      return await store.get(this.key);
    } catch {
      return undefined;
    }
  }

  /** Deletes the owners whose lock write went unanswered, where their store answers now. */
  async cleanUp(): Promise<void> {
    if (!this.#lost) return;
    for (const [owner, store] of [...this.#lost]) {
      if (store.down) continue;
      try {
        const deleted = await store.deleteIfEquals(this.key, owner);
        this.#lost?.delete(owner);
        if (deleted) {
          this.#log.info(
            { event: 'lock.cleaned_up', appId: this.#appId, key: this.#logKey },
            'Removed a refresh lock this process had taken while the store did not answer',
          );
        }
      } catch {
        // Still down: tried again when it answers.
      }
    }
  }

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
        { event: 'lock.taken_over', appId: this.#appId, key: this.#logKey },
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
    store.onRecovered(() => void this.cleanUp());
  }
}
