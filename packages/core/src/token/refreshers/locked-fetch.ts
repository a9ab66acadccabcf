import { CacheError, TokenUnavailableError, WeChatApiError } from '../../errors.js';
import type { GuardedStore } from '../../store.js';
import type { StoredEntry } from '../entry.js';
import { FailureGate, FetchSpacing, heldPause, markerError, markerFailedAt, nextQuotaDay, policyOf, refetchPause, refusesSecret, REFETCH_PAUSE_MAX_MS, type SpacingSlot } from '../failure.js';
import { LocalBackoff } from '../local-backoff.js';
import { Closing } from '../closing.js';
import { withRetryAt } from '../../retry-at.js';
import { keepAliveMs, RefreshLock, type LockHandle } from '../refresh-lock.js';
import { awaitNewEntry, closedError, endingOf, POLL_PACE, pollWithBackoff, stopIfEnded, Wakeup, whileWanted, type Refreshed, type RefreshRequest, type Refresher, type TokenContext, type Watch } from '../refresher.js';
import type { Tier } from '../tiers.js';
import type { Fetched, Upstream } from '../upstream.js';

// Store calls inside the lock, one after the other: the second read of the entry and the TTL query of
// formats without an expiry (the second look at the failure marker runs beside them), the slot of a
// store-down fetch (a read and an atomic write), the read and compare-and-set of the write, and the
// clearing of the failure marker (companions, such as wechatpy's `_expires_at`, are written beside it).
const STORE_CALLS_IN_SECTION = 7;
// Timers and scheduling between the calls, which their deadlines do not cover.
const LEASE_SLACK_MS = 1_000;
// stable_token ignores force_refresh calls less than 30 s apart (WeChat's documentation).
const FORCE_SPACING_MS = 30_000;
// While the shared store is down, classic fetches of one host are at least this far apart, growing to
// the maximum while the store stays down: each one invalidates the token other hosts hold.
const DOWN_SPACING_MS = 1_000;
const DOWN_SPACING_MAX_MS = 16_000;
// A refresh starts over (a fresh input, the fallback tier, a slot taken by another process of the host)
// at most this often before it gives up.
const MAX_ROUNDS = 3;
// After a 40001, how long a process gives the newer token's writer (a program that refreshes without a
// lock) before it fetches one of its own, counted from the report of the rejection. It happens in the
// shared store only, where the store-down slot's two calls of STORE_CALLS_IN_SECTION do not: its last
// look (a read, with a TTL query for formats without an expiry) takes their place, and the wait comes
// out of LEASE_SLACK_MS.
const PEER_WRITE_WAIT_MS = 200;
// The fetches that follow WeChat's rejection of a token no call had gone through with are spaced: the
// first at once, then, while they follow each other closely (a pause is remembered for one more step
// after it ends), 1 s, 2 s, 4 s … 60 s apart. A rejection every few hours costs nothing; a token WeChat
// rejects moments after each fetch (another program fetching in a loop, an account WeChat refuses) costs
// the fleet one fetch per step, not one per round of resends: the holder of the lock that would fetch
// reads the fleet's pause ({key}:refetch) beside its second read of the entry and writes the next one
// beside its fetch, so the section gains no store call in turn. A refresh counts as following such a
// rejection when this process saw one this recently.
const REJECTION_SPACING_MS = 1_000;
const AFTER_REJECTION_MS = 10_000;
// Within its pause a process waits this long at most for a token another process writes (a lockless
// peer's, a store round trip after its fetch) before its callers fail; it never fetches one itself.
const PAUSE_WAIT_MS = 2_000;

/** A forced refresh while the fleet's force_refresh quota for the day is spent (a slot closed until `until`). */
function forceQuotaError(until: number): WeChatApiError {
  return new WeChatApiError({ errcode: 45009, errmsg: 'reach max api daily quota limit' }, 'cgi-bin/stable_token', {
    message: `WeChat allows force_refresh 20 times a day, and the fleet has used them up; forceRefresh() works again after ${new Date(until).toISOString()}`,
  });
}

/** A wait nothing ends but its own budget. */
const UNENDED = new Closing();

/** Another process of this host took the store-down slot first: start over, and take its token. */
class SlotTaken extends Error {}

/** The holder of the lock is within its pause after a rejection: it lets the lock go, then waits without it. */
class InPause extends Error {}

/** The input the holder prepared is gone from the store (rejected, and reported by a holder before it): it lets the lock go, and starts over. */
class InputGone extends Error {}

/**
 * The lease of the refresh lock: the whole critical section it guards, every upstream call and store
 * call inside it with their deadlines, never a constant. A holder that outlives it has, by construction,
 * been stalled, and its write still cannot replace a newer token (EntryStore.write compares fetched_at).
 */
