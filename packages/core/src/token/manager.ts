import { CacheError, tookToken } from '../errors.js';
import { signalRefusal } from '../validate.js';
import type { StoredEntry } from './entry.js';
import { AnswerOrder } from './answer-order.js';
import { Memo } from './memo.js';
import { RefreshAhead } from './refresh-ahead.js';
import { awaitNewEntry, closedError, logFetchFailed, POLL_PACE, type RefreshRequest, type Refreshed, type Refresher, type TokenContext } from './refresher.js';
import { SingleFlight, abortable, handled } from './single-flight.js';
import { either, type Ending } from './closing.js';
import { shortLivedEndsInMs } from './upstream.js';
import { ALIVE_MARGIN_MS } from './lifetime.js';

/** What a caller's resend loop carries between recoveries: one fetch per call, at most. */
export interface RecoveryState {
  fetched: boolean;
}

// Tokens WeChat rejected are remembered so that a store which still holds one (its delete failed, or a
// peer without compare-and-delete wrote it back) is not served again. Tokens are never reused by WeChat.
const REJECTED_MEMORY = 16;
/** How long a call that has had its fetch waits for a peer's newer token after a rejection. */
const NEWER_WAIT_MS = 2_000;

/**
 * One cache entry (an access token or a ticket) as this process sees it: a short memo, one read or
 * refresh at a time (single-flight), and WeChat's rejections. Where a new value comes from is the
 * refresher's business: fetched under the store's lock, asked of a token service, or followed.
 */
export class TokenManager {
  readonly key: string;
  readonly #ctx: TokenContext;
  readonly #refresher: Refresher;
  readonly #memo: Memo;
  /** Made only where refresh-ahead is on (refreshAheadSeconds, 0 by default): most clients never refresh ahead. */
  readonly #ahead: RefreshAhead | undefined;
  readonly #onFirstUse: (() => void) | undefined;
  #read = new SingleFlight<string>();
  /** Made on first forceRefresh(): most clients never force one. */
  #forced: SingleFlight<string> | undefined;
  /** Bumped by reset() (the store was swapped): what a flight of an earlier one brings back is not kept. */
  #generation = 0;
  // Made on first need, as most accounts never see a rejected token.
  #invalidations: Map<string, Promise<boolean>> | undefined;
  // Made on first need too: 10,000 accounts need not hold 10,000 empty lists.
  #rejected: string[] | undefined;
  /** The waits of calls that had their fetch for a value newer than the one rejected (see #awaitNewer), by that value. */
  #newer: Map<string, SingleFlight<string | undefined>> | undefined;
  /** The last rejected value whose wait found nothing newer. */
  #waitedInVain: string | undefined;
  /** The last value WeChat accepted a call with (see accepted()). */
  #accepted: string | undefined;
  /** The last value reported rejected before any call was known to have gone through with it (see #report). */
  #unproven: string | undefined;
  /** The last value this process took from the shared store (not one it fetched): the store held it (see recheck()). */
  #shown: string | undefined;
  /** Set by end(), once the client's close() has let its work end: no report of a rejected value starts after it. */
  #ended = false;
  /** Refreshes (a caller's or in the background) and reports of rejected values under way, each settled: close() lets them end. Dropped once empty. */
  #underWay: Set<Promise<void>> | undefined;
  /** Refreshes of this process that asked upstream (not those that found a value in the store). */
  #asked = 0;
  readonly #onWork: ((work: Promise<unknown>) => void) | undefined;
  /**
   * The token service's last answer was a failure, and the value held served on instead (said once, see
   * #resolve); cleared by any answer of the service, to a refresh, a forced refresh or a report.
   */
  #servedHeld = false;
  /** A refresh the held value stood in for, still waiting for its answer (see #refreshOrHeld). */
  #late: Promise<string> | undefined;
  /**
   * Requests to the token service (refreshes and reports), numbered as they start (see #outdated). Made
   * only for a refresher whose answers can come out of order, one that serves the held value while it
   * waits (a token service's): not for the 10,000 accounts of a platform that fetch from WeChat.
   */
  readonly #order: AnswerOrder | undefined;

