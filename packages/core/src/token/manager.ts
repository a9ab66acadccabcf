import { CacheError } from '../errors.js';
import { NEAR_EXPIRY_MS, type EncodedEntry } from './entry-store.js';
import type { StoredEntry } from './entry.js';
import { RefreshAhead } from './refresh-ahead.js';
import type { Refreshed, Refresher, TokenContext } from './refresher.js';

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
  /** The value lives only in a fallback (or memory): offered to the shared store once it answers. */
  unshared?: EncodedEntry;
}

/** What a caller's resend loop carries between recoveries: one fetch per call, at most. */
export interface RecoveryState {
  fetched: boolean;
}

// Tokens WeChat rejected are remembered so that a store which still holds one (its delete failed, or a
// peer without compare-and-delete wrote it back) is not served again. Tokens are never reused by WeChat.
const REJECTED_MEMORY = 16;

/**
 * One cache entry (an access token or a ticket) as this process sees it: a short memo, one read or
 * refresh at a time (single-flight), and WeChat's rejections. Where a new value comes from is the
 * refresher's business: fetched under the store's lock, asked of a token service, or followed.
 */
export class TokenManager {
  readonly key: string;
  readonly #ctx: TokenContext;
  readonly #refresher: Refresher;
  readonly #ahead: RefreshAhead;
  readonly #onFirstUse: (() => void) | undefined;
  #memo: Memo | undefined;
  #flight: Promise<string> | undefined;
  #forceFlight: Promise<string> | undefined;
  readonly #invalidations = new Map<string, Promise<void>>();
  readonly #rejected: string[] = [];

  constructor(ctx: TokenContext, refresher: Refresher, onFirstUse?: () => void) {
    this.#ctx = ctx;
    this.key = ctx.key;
    this.#refresher = refresher;
    this.#onFirstUse = onFirstUse;
    this.#ahead = new RefreshAhead(ctx, refresher, (refreshed) => this.#remember(refreshed));
  }

  /** Whether WeChat rejected `value` lately (the context's `rejected`). */
  isRejected(value: string): boolean {
    return this.#rejected.includes(value);
  }

  /** Forgets the in-process copy, e.g. after the store was swapped. */
  reset(): void {
    this.#memo = undefined;
  }

  /** The client closed: no background refresh starts any more. */
  close(): void {
    this.#ahead.cancel();
  }

  /** The current value: from the memo, the store, or a refresh. Rejects (never throws) on an aborted signal. */
  get(signal?: AbortSignal): Promise<string> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const now = this.#ctx.settings.now();
    const memo = this.#memo;
    if (memo && now < memo.recheckAt) {
      this.#considerAhead(memo, now);
      return Promise.resolve(memo.value);
    }
    if (memo && now < memo.usableUntil && this.#ctx.tiers.shared.down) {
      // The store is down and this process holds a token that is still good: serve it, without a read
      // or a fetch (a probe in the background notices when the store answers again).
      return Promise.resolve(memo.value);
    }
    return abortable(this.#current(), signal);
  }

  /** Like get(), with the expiry, fetch time and writer that came with the value (when the format records them). */
  async getEntry(signal?: AbortSignal): Promise<StoredEntry> {
    const value = await this.get(signal);
    const memo = this.#memo;
    return memo?.value === value ? { ...memo.entry } : { value };
  }