export function leaseMs(upstreamBudgetMs: number, cacheTimeoutMs: number): number {
  return upstreamBudgetMs + STORE_CALLS_IN_SECTION * cacheTimeoutMs + LEASE_SLACK_MS;
}

type WaitOutcome = { refreshed: Refreshed } | { handle: LockHandle };

/** How far one refresh got: the force slot it took, and whether it asked WeChat (or a peer's copy) at all. */
interface Progress {
  asked: boolean;
  forceSlot?: { store: GuardedStore; taken: string };
  /** The pause after a rejection this refresh started (and the slot it wrote), and the one before it. */
  pause?: { started: RefetchPause; previous: RefetchPause | undefined; put?: { store: GuardedStore; value: string; replaced: string | undefined } };
  /** The input the fetch went with, where the store held another than the one prepared (see Upstream.recheckInput). */
  input?: unknown;
  /** The refresh started over once already for an input gone from the store: it goes with the one it has now. */
  rechecked?: boolean;
}

/** A pause of fetches after a rejected token, on the clients' clock (unix ms). */
interface RefetchPause {
  until: number;
  step: number;
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
  /** Fetches that never left this process: backed off here only (made at the first such failure). */
  #unsent: LocalBackoff | undefined;
  // Made when first used: forced refreshes and store outages are rare, and 10,000 accounts need not hold them.
  #forced: FetchSpacing | undefined;
  #down: FetchSpacing | undefined;
  /** Tokens found rejected while the store still held them: invalidated from outside the fleet. */
  #externalInvalidations = 0;
  /** When (performance.now()) this process last saw a token superseded with nothing newer in the store. */
  #supersededAt: number | undefined;
  /**
   * This process's last report of a token WeChat rejected: when (performance.now()), and whether a call
   * had gone through with it first.
   */
  #lastReport: { at: number; accepted: boolean } | undefined;
  /** The last pause of fetches after such rejections this process started or read in the store, on the clients' clock (unix ms). */
  #refetchPause: RefetchPause | undefined;
  /** A pause this process started whose write to the store failed (see #learnPause). */
  #unshared: RefetchPause | undefined;
  /**
   * A rejected token this process held came without wxkit's `fetched_by`: another program's write, or a
   * format that cannot record it. A writer without the lock shares the store, and is waited for after a
   * 40001, from then on (until the store is swapped: see reset()).
   */
  #peerWrites = false;
  /** The token this process last fetched and wrote to the shared store. */
  #written: string | undefined;
  /** A token this process wrote, found gone from the shared store while still good (see dropped()). */
  #vanished: string | undefined;
  /** The shared store drops the entry's writes: found so twice in a row (see dropped()). */
  #dropsEntries = false;
  /** The token this process wrote as it started a pause after a rejection, found gone at once when read back (see dropped()). */
  #droppedInPause: string | undefined;

  get peerWrites(): boolean {
    return this.#peerWrites;
  }

