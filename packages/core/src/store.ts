import { isBinaryString } from './bytes.js';
import type { TokenCache } from './cache.js';
import { CacheError, ConfigError } from './errors.js';
import type { Log } from './logger.js';
import { partitionOf } from './partition.js';
import { describeError, storeHealth, type StoreHealth, type StoreUser } from './store-health.js';
import { hasMethods, typeName, type OptionRule } from './validate.js';

// Calls the breaker refused without sending: their failure says nothing about what the store holds.
const NOT_SENT = new WeakSet<object>();

/** Whether `error` is a call the store never saw (refused while it was known to be down). */
export function neverSent(error: unknown): boolean {
  return typeof error === 'object' && error !== null && NOT_SENT.has(error);
}

/**
 * The cache as the token protocol sees it: every call bounded by a timeout, every failure a CacheError,
 * a circuit breaker that stops waiting on a store that is down, and an outage reported once when it
 * starts and once when it ends, not once per call.
 */
export class GuardedStore implements StoreUser {
  readonly cache: TokenCache;
  readonly #timeoutMs: number;
  readonly #log: Log;
  readonly #appId: string;
  readonly #redact: (key: string) => string;
  /** The health of the whole store, or of the part that holds the keys of calls without a partition. */
  #whole: StoreHealth | undefined;
  /** The parts of a partitioned store this client has used, by name (see TokenCache.partition). */
  #parts: Map<string, StoreHealth> | undefined;
  // Made on first need: most clients never see an outage, and 10,000 of them need not hold empty sets.
  // Each listener with the part it waits for (undefined: any).
  #recoveryListeners: Map<() => void, StoreHealth | undefined> | undefined;
  /** dispose() was called: a later call joins no part (nor probes it, nor hears of it). */
  #disposed = false;

  constructor(cache: TokenCache, timeoutMs: number, log: Log, appId: string, redact: (key: string) => string = sameKey) {
    this.cache = cache;
    this.#redact = redact;
    this.#timeoutMs = timeoutMs;
    this.#log = log;
    this.#appId = appId;
    // A partitioned store's clients join its parts as they use them, and the whole only if some key of
    // theirs names no part: 10,000 clients on three servers hold one or two joins each, not three.
    if (typeof cache.partition !== 'function') this.#whole = this.#partHealth('');
  }

