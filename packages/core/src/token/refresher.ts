import { TokenUnavailableError } from '../errors.js';
import type { Log } from '../logger.js';
import type { EncodedEntry, EntryStore } from './entry-store.js';
import type { EntryField, StoredEntry } from './entry.js';
import type { Ending } from './closing.js';
import type { StoreTiers, Tier } from './tiers.js';

/** The tunables of the token protocol, resolved and validated by the client. */
export interface ProtocolSettings {
  memoMs: number;
  /** How long a process waits for another's refresh; undefined: the lock's lease plus 5 s. */
  lockWaitMs: number | undefined;
  /** Deadline of one store call, in ms: part of the lock's lease. */
  cacheTimeoutMs: number;
  /** Refresh in the background when the entry has less than this left in the store, in ms; 0: never. */
  refreshAheadMs: number;
  /** Longest random delay before a background refresh, in ms, so processes do not all try at once. */
  refreshAheadJitterMs: number;
  /** Clock in unix ms: expiries, failure markers. */
  now: () => number;
}

/** What every refresher of one entry shares with its manager. */
export interface TokenContext {
  /** `access_token`, `jsapi_ticket`…, for log lines and events. */
  label: string;
  field: EntryField;
  key: string;
  /** The key as logs, events and errors may show it (masked where a profile's key holds the secret). */
  logKey: string;
  appId: string;
  settings: ProtocolSettings;
  entries: EntryStore;
  tiers: StoreTiers;
  log: Log;
  /** Who this process is in `fetched_by` and lock owners: `host:pid[:service]`. */
  writer: string;
  /** Whether WeChat rejected `value` (this process keeps a short list). */
  rejected(value: string): boolean;
  /** Aborted when the client closes: its waits end, and no refresh starts (see {@link closedError}). */
  closed: Ending;
  /**
   * Told when WeChat refused the secret a fetch of this client used (a pool then makes the client anew):
   * `own`, this process's fetch; else the fleet's failure marker naming this secret, once per marker
   * (`failedAt`) for the account, so that a record still wrong costs a resolver call per refused fetch.
   */
  secretRefused(failedAt: number | undefined, own: boolean): void;
}

/**
 * Writes `<label>.fetch_failed` for `error`: why, as the caller's error says it (ECONNREFUSED, ENOTFOUND, an
 * errmsg), where a background refresh's failure (wxkit serve, refresh-ahead) is seen in this line only.
 * The messages hold no secret.
 */
export function logFetchFailed(ctx: TokenContext, error: unknown, tier: Tier['name'], sent: boolean, message: string): void {
  const failure = error as { code?: string; errcode?: number; message?: string } | null | undefined;
  ctx.log.warn({ event: `${ctx.label}.fetch_failed`, appId: ctx.appId, key: ctx.logKey, code: failure?.code, errcode: failure?.errcode, error: failure?.message, tier, sent }, message);
}

/** What a call that needs a refresh (or would report a rejected value: `doing`) gets once its client was closed. */
export function closedError(ctx: TokenContext, doing = `starts no refresh of the ${ctx.label} and waits for none`): TokenUnavailableError {
  return new TokenUnavailableError(`The client was closed: it ${doing}; make a new client`);
}

export interface RefreshRequest {
  /** A new value even if the stored one is valid (an explicit forceRefresh() only). */
  force: boolean;
  /** A background refresh ahead of expiry: only if the lock is free at once, never waiting, never failing loudly. */
  ahead?: boolean;
  /** The value the caller holds and wants replaced (force, ahead), when it has one. */
  current?: string;
  /**
   * Ends the refresh's waits (for another process's refresh, a pause, a writer) and keeps it from
   * fetching: aborted when the client closes, or when every caller stopped waiting for it. The client's
   * close() alone when left out.
   */
  ended?: Ending;
}

