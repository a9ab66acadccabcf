import { CacheError, TokenUnavailableError, WeChatApiError } from '../../../errors.js';
import type { GuardedStore } from '../../../store.js';
import type { StoredEntry } from '../../entry.js';
import { FailureGate, markerError, markerFailedAt, policyOf, refusesSecret } from '../../failure.js';
import { LocalBackoff } from '../../local-backoff.js';
import { withRetryAt } from '../../../retry-at.js';
import { keepAliveMs, RefreshLock, type LockHandle } from '../../refresh-lock.js';
import { awaitNewEntry, endingOf, logFetchFailed, POLL_PACE, pollWithBackoff, stopIfEnded, Wakeup, whileWanted, type Refreshed, type RefreshRequest, type Refresher, type TokenContext, type Watch } from '../../refresher.js';
import type { Tier } from '../../tiers.js';
import { withKnownEnd, type Fetched, type Upstream } from '../../upstream.js';
import { DroppedWrites } from './dropped-writes.js';
import { ForcedRefreshes } from './forced.js';
import { KeptTokens } from './kept.js';
import { PeerWriters } from './peer-writers.js';
import { InPause, RejectionPause, type FleetPause, type StartedPause } from './rejection-pause.js';
import { SlotTaken, StoreBack, StoreDownSpacing } from './store-down.js';

// Store calls inside the lock, one after the other: the second read of the entry and the TTL query of
// formats without an expiry (the second look at the failure marker runs beside them), the slot of a
// store-down fetch (a read and an atomic write), the read and compare-and-set of the write, and the
// clearing of the failure marker (companions, such as wechatpy's `_expires_at`, are written beside it).
const STORE_CALLS_IN_SECTION = 7;
// A ticket's end record, read after the fetch and written before the entry (an endpoint that answers a
// value's full life: Upstream.answersFullLife).
const END_RECORD_CALLS = 2;
// Timers and scheduling between the calls, which their deadlines do not cover.
const LEASE_SLACK_MS = 1_000;
// A refresh starts over (a fresh input, the fallback tier, a slot taken by another process of the host)
// at most this often before it gives up.
const MAX_ROUNDS = 3;
// Within its pause a process waits this long at most for a token another process writes (a lockless
// peer's, a store round trip after its fetch) before its callers fail; it never fetches one itself.
const PAUSE_WAIT_MS = 2_000;

/** The input the holder prepared is gone from the store (rejected, and reported by a holder before it): it lets the lock go, and starts over. */
class InputGone extends Error {}

/**
 * The lease of the refresh lock: the whole critical section it guards, every upstream call and store
 * call inside it with their deadlines, never a constant. A holder that outlives it has, by construction,
 * been stalled, and its write still cannot replace a newer token (EntryStore.write compares fetched_at).
 */
export function leaseMs(upstreamBudgetMs: number, cacheTimeoutMs: number, endRecord = false): number {
  return upstreamBudgetMs + (STORE_CALLS_IN_SECTION + (endRecord ? END_RECORD_CALLS : 0)) * cacheTimeoutMs + LEASE_SLACK_MS;
}

type WaitOutcome = { refreshed: Refreshed } | { handle: LockHandle };

/** How far one refresh got: the force slot it took, and whether it asked WeChat (or a peer's copy) at all. */
interface Progress {
  asked: boolean;
  forceSlot?: { store: GuardedStore; taken: string };
  /** The pause after a rejection this refresh started (and the slot it wrote), and the one before it. */
  pause?: StartedPause;
  /** The input the fetch went with, where the store held another than the one prepared (see Upstream.recheckInput). */
  input?: unknown;
  /** The refresh started over once already for an input gone from the store: it goes with the one it has now. */
  rechecked?: boolean;
  /** The refresh asked the shared store whether it is back, before a fetch in the fallback: once per refresh. */
  storeAsked?: boolean;
}

/** What the lock's holder read under the lock, in the entry's own store. */
interface SeenUnderLock {
  /** The entry's key was absent. */
  entryAbsent?: boolean;
  /** No failure marker was stored. */
  noMarker?: boolean;
}

/**
 * Fetches from WeChat under the store's refresh lock: one process of the fleet fetches, the others wait
 * for its entry and take its result, success or failure (the failure marker). Fetches back off by
 * errcode, fleet-wide; forced stable fetches are spaced fleet-wide; while the shared store is down the
 * processes of a host share a fallback, and classic fetches are spaced out.
 */
