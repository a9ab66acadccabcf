import { WeChatApiError } from '../../../errors.js';
import type { GuardedStore } from '../../../store.js';
import { nextQuotaDay, type FailureGate } from '../../failure.js';
import { FetchSpacing } from '../../spacing.js';
import type { LockHandle } from '../../refresh-lock.js';
import { endingOf, pollWithBackoff, stopIfEnded, type Refreshed, type RefreshRequest, type TokenContext, type Watch } from '../../refresher.js';
import type { Tier } from '../../tiers.js';

// stable_token ignores force_refresh calls less than 30 s apart (WeChat's documentation).
const FORCE_SPACING_MS = 30_000;

/** A forced refresh while the fleet's force_refresh quota for the day is spent (a slot closed until `until`). */
function forceQuotaError(until: number): WeChatApiError {
  return new WeChatApiError({ errcode: 45009, errmsg: 'reach max api daily quota limit' }, 'cgi-bin/stable_token', {
    message: `WeChat allows force_refresh 20 times a day, and the fleet has used them up; forceRefresh() works again after ${new Date(until).toISOString()}`,
  });
}

/**
 * Forced fetches on the stable endpoint, spaced fleet-wide: WeChat ignores force_refresh calls closer
 * together than 30 s and allows 20 a day. A forced refresh takes the fleet's 30 s slot first; without
 * one, the current entry is the answer, as WeChat's would have been.
 */
export class ForcedRefreshes {
  readonly #ctx: TokenContext;
  readonly #failures: FailureGate;
  // Made when first used: forced refreshes are rare, and 10,000 accounts need not hold it.
  #spacing: FetchSpacing | undefined;

  constructor(ctx: TokenContext, failures: FailureGate) {
    this.#ctx = ctx;
    this.#failures = failures;
  }

  get #slots(): FetchSpacing {
    return (this.#spacing ??= new FetchSpacing(this.#ctx.key, 'forced'));
  }

  /**
   * Takes the fleet's slot for a forced fetch (`taken`), or says what the refresh does instead: a normal
   * fetch (the store holds no entry), the current entry (another forced refresh ended the token the
   * caller wants rid of less than 30 s ago), or a wait for that refresh (the store still holds the token:
   * its winner has not written yet). After a 45009 on force_refresh, the quota error until the quota day
   * ends.
   */
  async space(tier: Tier, now: number, current: string | undefined): Promise<Refreshed | 'normal' | { taken: string } | { wait: true }> {
    const ctx = this.#ctx;
    const slot = await this.#slots.slot(tier.entries, now);
    if (slot?.reason === 'quota' && slot.until > now) throw forceQuotaError(slot.until);
    const taken = await this.#slots.take(tier.entries, now, FORCE_SPACING_MS);
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

  /** Gives back a slot whose fetch spent no force_refresh (it never reached WeChat, or WeChat refused the credentials). */
  async release(store: GuardedStore, taken: string): Promise<void> {
    await this.#slots.release(store, taken).catch(() => undefined);
  }

  /** WeChat answered force_refresh with 45009 (its own daily quota): no more forced fetches until it renews; normal fetches go on. */
  async quotaSpent(store: GuardedStore, now: number): Promise<void> {
    await this.#slots.block(store, now, nextQuotaDay(now), 'quota');
  }

  /**
   * The lock came to the loser of the fleet's 30 s slot before its winner took it: while the store still
   * holds the token the caller wants rid of, the winner's force_refresh is yet to come (a normal fetch
   * now would hand out the token it ends). The lock is let go for the winner, and its token waited for,
   * as a waiter waits for a holder. Resolves the answer; 'free' where the slot is free and nobody forced
   * (the refresh starts over, and may take the slot itself); undefined where the store holds no entry
   * (the holder goes on, the lock still its own).
   */
  async awaitWinner(
    tier: Tier,
    request: RefreshRequest,
    handle: LockHandle,
    markerBefore: string | undefined,
    lockWaitMs: number,
    watch: Watch,
  ): Promise<Refreshed | 'free' | undefined> {
    const ctx = this.#ctx;
    const store = tier.entries;
    const read = await ctx.entries.read(store, (value) => ctx.rejected(value)).catch(async (error: unknown) => {
      await handle.release();
      throw error;
    });
    if (read.kind !== 'hit') return undefined;
    await handle.release();
    const current: Refreshed = { entry: read.entry, tier: tier.name, fetched: false, asked: false };
    if (read.entry.value !== request.current) return current;
    // A failure in force (the winner's, or one before it): no forced token is on its way, and the
    // current entry is the answer, as it was before the wait.
    if ((await this.#failures.look(store, ctx.settings.now())).active) return current;
    // As a waiter for a holder waits: the winner's write (its token, or the same one where WeChat
    // ignored its force_refresh), or its failure (which is ours).
    const forced = await pollWithBackoff<Refreshed | 'free'>(lockWaitMs, async () => {
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
      const slot = await this.#slots.slot(store, at);
      if (slot?.reason === 'quota' && slot.until > at) throw forceQuotaError(slot.until);
      return slot === undefined || slot.until <= at ? 'free' : undefined;
    }, watch, endingOf(ctx, request));
    if (forced) return forced;
    stopIfEnded(ctx, request);
    // The winner wrote nothing in a lock wait: the current entry is the answer, as WeChat's to a
    // force_refresh within 30 s of another would have been.
    return current;
  }
}