  /**
   * `onWork`: told of each refresh and each report of a rejected value as it starts, the work close()
   * waits for (a pool's core keeps the client known until it settles).
   */
  constructor(ctx: TokenContext, refresher: Refresher, onFirstUse?: () => void, onWork?: (work: Promise<unknown>) => void) {
    this.#ctx = ctx;
    this.key = ctx.key;
    this.#onWork = onWork;
    this.#refresher = refresher;
    this.#order = refresher.servesHeldAfterMs !== undefined ? new AnswerOrder() : undefined;
    this.#onFirstUse = onFirstUse;
    this.#memo = new Memo(ctx.entries, ctx.settings);
    this.#ahead = ctx.settings.refreshAheadMs > 0 ? new RefreshAhead(ctx, this) : undefined;
  }

  /**
   * WeChat accepted a call made with `value`: when it rejects `value` later, something replaced a token
   * that worked, where a token rejected before any call went through with it says WeChat refuses the
   * fleet's tokens as fast as it fetches them (the refresher spaces its next fetches then).
   */
  accepted(value: string): void {
    // A slow call with an older token that succeeds after a newer one was fetched says nothing of the
    // newer one: only the value this process holds (or any, when it holds none) is recorded.
    const held = this.#memo.entry?.value;
    if (held === undefined || held === value) this.#accepted = value;
  }

  /**
   * `call`'s answer, a call carrying `value`, telling this manager whether WeChat took the value
   * (accepted()): it did when it answered, or when it refused the call for another reason than the token.
   */
  async carrying<T>(value: string, call: () => Promise<T>): Promise<T> {
    try {
      const answer = await call();
      this.accepted(value);
      return answer;
    } catch (error) {
      if (tookToken(error)) this.accepted(value);
      throw error;
    }
  }

  /** Whether WeChat rejected `value` lately (the context's `rejected`). */
  isRejected(value: string): boolean {
    return this.#rejected?.includes(value) ?? false;
  }

  /**
   * Forgets the in-process copy, e.g. after the store was swapped. Reads and refreshes under way belong
   * to the old store: calls from now on start their own, and what the old ones bring back goes to their
   * callers only, not into the memo.
   */
  reset(): void {
    this.#generation += 1;
    this.#memo.forget();
    this.#shown = undefined;
    this.#read = new SingleFlight();
    this.#forced = undefined;
    this.#newer = undefined;
    this.#waitedInVain = undefined;
    this.#late = undefined;
    this.#servedHeld = false;
    this.#refresher.reset?.();
  }

  /** The client closed, or its pool let go of it: no background refresh starts any more. */
  close(): void {
    this.#ahead?.cancel();
  }