export class LockedFetchRefresher implements Refresher {
  readonly fetches = true;
  readonly leaseMs: number;
  /** The short lease the holder renews up to leaseMs, where the lock's store can. */
  readonly keepAliveMs: number;
  readonly #ctx: TokenContext;
  readonly #upstream: Upstream;
  readonly #lock: RefreshLock;
  readonly #failures: FailureGate;
  readonly #pause: RejectionPause;
  readonly #writes: DroppedWrites;
  // Made when first used: forced refreshes, store outages and rejected tokens are rare, and 10,000
  // accounts need not hold them. What PeerWriters learns comes with a rejection only: until one, a
  // refresher without it knows no writer without the lock, and waits for none.
  #forcedMade: ForcedRefreshes | undefined;
  #downMade: StoreDownSpacing | undefined;
  #peersMade: PeerWriters | undefined;
  /** Tokens found rejected while the store still held them: invalidated from outside the fleet. */
  #externalInvalidations = 0;
  /** The fetch time (unix s) of the newest token WeChat rejected here, where its entry records one (see StoreDownSpacing). */
  #rejectedFetchedAt: number | undefined;

  constructor(ctx: TokenContext, upstream: Upstream, lockKey: string) {
    this.#ctx = ctx;
    this.#upstream = upstream;
    this.leaseMs = leaseMs(upstream.budgetMs, ctx.settings.cacheTimeoutMs, upstream.answersFullLife === true);
    this.keepAliveMs = keepAliveMs(ctx.settings.cacheTimeoutMs, this.leaseMs);
    this.#lock = new RefreshLock(lockKey, ctx.logKey === ctx.key ? lockKey : `${ctx.logKey}:lock`, ctx.log, ctx.appId, ctx.entries.schema.lockValue, ctx.entries.schema.name);
    this.#failures = new FailureGate(ctx.key, ctx.label, upstream);
    this.#pause = new RejectionPause(ctx.key, ctx.label);
    this.#writes = new DroppedWrites(ctx);
  }

  get #forced(): ForcedRefreshes {
    return (this.#forcedMade ??= new ForcedRefreshes(this.#ctx, this.#failures));
  }

  get #down(): StoreDownSpacing {
    return (this.#downMade ??= new StoreDownSpacing(this.#ctx));
  }

  /** Made for each use, not kept: it holds nothing but the context, and every account's first fetch uses it. */
  get #kept(): KeptTokens {
    return new KeptTokens(this.#ctx);
  }

  get #peers(): PeerWriters {
    return (this.#peersMade ??= new PeerWriters(this.#ctx, this.#upstream));
  }

  /** A writer without the lock shares the store (see PeerWriters). */
  get peerWrites(): boolean {
    return this.#peersMade?.shown ?? false;
  }

  /** The shared store showed no entry where this process holds `value`, still good: whether it drops the entry's writes (see DroppedWrites). */
  dropped(value: string): boolean {
    return this.#writes.dropped(value, () => this.#pause.inForce(this.#ctx.settings.now()) !== undefined);
  }

  stored(): void {
    this.#writes.stored();
  }

  /** A call went through with a token reported as one none did: the pause after rejections ends, as for a report that said so. */
  worked(): void {
    this.#pause.report(performance.now(), true);
  }

  /** The store was swapped: what this process learnt of the old one's writers does not hold for the new one. */
  reset(): void {
    this.#peersMade?.reset();
    this.#pause.reset();
    this.#writes.reset();
  }

  /** How long a waiter waits for the holder: the option, or the lease and 5 s more. */
  get lockWaitMs(): number {
    return this.#ctx.settings.lockWaitMs ?? this.leaseMs + 5_000;
  }