/** What ends the waits of `request`: its own ending, or the client's close(). */
export function endingOf(ctx: TokenContext, request: RefreshRequest): Ending {
  return request.ended ?? ctx.closed;
}

/**
 * Runs `work` with a signal that aborts once `ending` (the refresh's waits) ends: every caller gave up, or
 * the client closed. What `work` waits for (a token service's answer, the upstream's input) is let go
 * then, rather than holding the process; its failure after that is reported as that end ({@link stopIfEnded}).
 */
export async function whileWanted<T>(ctx: TokenContext, request: RefreshRequest, ending: Ending, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  stopIfEnded(ctx, request);
  const controller = new AbortController();
  const onEnded = () => controller.abort(new TokenUnavailableError(`Every caller stopped waiting for the ${ctx.label}: the refresh ended before it fetched`));
  ending.addEventListener('abort', onEnded, { once: true });
  try {
    return await work(controller.signal);
  } catch (error) {
    stopIfEnded(ctx, request);
    throw error;
  } finally {
    ending.removeEventListener('abort', onEnded);
  }
}

/**
 * Throws when `request`'s waits have ended: the client closed ({@link closedError}), or every caller
 * stopped waiting (an error nobody receives: the refresh stops before it fetches for nobody).
 */
export function stopIfEnded(ctx: TokenContext, request: RefreshRequest): void {
  if (ctx.closed.aborted) throw closedError(ctx);
  if (request.ended?.aborted) throw new TokenUnavailableError(`Every caller stopped waiting for the ${ctx.label}: the refresh ended before it fetched`);
}

/** A refresh's outcome: the entry to serve, where it lives, and whether it still has to reach the shared store. */
export interface Refreshed {
  entry: StoredEntry;
  tier: Tier['name'];
  /** This process asked WeChat (or the token service) for it. */
  fetched: boolean;
  /**
   * False when the refresh asked nobody: it found a value another process or a peer wrote meanwhile
   * (under the lock, or while waiting for its holder). A caller's recovery then still has its fetch.
   */
  asked?: boolean;
  /** Set when the value lives only in a fallback (or in memory): offered to the shared store once it answers. */
  unshared?: EncodedEntry;
}

/** One way of getting a new value for an entry: fetched under the store's lock, asked of a token service, or followed. */
export interface Refresher {
  /** Whether this refresher ever asks WeChat (a follower does not). */
  readonly fetches: boolean;
  /**
   * Whether a program that refreshes without the lock has shown itself writing to the shared store (a
   * rejected token without wxkit's `fetched_by`): its next token is worth waiting for after a 40001.
   */
  readonly peerWrites?: boolean;
  /**
   * How long a refresh is waited for before the value this process holds, still good, serves instead
   * (at once where the refresh fails; never where undefined): a token service that is down, restarting,
   * failing or hanging hands out nothing newer, and the token it handed out still works.
   */
  readonly servesHeldAfterMs?: number;
  /** A new value; undefined only for `ahead` requests that found nothing to do. */
  refresh(request: RefreshRequest): Promise<Refreshed | undefined>;
  /** The store was swapped (setCache()): forgets what this refresher learnt of the old one. */
  reset?(): void;
  /**
   * The shared store showed no entry where this process holds `value`, still good: whether to serve it on
   * rather than fetch, as for a token this process wrote there and the store dropped (see LockedFetchRefresher).
   */
  dropped?(value: string): boolean;
  /** The shared store showed an entry: it holds what is written to it. */
  stored?(): void;
  /**
   * WeChat rejected `value` with `errcode` (40001, 40014, 42001): do what this way of refreshing owes the
   * others. May resolve the value that replaces it, when the report brought one back (a token service's answer).
   * `known`: the entry this process held for `value`, when it held one. `accepted`: WeChat took a call
   * made with `value` before it rejected it (the token worked, until something replaced it).
   */
  invalidate(value: string, errcode: number | undefined, known?: StoredEntry, accepted?: boolean): Promise<Refreshed | void>;
  /**
   * A call went through with `value` after all, which this process reported rejected before any call was
   * known to have (a token service's clients disagree, the first report said none did): WeChat does take
   * the fleet's tokens, as if that report had said so.
   */
  worked?(value: string): void;
}

