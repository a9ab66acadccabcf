import { CacheError } from './errors.js';
import { assertTtl } from './ttl.js';
import { checkOptions, fn, type OptionSchema } from './validate.js';
import { markLocality } from './locality.js';

/**
 * The store contract every wxkit adapter implements: a string key/value store with TTL, in the spirit
 * of PHP's PSR-16, plus two optional atomic operations.
 *
 * A store receives and returns exactly the strings wxkit hands it: no namespace, no JSON envelope.
 * Reading the same key with the store's own tools (`redis-cli GET …`) shows the documented value.
 *
 * **Values are binary strings**: one character per byte, char codes 0–255 (Node's `latin1`). An
 * adapter stores character `c` as the byte `c` (`Buffer.from(value, 'latin1')`) and returns each byte
 * as that character (`buffer.toString('latin1')`), never decoding the bytes as UTF-8: a PHP peer's
 * igbinary entry is binary. wxkit's own JSON values are handed over as their UTF-8 bytes, so a store
 * holds exactly what a program in another language writes for the same text. A store that can only
 * hold text (a SQL TEXT column) stores bytes that are UTF-8 as that text, and must still return every
 * value byte for byte (KeyvCache's way is in its README). Keys are text (UTF-8 where the store has
 * bytes). wxkit never hands over a character above U+00FF; an adapter may reject one with a RangeError.
 *
 * Failures must reject (with a {@link CacheError} where the adapter can), never resolve as a miss:
 * a miss sends every process to WeChat for a new token.
 *
 * **Reads see the last write.** A `get` after a write (of any process) returns that write, not an older
 * copy: no reads from a replica that lags its primary. The holder of the refresh lock reads the entry
 * again before it fetches, and a read that misses a token just written sends it to WeChat for another
 * (on the classic endpoint, one that kills the token just written).
 *
 * @example
 * ```ts
 * const cache: TokenCache = new MemoryCache();
 * await cache.set('wechat:stable_access_token:wx123', '{"access_token":"ACCESS_TOKEN"}', 7200 - 300);
 * ```
 */
export interface TokenCache {
  /**
   * The stored bytes as a binary string, or `undefined` when the key is absent or expired (`null` is
   * taken as a miss too, a Buffer or Uint8Array as its bytes; any other answer fails the call as a store
   * failure).
   */
  get(key: string): Promise<string | undefined>;
  /**
   * Stores `value` (a binary string: its characters are the bytes) under `key` for `ttlSeconds` (> 0;
   * may be fractional; stores that keep whole seconds round up).
   */
  set(key: string, value: string, ttlSeconds: number): Promise<void>;
  /** Removes `key`; resolves whether or not it existed. */
  delete(key: string): Promise<void>;
  /**
   * Stores `value` only if `key` is absent, atomically; resolves `true` when this call stored it.
   * Leave it out when the store cannot do it atomically: wxkit then limits single-flight to one process.
   */
  add?(key: string, value: string, ttlSeconds: number): Promise<boolean>;
  /**
   * Deletes `key` only if it holds exactly `expected`, atomically; resolves `true` when it deleted.
   * Leave it out when the store cannot do it atomically.
   */
  deleteIfEquals?(key: string, expected: string): Promise<boolean>;
  /**
   * Replaces the value of `key` with `value` (and a new TTL) only if it holds exactly `expected`,
   * atomically; resolves `true` when this call wrote. An absent key is never written (use `add`).
   * wxkit writes a freshly fetched token with it, so a writer that outlived its lock never replaces a
   * token fetched after its own. Leave it out when the store cannot do it atomically: wxkit then reads,
   * compares and writes under its refresh lock.
   */
  compareAndSet?(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean>;
  /**
   * Milliseconds `key` has left before the store drops it, `Infinity` when the store keeps it without
   * expiry, or undefined when it is absent. Optional: tools (`wxkit token inspect`) show it when the store
   * can tell; the token protocol works without it. Where it is given, a refresh lock kept without expiry
   * (which no holder writes) that held one value for 10 minutes is taken over rather than waited for for
   * ever, and an OpenPlatform on `easyWeChat6()` takes a token EasyWeChat fetched on its own.
   */
  ttlMs?(key: string): Promise<number | undefined>;
  /**
   * Calls `onChange` soon after `key` is written or deleted, by this process or another, until the
   * returned function is called. Optional and best effort: a process waiting for another's refresh
   * re-reads the entry when it is called, instead of polling every 10–500 ms; it still polls, every
   * 0.5–2 s, so a missed call costs at most one such step. `onChange` is never called synchronously
   * from `watch` itself. A store that cannot tell leaves it out; one that cannot right now (a directory
   * that cannot be watched) throws, and the waiter polls at the faster pace.
   */
  watch?(key: string, onChange: () => void): () => void;
  /**
   * The name of the part of the store that holds `key`, for a store spread over servers that fail one at
   * a time (MemcachedCache with several servers): a failed call then takes only that part for down, and
   * the entries held by the others are shared as before. An entry's companions (`{key}:lock`, `:failed`,
   * `:refetch`, `:forced`, `:end`, `{key}:wxkit` and its own) must be in its entry's part. A store that fails as a
   * whole leaves it out.
   */
  partition?(key: string): string;
  /** Releases what the adapter opened itself. Later calls reject with a CacheError. */
  close?(): Promise<void>;
}

/** Options of {@link MemoryCache}. */
export interface MemoryCacheOptions {
  /**
   * Clock in milliseconds since the epoch, for tests that move time forward.
   * @default Date.now
   */
  now?: () => number;
}

const MEMORY_CACHE_OPTIONS = { now: fn() } as const satisfies OptionSchema<keyof MemoryCacheOptions>;

/** The fewest entries at which a MemoryCache sweeps out the expired ones. */
const SWEEP_MIN = 1024;

interface MemoryEntry {
  value: string;
  expiresAt: number;
}

/**
 * A TokenCache inside this process. It is the default store: right for a single process, and tokens are
 * not shared with any other process (each would fetch its own). Pick `FileCache` for several processes
 * on one host, or a Redis or Memcached adapter across hosts.
 *
 * @example
 * ```ts
 * const app = new OfficialAccount({ appId, secret, cache: new MemoryCache() });
 * ```
 */
export class MemoryCache implements TokenCache {
  readonly #entries = new Map<string, MemoryEntry>();
  readonly #watchers = new Map<string, Set<() => void>>();
  readonly #now: () => number;
  /** The number of entries at which the next write drops the expired ones (see {@link MemoryCache.size}). */
  #sweepAt = SWEEP_MIN;
  #closed = false;

