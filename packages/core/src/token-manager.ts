import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { CacheError, TokenUnavailableError } from './errors.js';
import type { Log } from './logger.js';
import type { EntryField, KeySchema, StoredEntry } from './schema.js';
import type { GuardedStore } from './store.js';

/** A value fresh from WeChat. */
export interface Fetched {
  value: string;
  /** Seconds of life WeChat gave it. */
  expiresIn: number;
  /** WeChat's whole answer, for formats that store it. */
  response?: Record<string, unknown>;
}

export type Fetcher = (force: boolean, signal?: AbortSignal) => Promise<Fetched>;

/**
 * Where new values come from.
 * - `fetch`: from WeChat, one process at a time across the store's lock.
 * - `remote`: from a token service (`wxkit serve`), which owns the refresh; `invalidate` reports a value
 *   WeChat rejected to it.
 * - `follow`: nowhere; another system writes the store and this client waits (bounded) for it.
 */
export type TokenMode =
  | { kind: 'fetch'; fetch: Fetcher }
  | { kind: 'remote'; fetch: Fetcher; invalidate: (failed: string) => Promise<void> }
  | { kind: 'follow' };

/** The tunables of the token protocol, resolved and validated by the client. */
export interface ProtocolSettings {
  memoMs: number;
  lockLeaseMs: number;
  lockWaitMs: number;
  /** Refresh in the background when the entry has less than this left in the store, in ms; 0: never. */
  refreshAheadMs: number;
  /** Longest random delay before a background refresh, in ms, so processes do not all try at once. */
  refreshAheadJitterMs: number;
  now: () => number;
}

export interface TokenManagerInit {
  /** `access_token` or `jsapi_ticket`, for log lines. */
  label: string;
  field: EntryField;
  key: string;
  appId: string;
  schema: KeySchema;
  settings: ProtocolSettings;
  store: () => GuardedStore;
  mode: TokenMode;
  log: Log;
  /** Called once before the first store read; the client uses it for its default-store warning. */
  onFirstUse?: () => void;
}

interface Memo {
  value: string;
  /** The entry the value came with (expiry and fetch time, when known). */
  entry: StoredEntry;
  /** Unix ms when the entry leaves the store (its TTL), if known: refresh-ahead counts from here. */
  staleAt: number | undefined;
  /** Unix ms after which the store is read again. */
  recheckAt: number;
  /** Unix ms until which the value may be served while the store is down. */
  usableUntil: number;
  /**
   * Set when this process fetched the value while the store was down: the stored form and the TTL it
   * should have had, so the value can be published once the store is back instead of fetching again.
   */
  unshared?: { raw: string; staleAt: number };
}

type ReadResult =
  | { kind: 'hit'; entry: StoredEntry; raw: string }
  | { kind: 'miss' }
  | { kind: 'error'; error: CacheError };

type LockState = 'acquired' | 'held' | 'unavailable';

// Tokens WeChat rejected are remembered so that a store which still holds one (its delete failed, or a
// peer without compare-and-delete wrote it back) is not served again. Tokens are never reused by WeChat.
const REJECTED_MEMORY = 16;
// A token this close to its expiry is treated as expired: a call that takes it may arrive too late.
const NEAR_EXPIRY_MS = 30_000;
// Waiters poll the entry from 20 ms up to 500 ms apart: fast for a warm store, gentle on a slow fetch.
const POLL_MIN_MS = 20;
const POLL_MAX_MS = 500;

const OWNER_PREFIX = `${hostname()}:${process.pid}:`;

/**
 * The token protocol of docs/key-schema.md for one cache entry (an access token or a ticket):
 * in-process memo and single-flight, cross-process single-flight through `add`/`deleteIfEquals` on
 * `{key}:lock`, bounded waits, token-scoped invalidation, and a process-local fallback when the store
 * is down.
 */