/** How a waiter paces its looks at the store: the first pause, the growth of each next one, the longest. */
export interface PollPace {
  firstMs: number;
  growth: number;
  maxMs: number;
}

/**
 * Without a watch: soon at first, as a holder's fetch takes tens of ms and a waiter that looks late adds
 * its lateness to every send it holds (by 30 % at each look: at most about a quarter of the wait so far),
 * then slower, to 500 ms, for a holder that takes long. Each waiting process looks, not each waiting call:
 * about 5 looks in the first 100 ms and 13 in the first second (at 20 ms growing by half: 3 and 8), each
 * look a read of the entry, and while it is missing, of the failure marker and a lock attempt.
 */
export const POLL_PACE: Readonly<PollPace> = Object.freeze({ firstMs: 10, growth: 1.3, maxMs: 500 });
// With a watch the store says when to look; polling is only the safety net for a missed notification
// (a writer that does not publish, a dropped subscription), so it can be slow.
export const WATCHED_POLL_PACE: Readonly<PollPace> = Object.freeze({ firstMs: 500, growth: 1.5, maxMs: 2_000 });
/** Looks of one waiter closer together than MIN_ATTEMPT_GAP_MS allowed in a row, however often its watch fires. */
const QUICK_ATTEMPTS = 2;
const MIN_ATTEMPT_GAP_MS = 5;

/**
 * Subscribes `onChange` to the writes a waiter waits for; undefined when the store cannot tell.
 * Returns the unsubscribe.
 */
export type Watch = (onChange: () => void) => (() => void) | undefined;

/**
 * A watch armed before the waiter's last look at the store, so that a write between that look and the
 * wait is never missed: it is reported here, and the wait does not start. A lock's loser arms it before
 * its `add`: whatever the holder writes after that `add` (its entry, its failure marker, its release)
 * is reported, so the loser neither reads again before it waits nor falls back to a poll.
 */
export class Wakeup {
  /** Whether the store can tell of writes (else the caller polls at the faster pace). */
  readonly watching: boolean;
  #woken = false;
  #wake: (() => void) | undefined;
  readonly #stop: (() => void) | undefined;

  readonly #ended: Ending | undefined;
  readonly #onEnded = () => {
    this.#woken = true;
    this.#wake?.();
  };

  /** `ended`: when it aborts (the client closed), a pause ends at once, as on a write. */
  constructor(watch?: Watch, ended?: Ending) {
    this.#stop = watch?.(this.#onEnded);
    this.watching = this.#stop !== undefined;
    this.#ended = ended;
    ended?.addEventListener('abort', this.#onEnded, { once: true });
  }

  /** Makes the next look start without a pause, as a reported write would. */
  lookNow(): void {
    this.#woken = true;
  }

  /** Whether a write was reported since the last call (and forgets it). */
  take(): boolean {
    const woken = this.#woken;
    this.#woken = false;
    return woken;
  }

  /**
   * Resolves after `ms`, or as soon as a write is reported. A write reported before the call is the
   * caller's to {@link take} first (pollWithBackoff does, with nothing in between; a new Wakeup has none).
   */
  pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      this.#wake = done;
    });
  }

  /** Unsubscribes; idempotent. */
  stop(): void {
    this.#wake = undefined;
    this.#stop?.();
    this.#ended?.removeEventListener('abort', this.#onEnded);
  }
}