  async refresh(request: RefreshRequest): Promise<Refreshed | undefined> {
    // A refresh whose input was gone once it took the lock starts over once, beside the rounds; so does
    // one that found the store back before a fetch in the fallback.
    let inputGone = false;
    let storeAsked = false;
    for (let round = 1; ; round += 1) {
      const prepared = await this.#prepare(request);
      const tier = this.#ctx.tiers.current(this.#ctx.key);
      const progress: Progress = { asked: false, rechecked: inputGone, storeAsked };
      try {
        const refreshed = await this.#refreshIn(tier, request, prepared, progress);
        if (refreshed?.fetched && refreshed.tier === 'shared' && !refreshed.unshared) await this.#writes.wrote(refreshed.entry.value, progress.pause !== undefined);
        return refreshed;
      } catch (error) {
        storeAsked = progress.storeAsked === true;
        // A forced fetch that never reached WeChat gives the fleet's force slot back: it spent no
        // force_refresh, and the next forced refresh (this host's network back) must not be spaced by it.
        // So does one WeChat refused for its credentials (a wrong secret, an IP off the whitelist): no
        // token was refreshed, and the forced refresh after the fix must reach WeChat.
        if (progress.forceSlot && (!progress.asked || LocalBackoff.covers(error) || policyOf(error) === 'credential')) {
          await this.#forced.release(progress.forceSlot.store, progress.forceSlot.taken);
        }
        // The store answered again before a fetch in the fallback: once more, in it.
        if (error instanceof StoreBack) {
          round -= 1;
          continue;
        }
        const last = round >= MAX_ROUNDS;
        // The store failed before anything was fetched: once more, in the fallback it fell back to.
        if (!last && error instanceof CacheError && this.#ctx.tiers.current(this.#ctx.key).name !== tier.name) continue;
        // Another process of this host fetched while the store is down: take its token.
        if (!last && error instanceof SlotTaken) continue;
        if (error instanceof SlotTaken) {
          throw new TokenUnavailableError(`The token store is down, and the processes of this host keep fetching the ${this.#ctx.label} in turn; try again shortly`);
        }
        // A holder before this one found the prepared input rejected: a fresh one, once.
        if (error instanceof InputGone) {
          inputGone = true;
          round -= 1;
          continue;
        }
        // A ticket's access token was rejected: it is reported (under the lock already, where its lease
        // allowed: see #reportInput), and the ticket fetched once more.
        if (prepared !== undefined && this.#upstream.rejectsInput?.(error)) {
          await this.#upstream.dropInput?.(progress.input ?? prepared, error);
          if (!last) continue;
        }
        // Another process's fetch with this secret was refused (the fleet's marker names it): WeChat
        // refused this client's secret as much as if it had asked itself.
        const failedAt = markerFailedAt(error);
        if (failedAt !== undefined && refusesSecret(error)) this.#ctx.secretRefused(failedAt, false);
        throw error;
      }
    }
  }

  /**
   * The upstream's input (a ticket's access token, an authorizer's component token), asked with a signal
   * that aborts when the refresh's waits end: a refresh every caller gave up on stops waiting for its
   * input too, and leaves the input's own refresh to its other callers (or ends it, if none is left).
   */
  async #prepare(request: RefreshRequest): Promise<unknown> {
    const upstream = this.#upstream;
    if (!upstream.prepare) return undefined;
    const ended = request.ended;
    if (!ended) return upstream.prepare();
    return whileWanted(this.#ctx, request, ended, (signal) => upstream.prepare!(signal));
  }

  async invalidate(value: string, errcode: number | undefined, known?: StoredEntry, accepted = false): Promise<void> {
    const ctx = this.#ctx;
    const started = performance.now();
    // A token that carried a call before WeChat rejected it was replaced (an external refresh): its
    // replacement is fetched at once, however often that happens. One rejected before any call went
    // through with it spaces the fetches that follow (see RejectionPause); one that worked ends the pause:
    // WeChat does take the fleet's tokens.
    // A token of this process's that the store dropped was most likely ended by another process of the
    // fleet that could not see it, whose own token the store dropped too: refetched at once, each such
    // token would end the next one's, one fetch per round of calls. Its refetch is spaced instead.
    if (this.#writes.droppedOwn(value)) accepted = false;
    const fetchedAt = known?.fetchedAt;
    if (fetchedAt !== undefined && (this.#rejectedFetchedAt === undefined || fetchedAt > this.#rejectedFetchedAt)) this.#rejectedFetchedAt = fetchedAt;
    this.#pause.report(started, accepted);
    const tier = ctx.tiers.current(ctx.key);
    // Superseded (40001): a lockless writer's newer token may be on its way (see PeerWriters).
    this.#peers.rejected(known, errcode, tier, started);
    let outcome: Awaited<ReturnType<typeof ctx.entries.deleteIfHolds>> = { deleted: false, entry: undefined };
    try {
      outcome = await ctx.entries.deleteIfHolds(tier.entries, value);
    } catch (error) {
      // The store is down: the rejected list keeps this process off the value, and the next read that
      // reaches the store decides.
      if (!(error instanceof CacheError)) throw error;
    }
    // A token a holder kept in this host's fallback when the shared store refused it (see KeptTokens).
    if (tier.name === 'shared') await this.#kept.forget(value);
    ctx.log.info(
      { event: `${ctx.label}.invalidated`, appId: ctx.appId, key: ctx.logKey, errcode, deleted: outcome.deleted, ms: Math.round(performance.now() - started) },
      `WeChat rejected the cached ${ctx.label}; ${outcome.deleted ? 'removed it from the store' : 'the store already holds another one'}`,
    );
    // The store still held the very token WeChat says was superseded: nobody in the fleet replaced it,
    // so something outside the fleet fetched one. Only the process whose delete won reports it.
    if (outcome.deleted && errcode === 40001) {
      this.#externalInvalidations += 1;
      const { entry } = outcome;
      ctx.log.warn(
        {
          event: `${ctx.label}.invalidated_externally`,
          appId: ctx.appId,
          key: ctx.logKey,
          fetchedBy: entry?.fetchedBy,
          fetchedAt: entry?.fetchedAt,
          count: this.#externalInvalidations,
        },
        // fetchedBy wrote the rejected token, and is most likely one of the fleet: named as the outsider,
        // it sent operators after the wrong program.
        `WeChat says the ${ctx.label} the store holds was superseded, but no newer one was written: the rejected token was last written by ` +
          `${entry?.fetchedBy ?? 'a writer the entry does not name'}; whoever fetched its replacement does not write to this store. ` +
          // Only a client's own access token can follow another program's (an open platform's tokens cannot).
          `Make that program share this store${ctx.label === 'access_token' ? ", or follow it (refresh: 'never')" : ''}`,
      );
    }
  }

  async #refreshIn(tier: Tier, request: RefreshRequest, prepared: unknown, progress: Progress, waitedForForced = false): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    const store = tier.entries;
    const now = ctx.settings.now();
    // The failure marker as it was before the lock was tried: a waiter compares it with later reads.
    let markerBefore: string | undefined;
    if (request.ahead) {
      if (ctx.tiers.unsent.of(ctx.key, now)?.active(now) || (await this.#failures.active(store, now))) return undefined;
    } else {
      // This host could not reach WeChat a moment ago: its callers fail at once, without a store call.
      ctx.tiers.unsent.of(ctx.key, now)?.check(now, request.force);
      markerBefore = await this.#failures.check(store, now, request.force);
    }
    let force = request.force;
    let awaitsForced = false;
    if (force && this.#upstream.scarceForce) {
      const spaced = await this.#forced.space(tier, now, request.current);
      // Another forced refresh of the fleet, less than 30 s ago: its token is the current one, and a
      // normal fetch hands it out without spending a force_refresh. While the store still holds the token
      // the caller wants replaced, that refresh is on its way: its holder is waited for (or, if it holds
      // the lock no more, a normal fetch hands out its token).
      if (spaced === 'normal') force = false;
      else if ('taken' in spaced) progress.forceSlot = { store: tier.entries, taken: spaced.taken };
      else if ('wait' in spaced) {
        force = false;
        awaitsForced = !waitedForForced;
      } else return spaced;
    }
    // Within this process's pause after a rejection it still waits for a holder of the lock and takes
    // its token; it takes no store-down slot, and fetches none itself (see #sitOutPause).
    const followsRejection = !force && this.#pause.follows(request, now);
    const paused = followsRejection && this.#pause.inForce(now) !== undefined;
    const spacedWhileDown = !paused && tier.name !== 'shared' && this.#upstream.invalidatesPrevious === true && !request.ahead;
    if (spacedWhileDown) {
      const ask = progress.storeAsked ? undefined : { rejectedFetchedAt: this.#rejectedFetchedAt, fleetBusy: (shared: Tier) => this.#fleetBusy(shared) };
      progress.storeAsked = true;
      const spaced = await this.#down.await(tier, request, now, this.lockWaitMs, ask);
      if (spaced) return spaced;
    }

    let handle: LockHandle | undefined;
    // Armed before the lock is tried: if another process holds it, whatever it writes after our attempt
    // (its entry, its failure marker, its release) wakes us, and we wait without another look first.
    const wakeup = tier.lock && !request.ahead ? new Wakeup(this.#watch(tier), endingOf(ctx, request)) : undefined;
    let attempt: Awaited<ReturnType<RefreshLock['tryAcquire']>>;
    try {
      attempt = tier.lock ? await this.#lock.tryAcquire(tier.lock, this.leaseMs, this.keepAliveMs) : 'unavailable';
    } catch (error) {
      wakeup?.stop();
      throw error;
    }
    if (attempt !== 'held') wakeup?.stop();
    if (attempt === 'held') {
      if (request.ahead) return undefined;
      const waited = await this.#waitForHolder(tier, request, markerBefore, wakeup!);
      if ('refreshed' in waited) return waited.refreshed;
      handle = waited.handle;
    } else if (attempt === 'unavailable') {
      // Nowhere to hold a lock: leave a background refresh to the entry's expiry.
      if (request.ahead) return undefined;
    } else {
      handle = attempt;
    }

    // The lock came to the loser of the fleet's 30 s slot before its winner took it (see
    // ForcedRefreshes.awaitWinner): the lock is let go for the winner, and its token waited for.
    if (awaitsForced && handle !== undefined) {
      const waited = await this.#forced.awaitWinner(tier, request, handle, markerBefore, this.lockWaitMs, this.#watch(tier));
      // The slot is free and nobody forced: the refresh starts over, and may take the slot itself (once).
      if (waited === 'free') return this.#refreshIn(tier, request, prepared, progress, true);
      if (waited) return waited;
    }

    // The fleet's next pause, written beside the fetch; waited for before the lock is let go.
    let pauseWritten: Promise<void> | undefined;
    // What the fetch goes with: the prepared input, or the one its store holds instead (recheckInput).
    let input = prepared;
    try {
      // What the holder learnt under the lock, which spares it store calls after the fetch.
      const seen: SeenUnderLock = {};
      // The fleet's pause, read beside the entry, in the shared store only (a fallback tier is this
      // host's, and its own memory serves): by a refresh that follows a rejection, and by one that knows
      // of none (a process that starts, or whose memo ran out, within the fleet's pause), not by one that
      // follows the rejection of a token a call went through with (fetched at once, however often).
      // Undefined where it was not read or the store did not answer; `raw` undefined where it holds none.
      const readsPause = !request.ahead && tier.name === 'shared' && (followsRejection || !this.#pause.reportedLately(true));
      let fleetPause: FleetPause | undefined;
      if (!request.force) {
        // Another process may have written between our read and our lock, or failed and released the
        // lock just before we took it.
        // The input, as its own entry holds it now: a holder before this one (waited for, or gone as this
        // one prepared) reported the input it found rejected before it let the lock go (#reportInput).
        // Best effort: a failure leaves it as it is.
        const rechecks = handle !== undefined && prepared !== undefined && !progress.rechecked && this.#upstream.recheckInput !== undefined;
        const [again, marker, pause, recheck] = await Promise.all([
          ctx.entries.read(store, (value) => ctx.rejected(value)),
          this.#failures.look(store, ctx.settings.now()),
          readsPause ? this.#pause.read(store, ctx.settings.now()) : undefined,
          rechecks ? this.#upstream.recheckInput!(prepared).catch(() => prepared) : prepared,
        ]);
        fleetPause = pause;
        if (again.kind === 'hit' && (!request.ahead || again.entry.value !== request.current)) {
          return { entry: again.entry, tier: tier.name, fetched: false, asked: false };
        }
        if (marker.active) {
          if (request.ahead) return undefined;
          throw markerError(marker.active, ctx.label, ctx.settings.now());
        }
        if (rechecks && recheck === undefined) throw new InputGone();
        if (recheck !== prepared) progress.input = input = recheck;
        if (handle !== undefined && !request.ahead && again.kind === 'miss' && !again.foreign) {
          const written = await this.#peersMade?.await(tier, request);
          if (written) return written;
        }
        if (handle !== undefined && tier.name === 'shared' && again.kind === 'miss' && !again.foreign) {
          const kept = await this.#kept.find(request);
          if (kept) return kept;
        }
        // Only the holder of this lock writes the entry's failure marker: while we hold it in the entry's
        // own store, no marker appears behind our back, and a success has none to delete. An absent entry
        // is written with `add` at once; anyone who wrote it meanwhile makes the `add` fail, not succeed.
        if (handle !== undefined && tier.lock === store) {
          seen.entryAbsent = again.kind === 'miss' && again.absent === true;
          seen.noMarker = !marker.stored;
        }
      }
      // Where the process would fetch, the pause decides (InPause within it), before any store-down slot
      // is taken; else a fetch that follows a rejection starts the next pause (see RejectionPause.begin).
      pauseWritten = this.#pause.begin(progress, followsRejection, fleetPause, tier.name === 'shared' ? store : undefined, () => ctx.settings.now());
      if (spacedWhileDown) await this.#down.take(store, ctx.settings.now());
      const refreshed = await this.#fetchAndWrite(tier, { ...request, force }, input, handle, seen, progress);
      // A peer SDK's copy, taken where this refresh would have fetched: WeChat handed out nothing.
      if (!progress.asked) await this.#pause.giveBack(progress, pauseWritten, () => ctx.settings.now());
      return refreshed;
    } catch (error) {
      if (!(error instanceof InPause)) {
        // A fetch that never reached WeChat gives its pause back too (a host that cannot must not hold
        // back the healthy ones), and so does one WeChat refused for its input (a ticket's access token,
        // an authorizer's component token: the next round, with a fresh input, must not find itself
        // paused). One WeChat answered with a failure keeps its pause: the failure marker's back-off runs
        // beside it, and neither ladder starts over while fetches fail and succeed by turns. Given back
        // under the lock, so that no other process reads it meanwhile. A fetch that failed on a store of
        // its own (an open platform's durable store, which holds an authorizer's refresh token) handed out
        // no token either: it throws a CacheError only before WeChat was asked, or after WeChat refused
        // the refresh token (a token WeChat did hand out is returned, whatever became of its writes).
        const inputRejected = input !== undefined && this.#upstream.rejectsInput?.(error) === true;
        if (!progress.asked || LocalBackoff.covers(error) || error instanceof CacheError || inputRejected) {
          await this.#pause.giveBack(progress, pauseWritten, () => ctx.settings.now());
        }
        // Reported before the lock is let go: a process that waited for it then finds the input gone
        // from the store, not the rejected one, and starts over with a fresh one (recheckInput) rather
        // than send it to WeChat in turn.
        if (inputRejected) await this.#reportInput(input, error, handle);
        throw error;
      }
    } finally {
      await pauseWritten;
      // Waited for, though the waiters wake on the entry (or the marker) already: a release left running
      // when the process exits without close() (a job that prints a token, a frozen function) would
      // leave the lock to its lease, and hold up the fleet's next refresh that long.
      await handle?.release();
    }
    return this.#sitOutPause(request);
  }

  /** Whether, in `tier`, another process holds the refresh lock or a failure marker is in force: reads only. */
  async #fleetBusy(tier: Tier): Promise<boolean> {
    const [marker, holder] = await Promise.all([this.#failures.active(tier.entries, this.#ctx.settings.now()), tier.lock ? this.#lock.holder(tier.lock) : undefined]);
    return marker !== undefined || holder !== undefined;
  }

  /**
   * Reports the input WeChat rejected (Upstream.dropInput) while the lock is held, as long as its lease
   * lasts: the rejected path makes none of the store calls of a write (its read and compare-and-set, the
   * marker's clearing), and the report's compare-and-delete (a read, a delete) and its fallback's delete
   * take their place in the lease. A report still under way at the lease's end goes on without the lock
   * (refresh() waits for it before it starts over); its failure is refresh()'s to meet, as before.
   */
  async #reportInput(input: unknown, error: unknown, handle: LockHandle | undefined): Promise<void> {
    const report = (this.#upstream.dropInput?.(input, error) ?? Promise.resolve()).catch(() => undefined);
    if (handle === undefined) return report;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const leaseEnds = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, handle.maxRemainingMs());
      timer.unref?.();
    });
    try {
      await Promise.race([report, leaseEnds]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The lock was this process's, but its pause after a rejection is in force: it takes a token another
   * process writes meanwhile (a lockless peer, a store round trip after its fetch) for the rest of the
   * pause, PAUSE_WAIT_MS or `lockWaitMs`, whichever ends first (a caller that waits less for another
   * process's refresh waits less here too). A pause that ended meanwhile lets the refresh start over (and
   * fetch); one still in force fails the callers with when it ends.
   */
  async #sitOutPause(request: RefreshRequest): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    const pause = this.#pause.inForce(ctx.settings.now());
    if (pause !== undefined) {
      const written = await awaitNewEntry(ctx, Math.min(pause - ctx.settings.now(), PAUSE_WAIT_MS, this.lockWaitMs), request.current, true, POLL_PACE, endingOf(ctx, request));
      if (written) return written;
      stopIfEnded(ctx, request);
      const still = this.#pause.inForce(ctx.settings.now());
      if (still !== undefined) throw this.#pause.error(still);
    }
    return this.refresh(request);
  }

  /**
   * Another process holds the lock: poll the entry (not the lock) with backoff until its value appears,
   * or its failure marker does (its error is ours: we do not fetch again), or the lock is free (a holder
   * that died leaves it at the end of the lease): then it is ours.
   */
  async #waitForHolder(tier: Tier, request: RefreshRequest, before: string | undefined, wakeup: Wakeup): Promise<WaitOutcome> {
    const ctx = this.#ctx;
    const started = performance.now();
    const outcome = await pollWithBackoff<WaitOutcome>(this.lockWaitMs, async () => {
      const read = await ctx.entries.read(tier.entries, (value) => ctx.rejected(value));
      if (read.kind === 'hit' && (!request.force || read.entry.value !== request.current)) {
        return { refreshed: { entry: read.entry, tier: tier.name, fetched: false, asked: false } };
      }
      const failed = await this.#failures.failedSince(tier.entries, before, ctx.settings.now());
      if (failed) throw failed;
      const attempt = await this.#lock.tryAcquire(tier.lock!, this.leaseMs, this.keepAliveMs);
      if (attempt === 'held') return undefined;
      if (attempt === 'unavailable') throw new CacheError('The refresh lock became unavailable while waiting for it');
      return { handle: attempt };
    }, wakeup, endingOf(ctx, request));
    if (outcome) return outcome;
    stopIfEnded(ctx, request);
    // A lock kept without expiry never ends: waited for by every call, no process would refresh again.
    const endless = await this.#lock.takeOverEndless(tier.lock!, this.leaseMs, ctx.settings.now());
    if (endless !== undefined && !('endless' in endless)) return { handle: endless };
    // The lock's value: read already where it is kept without expiry.
    const holder = endless ? endless.endless : await this.#lock.holder(tier.lock!);
    ctx.log.warn(
      { event: 'lock.wait_timeout', appId: ctx.appId, key: ctx.logKey, holder, waitedMs: Math.round(performance.now() - started) },
      `Waited ${this.lockWaitMs} ms for another process to refresh the ${ctx.label}`,
    );
    if (endless) {
      throw new TokenUnavailableError(
        `Waited ${this.lockWaitMs} ms for the refresh lock of the ${ctx.label} under ${ctx.logKey}, which the store keeps without expiry (${holder ?? 'unknown'}): ` +
          'no wxkit process writes a lock without its lease. wxkit takes it over once it has held it for 10 minutes; delete the key to refresh sooner',
      );
    }
    throw new TokenUnavailableError(
      `Waited ${this.lockWaitMs} ms for another process (${holder ?? 'unknown'}) to refresh the ${ctx.label} under ${ctx.logKey}; ` +
        'it holds the refresh lock and wrote neither a token nor a failure. wxkit does not fetch beside it; raise lockWaitMs if refreshes are that slow',
    );
  }

  /** The holder's writes where the store can tell: the entry, the failure marker, the lock's release. */
  #watch(tier: Tier): Watch {
    return (onChange) => {
      const entries = tier.entries.watch([...this.#ctx.entries.keys, this.#failures.key], onChange);
      if (!entries) return undefined;
      const lock = tier.lock === tier.entries ? tier.entries.watch([this.#lock.key], onChange) : tier.lock?.watch([this.#lock.key], onChange);
      return () => {
        entries();
        lock?.();
      };
    };
  }

  async #fetchAndWrite(tier: Tier, request: RefreshRequest, prepared: unknown, handle: LockHandle | undefined, seen: SeenUnderLock = {}, progress?: Progress): Promise<Refreshed> {
    const ctx = this.#ctx;
    const startedAt = ctx.settings.now();
    const started = performance.now();
    let fetched: Fetched | undefined;
    // Closed, or given up on by every caller, while it waited for the lock or read under it: nobody is to
    // be served, and a fetch would only invalidate the fleet's token (classic endpoint).
    stopIfEnded(ctx, request);
    // A token a peer SDK fetched on its own, where it can be read: taken, not fetched again; never the
    // one this refresh is to replace (ahead of expiry), nor one WeChat rejected. Its failure is none.
    if (!request.force) {
      try {
        fetched = await this.#upstream.fromPeer?.((value) => value === request.current || ctx.rejected(value));
      } catch {
        fetched = undefined;
      }
    }
    const fromPeer = fetched !== undefined;
    // The look at the peer's copy takes store calls: a refresh closed, or given up on by every caller,
    // meanwhile stops here as it does before the look, rather than fetch for nobody.
    if (!fromPeer) stopIfEnded(ctx, request);
    /** The value's end record could not be read: the one the store may hold is not replaced. */
    let endUnread = false;
    try {
      if (fetched === undefined && progress) progress.asked = true;
      fetched ??= await this.#upstream.fetch(request.force, prepared);
      ctx.tiers.unsent.clear(ctx.key);
      // The value this process knew already, or the fleet's end record names, handed back with a new
      // expires_in (getticket): its end stays.
      if (this.#upstream.answersFullLife) {
        const known = await this.#knownEnd(tier, fetched.value);
        endUnread = known.unread === true;
        fetched = withKnownEnd(fetched, known.end, Math.floor(startedAt / 1000));
      }
    } catch (error) {
      if (prepared === undefined || !this.#upstream.rejectsInput?.(error)) await this.#recordFailure(tier, request, error);
      throw error;
    }
    // fetched_at is when the request was sent: a token asked for later is a newer token, even when
    // its answer arrived first.
    const fresh = ctx.entries.encode(fetched, Math.floor(startedAt / 1000), ctx.writer);
    let outcome: { entry: typeof fresh.entry; stored: boolean } = { entry: fresh.entry, stored: false };
    let unshared: typeof fresh | undefined = tier.name === 'shared' ? undefined : fresh;
    // A holder whose lease ran out (it was paused) may not know what was written meanwhile: it replaces
    // only what it can prove older (fetched_at), never an entry of a format that records no time.
    const leaseHeld = handle === undefined || handle.remainingMs() > 0;
    // A forced stable fetch that holds its lock (and the fleet's 30 s slot) got the token WeChat now takes
    // as current, and ended the ones before it: whatever the store holds is older, whatever its
    // fetched_at says (the clock of the host that wrote it may be ahead of ours).
    const supersedes = request.force && this.#upstream.scarceForce === true && leaseHeld;
    const write = {
      rejected: (value: string) => ctx.rejected(value) || (supersedes && value !== fetched.value),
      leaseHeld,
      // Asked on a same-second tie only: a lock another holds, or none, says this fetch may be the older
      // one; a lock that cannot be read says nothing, and the write goes on as it would have.
      holds:
        handle === undefined || tier.lock === undefined
          ? undefined
          : () => tier.lock!.get(this.#lock.key).then((owner) => owner === handle.owner, () => true),
      mayRetry: () => handle === undefined || handle.maxRemainingMs() > 3 * ctx.settings.cacheTimeoutMs,
      // Seen absent under the lock: `add` first, without reading it again (a lost `add` reads and compares).
      absent: seen.entryAbsent === true,
    };
    // A ticket's end record goes before its entry, while the lease holds: a holder killed between the two
    // writes leaves a record without its entry (the next holder fetches the same ticket, and reads its
    // end), never an entry without its record (a process that never read that entry would keep the ticket
    // up to 2 h past its end). The record says only when that ticket ends: true whatever the write meets.
    // One whose record could not be read writes none: the store may hold the record that says the value
    // ends sooner, which the next fetch of it needs.
    if (this.#upstream.answersFullLife && tier.name === 'shared' && leaseHeld && !endUnread) await ctx.entries.recordEnd(tier.entries, fresh.entry);
    // The entry this fetch put in the shared store, for what peers keep beside it (afterWrite).
    let shared: StoredEntry | undefined;
    try {
      outcome = await ctx.entries.write(tier.entries, fresh, write);
      if (tier.name === 'shared' && outcome.stored) shared = outcome.entry;
      // A holder that read no marker has none to delete while the lock is still its own; one whose lease
      // ran out (or whose renewal found another owner) may have had the holder after it fail meanwhile,
      // and that marker goes: this success came after it.
      await this.#failures.clear(tier.entries, seen.noMarker !== true || handle === undefined || handle.remainingMs() === 0);
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      unshared = fresh;
      // The store failed as the value came back: keep it where the processes of this host can see it.
      const fallback = ctx.tiers.current(ctx.key);
      if (fallback.name !== tier.name) {
        try {
          outcome = await ctx.entries.write(fallback.entries, fresh, write);
          // Written before the lock is let go: the process of this host that takes it next may find the
          // shared store answering, without the entry (see KeptTokens).
          if (tier.name === 'shared') await this.#kept.keep(fallback, outcome.entry.value, this.leaseMs);
        } catch {
          // Kept by this process only.
        }
      }
    }
    // Only while the lease holds: a holder past it may no longer know what the store holds.
    if (shared && (handle === undefined || handle.remainingMs() > 0)) await this.#upstream.afterWrite?.(fetched, shared).catch(() => undefined);
    ctx.log.info(
      {
        event: `${ctx.label}.fetched`,
        appId: ctx.appId,
        key: ctx.logKey,
        forced: request.force,
        ahead: request.ahead === true,
        locked: handle !== undefined,
        tier: tier.name,
        stored: outcome.stored,
        keptNewer: outcome.entry.value !== fetched.value,
        expiresIn: fetched.expiresIn,
        ms: Math.round(performance.now() - started),
        ...(fromPeer ? { source: 'peer' } : {}),
      },
      fromPeer
        ? `Took the ${ctx.label} a peer SDK fetched, where it keeps its copy`
        : request.ahead
          ? `Refreshed the ${ctx.label} ahead of its expiry`
          : `Fetched a new ${ctx.label} from WeChat`,
    );
    // A peer's value is not WeChat's word this moment: it never forgives a value rejected before.
    const ours = outcome.entry.value === fetched.value && !fromPeer;
    // `fetched` only when the value served is the one WeChat just handed out: a newer one kept instead is
    // not vouched for by this fetch (the manager forgives a rejected value only when WeChat re-issued it).
    return { entry: outcome.entry, tier: tier.name, fetched: ours, ...(unshared && ours ? { unshared } : {}) };
  }

  /**
   * When `value` ends, as this process knew it (see EntryStore.knownEnd) or, where it never saw the value,
   * as the shared store's end record says (EntryStore.recordEnd): a process that starts in a ticket's last
   * minutes, after its entry left the store, learns the end there.
   */
  async #knownEnd(tier: Tier, value: string): Promise<{ end?: number; unread?: true }> {
    const entries = this.#ctx.entries;
    const known = entries.knownEnd(value);
    if (known !== undefined || tier.name !== 'shared') return { end: known };
    return entries.recordedEnd(tier.entries, value);
  }

  async #recordFailure(tier: Tier, request: RefreshRequest, error: unknown): Promise<void> {
    const ctx = this.#ctx;
    const now = ctx.settings.now();
    if (request.force && this.#upstream.scarceForce && error instanceof WeChatApiError && error.errcode === 45009) {
      // force_refresh's own daily quota: no more forced fetches until it renews; normal fetches go on.
      await this.#forced.quotaSpent(tier.entries, now);
      return;
    }
    if (policyOf(error) === undefined) return;
    // The client was closed, and its fetch was then cut by the program's own shutdown (its dispatcher
    // destroyed or closed under it: a service past its grace). That says nothing about WeChat, and a
    // marker would hold back every healthy process of the fleet. A failure WeChat's side caused after
    // close() (an error answer, a 5xx, a timeout) is recorded as ever: close() lets a fetch finish.
    if (ctx.closed.aborted && cutByShutdown(error)) return;
    // A request that never left this process says nothing about WeChat: a marker would stop every
    // healthy host of the fleet. This process backs off alone; the lock is released as after any
    // failure, so a process waiting for it takes it and fetches at once.
    const unsent = LocalBackoff.covers(error);
    if (unsent) {
      ctx.tiers.unsent.record(ctx.key, ctx.label, error, now, ctx.writer);
    } else {
      ctx.tiers.unsent.clear(ctx.key);
      const marker = await this.#failures.record(tier.entries, error, now, ctx.writer);
      if (marker) withRetryAt(error, marker.retryAt);
      if (refusesSecret(error)) ctx.secretRefused(marker?.failedAt, true);
    }
    logFetchFailed(
      ctx,
      error,
      tier.name,
      !unsent,
      unsent
        ? `Fetching the ${ctx.label} failed before the request left this host; this process backs off before trying again, the other processes are not held back`
        : `Fetching the ${ctx.label} failed; every process backs off before asking WeChat again`,
    );
  }
}

/** Whether `error` is a request cut by its own dispatcher's end (undici's destroy() or close()), not by anything of WeChat's. */
function cutByShutdown(error: unknown): boolean {
  const code = (error as { cause?: { code?: unknown } } | null)?.cause?.code;
  return code === 'UND_ERR_DESTROYED' || code === 'UND_ERR_CLOSED';
}