  /** The shared health of part `name` of this store ('' for the whole, or a partitioned store's keys without a part), joined. */
  #partHealth(name: string, join = true): StoreHealth {
    const health = storeHealth(this.cache, name);
    if (join && !health.has(this)) health.join(this);
    return health;
  }

  /** The health of the whole store (or of a partitioned store's keys that name no part), joined on first need. */
  get #health(): StoreHealth {
    return (this.#whole ??= this.#partHealth('', !this.#disposed));
  }

  /** The health of the part that holds `key`: the whole store's unless the store names its parts. */
  #healthOf(key: string): StoreHealth {
    const name = partitionOf(this.cache, key);
    if (name === undefined || name === '') return this.#health;
    if (this.#disposed) return this.#partHealth(name, false);
    let health = this.#parts?.get(name);
    if (health === undefined || !health.has(this)) {
      health = this.#partHealth(name);
      (this.#parts ??= new Map()).set(name, health);
      health.joinedDuringOutage(this);
    }
    return health;
  }

  /** The deadline of one call, in ms. */
  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  /**
   * True between a failed call and the next successful one (of any client of this store). A client that
   * asks is one that would use the store: while it is down, that keeps a probe due (see
   * StoreHealth.refused), whoever saw the outage begin.
   */
  get down(): boolean {
    const whole = this.#whole;
    let down = whole?.down ?? false;
    if (down) whole!.refused(this);
    for (const part of this.#parts?.values() ?? []) {
      if (!part.down) continue;
      part.refused(this);
      down = true;
    }
    return down;
  }

  /**
   * Whether the part of the store that holds `key` is taken for down (see TokenCache.partition): for a
   * store that fails as a whole, {@link down}. A client that asks keeps a probe of that part due.
   */
  downFor(key: string): boolean {
    const health = this.#healthOf(key);
    if (!health.down) return false;
    health.refused(this);
    return true;
  }

  get atomicAdd(): boolean {
    return typeof this.cache.add === 'function';
  }

  get atomicDeleteIfEquals(): boolean {
    return typeof this.cache.deleteIfEquals === 'function';
  }

  get atomicCompareAndSet(): boolean {
    return typeof this.cache.compareAndSet === 'function';
  }

  /** This client is done with the store: it no longer probes it or hears of it. */
  dispose(): void {
    this.#disposed = true;
    this.#whole?.leave(this);
    for (const part of this.#parts?.values() ?? []) part.leave(this);
    this.#parts = undefined;
    this.#recoveryListeners = undefined;
  }

  /**
   * Calls `listener` once, the next time the store answers after an outage: with `key`, the next time
   * the part of the store that holds it does (see TokenCache.partition).
   */
  onRecovered(listener: () => void, key?: string): void {
    (this.#recoveryListeners ??= new Map()).set(listener, key === undefined ? undefined : this.#healthOf(key));
  }

  /**
   * Calls `onChange` when the store says one of `keys` was written, until the returned function is
   * called; undefined when the store cannot tell (no `watch`), or its `watch` failed.
   */
  watch(keys: readonly string[], onChange: () => void): (() => void) | undefined {
    const watch = this.cache.watch;
    if (typeof watch !== 'function') return undefined;
    const stops: (() => void)[] = [];
    const stopAll = () => {
      for (const stop of stops) {
        try {
          stop();
        } catch {
          // The adapter's own business; the wait is over either way.
        }
      }
    };
    try {
      for (const key of keys) {
        const stop = watch.call(this.cache, key, onChange);
        if (typeof stop === 'function') stops.push(stop);
      }
    } catch (error) {
      stopAll();
      this.#watchRefused(error);
      return undefined;
    }
    // A watch that handed back no way to stop it is no watch: the waiter polls at the faster pace.
    if (stops.length === 0) return undefined;
    return stopAll;
  }

  /**
   * `insist`, here and on the writes below: the call is sent even while the store is taken for down (it
   * is still bounded, checked and counted by the breaker), for a write that must reach the store and is
   * tried again after a failure of its own took the store for down.
   */
  get(key: string, insist = false): Promise<string | undefined> {
    return this.#call('get', key, () => this.#read(key), [], insist);
  }

  /**
   * The value of `key`, or `otherKind` when the key holds another kind of value than a string (a Redis
   * hash or list: the store's CacheError of reason `type`), an answer about that key and no failure.
   */
  async getOrOtherKind<T>(key: string, otherKind: T): Promise<string | undefined | T> {
    try {
      return await this.get(key);
    } catch (error) {
      if (error instanceof CacheError && error.reason === 'type') return otherKind;
      throw error;
    }
  }

  /**
   * @internal The breaker's probe: a get of `key` sent whatever the breaker says, its answer checked as
   * any get's (a store that answers a get with garbage is not taken back for up by it).
   */
  probe(key: string): Promise<string | undefined> {
    return this.send('get', key, () => this.#read(key));
  }

  /**
   * @internal Whether the part of the store that holds `key` answers now: the breaker's probe, joined
   * where one is under way already (by this client or another of this process on the store). Rejects
   * with the probe's failure.
   */
  answers(key: string): Promise<void> {
    return this.#healthOf(key).ask(() => this.probe(key));
  }

  #read(key: string): Promise<string | undefined> {
    return Promise.resolve(this.cache.get(key)).then((value: unknown) => this.#got(key, value));
  }

  /**
   * What a get resolved, as the TokenCache contract has it: a string, or undefined for a miss. `null`
   * (what many Redis and Memcached clients give for a miss) is a miss too, and a Buffer or Uint8Array is
   * read as its bytes; anything else is the adapter's bug, and fails the call as a store failure (the
   * store is taken for down, and the clients serve from their fallbacks), with what came back named.
   */
  #got(key: string, value: unknown): string | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value === 'string') return value;
    if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('latin1');
    throw new CacheError(
      `The token store answered get ${this.#redact(key)} with ${typeName(value)}; a TokenCache's get() resolves the stored bytes as a string (or a Buffer), or undefined for a miss`,
    );
  }

  set(key: string, value: string, ttlSeconds: number, insist = false): Promise<void> {
    return this.#call('set', key, () => this.cache.set(key, value, ttlSeconds), [value], insist);
  }

  delete(key: string): Promise<void> {
    return this.#call('delete', key, () => this.cache.delete(key), []);
  }

  /** Undefined when the store cannot tell (no ttlMs). */
  ttlMs(key: string): Promise<number | undefined> {
    const ttlMs = this.cache.ttlMs;
    if (typeof ttlMs !== 'function') return Promise.resolve(undefined);
    return this.#call('ttlMs', key, () => ttlMs.call(this.cache, key), []);
  }

  /** Undefined when the store has no atomic add. */
  add(key: string, value: string, ttlSeconds: number, insist = false): Promise<boolean> | undefined {
    const add = this.cache.add;
    if (typeof add !== 'function') return undefined;
    return this.#call('add', key, () => add.call(this.cache, key, value, ttlSeconds), [value], insist);
  }

  /**
   * Deletes `key` if it holds `expected`. Without an atomic deleteIfEquals in the store this is a read,
   * a compare and a delete, which can remove a value written between the two (documented).
   */
  async deleteIfEquals(key: string, expected: string): Promise<boolean> {
    const deleteIfEquals = this.cache.deleteIfEquals;
    if (typeof deleteIfEquals === 'function') {
      return this.#call('deleteIfEquals', key, () => deleteIfEquals.call(this.cache, key, expected), [expected]);
    }
    if ((await this.get(key)) !== expected) return false;
    await this.delete(key);
    return true;
  }

  /**
   * Replaces `expected` with `value`. Without an atomic compareAndSet in the store this is a read, a
   * compare and a write, which the caller makes safe by holding the refresh lock.
   */
  async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number, insist = false): Promise<boolean> {
    const compareAndSet = this.cache.compareAndSet;
    if (typeof compareAndSet === 'function') {
      return this.#call('compareAndSet', key, () => compareAndSet.call(this.cache, key, expected, value, ttlSeconds), [value, expected], insist);
    }
    if ((await this.get(key, insist)) !== expected) return false;
    await this.set(key, value, ttlSeconds, insist);
    return true;
  }

  #call<T>(op: string, key: string, run: () => Promise<T>, values: readonly string[], insist = false): Promise<T> {
    const refused = this.#refusal(op, key, values, insist);
    return refused ? Promise.reject(refused) : this.send(op, key, run);
  }

  /** Why a call is not sent at all, or undefined when it may be. `insist`: sent while the store is taken for down. */
  #refusal(op: string, key: string, values: readonly string[], insist = false): CacheError | undefined {
    // A value no store can hold is a bug in whatever encoded it, not an outage: refused here, before the
    // adapter's own check would reject it and the breaker would take the store for down for every client.
    if (values.some((value) => typeof value !== 'string' || !isBinaryString(value))) {
      return new CacheError(
        `The value for ${op} ${this.#redact(key)} is no binary string (a character above U+00FF); store values are bytes, one character per byte: encode text as UTF-8 first (a custom KeySchema's encode must return binary strings, see docs/key-schema.md)`,
        { reason: 'value' },
      );
    }
    const health = this.#healthOf(key);
    if (!health.down) return undefined;
    // Sent all the same: a client made during the outage hears of it here, as a refused one does.
    if (insist) {
      health.joinedDuringOutage(this);
      return undefined;
    }
    const refused = new CacheError(`The token store is down; ${op} was not sent (wxkit probes it in the background)`);
    NOT_SENT.add(refused);
    health.refused(this);
    return refused;
  }

  /** @internal Sends a call whatever the breaker says: the probe, and calls made before it opened. */
  async send<T>(op: string, key: string, run: () => Promise<T>): Promise<T> {
    const health = this.#healthOf(key);
    try {
      const result = await this.#bounded(op, run);
      if (health.down) health.recovered(op);
      return result;
    } catch (error) {
      // A key holding another kind of value is an answer about that key, not an outage: the store is up
      // for every other key (and back up, if it was taken for down).
      if ((error as CacheError).reason === 'type') {
        if (health.down) health.recovered(op);
      } else {
        health.failed(this, op, key, error as CacheError);
      }
      throw error;
    }
  }

  /**
   * A lock's renewal: compare-and-set of `owner` onto itself with a new TTL; undefined without an atomic
   * compareAndSet. Sent whatever the breaker says (the lock's key may answer while another key's failure
   * took the store for down), bounded by cacheTimeoutMs, and its failure is its caller's alone: one slow
   * renewal during a long fetch does not take the store for down for every client of the process.
   */
  renew(key: string, owner: string, ttlSeconds: number): Promise<boolean> | undefined {
    const compareAndSet = this.cache.compareAndSet;
    if (typeof compareAndSet !== 'function') return undefined;
    return this.#bounded('compareAndSet', () => compareAndSet.call(this.cache, key, owner, owner, ttlSeconds));
  }

  /**
   * A write beside the token protocol (a peer SDK's own copy of a token): bounded by cacheTimeoutMs like
   * any call and not sent while the store is taken for down, but its failure is its caller's alone: it
   * does not take the store for down for every client (on a Redis Cluster the copy's key may live on
   * another shard than the entries the clients use).
   */
  setBeside(key: string, value: string, ttlSeconds: number): Promise<void> {
    const refused = this.#refusal('set', key, [value]);
    return refused ? Promise.reject(refused) : this.#bounded('set', () => this.cache.set(key, value, ttlSeconds));
  }

  /**
   * A read beside the token protocol (a peer SDK's own copy of a token), with the time the store gives it
   * left (undefined when the store cannot tell): as {@link setBeside}, bounded, not sent while the store
   * is taken for down, and its failure is its caller's alone.
   */
  async readBeside(key: string): Promise<{ raw: string | undefined; ttlMs: number | undefined }> {
    const refused = this.#refusal('get', key, []);
    if (refused) throw refused;
    const ttlMs = this.cache.ttlMs;
    const [raw, ttl] = await Promise.all([
      this.#bounded('get', () => this.#read(key)),
      typeof ttlMs === 'function' ? this.#bounded('ttlMs', () => ttlMs.call(this.cache, key)) : undefined,
    ]);
    return { raw, ttlMs: ttl };
  }

  /** A read beside the token protocol (the fleet's pause after rejected tokens): as {@link readBeside}, without the time left. */
  getBeside(key: string): Promise<string | undefined> {
    const refused = this.#refusal('get', key, []);
    return refused ? Promise.reject(refused) : this.#bounded('get', () => this.#read(key));
  }

  /** {@link deleteIfEquals} beside the token protocol: as {@link setBeside}, its failure is its caller's alone. */
  async deleteBesideIfEquals(key: string, expected: string): Promise<boolean> {
    const refused = this.#refusal('deleteIfEquals', key, [expected]);
    if (refused) throw refused;
    const deleteIfEquals = this.cache.deleteIfEquals;
    if (typeof deleteIfEquals === 'function') return this.#bounded('deleteIfEquals', () => deleteIfEquals.call(this.cache, key, expected));
    if ((await this.getBeside(key)) !== expected) return false;
    await this.#bounded('delete', () => this.cache.delete(key));
    return true;
  }

  /** `run`, rejected with a CacheError when it fails or has not settled within cacheTimeoutMs. */
  async #bounded<T>(op: string, run: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        Promise.resolve().then(run),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new CacheError(
                  `The token store did not answer ${op} within ${this.#timeoutMs} ms; check that it is up, or raise options.cacheTimeoutMs`,
                  { reason: 'timeout' },
                ),
              ),
            this.#timeoutMs,
          );
          timer.unref?.();
        }),
      ]);
    } catch (error) {
      throw error instanceof CacheError ? error : new CacheError(`The token store failed on ${op}`, { cause: error });
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * A store that refuses to tell of writes for want of rights (a Redis ACL user without the channel)
   * stays that way until someone grants them: said once per store and process, as a warning, since
   * every wait for another process's refresh polls the store from then on.
   */
  #watchRefused(error: unknown): void {
    if (!(error instanceof CacheError) || error.reason !== 'permission' || watchRefusals.has(this.cache)) return;
    watchRefusals.add(this.cache);
    this.#log.warn(
      { event: 'cache.watch_refused', appId: this.#appId, error: error.message },
      `The token store refuses to tell of writes, so processes waiting for another's refresh poll it instead: ${error.message}`,
    );
  }

  /** @internal Where this client's events go: a client that swapped its store for the same one has heard of its outage. */
  get events(): object {
    return this.#log;
  }

  /** @internal Where this client's log lines go: one line per logger about the store they share. */
  get logSink(): unknown {
    return this.#log.sink;
  }

  /**
   * @internal The store just failed: this client's event, and the outage's one warning when `line` (the
   * first client of its logger). `clients`: how many clients of this process use the store.
   */
  reportUnavailable(op: string, key: string | undefined, error: CacheError, clients = 1, line = true, again = 0): void {
    const fields = { event: 'cache.unavailable', appId: this.#appId, op, ...(key === undefined ? {} : { key: this.#redact(key) }), error: describeError(error), clients, again };
    const once = oneWarning(clients);
    const message =
      again > 0
        ? `The token store failed again (${op}) within a minute of answering, ${again} outages in a row so: a store whose reads answer while its writes fail does so ` +
          `(a read-only replica, a store full under noeviction, an ACL without write rights); serving tokens from this process until it answers again ` +
          `(${once}; the outages of the next minute are written only if one lasts 5 s)`
        : `The token store failed; serving tokens from this process until it answers again (${once})`;
    if (line) this.#log.warn(fields, message);
    else this.#log.event('warn', fields, message);
  }

  /**
   * @internal An outage whose event this client emitted when it began, a flap not written then, has lasted
   * `lastedMs`: its warning, the line alone.
   */
  reportStillDown(op: string, error: CacheError, clients: number, again: number, lastedMs: number): void {
    const fields = { event: 'cache.unavailable', appId: this.#appId, op, error: describeError(error), clients, again };
    const once = oneWarning(clients);
    this.#log.line(
      'warn',
      fields,
      `The token store failed again (${op}) ${Math.round(lastedMs / 1000)} s ago, ${again} outages in a row each within a minute of the last one's end, ` +
        `and still does not answer; serving tokens from this process until it answers again (${once})`,
    );
  }

  /** @internal The store answers again: this client's event and recovery listeners, and one line per logger. */
  reportRecovered(op: string, clients = 1, line = true, health?: StoreHealth, emit = true): void {
    const fields = { event: 'cache.recovered', appId: this.#appId, op, clients };
    const message = 'The token store answers again; sharing tokens through it once more';
    if (line) this.#log.info(fields, message);
    else if (emit) this.#log.event('info', fields, message);
    const listeners: (() => void)[] = [];
    for (const [listener, part] of this.#recoveryListeners ?? []) {
      if (part !== undefined && health !== undefined && part !== health) continue;
      listeners.push(listener);
      this.#recoveryListeners!.delete(listener);
    }
    if (this.#recoveryListeners?.size === 0) this.#recoveryListeners = undefined;
    for (const listener of listeners) {
      try {
        listener();
      } catch {
        // A listener's failure is its own.
      }
    }
  }
}

/** How often an outage's warning is written, as its message says: for `clients` clients of this process on the store. */
function oneWarning(clients: number): string {
  return clients > 1 ? `one warning per store and outage, for the ${clients} clients of this process that use it` : 'one warning per outage';
}

/** The stores whose refusal to watch was said already (once per store and process). */
const watchRefusals = new WeakSet<TokenCache>();

function sameKey(key: string): string {
  return key;
}


const KEYV_NEAR_MISS =
  'is a Keyv instance or store, which adds its own namespace and JSON envelope to the stored bytes; ' +
  'wrap it as a TokenCache with `new KeyvCache(keyv)` from @wxkit/keyv, or use an adapter such as RedisCache or FileCache';

/** The rule of a TokenCache option (`cache`, `durableStore`), with the usual near miss spelled out. */
export const TOKEN_CACHE_RULE: OptionRule = {
  allowed: 'a TokenCache: an object with get(), set() and delete() methods',
  accepts: (value) => !isKeyvLike(value) && hasMethods(value, 'get', 'set', 'delete'),
  nearMiss: (value) => (isKeyvLike(value) ? KEYV_NEAR_MISS : undefined),
};

/**
 * Checks that `cache` is a TokenCache, and says how to adapt the usual near-misses. `where` names the
 * argument in messages, e.g. `OfficialAccount setCache() cache`.
 */
export function assertTokenCache(where: string, cache: unknown): asserts cache is TokenCache {
  if (TOKEN_CACHE_RULE.accepts(cache)) return;
  throw new ConfigError(`${where} ${TOKEN_CACHE_RULE.nearMiss?.(cache) ?? `must be ${TOKEN_CACHE_RULE.allowed} (got ${typeName(cache)})`}`, 'cache');
}

function isKeyvLike(value: unknown): boolean {
  return value !== null && typeof value === 'object' && looksLikeKeyv(value as Partial<Record<string, unknown>>);
}

function looksLikeKeyv(candidate: Partial<Record<string, unknown>>): boolean {
  const name = (candidate.constructor as { name?: unknown } | undefined)?.name;
  return (
    name === 'Keyv' ||
    (typeof candidate.opts === 'object' && candidate.opts !== null && typeof candidate.iterator !== 'undefined') ||
    (typeof candidate.namespace !== 'undefined' && typeof candidate.getMany === 'function' && typeof candidate.clear === 'function')
  );
}