export class TokenManager {
  readonly key: string;
  readonly lockKey: string;
  /** The key as logs, events and errors show it (masked where a profile's key holds the secret). */
  readonly #logKey: string;
  readonly #init: TokenManagerInit;
  #memo: Memo | undefined;
  #flight: Promise<string> | undefined;
  #forceFlight: Promise<string> | undefined;
  #probe: Promise<unknown> | undefined;
  #lastFailure: { startedAt: number; error: unknown } | undefined;
  readonly #invalidations = new Map<string, Promise<void>>();
  readonly #rejected: string[] = [];
  #used = false;
  /** The value a background refresh was last started for: at most one per value. */
  #aheadFor: string | undefined;

  constructor(init: TokenManagerInit) {
    this.#init = init;
    this.key = init.key;
    this.lockKey = init.schema.lockKey(init.key);
    this.#logKey = init.schema.redactKey?.(init.key) ?? init.key;
  }

  /** Forgets the in-process copy, e.g. after the store was swapped. */
  reset(): void {
    this.#memo = undefined;
  }

  /** The current value: from the memo, the store, or (one process at a time) from WeChat. */
  get(signal?: AbortSignal): Promise<string> {
    signal?.throwIfAborted();
    const now = this.#now();
    const memo = this.#memo;
    if (memo && now < memo.recheckAt) {
      this.#maybeRefreshAhead(memo, now);
      return Promise.resolve(memo.value);
    }
    if (memo && now < memo.usableUntil && this.#store().down) {
      // The store is down and this process holds a token that is still good: serve it without waiting
      // on the store, and look at the store again in the background.
      this.#probe ??= this.#flightOnce().catch(() => undefined).finally(() => (this.#probe = undefined));
      return Promise.resolve(memo.value);
    }
    return abortable(this.#flightOnce(), signal);
  }

  /** Like get(), with the expiry and fetch time that came with the value (when the format records them). */
  async getEntry(signal?: AbortSignal): Promise<StoredEntry> {
    const value = await this.get(signal);
    const memo = this.#memo;
    return memo?.value === value ? { ...memo.entry } : { value };
  }

  /** Fetches a new value from WeChat even if the store holds a valid one, and stores it. */
  forceRefresh(signal?: AbortSignal): Promise<string> {
    if (this.#init.mode.kind === 'follow') {
      return Promise.reject(
        new TokenUnavailableError(`This client follows ${this.#logKey} (refresh: 'never') and never fetches; refresh it where it is owned`),
      );
    }
    this.#forceFlight ??= this.#refresh(true).finally(() => (this.#forceFlight = undefined));
    return abortable(this.#forceFlight, signal);
  }

  /**
   * Token-scoped invalidation: `value` failed at WeChat (40001, 40014, 42001). Forget it here, and
   * delete the shared entry only if it still holds that value, so a newer one written by another
   * process survives. The next `get()` then reads the newer entry or refreshes once.
   */
  invalidate(value: string): Promise<void> {
    let pending = this.#invalidations.get(value);
    // Already handled: late rejections of the same token (the calls that were in flight with it) must
    // not start another round, or N slow callers would cause N fetches.
    if (!pending && this.#rejected.includes(value)) return Promise.resolve();
    if (!pending) {
      pending = this.#invalidate(value).finally(() => this.#invalidations.delete(value));
      this.#invalidations.set(value, pending);
    }
    return pending;
  }

  async #invalidate(value: string): Promise<void> {
    // A read already under way may still resolve to the rejected value; later callers start afresh.
    this.#flight = undefined;
    this.#rejected.push(value);
    if (this.#rejected.length > REJECTED_MEMORY) this.#rejected.shift();
    if (this.#memo?.value === value) this.#memo = undefined;
    const started = Date.now();
    const { mode } = this.#init;
    let deleted = false;
    // A follower never deletes what its owner wrote: it waits for the owner's next value instead.
    if (mode.kind !== 'follow') {
      try {
        const raw = await this.#store().get(this.key);
        if (raw !== undefined && this.#init.schema.decode(this.#init.field, raw)?.value === value) {
          deleted = await this.#store().deleteIfEquals(this.key, raw);
        }
      } catch (error) {
        // The store is down: the rejected list keeps this process off the bad value, and the next read
        // that reaches the store decides.
        if (!(error instanceof CacheError)) throw error;
      }
    }
    // The token service refreshes only if the rejected value is still its current one.
    if (mode.kind === 'remote') await mode.invalidate(value);
    this.#init.log.info(
      { event: `${this.#init.label}.invalidated`, appId: this.#init.appId, key: this.#logKey, deleted, ms: Date.now() - started },
      `WeChat rejected the cached ${this.#init.label}; ${deleted ? 'removed it from the store' : 'the store already holds another one'}`,
    );
  }

  #flightOnce(): Promise<string> {
    if (!this.#flight) {
      const startedAt = performance.now();
      // The flight is forgotten in its own handlers, before any caller resumes: a caller that resumes
      // and calls again must start a new read, not join the flight that just ended.
      const flight: Promise<string> = this.#resolve().then(
        (value) => {
          if (this.#flight === flight) this.#flight = undefined;
          this.#lastFailure = undefined;
          return value;
        },
        (error: unknown) => {
          if (this.#flight === flight) this.#flight = undefined;
          this.#lastFailure = { startedAt, error };
          throw error;
        },
      );
      this.#flight = flight;
    }
    return this.#flight;
  }

  /**
   * The value to retry with after WeChat rejected `failed` on a call sent at `sentAt`
   * (`performance.now()`). If a refresh that started after that call already failed, its error is the
   * answer: WeChat's state has not changed since, and retrying would turn a burst of N rejected calls
   * into N fetches (a 45009 quota storm). Otherwise one shared refresh, as `get()`.
   */
  async replacementFor(failed: string, sentAt: number, signal?: AbortSignal): Promise<string> {
    await this.invalidate(failed);
    const failure = this.#lastFailure;
    if (failure && failure.startedAt >= sentAt) throw failure.error;
    return this.get(signal);
  }

  async #resolve(): Promise<string> {
    if (!this.#used) {
      this.#used = true;
      this.#init.onFirstUse?.();
    }
    const read = await this.#read();
    if (read.kind === 'hit') {
      const value = this.#remember(read.entry);
      this.#maybeRefreshAhead(this.#memo!, this.#now());
      return value;
    }
    const memo = this.#memo;
    if (read.kind === 'error' && memo && this.#now() < memo.usableUntil) return memo.value;
    if (read.kind === 'miss' && memo?.unshared && this.#now() < memo.unshared.staleAt) {
      const published = await this.#publish(memo);
      if (published) return published;
    }
    return this.#refresh(false);
  }

  /**
   * The store is back and empty, and this process holds a value it fetched during the outage: offer it
   * with `add`, so a value another process published first wins and nothing newer is overwritten.
   */
  async #publish(memo: Memo): Promise<string | undefined> {
    const { raw, staleAt } = memo.unshared!;
    const ttlSeconds = Math.ceil((staleAt - this.#now()) / 1000);
    try {
      const added = this.#store().add(this.key, raw, ttlSeconds);
      if (added === undefined || !(await added)) return undefined;
    } catch (error) {
      if (error instanceof CacheError) return undefined;
      throw error;
    }
    memo.unshared = undefined;
    return memo.value;
  }

  /** One refresh: under the shared lock when the store has one, otherwise in this process only. */
  async #refresh(force: boolean): Promise<string> {
    const { mode } = this.#init;
    if (mode.kind === 'follow') return this.#waitForWriter();
    // A token service refreshes under its own lock; its clients only ask it.
    if (mode.kind === 'remote') return this.#fetchAndStore(force, false);
    const owner = OWNER_PREFIX + randomBytes(6).toString('hex');
    let lock = await this.#tryLock(owner);
    if (lock === 'held') {
      const waited = await this.#waitForPeer(owner, force);
      if (typeof waited === 'string') return waited;
      lock = waited.lock;
    }
    try {
      if (lock === 'acquired' && !force) {
        // Another process may have written between our read and our lock.
        const again = await this.#read();
        if (again.kind === 'hit') return this.#remember(again.entry);
      }
      return await this.#fetchAndStore(force, lock === 'acquired');
    } finally {
      if (lock === 'acquired') await this.#unlock(owner);
    }
  }

  /** Follower mode: poll the store until another system writes a valid entry, bounded by lockWaitMs. */
  async #waitForWriter(): Promise<string> {
    const { lockWaitMs } = this.#init.settings;
    const started = Date.now();
    const found = await pollWithBackoff(lockWaitMs, async () => {
      const read = await this.#read();
      return read.kind === 'hit' ? this.#remember(read.entry) : undefined;
    });
    if (found !== undefined) return found;
    this.#init.log.warn(
      { event: 'lock.wait_timeout', appId: this.#init.appId, key: this.#logKey, waitedMs: Date.now() - started },
      `No valid ${this.#init.label} appeared under ${this.#logKey} within ${lockWaitMs} ms`,
    );
    throw new TokenUnavailableError(
      `No valid ${this.#init.label} appeared in the store under ${this.#logKey} within ${lockWaitMs} ms. This client follows ` +
        `(refresh: 'never') and never fetches: check that the program that owns the refresh runs and writes that key`,
    );
  }

  /**
   * Refresh-ahead: once the entry has less than refreshAheadMs left in the store, one process (the one
   * that wins the lock, after a random delay) fetches a new value in the background while the current
   * one keeps serving. Callers never wait for it. At most one attempt per value: an endpoint that hands
   * back the same token (stable, WeCom) is left to the entry's normal expiry.
   */
  #maybeRefreshAhead(memo: Memo, now: number): void {
    const { refreshAheadMs, refreshAheadJitterMs } = this.#init.settings;
    if (refreshAheadMs <= 0 || this.#init.mode.kind !== 'fetch' || memo.staleAt === undefined) return;
    if (memo.staleAt - now >= refreshAheadMs || this.#aheadFor === memo.value) return;
    this.#aheadFor = memo.value;
    const delay = Math.random() * refreshAheadJitterMs;
    setTimeout(() => {
      this.#refreshAhead(memo.value).catch((error: unknown) =>
        this.#init.log.warn(
          { event: `${this.#init.label}.refresh_ahead_failed`, appId: this.#init.appId, key: this.#logKey, error: (error as Error)?.message },
          `A background refresh of the ${this.#init.label} failed; the current one keeps serving until it expires`,
        ),
      );
    }, delay).unref?.();
  }

  async #refreshAhead(current: string): Promise<void> {
    const owner = OWNER_PREFIX + randomBytes(6).toString('hex');
    // Without a shared lock every process would refresh; leave it to the entry's expiry instead.
    if ((await this.#tryLock(owner)) !== 'acquired') return;
    try {
      const read = await this.#read();
      if (read.kind === 'hit') {
        const { staleAtMs } = this.#lifetime(read.entry);
        // Someone refreshed already (or the entry is fine after all).
        if (read.entry.value !== current || (staleAtMs !== undefined && staleAtMs - this.#now() >= this.#init.settings.refreshAheadMs)) {
          this.#remember(read.entry);
          return;
        }
      }
      await this.#fetchAndStore(false, true);
      this.#init.log.info(
        { event: `${this.#init.label}.refreshed_ahead`, appId: this.#init.appId, key: this.#logKey },
        `Refreshed the ${this.#init.label} ahead of its expiry`,
      );
    } finally {
      await this.#unlock(owner);
    }
  }

  /**
   * Another process holds the lock. Poll the entry (not the lock) with backoff until it appears; retry
   * the lock as we go, so a holder that died or gave up is replaced once its lease ends. Bounded by
   * lockWaitMs, after which this process fetches on its own and says so.
   */
  async #waitForPeer(owner: string, force: boolean): Promise<string | { lock: LockState }> {
    const { lockWaitMs } = this.#init.settings;
    const started = Date.now();
    const outcome = await pollWithBackoff<string | { lock: LockState }>(lockWaitMs, async () => {
      if (!force) {
        const read = await this.#read();
        if (read.kind === 'hit') return this.#remember(read.entry);
        if (read.kind === 'error') return { lock: 'unavailable' };
      }
      const lock = await this.#tryLock(owner);
      return lock === 'held' ? undefined : { lock };
    });
    if (outcome !== undefined) return outcome;
    this.#init.log.warn(
      { event: 'lock.wait_timeout', appId: this.#init.appId, key: this.#init.schema.redactKey?.(this.lockKey) ?? this.lockKey, waitedMs: Date.now() - started },
      `Waited ${lockWaitMs} ms for another process to refresh the ${this.#init.label}; fetching it without the lock`,
    );
    return { lock: 'unavailable' };
  }

  async #fetchAndStore(force: boolean, locked: boolean): Promise<string> {
    const { schema, field, label, appId, log } = this.#init;
    const started = Date.now();
    const mode = this.#init.mode;
    if (mode.kind === 'follow') throw new TokenUnavailableError(`This client follows ${this.#logKey} and never fetches`);
    const fetched = await mode.fetch(force);
    const fetchedAtMs = this.#now();
    const fetchedAt = Math.floor(fetchedAtMs / 1000);
    const ttlSeconds = schema.ttlSeconds(fetched.expiresIn, field, this.key);
    const raw = schema.encode(field, fetched.value, fetched.expiresIn, fetchedAt, fetched.response);
    const forgiven = this.#rejected.indexOf(fetched.value);
    if (forgiven >= 0) this.#rejected.splice(forgiven, 1);

    let value = fetched.value;
    let stored = false;
    try {
      const newer = locked ? undefined : await this.#newerEntry(fetchedAt, fetched.value);
      if (newer) {
        // Without the lock another process may have fetched after us; its token is the one WeChat
        // considers latest. Keep it rather than overwrite it with ours.
        value = this.#remember(newer);
      } else {
        await this.#store().set(this.key, raw, ttlSeconds);
        stored = true;
        for (const companion of schema.companions?.(this.key, field, fetched.value, fetched.expiresIn, fetchedAt) ?? []) {
          await this.#store().set(companion.key, companion.value, companion.ttlSeconds);
        }
      }
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
    }
    if (value === fetched.value) {
      const staleAt = (fetchedAt + ttlSeconds) * 1000;
      const entry = { value, expiresAt: fetchedAt + fetched.expiresIn, fetchedAt };
      this.#memo = this.#memoFor(entry, fetchedAtMs, entry.expiresAt * 1000, staleAt);
      if (!stored) this.#memo.unshared = { raw, staleAt };
    }
    log.info(
      {
        event: `${label}.fetched`,
        appId,
        key: this.#logKey,
        forced: force,
        locked,
        stored,
        expiresIn: fetched.expiresIn,
        ms: Date.now() - started,
      },
      `Fetched a new ${label} from WeChat`,
    );
    return value;
  }

  async #newerEntry(fetchedAt: number, value: string): Promise<StoredEntry | undefined> {
    const read = await this.#read();
    if (read.kind !== 'hit') return undefined;
    const { entry } = read;
    return entry.value !== value && entry.fetchedAt !== undefined && entry.fetchedAt > fetchedAt ? entry : undefined;
  }

  async #read(): Promise<ReadResult> {
    let raw: string | undefined;
    try {
      raw = await this.#store().get(this.key);
    } catch (error) {
      if (error instanceof CacheError) return { kind: 'error', error };
      throw error;
    }
    if (raw === undefined) return { kind: 'miss' };
    const entry = this.#init.schema.decode(this.#init.field, raw);
    if (!entry) {
      this.#init.log.warn(
        { event: 'cache.corrupt_entry', appId: this.#init.appId, key: this.#logKey, schema: this.#init.schema.name, bytes: raw.length },
        `The stored ${this.#init.label} is not a valid ${this.#init.schema.name} entry; treating it as a miss and replacing it`,
      );
      return { kind: 'miss' };
    }
    if (this.#rejected.includes(entry.value)) return { kind: 'miss' };
    // A format without an expiry (a bare token, EasyWeChat's array): its remaining life is the store's
    // TTL where the store can tell; otherwise the entry counts as valid until it disappears.
    if (entry.expiresAt === undefined && this.#store().cache.ttlMs) {
      try {
        const left = await this.#store().ttlMs(this.key);
        if (left === undefined) return { kind: 'miss' };
        if (Number.isFinite(left)) entry.expiresAt = Math.floor((this.#now() + left) / 1000);
      } catch (error) {
        if (error instanceof CacheError) return { kind: 'error', error };
        throw error;
      }
    }
    // Past the point where the store's TTL would have dropped it, or too close to WeChat's expiry: a
    // miss. The first check is what keeps stores without TTL (and their stale leftovers) honest.
    const { expiresAtMs, staleAtMs } = this.#lifetime(entry);
    const now = this.#now();
    if ((staleAtMs !== undefined && now >= staleAtMs) || (expiresAtMs !== undefined && expiresAtMs - now <= NEAR_EXPIRY_MS)) {
      return { kind: 'miss' };
    }
    return { kind: 'hit', entry, raw };
  }

  /** WeChat's expiry, and when the schema's TTL rule ends the entry (known when fetched_at is recorded). */
  #lifetime(entry: StoredEntry): { expiresAtMs: number | undefined; staleAtMs: number | undefined } {
    const { expiresAt, fetchedAt } = entry;
    return {
      expiresAtMs: expiresAt === undefined ? undefined : expiresAt * 1000,
      staleAtMs:
        expiresAt !== undefined && fetchedAt !== undefined && expiresAt > fetchedAt
          ? (fetchedAt + this.#init.schema.ttlSeconds(expiresAt - fetchedAt, this.#init.field, this.key)) * 1000
          : undefined,
    };
  }

  #remember(entry: StoredEntry): string {
    const { expiresAtMs, staleAtMs } = this.#lifetime(entry);
    this.#memo = this.#memoFor(entry, this.#now(), expiresAtMs, staleAtMs);
    return entry.value;
  }

  #memoFor(entry: StoredEntry, now: number, expiresAtMs: number | undefined, staleAtMs: number | undefined): Memo {
    const { memoMs } = this.#init.settings;
    // Never serve from memory past the point where the store itself would have dropped the entry.
    const recheckAt = Math.min(now + memoMs, staleAtMs ?? Infinity, (expiresAtMs ?? Infinity) - NEAR_EXPIRY_MS);
    // While the store is down, a value is usable until shortly before WeChat expires it; a format
    // without an expiry gets the memo window only.
    const usableUntil = expiresAtMs === undefined ? now + memoMs : expiresAtMs - NEAR_EXPIRY_MS;
    return { value: entry.value, entry, staleAt: staleAtMs, recheckAt, usableUntil };
  }

  async #tryLock(owner: string): Promise<LockState> {
    const leaseSeconds = this.#init.settings.lockLeaseMs / 1000;
    const added = this.#store().add(this.lockKey, owner, leaseSeconds);
    if (added === undefined) return 'unavailable';
    try {
      return (await added) ? 'acquired' : 'held';
    } catch (error) {
      if (error instanceof CacheError) return 'unavailable';
      throw error;
    }
  }

  async #unlock(owner: string): Promise<void> {
    try {
      await this.#store().deleteIfEquals(this.lockKey, owner);
    } catch (error) {
      // The lease ends the lock on its own.
      if (!(error instanceof CacheError)) throw error;
    }
  }

  #store(): GuardedStore {
    return this.#init.store();
  }

  #now(): number {
    return this.#init.settings.now();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/**
 * Calls `attempt` with jittered, growing pauses (20 ms up to 500 ms) until it returns something or
 * `budgetMs` has passed; undefined then.
 */
async function pollWithBackoff<T>(budgetMs: number, attempt: () => Promise<T | undefined>): Promise<T | undefined> {
  const started = Date.now();
  let delay = POLL_MIN_MS;
  while (Date.now() - started < budgetMs) {
    await sleep(Math.min(delay * (0.75 + Math.random() * 0.5), budgetMs - (Date.now() - started)));
    delay = Math.min(delay * 1.5, POLL_MAX_MS);
    const result = await attempt();
    if (result !== undefined) return result;
  }
  return undefined;
}

/** Lets one caller stop waiting on a shared promise without cancelling it for the others. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