  /**
   * The shared store showed no entry where this process holds `value`, still good. A store that
   * acknowledges the entry's write and drops it (an eviction under maxmemory, a replica that lags) shows
   * none to anyone: each process would fetch on each read, and on the classic endpoint each fetch ends
   * the token of another process, which fetches again on its 40001. The first time this process's own
   * token is gone, it takes it for a deletion (`wxkit token clear`, a peer's after a 40001) and fetches,
   * reading the entry back once written (shown, the store holds its writes: see #readBack());
   * if the token it wrote then is gone too, the store drops its writes: this process serves its token
   * from memory while the store shows none, until WeChat rejects it (its refetch is spaced: see
   * invalidate()) or it nears its expiry. Within the pause its fetch started after a rejection, it serves
   * that token at once where the store showed none right after its write (a token gone later may have
   * been deleted by a process WeChat refused it to). Any entry the store shows ends that (stored()).
   */
  dropped(value: string): boolean {
    if (value !== this.#written) return false;
    // Within this process's pause after a rejection it fetches nothing: the token it wrote as the pause
    // began, which the store dropped at once, is the fleet's newest as far as it knows, and serves (else
    // every call failed until the pause ended, that token still good).
    if (value === this.#droppedInPause && this.#pauseInForce(this.#ctx.settings.now()) !== undefined) return true;
    if (!this.#dropsEntries) {
      if (this.#vanished === undefined || this.#vanished === value) {
        this.#vanished = value;
        return false;
      }
      this.#dropsEntries = true;
    }
    return true;
  }

  stored(): void {
    this.#vanished = undefined;
    this.#dropsEntries = false;
    this.#droppedInPause = undefined;
  }

  /**
   * Takes the store for one that holds the entry's writes when it shows `value`, just written (see
   * dropped()). Resolves whether it showed no entry at all (false where the read failed).
   */
  async #readBack(value: string): Promise<boolean> {
    const ctx = this.#ctx;
    const read = await ctx.entries.read(ctx.tiers.shared, (held) => ctx.rejected(held)).catch(() => undefined);
    if (read?.kind === 'hit' && read.entry.value === value) this.stored();
    return read?.kind === 'miss' && read.absent === true;
  }

  /** The store was swapped: what this process learnt of the old one's writers does not hold for the new one. */
  reset(): void {
    this.#peerWrites = false;
    this.#supersededAt = undefined;
    this.#lastReport = undefined;
    this.#refetchPause = undefined;
    this.#unshared = undefined;
    this.#written = undefined;
    this.stored();
  }

  constructor(ctx: TokenContext, upstream: Upstream, lockKey: string) {
    this.#ctx = ctx;
    this.#upstream = upstream;
    this.leaseMs = leaseMs(upstream.budgetMs, ctx.settings.cacheTimeoutMs);
    this.keepAliveMs = keepAliveMs(ctx.settings.cacheTimeoutMs, this.leaseMs);
    this.#lock = new RefreshLock(lockKey, ctx.logKey === ctx.key ? lockKey : `${ctx.logKey}:lock`, ctx.log, ctx.appId, ctx.entries.schema.lockValue, ctx.entries.schema.name);
    this.#failures = new FailureGate(ctx.key, ctx.label, upstream);
  }

  /** The fleet's spacing of forced fetches (stable endpoint: WeChat ignores them closer than 30 s). */
  get #forceSpacing(): FetchSpacing {
    return (this.#forced ??= new FetchSpacing(this.#ctx.key, 'forced'));
  }

  /** The host's spacing of classic fetches while the shared store is down. */
  get #downSpacing(): FetchSpacing {
    return (this.#down ??= new FetchSpacing(this.#ctx.key, 'throttle'));
  }

  /** The fleet's pause of fetches after a token rejected before any call went through with it (not kept: a refresh is rare, an account many). */
  get #refetchSpacing(): FetchSpacing {
    return refetchPause(this.#ctx.key);
  }

  /** How long a waiter waits for the holder: the option, or the lease and 5 s more. */
  get lockWaitMs(): number {
    return this.#ctx.settings.lockWaitMs ?? this.leaseMs + 5_000;
  }

  async refresh(request: RefreshRequest): Promise<Refreshed | undefined> {
    // A refresh whose input was gone once it took the lock starts over once, beside the rounds.
    let inputGone = false;
    for (let round = 1; ; round += 1) {
      const prepared = await this.#prepare(request);
      const tier = this.#ctx.tiers.current(this.#ctx.key);
      const progress: Progress = { asked: false, rechecked: inputGone };
      try {
        const refreshed = await this.#refreshIn(tier, request, prepared, progress);
        if (refreshed?.fetched && refreshed.tier === 'shared' && !refreshed.unshared) {
          this.#written = refreshed.entry.value;
          this.#droppedInPause = undefined;
          // Fetched after a token of this process's went missing, or as a pause after a rejection began:
          // read back once. A store that shows it holds what is written to it, and the token was deleted
          // (`wxkit token clear`), not dropped.
          if ((this.#vanished !== undefined && !this.#dropsEntries) || progress.pause !== undefined) {
            const gone = await this.#readBack(refreshed.entry.value);
            if (gone && progress.pause !== undefined) this.#droppedInPause = refreshed.entry.value;
          }
        }
        return refreshed;
      } catch (error) {
        // A forced fetch that never reached WeChat gives the fleet's force slot back: it spent no
        // force_refresh, and the next forced refresh (this host's network back) must not be spaced by it.
        // So does one WeChat refused for its credentials (a wrong secret, an IP off the whitelist): no
        // token was refreshed, and the forced refresh after the fix must reach WeChat.
        if (progress.forceSlot && (!progress.asked || LocalBackoff.covers(error) || policyOf(error) === 'credential')) {
          await this.#forceSpacing.release(progress.forceSlot.store, progress.forceSlot.taken).catch(() => undefined);
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
    // through with it spaces the fetches that follow (see #startPause); one that worked ends the pause:
    // WeChat does take the fleet's tokens.
    // A token of this process's that the store dropped was most likely ended by another process of the
    // fleet that could not see it, whose own token the store dropped too: refetched at once, each such
    // token would end the next one's, one fetch per round of calls. Its refetch is spaced instead.
    if (this.#dropsEntries && value === this.#written) accepted = false;
    this.#lastReport = { at: started, accepted };
    if (accepted) this.#refetchPause = undefined;
    const tier = ctx.tiers.current(ctx.key);
    // Superseded (40001): someone fetched a newer token, which the store may not hold yet (see
    // #awaitWriter). Noted before the store is asked, so that a refresh of this process that takes the
    // lock meanwhile waits too; taken back once the store shows it holds a newer one. Only a program
    // without a lock writes to the shared store that way (a fallback tier is the fleet's alone), and
    // only once such a writer has shown itself: a rejected token without wxkit's `fetched_by`.
    if (known !== undefined && known.fetchedBy === undefined) this.#peerWrites = true;
    // Where every writer takes the lock (WxJava's; its format records no `fetched_by`), whoever fetched
    // the newer token writes it before its release: a holder of the lock has nothing to wait for.
    const superseded = errcode === 40001 && tier.name === 'shared' && this.#peerWrites && ctx.entries.schema.writersLock !== true;
    const noted = superseded ? (this.#supersededAt = started) : undefined;
    let outcome: Awaited<ReturnType<typeof ctx.entries.deleteIfHolds>> = { deleted: false, entry: undefined };
    let answered = false;
    try {
      outcome = await ctx.entries.deleteIfHolds(tier.entries, value);
      answered = true;
    } catch (error) {
      // The store is down: the rejected list keeps this process off the value, and the next read that
      // reaches the store decides.
      if (!(error instanceof CacheError)) throw error;
    } finally {
      const { entry } = outcome;
      const newer = entry !== undefined && !ctx.rejected(entry.value);
      if (noted !== undefined && (!answered || newer) && this.#supersededAt === noted) this.#supersededAt = undefined;
    }
    // A token a holder kept in this host's fallback when the shared store refused it (see #keptHere):
    // the other processes of the host know nothing of its rejection, and must not take it from there.
    if (tier.name === 'shared') await ctx.tiers.fallback().entries.deleteBesideIfEquals(this.#keptKey, value).catch(() => undefined);
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
          `Make that program share this store, or follow it (refresh: 'never')`,
      );
    }
  }

  /**
   * A 40001 a moment ago found nothing newer in the store: whoever fetched the newer token and holds no
   * lock writes it a store round trip after its fetch, or later. A fetch now would supersede that token
   * (and the one before it would die under the sends that carry it; the late write would then put a dead
   * token in the store). So the holder, under the lock (every other caller waits for it), gives that
   * writer until PEER_WRITE_WAIT_MS after the rejection, once, then fetches. Only a process that saw the
   * 40001 waits: another one whose own read missed meanwhile (a cold start, a memo that ran out in that
   * moment) knows of no rejection. And only where such a writer has shown itself (#peerWrites): a
   * program that fetches without sharing the store writes nothing to wait for.
   */
  async #awaitWriter(tier: Tier, request: RefreshRequest): Promise<Refreshed | undefined> {
    const since = this.#supersededAt;
    // An upstream that reads a peer's own copy (fromPeer) looks there next, rather than wait here.
    if (since === undefined || tier.name !== 'shared' || this.#upstream.fromPeer) return undefined;
    this.#supersededAt = undefined;
    const left = since + PEER_WRITE_WAIT_MS - performance.now();
    // Not ended by close(), nor once every caller stopped waiting: the wait is the fleet's, not the
    // callers'. A holder that let the lock go early would hand it to another process that knows of no
    // 40001 and fetches at once, superseding the token the peer is about to write. It is short (close()
    // waits for the holder's section anyway), and a refresh nobody waits for fetches nothing after it.
    return left > 0 ? awaitNewEntry(this.#ctx, left, request.current, true, POLL_PACE, UNENDED) : undefined;
  }

  /** `{key}:kept`, in a fallback tier: the token a holder of the shared lock kept there when the shared store refused it. */
  get #keptKey(): string {
    return `${this.#ctx.key}:kept`;
  }

  /**
   * The holder of the shared lock found no entry: a process of this host that held the lock moments
   * before (a lease at most) may have fetched a token the shared store refused to hold while it took the
   * lock (memcached out of memory, a cluster node that refuses writes), and kept it in this host's
   * fallback. Taken from there rather than fetched again: each fetch would end the token before it
   * (classic endpoint), one per process of the host. Never a token this process knows WeChat rejected,
   * nor the one an ahead-of-expiry refresh is to replace.
   */
  async #keptHere(request: RefreshRequest): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    const fallback = ctx.tiers.fallback();
    try {
      const kept = await fallback.entries.getBeside(this.#keptKey);
      if (kept === undefined || kept === request.current || ctx.rejected(kept)) return undefined;
      const read = await ctx.entries.read(fallback.entries, (value) => ctx.rejected(value));
      if (read.kind !== 'hit' || read.entry.value !== kept) return undefined;
      return { entry: read.entry, tier: fallback.name, fetched: false, asked: false };
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      return undefined;
    }
  }

  async #refreshIn(tier: Tier, request: RefreshRequest, prepared: unknown, progress: Progress, waitedForForced = false): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    const store = tier.entries;
    const now = ctx.settings.now();
    // The failure marker as it was before the lock was tried: a waiter compares it with later reads.
    let markerBefore: string | undefined;
    if (request.ahead) {
      if (this.#unsent?.active(now) || (await this.#failures.active(store, now))) return undefined;
    } else {
      // This host could not reach WeChat a moment ago: its callers fail at once, without a store call.
      this.#unsent?.check(now, request.force);
      markerBefore = await this.#failures.check(store, now, request.force);
    }
    let force = request.force;
    let awaitsForced = false;
    if (force && this.#upstream.scarceForce) {
      const spaced = await this.#spaceForced(tier, now, request.current);
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
    const followsRejection = !force && this.#followsRejection(request, now);
    const paused = followsRejection && this.#pauseInForce(now) !== undefined;
    const spacedWhileDown = !paused && tier.name !== 'shared' && this.#upstream.invalidatesPrevious === true && !request.ahead;
    if (spacedWhileDown) {
      const spaced = await this.#awaitDownSpacing(tier, request, now);
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

    // The lock came to the loser of the fleet's 30 s slot before its winner took it: while the store still
    // holds the token the caller wants rid of, the winner's force_refresh is yet to come (a normal fetch
    // now would hand out the token it ends). The lock is let go for the winner, and its token waited for.
    if (awaitsForced && handle !== undefined) {
      const held = handle;
      const read = await ctx.entries.read(store, (value) => ctx.rejected(value)).catch(async (error: unknown) => {
        await held.release();
        throw error;
      });
      if (read.kind === 'hit') {
        await held.release();
        const current: Refreshed = { entry: read.entry, tier: tier.name, fetched: false, asked: false };
        if (read.entry.value !== request.current) return current;
        // A failure in force (the winner's, or one before it): no forced token is on its way, and the
        // current entry is the answer, as it was before the wait.
        if ((await this.#failures.look(store, ctx.settings.now())).active) return current;
        // As a waiter for a holder waits: the winner's write (its token, or the same one where WeChat
        // ignored its force_refresh), or its failure (which is ours).
        const forced = await pollWithBackoff<Refreshed | 'free'>(this.lockWaitMs, async () => {
          const again = await ctx.entries.read(store, (value) => ctx.rejected(value));
          if (again.kind === 'hit' && (again.entry.value !== request.current || again.raw !== read.raw)) {
            return { entry: again.entry, tier: tier.name, fetched: false, asked: false };
          }
          const failed = await this.#failures.failedSince(store, markerBefore, ctx.settings.now());
          if (failed) throw failed;
          // The winner gave its slot back (its fetch never reached WeChat) or its slot ran out: nothing comes,
          // and no force_refresh ended the token the caller wants rid of.
          // WeChat refused its force_refresh for the day (45009, no marker: normal fetches go on): neither
          // does a forced token, and this forced refresh fails as one that found the quota spent does.
          const at = ctx.settings.now();
          const slot = await this.#forceSpacing.slot(store, at);
          if (slot?.reason === 'quota' && slot.until > at) throw forceQuotaError(slot.until);
          return slot === undefined || slot.until <= at ? 'free' : undefined;
        }, this.#watch(tier), endingOf(ctx, request));
        // The slot is free and nobody forced: the refresh starts over, and may take the slot itself (once).
        if (forced === 'free') return this.#refreshIn(tier, request, prepared, progress, true);
        if (forced) return forced;
        stopIfEnded(ctx, request);
        // The winner wrote nothing in a lock wait: the current entry is the answer, as WeChat's to a
        // force_refresh within 30 s of another would have been.
        return current;
      }
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
      const readsPause = !request.ahead && tier.name === 'shared' && (followsRejection || !this.#reportedLately(true));
      let fleetPause: { raw: string | undefined; slot: SpacingSlot | undefined } | undefined;
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
          readsPause ? this.#refetchSpacing.read(store, ctx.settings.now()).catch(() => undefined) : undefined,
          rechecks ? this.#upstream.recheckInput!(prepared).catch(() => prepared) : prepared,
        ]);
        fleetPause = pause;
        if (again.kind === 'hit' && (!request.ahead || again.entry.value !== request.current)) {
          return { entry: again.entry, tier: tier.name, fetched: false, asked: false };
        }
        if (marker.active) {
          if (request.ahead) return undefined;
          throw markerError(marker.active, ctx.label);
        }
        if (rechecks && recheck === undefined) throw new InputGone();
        if (recheck !== prepared) progress.input = input = recheck;
        if (handle !== undefined && !request.ahead && again.kind === 'miss' && !again.foreign) {
          const written = await this.#awaitWriter(tier, request);
          if (written) return written;
        }
        if (handle !== undefined && tier.name === 'shared' && again.kind === 'miss' && !again.foreign) {
          const kept = await this.#keptHere(request);
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
      // Where the process would fetch, the pause decides (the fleet's, or this process's own where the
      // store holds none), before any store-down slot is taken: within it, the lock is let go and the
      // process waits without it. Else a fetch that follows a rejection starts the next pause, and the
      // fleet learns it; one that knows of no rejection starts none.
      if (followsRejection || fleetPause?.slot !== undefined) {
        const at = ctx.settings.now();
        if (fleetPause) this.#learnPause(fleetPause.slot, at);
        if (this.#pauseInForce(at) !== undefined) throw new InPause();
        if (followsRejection) {
          const started: NonNullable<Progress['pause']> = { previous: this.#refetchPause, started: this.#startPause(at) };
          progress.pause = started;
          if (tier.name === 'shared') {
            const { value, written } = this.#refetchSpacing.put(store, at, started.started.step);
            started.put = { store, value, replaced: fleetPause?.raw };
            pauseWritten = written.then(
              () => void (this.#unshared = undefined),
              // Not written: the store's answer (none) must not take it from this process (#learnPause).
              () => void (this.#unshared = started.started),
            );
          }
        }
      }
      if (spacedWhileDown && (await this.#downSpacing.take(store, ctx.settings.now(), DOWN_SPACING_MS, DOWN_SPACING_MAX_MS)) === undefined) {
        throw new SlotTaken();
      }
      const refreshed = await this.#fetchAndWrite(tier, { ...request, force }, input, handle, seen, progress);
      // A peer SDK's copy, taken where this refresh would have fetched: WeChat handed out nothing.
      if (!progress.asked) await this.#givePauseBack(progress, pauseWritten);
      return refreshed;
    } catch (error) {
      if (!(error instanceof InPause)) {
        // A fetch that never reached WeChat gives its pause back too (a host that cannot must not hold
        // back the healthy ones), and so does one WeChat refused for its input (a ticket's access token,
        // an authorizer's component token: the next round, with a fresh input, must not find itself
        // paused). One WeChat answered with a failure keeps its pause: the failure marker's back-off runs
        // beside it, and neither ladder starts over while fetches fail and succeed by turns. Given back
        // under the lock, so that no other process reads it meanwhile.
        const inputRejected = input !== undefined && this.#upstream.rejectsInput?.(error) === true;
        if (!progress.asked || LocalBackoff.covers(error) || inputRejected) {
          await this.#givePauseBack(progress, pauseWritten);
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
   * pause or PAUSE_WAIT_MS, whichever ends first. A pause that ended meanwhile lets the refresh start
   * over (and fetch); one still in force fails the callers with when it ends.
   */
  async #sitOutPause(request: RefreshRequest): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    const pause = this.#pauseInForce(ctx.settings.now());
    if (pause !== undefined) {
      const written = await awaitNewEntry(ctx, Math.min(pause - ctx.settings.now(), PAUSE_WAIT_MS), request.current, true, POLL_PACE, endingOf(ctx, request));
      if (written) return written;
      stopIfEnded(ctx, request);
      const still = this.#pauseInForce(ctx.settings.now());
      if (still !== undefined) throw this.#rejectionSpacedError(still);
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
    const holder = await this.#lock.holder(tier.lock!);
    ctx.log.warn(
      { event: 'lock.wait_timeout', appId: ctx.appId, key: ctx.logKey, holder, waitedMs: Math.round(performance.now() - started) },
      `Waited ${this.lockWaitMs} ms for another process to refresh the ${ctx.label}`,
    );
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
    try {
      if (fetched === undefined && progress) progress.asked = true;
      fetched ??= await this.#upstream.fetch(request.force, prepared);
      this.#unsent?.clear();
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
    // The entry this fetch put in the shared store, for what peers keep beside it (afterWrite).
    let shared: StoredEntry | undefined;
    try {
      outcome = await ctx.entries.write(tier.entries, fresh, write);
      if (tier.name === 'shared' && outcome.stored) shared = outcome.entry;
      await this.#failures.clear(tier.entries, seen.noMarker !== true);
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      unshared = fresh;
      // The store failed as the value came back: keep it where the processes of this host can see it.
      const fallback = ctx.tiers.current(ctx.key);
      if (fallback.name !== tier.name) {
        try {
          outcome = await ctx.entries.write(fallback.entries, fresh, write);
          // Written before the lock is let go: the process of this host that takes it next may find the
          // shared store answering, without the entry (see #keptHere).
          if (tier.name === 'shared') await fallback.entries.setBeside(this.#keptKey, outcome.entry.value, Math.ceil(this.leaseMs / 1000)).catch(() => undefined);
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

  async #recordFailure(tier: Tier, request: RefreshRequest, error: unknown): Promise<void> {
    const ctx = this.#ctx;
    const now = ctx.settings.now();
    if (request.force && this.#upstream.scarceForce && error instanceof WeChatApiError && error.errcode === 45009) {
      // force_refresh's own daily quota: no more forced fetches until it renews; normal fetches go on.
      await this.#forceSpacing.block(tier.entries, now, nextQuotaDay(now), 'quota');
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
      (this.#unsent ??= new LocalBackoff(ctx.label)).record(error, now, ctx.writer);
    } else {
      this.#unsent?.clear();
      const marker = await this.#failures.record(tier.entries, error, now, ctx.writer);
      if (marker) withRetryAt(error, marker.retryAt);
      if (refusesSecret(error)) ctx.secretRefused(marker?.failedAt, true);
    }
    ctx.log.warn(
      {
        event: `${ctx.label}.fetch_failed`,
        appId: ctx.appId,
        key: ctx.logKey,
        code: (error as { code?: string }).code,
        errcode: (error as { errcode?: number }).errcode,
        // Why, as the caller's error says it (ECONNREFUSED, ENOTFOUND, an errmsg): a background refresh's
        // failure (wxkit serve, refresh-ahead) is seen in this line only. The messages hold no secret.
        error: (error as Error | undefined)?.message,
        tier: tier.name,
        sent: !unsent,
      },
      unsent
        ? `Fetching the ${ctx.label} failed before the request left this host; this process backs off before trying again, the other processes are not held back`
        : `Fetching the ${ctx.label} failed; every process backs off before asking WeChat again`,
    );
  }

  /**
   * Whether a refresh follows this process's report of a token no call of it went through with: one
   * made in the last AFTER_REJECTION_MS, or a pause of its own still remembered (within a pause its
   * callers reach WeChat no more, and report nothing new).
   */
  #followsRejection(request: RefreshRequest, now: number): boolean {
    if (request.force || request.ahead) return false;
    if (this.#reportedLately(false)) return true;
    const last = this.#pause(now);
    return last !== undefined && now < last.until + last.step;
  }

  /** Whether this process's last report, made in the last AFTER_REJECTION_MS, was of a token a call had (`accepted`) or had not gone through with. */
  #reportedLately(accepted: boolean): boolean {
    const report = this.#lastReport;
    return report !== undefined && report.accepted === accepted && performance.now() - report.at < AFTER_REJECTION_MS;
  }

  /** This process's last pause, unless it reaches further ahead than its step (the clock was set back): then it is over. */
  #pause(now: number): RefetchPause | undefined {
    const last = this.#refetchPause;
    return last !== undefined && last.until - now <= last.step ? last : undefined;
  }

  /** When this process's pause after such a rejection ends (unix ms), while it is in force. */
  #pauseInForce(now: number): number | undefined {
    const last = this.#pause(now);
    return last !== undefined && last.until > now ? last.until : undefined;
  }

  /**
   * Takes back the pause a refresh started, if any, when its fetch handed out no token: here, and in the
   * store once its write has settled (whatever it answered: one that timed out may have landed), where
   * the pause it replaced goes back, so that the fleet's next step is still the one after it.
   */
  async #givePauseBack(progress: Progress, written: Promise<void> | undefined): Promise<void> {
    const pause = progress.pause;
    if (!pause) return;
    progress.pause = undefined;
    await written;
    if (this.#refetchPause === pause.started) this.#refetchPause = pause.previous;
    if (this.#unshared === pause.started) this.#unshared = undefined;
    const put = pause.put;
    if (put) await this.#refetchSpacing.restore(put.store, put.value, put.replaced, this.#ctx.settings.now()).catch(() => undefined);
  }

  /** Starts the next pause (none is in force): 1 s, doubled while pauses follow each other closely (one step after the last one's end), at most 60 s. */
  #startPause(now: number): RefetchPause {
    const last = this.#pause(now);
    const follows = last !== undefined && now < last.until + last.step;
    const step = follows ? Math.min(last.step * 2, REFETCH_PAUSE_MAX_MS) : REJECTION_SPACING_MS;
    return (this.#refetchPause = { until: now + step, step });
  }

  /**
   * Takes the fleet's pause, as the store answered it, for this process's own (heldPause(): on this
   * host's clock). The store is the fleet's word: where it holds none (`wxkit token clear` deleted it,
   * or two steps passed), this process keeps none either; only where the store did not answer does the
   * process go by what it knew.
   */
  #learnPause(slot: SpacingSlot | undefined, now: number): void {
    const held = heldPause(slot, now);
    // A pause this process started and could not write stays its own while remembered, unless the
    // store holds one that ends later.
    const unshared = this.#unshared;
    const keep = unshared !== undefined && unshared === this.#pause(now) && now < unshared.until + unshared.step && (held === undefined || unshared.until >= held.until);
    if (!keep) this.#unshared = undefined;
    this.#refetchPause = keep ? unshared : held;
  }

  #rejectionSpacedError(until: number): Error {
    const label = this.#ctx.label;
    return withRetryAt(
      new TokenUnavailableError(
        `WeChat rejected the ${label} again soon after it was fetched, before any call went through with it: another ` +
          `program keeps fetching this account's tokens, or WeChat refuses them. The processes sharing this store space their fetches ` +
          `after such rejections (1 s, 2 s … 60 s apart while they go on; wxkit token clear ends the pause), and fetch again after ` +
          new Date(until).toISOString(),
      ),
      until,
    );
  }

  /**
   * While the shared store is down, this host fetched a classic token moments ago: another fetch now
   * would invalidate the token the hosts that cannot see this one hold. Take a token this host fetched
   * meanwhile, or wait for the slot to end (no longer than a lock wait), then fetch.
   */
  async #awaitDownSpacing(tier: Tier, request: RefreshRequest, now: number): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    const until = await this.#downSpacing.busyUntil(tier.entries, now);
    if (until === undefined) return undefined;
    const read = await ctx.entries.read(tier.entries, (value) => ctx.rejected(value));
    if (read.kind === 'hit' && read.entry.value !== request.current) return { entry: read.entry, tier: tier.name, fetched: false, asked: false };
    if (until - now > this.lockWaitMs) {
      throw new TokenUnavailableError(
        `The token store is down, and this host fetched a ${ctx.label} from the classic endpoint moments ago; the next fetch waits until ` +
          `${new Date(until).toISOString()}, so hosts that cannot share tokens do not take turns invalidating them`,
      );
    }
    // Ended by close() too, and once every caller stopped waiting: its wait is for nobody then.
    stopIfEnded(ctx, request);
    const wakeup = new Wakeup(undefined, endingOf(ctx, request));
    try {
      await wakeup.pause(until - now);
    } finally {
      wakeup.stop();
    }
    stopIfEnded(ctx, request);
    return undefined;
  }

  /**
   * A forced stable fetch takes a fleet-wide slot of 30 s first: WeChat ignores force_refresh calls
   * closer together and allows 20 a day. Without a slot the current entry is the answer, as WeChat's
   * would have been; after a 45009 on force_refresh, the quota error until the quota day ends.
   */
  async #spaceForced(tier: Tier, now: number, current: string | undefined): Promise<Refreshed | 'normal' | { taken: string } | { wait: true }> {
    const ctx = this.#ctx;
    const slot = await this.#forceSpacing.slot(tier.entries, now);
    if (slot?.reason === 'quota' && slot.until > now) throw forceQuotaError(slot.until);
    const taken = await this.#forceSpacing.take(tier.entries, now, FORCE_SPACING_MS);
    if (taken !== undefined) return { taken };
    const read = await ctx.entries.read(tier.entries, (value) => ctx.rejected(value));
    if (read.kind === 'miss') return 'normal';
    // The token the caller forces a refresh to be rid of: the other forced refresh has not written yet.
    if (read.entry.value === current) return { wait: true };
    ctx.log.info(
      { event: `${ctx.label}.force_spaced`, appId: ctx.appId, key: ctx.logKey },
      `Another forced refresh of the ${ctx.label} happened less than 30 s ago; WeChat would ignore this one, so the current token is the answer`,
    );
    return { entry: read.entry, tier: tier.name, fetched: false, asked: false };
  }
}

/** Whether `error` is a request cut by its own dispatcher's end (undici's destroy() or close()), not by anything of WeChat's. */
function cutByShutdown(error: unknown): boolean {
  const code = (error as { cause?: { code?: unknown } } | null)?.cause?.code;
  return code === 'UND_ERR_DESTROYED' || code === 'UND_ERR_CLOSED';
}