  /** A new value even if the store holds a valid one: an explicit request, never an automatic path. */
  forceRefresh(signal?: AbortSignal): Promise<string> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    this.#forceFlight ??= handled(
      this.#refresh({ force: true, current: this.#memo?.value }).finally(() => (this.#forceFlight = undefined)),
    );
    return abortable(this.#forceFlight, signal);
  }

  /**
   * WeChat rejected `value` (40001, 40014, 42001). Forget it here, and let the refresher do what it owes
   * the fleet (delete the shared entry only if it still holds that value; tell the token service). A read
   * already under way is kept: if it brings back the rejected value, its callers read once more.
   */
  invalidate(value: string, errcode?: number): Promise<void> {
    let pending = this.#invalidations.get(value);
    // Already handled: late rejections of the same token (the calls that were in flight with it) must
    // not start another round, or N slow callers would cause N fetches.
    if (!pending && this.#rejected.includes(value)) return Promise.resolve();
    if (!pending) {
      this.#rejected.push(value);
      if (this.#rejected.length > REJECTED_MEMORY) this.#rejected.shift();
      if (this.#memo?.value === value) this.#memo = undefined;
      pending = handled(this.#refresher.invalidate(value, errcode).finally(() => this.#invalidations.delete(value)));
      this.#invalidations.set(value, pending);
    }
    return pending;
  }

  /**
   * The value to resend with after WeChat rejected `failed`: a newer one the store already holds (a peer
   * refreshed), else, once per call (`state`), a refresh shared with every other caller. Undefined when
   * there is nothing new to try: the caller gives up instead of looping.
   */
  async recover(failed: string, errcode: number, state: RecoveryState, signal?: AbortSignal): Promise<string | undefined> {
    signal?.throwIfAborted();
    await this.invalidate(failed, errcode);
    const memo = this.#memo;
    if (memo && memo.value !== failed && !this.isRejected(memo.value)) return memo.value;
    const tier = this.#ctx.tiers.current();
    try {
      const read = await this.#ctx.entries.read(tier.entries, (value) => this.isRejected(value));
      if (read.kind === 'hit') {
        this.#remember({ entry: read.entry, tier: tier.name, fetched: false });
        return read.entry.value;
      }
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
    }
    if (state.fetched) return undefined;
    state.fetched = true;
    return this.get(signal);
  }

  /** The value of the read or refresh under way, joining it; once more if it brought back a rejected value. */
  async #current(): Promise<string> {
    let value = await this.#flightOnce();
    if (this.isRejected(value)) value = await this.#flightOnce();
    return value;
  }

  #flightOnce(): Promise<string> {
    if (!this.#flight) {
      // The flight is forgotten in its own handlers, before any caller resumes: a caller that resumes
      // and calls again must start a new read, not join the flight that just ended.
      const flight: Promise<string> = handled(
        this.#resolve().finally(() => {
          if (this.#flight === flight) this.#flight = undefined;
        }),
      );
      this.#flight = flight;
    }
    return this.#flight;
  }

  async #resolve(): Promise<string> {
    this.#onFirstUse?.();
    const ctx = this.#ctx;
    const tier = ctx.tiers.current();
    try {
      const read = await ctx.entries.read(tier.entries, (value) => this.isRejected(value));
      const memo = this.#memo;
      const now = ctx.settings.now();
      // The store is back, and this process holds a token it fetched while it was away: a newer one than
      // what the store kept through the outage (or than nothing) is published, newest wins.
      if (tier.name === 'shared' && memo?.unshared && now < (memo.staleAt ?? 0) && !this.isRejected(memo.value)) {
        const older = read.kind === 'miss' || (read.entry.value !== memo.value && (read.entry.fetchedAt ?? 0) < (memo.entry.fetchedAt ?? 0));
        const published = older ? await this.#publish(memo) : undefined;
        if (published) return published;
      }
      if (read.kind === 'hit') {
        const value = this.#remember({ entry: read.entry, tier: tier.name, fetched: false });
        this.#considerAhead(this.#memo!, ctx.settings.now());
        return value;
      }
      // Another program's entry that cannot be read is never replaced: the token this process fetched
      // serves until it nears its expiry, rather than a fetch on every read.
      if (read.foreign && memo && now < memo.usableUntil && !this.isRejected(memo.value)) return memo.value;
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      // The store just failed: a token this process holds is still good, or the refresh falls back.
      const memo = this.#memo;
      if (memo && ctx.settings.now() < memo.usableUntil && !this.isRejected(memo.value)) return memo.value;
    }
    return this.#refresh({ force: false });
  }

  /**
   * The shared store is back and empty, and this process holds a value it fetched during the outage:
   * offer it with `add`, so a value another process published first wins and nothing newer is overwritten.
   */
  async #publish(memo: Memo): Promise<string | undefined> {
    const unshared = memo.unshared!;
    const ttlSeconds = Math.ceil(((memo.staleAt ?? 0) - this.#ctx.settings.now()) / 1000);
    if (ttlSeconds < 1) return undefined;
    // The newest token wins, not the first one back: the store may still hold the token it had before
    // the outage, which the fetch made meanwhile has since invalidated.
    const { entry, stored } = await this.#ctx.entries.write(this.#ctx.tiers.shared, { ...unshared, ttlSeconds }, { rejected: (value) => this.isRejected(value) });
    if (!stored) return undefined;
    memo.unshared = undefined;
    return entry.value;
  }

  async #refresh(request: { force: boolean; current?: string }): Promise<string> {
    const refreshed = await this.#refresher.refresh(request);
    // Only a background refresh may find nothing to do.
    if (!refreshed) throw new CacheError(`The ${this.#ctx.label} refresh ended without a value`);
    return this.#remember(refreshed);
  }

  #remember(refreshed: Refreshed): string {
    const { entry } = refreshed;
    // WeChat handed this value out just now (the stable endpoint hands back the token it considers
    // current): whatever rejected it before, it is the one to use.
    const forgiven = refreshed.fetched ? this.#rejected.indexOf(entry.value) : -1;
    if (forgiven >= 0) this.#rejected.splice(forgiven, 1);
    const { expiresAtMs, staleAtMs } = this.#ctx.entries.lifetime(entry);
    const now = this.#ctx.settings.now();
    const { memoMs } = this.#ctx.settings;
    // Never serve from memory past the point where the store itself would have dropped the entry.
    const recheckAt = Math.min(now + memoMs, staleAtMs ?? Infinity, (expiresAtMs ?? Infinity) - NEAR_EXPIRY_MS);
    // While the store is down, a value is usable until shortly before WeChat expires it; a format
    // without an expiry gets the memo window only.
    const usableUntil = expiresAtMs === undefined ? now + memoMs : expiresAtMs - NEAR_EXPIRY_MS;
    const previous = this.#memo;
    // A read that started before a refresh may end after it: never go back to an older token.
    if (previous && previous.value !== entry.value && !this.isRejected(previous.value) && (previous.entry.fetchedAt ?? 0) > (entry.fetchedAt ?? Infinity)) {
      return previous.value;
    }
    const unshared = refreshed.unshared ?? (previous?.value === entry.value && refreshed.tier !== 'shared' ? previous.unshared : undefined);
    this.#memo = { value: entry.value, entry, staleAt: staleAtMs, recheckAt, usableUntil, ...(unshared ? { unshared } : {}) };
    return entry.value;
  }

  #considerAhead(memo: Memo, now: number): void {
    const fetchedAt = memo.entry.fetchedAt === undefined ? undefined : memo.entry.fetchedAt * 1000;
    this.#ahead.consider(memo.value, memo.staleAt, fetchedAt, now);
  }
}

/** Marks a shared promise as handled: a caller that stopped waiting (abort) leaves no unhandled rejection behind. */
function handled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
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