  constructor(options: MemoryCacheOptions = {}) {
    this.#now = checkOptions<MemoryCacheOptions>('MemoryCache', MEMORY_CACHE_OPTIONS, options).now ?? Date.now;
    markLocality(this, { scope: 'process' });
  }

  async get(key: string): Promise<string | undefined> {
    return this.#live(key)?.value;
  }

  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    this.#open();
    this.#put(key, { value, expiresAt: this.#expiry(ttlSeconds) });
    this.#changed(key);
  }

  async delete(key: string): Promise<void> {
    this.#open();
    this.#entries.delete(key);
    this.#changed(key);
  }

  async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    // The TTL is checked first: a bad one is a RangeError whatever the key holds, as on every store.
    const expiresAt = this.#expiry(ttlSeconds);
    if (this.#live(key)) return false;
    this.#put(key, { value, expiresAt });
    this.#changed(key);
    return true;
  }

  async deleteIfEquals(key: string, expected: string): Promise<boolean> {
    const entry = this.#live(key);
    if (!entry || entry.value !== expected) return false;
    this.#entries.delete(key);
    this.#changed(key);
    return true;
  }

  async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    const expiresAt = this.#expiry(ttlSeconds);
    const entry = this.#live(key);
    if (!entry || entry.value !== expected) return false;
    this.#entries.set(key, { value, expiresAt });
    // The same value again only moves its expiry (a lock's renewal): nothing a watcher waits for.
    if (value !== expected) this.#changed(key);
    return true;
  }

  watch(key: string, onChange: () => void): () => void {
    let listeners = this.#watchers.get(key);
    if (!listeners) this.#watchers.set(key, (listeners = new Set()));
    listeners.add(onChange);
    return () => {
      listeners.delete(onChange);
      if (listeners.size === 0 && this.#watchers.get(key) === listeners) this.#watchers.delete(key);
    };
  }

  async ttlMs(key: string): Promise<number | undefined> {
    const entry = this.#live(key);
    return entry ? entry.expiresAt - this.#now() : undefined;
  }

  /**
   * The entries it holds: those that expired and were not read since included, at most about twice the
   * live ones (a write that finds the count doubled since the last sweep drops the expired ones). As a
   * fallback store for thousands of accounts it holds about those used lately, not every one ever seen.
   */
  get size(): number {
    return this.#entries.size;
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#entries.clear();
  }

  /**
   * Stores `entry` under `key`, first dropping every expired entry when the map has doubled since the last
   * sweep: amortized O(1) a write, and no timer.
   */
  #put(key: string, entry: MemoryEntry): void {
    if (this.#entries.size >= this.#sweepAt && !this.#entries.has(key)) {
      const now = this.#now();
      for (const [held, { expiresAt }] of this.#entries) if (expiresAt <= now) this.#entries.delete(held);
      this.#sweepAt = Math.max(SWEEP_MIN, 2 * this.#entries.size);
    }
    this.#entries.set(key, entry);
  }

  /** Tells the watchers of `key`, after the writer's own continuation (never synchronously). */
  #changed(key: string): void {
    const listeners = this.#watchers.get(key);
    if (!listeners) return;
    for (const listener of listeners) queueMicrotask(listener);
  }

  #open(): void {
    if (this.#closed) throw new CacheError('MemoryCache is closed');
  }

  #live(key: string): MemoryEntry | undefined {
    this.#open();
    const entry = this.#entries.get(key);
    if (entry && entry.expiresAt <= this.#now()) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry;
  }

  #expiry(ttlSeconds: number): number {
    assertTtl('MemoryCache', ttlSeconds);
    return this.#now() + ttlSeconds * 1000;
  }
}