  /**
   * Resolves once the refreshes and reports of rejected values under way have ended (never rejects). A
   * holder of the refresh lock then wrote what it fetched and released the lock, and a rejected entry was
   * deleted: a program that closes its store, or exits, after close() leaves no lock to hold the fleet up
   * for its lease, and no rejected token for the others to try. Waits for other processes end at close() already.
   */
  async settled(): Promise<void> {
    while (this.#underWay) await Promise.all(this.#underWay);
  }

  /** Whether a refresh or a report of a rejected value is under way. */
  get busy(): boolean {
    return this.#underWay !== undefined;
  }

  /** The client's close() has let its work end: no report of a rejected value starts after this. */
  end(): void {
    this.#ended = true;
  }

  /** The current value: from the memo, the store, or a refresh. Rejects (never throws) on an aborted signal. */
  get(signal?: AbortSignal): Promise<string> {
    const refused = signalRefusal(signal);
    if (refused) return refused;
    const now = this.#ctx.settings.now();
    const fresh = this.#memo.fresh(now);
    if (fresh !== undefined) {
      this.#considerAhead(now);
      return Promise.resolve(fresh);
    }
    // The store is down and this process holds a token that is still good: serve it, without a read or
    // a fetch (a probe in the background notices when the store answers again).
    const usable = this.#ctx.tiers.shared.downFor(this.#ctx.key) ? this.#memo.usable(now) : undefined;
    if (usable !== undefined) return Promise.resolve(usable);
    return this.#current(signal);
  }

  /** Like get(), with the expiry, fetch time and writer that came with the value (when the format records them). */
  async getEntry(signal?: AbortSignal): Promise<StoredEntry> {
    const value = await this.get(signal);
    const entry = this.#memo.entry;
    return entry?.value === value ? { ...entry } : { value };
  }

  /** A new value even if the store holds a valid one: an explicit request, never an automatic path. */
  forceRefresh(signal?: AbortSignal): Promise<string> {
    const refused = signalRefusal(signal);
    if (refused) return refused;
    const generation = this.#generation;
    return (this.#forced ??= new SingleFlight()).run((unwanted) => this.#refresh({ force: true, current: this.#memo.value }, generation, unwanted), signal);
  }

  /**
   * Forgets `value` if this process holds it, without taking it for rejected: the next get() reads the
   * store, and takes `value` again if the store holds it again (a ticket WeChat handed out once more).
   * For a token service that deleted the store's entry itself, or saw another instance delete it.
   */
  forget(value: string): void {
    this.#memo.forget(value);
  }

  /**
   * WeChat rejected `value` (40001, 40014, 42001). Forget it here, and let the refresher do what it owes
   * the fleet (delete the shared entry only if it still holds that value; tell the token service). A read
   * already under way is kept: if it brings back the rejected value, its callers read once more.
   * A report made through this method (by the program, or by a token service for its clients, which
   * checks with WeChat first) is taken as the rejection of a token that worked: its replacement is
   * fetched at once. The client's own recoveries (recover()) know whether a call went through with it.
   * `accepted` false: no call went through with it (a token service reporting for a client that says
   * so), and the fetches that follow are spaced as recover()'s are.
   */
  invalidate(value: string, errcode?: number, accepted = true): Promise<void> {
    // Marked handled as the report itself is: a caller that does not wait for it leaves no unhandled rejection.
    return handled(this.#report(value, errcode, accepted).then(() => undefined));
  }

  /**
   * WeChat rejected `value` on a call of the library's own made outside recover() (an open platform's
   * authorizer refresh, whose input the component token is): reported as recover() reports it, so the
   * fetch of its replacement is spaced unless a call went through with it (accepted()).
   */
  rejectedOnCall(value: string, errcode: number): Promise<void> {
    return handled(this.#report(value, errcode, this.#accepted === value).then(() => undefined));
  }

  /**
   * What to call with in place of `value`, got a while ago, as the shared store answers now (one read):
   * the value the store holds, kept as a read's would be; undefined where WeChat rejected `value`, or
   * where the store held it and no longer does (deleted on a report of its rejection, or by `wxkit token
   * clear`): it is forgotten here, so that the next get() fetches rather than serve it from the memo, as
   * a read would once the memo ran out. `value` itself where nothing says more: the store did not answer,
   * holds another program's entry it cannot read, or is not the shared one; or `value` is a token this
   * process fetched and has not read from the store since (a store that drops writes never held it: an
   * absent entry is no deletion there, see #resolve and the refresher's dropped()).
   */
  async recheck(value: string): Promise<string | undefined> {
    if (this.isRejected(value)) return undefined;
    const ctx = this.#ctx;
    const tier = ctx.tiers.current(ctx.key);
    const generation = this.#generation;
    let read: Awaited<ReturnType<typeof ctx.entries.read>>;
    try {
      read = await ctx.entries.read(tier.entries, (held) => this.isRejected(held));
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      return value;
    }
    if (read.kind === 'hit') return read.entry.value === value ? value : this.#remember({ entry: read.entry, tier: tier.name, fetched: false }, generation);
    if (this.isRejected(value)) return undefined;
    // Another value this process took meanwhile (a refresh of its own, a report's answer).
    const instead = this.#heldInstead(value);
    if (instead !== undefined) return instead;
    // Only a value the store showed this process is known gone: one this process fetched and has not
    // read since may never have been held (a store that drops writes), and is not second-guessed.
    if (tier.name !== 'shared' || read.absent !== true || this.#shown !== value) return value;
    this.#memo.forget(value);
    return undefined;
  }

  /**
   * invalidate(), resolving whether the report brought back the value that replaces `value` (kept in the
   * memo). `accepted`: WeChat took a call made with `value` before it rejected it.
   */
  #report(value: string, errcode: number | undefined, accepted: boolean): Promise<boolean> {
    // Once close() has let the client's work end, the value is forgotten here and nothing is reported:
    // the program may have closed its store by now. Every caller learns that the fleet was not told.
    if (this.#ended) {
      this.#memo.forget(value);
      return Promise.reject(closedError(this.#ctx, `reports no rejected ${this.#ctx.label} to its store or token service`));
    }
    let pending = this.#invalidations?.get(value);
    // A later report of a value first reported as one no call went through with, by a caller that had a
    // call go through with it (two clients of a token service that disagree): the refresher learns it, as
    // if the first report had said so, whichever came first.
    if (accepted && this.#unproven === value && (pending || this.isRejected(value))) {
      this.#unproven = undefined;
      this.#refresher.worked?.(value);
    }
    // Already handled: late rejections of the same token (the calls that were in flight with it) must
    // not start another round, or N slow callers would cause N fetches.
    if (!pending && this.isRejected(value)) return Promise.resolve(false);
    if (!pending) {
      this.#unproven = accepted ? undefined : value;
      const rejected = (this.#rejected ??= []);
      rejected.push(value);
      if (rejected.length > REJECTED_MEMORY) rejected.shift();
      // What this process knows of the rejected value, before it is forgotten: who wrote it.
      const known = this.#memo.entry?.value === value ? this.#memo.entry : undefined;
      this.#memo.forget(value);
      const invalidations = (this.#invalidations ??= new Map());
      const generation = this.#generation;
      const ask = this.#order?.reported() ?? 0;
      // The value the report brought back (a token service answers the current one) is kept as a
      // refresh's would be: the callers resend with it, and no one asks for it again.
      const reported = this.#track(this.#refresher.invalidate(value, errcode, known, accepted)).then((refreshed) => {
        if (!refreshed) return false;
        // A token service that answered the report has answered: its next failure is said again.
        this.#servedHeld = false;
        if (generation === this.#generation) this.#order?.kept(ask);
        this.#remember(refreshed, generation);
        return true;
      });
      pending = handled(reported.finally(() => invalidations.delete(value)));
      invalidations.set(value, pending);
    }
    return pending;
  }

  /**
   * The value to resend with after WeChat rejected `failed`: a newer one the store already holds (a peer
   * refreshed), else, once per call (`state`), a refresh shared with every other caller; after that one,
   * a newer value the store comes to hold within a short wait. Undefined when there is nothing new to
   * try: the caller gives up instead of looping.
   */
  async recover(failed: string, errcode: number, state: RecoveryState, signal?: AbortSignal): Promise<string | undefined> {
    // As get() does: an AbortSignal-like signal (a polyfill's, an older runtime's) has no throwIfAborted().
    if (signal?.aborted) throw signal.reason;
    // Once close() has let the client's work end, nothing is reported: the program may have closed its
    // store by now (close() does not wait for calls on the wire, whose rejections come after it).
    if (this.#ended) throw closedError(this.#ctx);
    // The report and the read go on for the others; a caller that gives up stops waiting for them.
    const brought = await abortable(this.#report(failed, errcode, this.#accepted === failed), signal);
    // A token service may answer the report with the rejected value itself (wxkit serve, when WeChat
    // still takes it at its check): that answer is the call's one refresh too, so the call is resent
    // with it once, as after a fetch that brought back the same token, not once per resend left.
    const held = this.#heldInstead(failed) ?? (brought && this.#memo.value === failed && !this.isRejected(failed) ? failed : undefined);
    if (held !== undefined) {
      // A value the report brought back is this call's one refresh: a call whose token is rejected again
      // after it has had one stops, as it would after a fetch.
      if (brought) {
        if (state.fetched) return undefined;
        state.fetched = true;
      }
      return held;
    }
    const generation = this.#generation;
    const tier = this.#ctx.tiers.current(this.#ctx.key);
    let answered = true;
    try {
      const read = await abortable(handled(this.#ctx.entries.read(tier.entries, (value) => this.isRejected(value))), signal);
      if (read.kind === 'hit') return this.#remember({ entry: read.entry, tier: tier.name, fetched: false }, generation);
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      answered = false;
    }
    // Only a superseded token has a newer one, and only the shared store gets it from another program,
    // one that has shown itself writing there.
    if (state.fetched) {
      const awaited = errcode === 40001 && tier.name === 'shared' && answered && this.#refresher.peerWrites === true;
      return awaited ? this.#awaitNewer(failed, signal) : undefined;
    }
    // The call's one fetch is spent only if a refresh of this process asked WeChat meanwhile. One that
    // found a token another program wrote (under the lock, or waiting for its holder) asked nothing:
    // when a peer then supersedes that token too, and the store is empty for a moment (its write lags
    // its fetch, and the rejected token was just deleted), the call may still have one fetched.
    const asked = this.#asked;
    const value = await this.get(signal);
    state.fetched = this.#asked !== asked;
    return value;
  }

  /**
   * The call has had its fetch and WeChat superseded that token too (40001): someone fetched twice since.
   * A program that shares the store and refreshes without a lock writes its token a store round trip
   * after its fetch, or later: the call waits for the store to hold one it has not seen rejected (at
   * most NEWER_WAIT_MS, at once on a write the store reports), rather than give up with that token on
   * its way. The calls rejected with the same value share one wait, and once a wait for a value found
   * nothing, the calls that come back later with it do not wait again.
   */
  async #awaitNewer(failed: string, signal: AbortSignal | undefined): Promise<string | undefined> {
    if (this.#ctx.closed.aborted) throw closedError(this.#ctx);
    if (this.#waitedInVain === failed) return undefined;
    // A caller that gave up already joins nothing (a wait made for it would never end and leave its entry).
    if (signal?.aborted) throw signal.reason;
    const waits = (this.#newer ??= new Map<string, SingleFlight<string | undefined>>());
    let flight = waits.get(failed);
    if (!flight) waits.set(failed, (flight = new SingleFlight()));
    const wait = flight;
    const generation = this.#generation;
    // The wait ends when its client closes, or when every call waiting on it gave up (their signals):
    // nobody is left to resend with what it would find, and it stops looking at the store.
    const found = await wait.run(
      (unwanted) =>
        awaitNewEntry(this.#ctx, NEWER_WAIT_MS, failed, true, POLL_PACE, either(unwanted, this.#ctx.closed))
          .then((entry) => {
            if (entry) return this.#remember(entry, generation);
            // Cut short, it did not wait in vain: a call that came meanwhile (every caller before it had
            // given up) waits on its own, and so does a later call with the same value.
            if (unwanted.aborted && !this.#ctx.closed.aborted) throw new CutShort();
            if (!this.#ctx.closed.aborted) this.#waitedInVain = failed;
            return undefined;
          })
          .finally(() => {
            if (waits.get(failed) === wait) waits.delete(failed);
            if (waits.size === 0 && this.#newer === waits) this.#newer = undefined;
          }),
      signal,
    );
    if (found !== undefined) return found;
    if (this.#ctx.closed.aborted) throw closedError(this.#ctx);
    // Another call of this process may have brought a newer value meanwhile.
    return this.#heldInstead(failed);
  }

  /** The value the memo holds, if it is neither `failed` nor another value WeChat rejected. */
  #heldInstead(failed: string): string | undefined {
    const held = this.#memo.value;
    return held !== undefined && held !== failed && !this.isRejected(held) ? held : undefined;
  }

  /**
   * The value of the read or refresh under way, joining it; once more if it brought back a rejected value.
   * A caller that stops waiting (`signal`) leaves it to the others; once none is left, its waits end.
   */
  async #current(signal: AbortSignal | undefined): Promise<string> {
    let generation = this.#generation;
    let value = await this.#read.run((unwanted) => this.#resolve(generation, unwanted), signal);
    generation = this.#generation;
    if (this.isRejected(value)) value = await this.#read.run((unwanted) => this.#resolve(generation, unwanted), signal);
    return value;
  }

  async #resolve(generation: number, unwanted: Ending): Promise<string> {
    this.#onFirstUse?.();
    const ctx = this.#ctx;
    const tier = ctx.tiers.current(ctx.key);
    try {
      const read = await ctx.entries.read(tier.entries, (value) => this.isRejected(value));
      // A write, counted under way as a refresh is: close() lets it land before the program closes its store.
      const published = tier.name === 'shared' ? await this.#track(this.#publish(read.kind === 'hit' ? read.entry : undefined)) : undefined;
      if (typeof published === 'string') return published;
      // The offer found another entry than the one read (written since, under the lock): that one is the
      // store's, and the one read before it is older.
      if (published !== undefined || read.kind === 'hit') {
        if (tier.name === 'shared') this.#refresher.stored?.();
        const value = this.#remember({ entry: published ?? (read as { entry: StoredEntry }).entry, tier: tier.name, fetched: false }, generation);
        this.#considerAhead(ctx.settings.now());
        return value;
      }
      // Another program's entry that cannot be read is never replaced: the token this process fetched
      // serves until it nears its expiry, rather than a fetch on every read. So does a token this process
      // wrote that the store dropped: another fetch would end it (classic endpoint), and be dropped too.
      // Only while its TTL should still keep it there: past that, the store ended it as it was asked to.
      const held = this.#usable();
      const staleAt = this.#memo.staleAt;
      const kept = staleAt !== undefined && ctx.settings.now() < staleAt;
      if (held !== undefined && (read.foreign || (tier.name === 'shared' && read.absent === true && kept && this.#refresher.dropped?.(held) === true))) return held;
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
      // The store just failed: a token this process holds is still good, or the refresh falls back.
      const held = this.#usable();
      if (held !== undefined) return held;
    }
    const graceMs = this.#refresher.servesHeldAfterMs;
    if (graceMs === undefined) return this.#refreshOrAlive(generation, unwanted);
    return this.#refreshOrHeld(graceMs, generation, unwanted);
  }

  /**
   * A refresh's value; where WeChat handed back the current value with too little life to keep (an
   * endpoint that hands back its value until it ends: WeCom's gettoken, getticket), the value this
   * process holds, while WeChat still takes it: there is nothing newer before its end, and its last 30 s
   * are there to refresh early in, not to refuse it in. Served up to ALIVE_MARGIN_MS before its end; the
   * fleet asks again just after it (the failure's marker). Not a value WeChat rejected, nor once the
   * client closed or every caller gave up; any other failure is the callers'.
   */
  #refreshOrAlive(generation: number, unwanted: Ending): Promise<string> {
    const refresh = this.#refresh({ force: false }, generation, unwanted);
    // Nothing held that could stand in (nearly every refresh): the refresh itself, its outcome reaching
    // the callers in the same turns as before.
    if (this.#alive(Infinity) === undefined) return refresh;
    return refresh.catch((error: unknown) => {
      const endsInMs = shortLivedEndsInMs(error);
      if (endsInMs === undefined || this.#ctx.closed.aborted || unwanted.aborted || generation !== this.#generation) throw error;
      const alive = this.#alive(endsInMs);
      if (alive === undefined) throw error;
      return alive;
    });
  }

  /**
   * The memo's value while WeChat still takes it, unless rejected: its end more than ALIVE_MARGIN_MS away,
   * by its entry and by the refusal (`endsInMs`: WeChat's answer, or the fleet's marker), whichever is sooner.
   * An entry written by a host whose clock is ahead records a later end than WeChat's.
   */
  #alive(endsInMs: number): string | undefined {
    const entry = this.#memo.entry;
    if (entry?.expiresAt === undefined || endsInMs <= ALIVE_MARGIN_MS || entry.expiresAt * 1000 - this.#ctx.settings.now() <= ALIVE_MARGIN_MS) return undefined;
    return this.isRejected(entry.value) ? undefined : entry.value;
  }

  /** The memo's value while it is still good (not near its end) and WeChat has not rejected it. */
  #usable(): string | undefined {
    const held = this.#memo.usable(this.#ctx.settings.now());
    return held !== undefined && !this.isRejected(held) ? held : undefined;
  }

  /**
   * A refresh's value, or, where the refresh fails or has not answered within `graceMs`, the value this
   * process holds, still good, for another memo window: a token service that is down, restarting,
   * failing or hanging hands out nothing newer, and the token it handed out still works, so the callers
   * neither fail nor wait out the source's timeoutMs until the service is back. A refresh outlasting
   * the grace goes on without them: what it brings is kept, its failure said, and no second one starts
   * beside it. Not once the client closed, or every caller gave up.
   */
  async #refreshOrHeld(graceMs: number, generation: number, unwanted: Ending): Promise<string> {
    const ctx = this.#ctx;
    // A refresh the held value stood in for still waits for its answer: none starts beside it.
    const held = this.#usable();
    if (this.#late) return held !== undefined ? this.#serveHeld(held, generation) : this.#late;
    // The number #refresh gives its request as it starts (see #outdated). A refresher that serves the
    // held value has its requests numbered (see #order).
    const order = this.#order!;
    const ask = order.next;
    const refresh = this.#refresh({ force: false }, generation, unwanted);
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      refresh.then(
        (value) => ({ value }),
        (error: unknown) => ({ error }),
      ),
      new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), graceMs))),
    ]);
    clearTimeout(timer);
    if (outcome && 'value' in outcome) return outcome.value;
    const still = this.#usable();
    if (outcome === undefined) {
      // Nothing to serve meanwhile (the held value nears its end): the callers wait for the refresh.
      if (still === undefined) return refresh;
      const late = (this.#late = refresh);
      refresh.then(
        () => undefined,
        (error: unknown) => {
          // One every caller gave up on before the grace ended was let go: no failure of the service's.
          // Nor is one said once the service answered a request made after it (a forced refresh, a
          // report): it is old news, and would keep the service's next failure unsaid.
          // Nor once the held value neared its end: no held token serves on, and the callers that joined
          // the refresh meanwhile got its error.
          if (ctx.closed.aborted || unwanted.aborted || generation !== this.#generation || order.overtaken(ask) || this.#usable() === undefined) return;
          this.#sayHeld(error);
        },
      ).finally(() => {
        if (this.#late === late) this.#late = undefined;
      });
      return this.#serveHeld(still, generation);
    }
    if (still === undefined || ctx.closed.aborted || unwanted.aborted) throw outcome.error;
    this.#sayHeld(outcome.error);
    return this.#serveHeld(still, generation);
  }

  /** `held` again for a memo window, as the store's entry is once read. */
  #serveHeld(held: string, generation: number): string {
    this.#remember({ entry: this.#memo.entry!, tier: 'process', fetched: false }, generation);
    return held;
  }

  /**
   * No caller sees the failure of a refresh the held value stood in for: said here, or a service that no
   * longer takes the key (401) or knows the account (404) would go unseen until the token it handed out
   * ends, and every call with it fails at once. Once until the service answers again: 10,000 accounts of
   * a process whose service is down would each say it once per memo window.
   */
  #sayHeld(error: unknown): void {
    if (this.#servedHeld) return;
    this.#servedHeld = true;
    const ctx = this.#ctx;
    logFetchFailed(
      ctx,
      error,
      'process',
      (error as { sent?: boolean } | null | undefined)?.sent !== false,
      `Asking the token service for the ${ctx.label} failed; the one this process holds serves until it nears its end, the service asked again once per memo window (said again once it has answered)`,
    );
  }

  /**
   * The store is back, and this process holds a token it fetched while it was away: offered to the store
   * if what the store holds is older (or nothing). Newest wins, not the first one back: the store may
   * still hold the token it had before the outage, which the fetch made meanwhile has since invalidated.
   * Resolves the value written, or the entry the store keeps instead where it is not the one read.
   */
  async #publish(stored: StoredEntry | undefined): Promise<string | StoredEntry | undefined> {
    const memo = this.#memo;
    const unshared = memo.unshared;
    const now = this.#ctx.settings.now();
    if (!unshared || memo.value === undefined || this.isRejected(memo.value) || now >= (memo.staleAt ?? 0)) return undefined;
    if (stored && (stored.value === memo.value || (stored.fetchedAt ?? 0) >= (memo.entry?.fetchedAt ?? 0))) return undefined;
    // An entry that records no fetch time (every peer profile's format) cannot be dated. It is known
    // older only when it holds the token this process last took from the store, which the fetch made
    // while the store was away came after, or one WeChat rejected. Any other may have been written by a
    // lock holder once the store came back (another host's fetch, which on the classic endpoint ended
    // this one): it is kept, and taken. This process holds no lock, so the write replaces no undated
    // entry but those either, should another be written between its read and its write.
    const older = (value: string) => this.isRejected(value) || value === memo.sharedValue;
    if (stored && stored.fetchedAt === undefined && !older(stored.value)) return undefined;
    // A read that was under way at close(): the client writes nothing more (its store may be closed next),
    // and serves the token it holds.
    if (this.#ctx.closed.aborted) return memo.value;
    const ttlSeconds = Math.ceil((memo.staleAt! - now) / 1000);
    // Nor, holding no lock, an entry fetched in the same second as this one (fetched_at cannot order the
    // two): a lock holder wrote it once the store came back, and on the classic endpoint its fetch may have
    // ended this one.
    const { entry, stored: written } = await this.#ctx.entries.write(this.#ctx.tiers.shared, { ...unshared, ttlSeconds }, { rejected: older, replacesUndated: false, holds: async () => false });
    // Not written: the store holds an entry it keeps, which may be another than the one read (a lock
    // holder wrote it between the read and the write). That one is taken, not the one read before it.
    if (!written) return entry.value !== unshared.entry.value && entry.value !== stored?.value ? entry : undefined;
    memo.published();
    return entry.value;
  }

  /** `unwanted`: aborted once every caller stopped waiting for this refresh (its waits end then). */
  async #refresh(request: { force: boolean; current?: string }, generation: number, unwanted: Ending): Promise<string> {
    if (this.#ctx.closed.aborted) throw closedError(this.#ctx);
    const ask = this.#order?.asked() ?? 0;
    const refreshed = await this.#refreshing({ ...request, ended: either(this.#ctx.closed, unwanted) });
    // Only a background refresh may find nothing to do.
    if (!refreshed) throw new CacheError(`The ${this.#ctx.label} refresh ended without a value`);
    // The token service answered (a forced refresh's answer as much as a read's): a failure after this
    // one is said again (see #resolve).
    this.#servedHeld = false;
    const value = refreshed.entry.value;
    // Not kept: its callers take the value kept meanwhile, or (rejected) read once more (see #current).
    if (this.#outdated(ask, value)) return this.#heldInstead(value) ?? value;
    if (generation === this.#generation) this.#order?.kept(ask);
    return this.#remember(refreshed, generation);
  }

  /**
   * Whether the token service's answer `value` to request `ask` comes from before what this process
   * learnt since (see AnswerOrder). Such an answer is not kept, and does not clear the rejection (the
   * service answering with a token no longer says WeChat handed it out just now).
   */
  #outdated(ask: number, value: string): boolean {
    return this.#order !== undefined && this.#order.outdated(ask, this.isRejected(value));
  }

  /** Keeps `refreshed` in the memo, unless it comes from before the last reset() (`generation`). */
  #remember(refreshed: Refreshed, generation = this.#generation): string {
    if (generation !== this.#generation) return refreshed.entry.value;
    // WeChat handed this value out just now (the stable endpoint hands back the token it considers
    // current): whatever rejected it before, it is the one to use.
    const forgiven = refreshed.fetched ? (this.#rejected?.indexOf(refreshed.entry.value) ?? -1) : -1;
    if (forgiven >= 0) this.#rejected?.splice(forgiven, 1);
    if (refreshed.tier === 'shared' && !refreshed.fetched) this.#shown = refreshed.entry.value;
    // Fetched again (WeChat's stable endpoint hands back the token it holds current): this process's own
    // now, which a store that drops writes never held, whatever it showed before.
    else if (refreshed.fetched && refreshed.entry.value === this.#shown) this.#shown = undefined;
    return this.#memo.remember(refreshed, (value) => this.isRejected(value));
  }

  /** A refresh of the refresher, counted under way until it ends (see #track), and among those that asked upstream. */
  #refreshing(request: RefreshRequest): Promise<Refreshed | undefined> {
    const refreshing = this.#track(this.#refresher.refresh(request));
    refreshing.then(
      (refreshed) => {
        if (refreshed?.asked !== false) this.#asked += 1;
      },
      () => (this.#asked += 1),
    );
    return refreshing;
  }

  /**
   * A background refresh ahead of expiry, in place of `current` (RefreshAhead's, when its time comes).
   * Counted under way as a caller's refresh is: close() waits for it to write and release the lock.
   * What it brings back is kept only if no reset() came meanwhile. Resolves whether this process asked
   * upstream (WeChat, a peer SDK's copy), whatever it kept.
   */
  async refreshAhead(current: string): Promise<boolean> {
    const generation = this.#generation;
    const refreshed = await this.#refreshing({ force: false, ahead: true, current });
    if (refreshed) this.#remember(refreshed, generation);
    return refreshed !== undefined && refreshed.asked !== false;
  }

  /**
   * Counts `work` (a refresh, or a report of a rejected value) under way until it ends: a report deletes
   * the rejected entry from the store (or tells the token service), and close() lets it land before the
   * program closes its store.
   */
  #track<T>(work: Promise<T>): Promise<T> {
    const done = () => {
      this.#underWay?.delete(ended);
      if (this.#underWay?.size === 0) this.#underWay = undefined;
    };
    const ended: Promise<void> = work.then(done, done);
    (this.#underWay ??= new Set()).add(ended);
    this.#onWork?.(work);
    return work;
  }

  #considerAhead(now: number): void {
    const ahead = this.#ahead;
    if (ahead === undefined) return;
    const { value, entry, staleAt } = this.#memo;
    if (value === undefined || !this.#refresher.fetches) return;
    ahead.consider(value, staleAt, entry?.fetchedAt === undefined ? undefined : entry.fetchedAt * 1000, now);
  }
}

/** A wait for a newer value that every caller gave up on: one that joined as it ended starts its own. */
class CutShort extends Error {}