/**
 * Calls `attempt` until it returns something or `budgetMs` has passed (undefined then): at once when
 * the watch reports a write, else after jittered, growing pauses (10 ms up to 500 ms, or with a watch
 * 0.5 s up to 2 s). A write reported while `attempt` runs, or before the first attempt when the
 * watch was armed earlier (a {@link Wakeup}), makes the next attempt start without a pause. The watch
 * is stopped when this returns. `ended` aborted (the client closed) ends it at once, with undefined.
 * `pace` overrides the pace the watch would choose (a short wait for a writer that may not publish).
 */
export async function pollWithBackoff<T>(
  budgetMs: number,
  attempt: () => Promise<T | undefined>,
  watch?: Watch | Wakeup,
  ended?: Ending,
  pace?: Readonly<PollPace>,
): Promise<T | undefined> {
  const started = performance.now();
  const wakeup = watch instanceof Wakeup ? watch : new Wakeup(watch, ended);
  pace ??= wakeup.watching ? WATCHED_POLL_PACE : POLL_PACE;
  let delay: number = pace.firstMs;
  let attempted = -Infinity;
  let quick = 0;
  try {
    while (performance.now() - started < budgetMs && !ended?.aborted) {
      if (!wakeup.take()) {
        await wakeup.pause(Math.min(delay * (0.75 + Math.random() * 0.5), budgetMs - (performance.now() - started)));
        wakeup.take();
        delay = Math.min(delay * pace.growth, pace.maxMs);
      }
      // A write reported during an attempt starts the next one at once; a watch that reports writes
      // without end (a busy key, a faulty adapter) gets no more than QUICK_ATTEMPTS in a row, then one
      // attempt per MIN_ATTEMPT_GAP_MS, not a round of store calls each time it fires. The count starts
      // again only after a gap that long came of itself.
      const since = performance.now() - attempted;
      quick = since < MIN_ATTEMPT_GAP_MS ? quick + 1 : 0;
      if (quick >= QUICK_ATTEMPTS) await new Promise((resolve) => setTimeout(resolve, Math.ceil(MIN_ATTEMPT_GAP_MS - since)));
      if (ended?.aborted) break;
      attempted = performance.now();
      const result = await attempt();
      if (result !== undefined) return result;
    }
    return undefined;
  } finally {
    wakeup.stop();
  }
}

/**
 * Waits at most `waitMs` for the store to hold a valid value other than `replaced` and than those WeChat
 * rejected (another program's write): at each look the pace calls for, and as soon as the store reports
 * a write to the key (another program may write without the store reporting it: a short wait passes
 * {@link POLL_PACE}). `lookFirst`: the watch is armed and the store looked at once, before the first
 * pause, so that a write just after the caller's own last look is not missed; once, even where `waitMs`
 * has run out already (the caller's own look may be older than it seems: an answer its process was too
 * busy to take up at once). Undefined when none came
 * in time or the wait ended (`ended`: the client's close() unless given); the time runs from the call, and the last look may take one read (a
 * get, and a TTL query for formats without an expiry) longer. A store call that fails counts as nothing
 * yet: the wait goes on.
 */
export function awaitNewEntry(
  ctx: TokenContext,
  waitMs: number,
  replaced: string | undefined,
  lookFirst = false,
  pace?: Readonly<PollPace>,
  ended: Ending = ctx.closed,
): Promise<Refreshed | undefined> {
  const look = async (): Promise<Refreshed | undefined> => {
    const tier = ctx.tiers.current(ctx.key);
    const read = await ctx.entries.read(tier.entries, (value) => ctx.rejected(value)).catch(() => undefined);
    return read?.kind === 'hit' && read.entry.value !== replaced ? { entry: read.entry, tier: tier.name, fetched: false, asked: false } : undefined;
  };
  if (lookFirst && waitMs <= 0) return ended.aborted ? Promise.resolve(undefined) : look();
  const wakeup = new Wakeup((onChange) => ctx.tiers.shared.watch(ctx.entries.keys, onChange), ended);
  if (lookFirst) wakeup.lookNow();
  return pollWithBackoff(waitMs, look, wakeup, ended, pace);
}
