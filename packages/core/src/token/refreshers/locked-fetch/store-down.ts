import { CacheError, TokenUnavailableError } from '../../../errors.js';
import type { GuardedStore } from '../../../store.js';
import { FetchSpacing } from '../../spacing.js';
import { endingOf, stopIfEnded, Wakeup, type Refreshed, type RefreshRequest, type TokenContext } from '../../refresher.js';
import type { Tier } from '../../tiers.js';

// While the shared store is down, classic fetches of one host are at least this far apart, growing to
// the maximum while the store stays down: each one invalidates the token other hosts hold.
const DOWN_SPACING_MS = 1_000;
const DOWN_SPACING_MAX_MS = 16_000;
// Before such a fetch the shared store is asked once more, for this long at most: a store that answers
// answers sooner, and a hung one costs the fetch no more than this (the probe's own deadline still ends it).
const BACK_PROBE_MS = 250;

/** Another process of this host took the store-down slot first: start over, and take its token. */
export class SlotTaken extends Error {}

/**
 * The store answered again as a fetch in the fallback was about to go, and a neighbour is fetching there
 * (it holds the lock) or failed there (its failure marker is in force): start over in the store.
 */
export class StoreBack extends Error {}

/** What a refresh asks the shared store before a fetch in the fallback (see StoreDownSpacing.await). */
export interface StoreBackAsk {
  /** The fetch time (unix s) of the newest token WeChat rejected in this process, where its entry records one. */
  rejectedFetchedAt: number | undefined;
  /** Whether, in the store's tier, a neighbour holds the refresh lock or its failure marker is in force (reads only). */
  fleetBusy(tier: Tier): Promise<boolean>;
}

/**
 * Classic fetches of one host while the shared store is down, spaced in the host's fallback: each one
 * invalidates the token the hosts that cannot see it hold.
 */
export class StoreDownSpacing {
  readonly #ctx: TokenContext;
  // Made when first used: store outages are rare, and 10,000 accounts need not hold it.
  #spacing: FetchSpacing | undefined;

  constructor(ctx: TokenContext) {
    this.#ctx = ctx;
  }

  get #slots(): FetchSpacing {
    return (this.#spacing ??= new FetchSpacing(this.#ctx.key, 'throttle'));
  }

  /**
   * This host fetched a classic token moments ago: another fetch now would invalidate the token the
   * hosts that cannot see this one hold. Takes a token this host fetched meanwhile, or waits for the slot
   * to end (no longer than a lock wait, `lockWaitMs`), then resolves undefined: the refresh fetches.
   * With `ask`, the shared store is asked first (see #fromStoreBack): StoreBack where the refresh is to
   * start over in it.
   */
  async await(tier: Tier, request: RefreshRequest, now: number, lockWaitMs: number, ask?: StoreBackAsk): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    const back = ask && (await this.#fromStoreBack(request, ask));
    if (back === 'back') throw new StoreBack();
    if (back) return back;
    const until = await this.#slots.busyUntil(tier.entries, now);
    if (until === undefined) return undefined;
    const read = await ctx.entries.read(tier.entries, (value) => ctx.rejected(value));
    if (read.kind === 'hit' && read.entry.value !== request.current) return { entry: read.entry, tier: tier.name, fetched: false, asked: false };
    if (until - now > lockWaitMs) {
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
   * The shared store, asked once before this host fetches in its fallback: the processes of a host find
   * it back each at its own moment (their probes are apart), and one that did may have written the token
   * this fetch would end. Its answer takes the store back for up, as a background probe's would; a store
   * that does not answer within BACK_PROBE_MS leaves the fetch to the fallback, as before.
   *
   * A store that answers without a token to take, where a neighbour holds the refresh lock (it is
   * fetching) or its failure marker is in force (WeChat failed it), has the refresh start over in the
   * store ('back'): the neighbour's token is waited for rather than ended by a fetch beside it, and its
   * failure holds this process back as it holds the fleet. Otherwise the fetch goes on in the fallback:
   * only reads are sent, and a store whose reads answer while its writes fail (a read-only replica, a full
   * store) is not taken back for up and down again by a write the refresh would make there.
   *
   * Not every token the store holds then is one a neighbour wrote: it may still hold the one it kept
   * through the outage, which the outage's first fetch ended (classic endpoint), and which this process
   * never saw rejected (it started during the outage, or took the host's token without using the other).
   * A token fetched before one WeChat rejected here is that old: it is not taken, and the fetch goes on in
   * the fallback (in the store, a waiter for its lock would take it). An entry that records no fetch time
   * is taken. A forced refresh takes none: it asks for a new token.
   */
  async #fromStoreBack(request: RefreshRequest, ask: StoreBackAsk): Promise<Refreshed | 'back' | undefined> {
    const ctx = this.#ctx;
    const shared = ctx.tiers.shared;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), BACK_PROBE_MS);
      timer.unref?.();
    });
    try {
      const answered = await Promise.race([ctx.tiers.answers(ctx.key).then(() => true), late]);
      const tier = ctx.tiers.current(ctx.key);
      if (!answered || request.force || tier.name !== 'shared') return undefined;
      const [read, busy] = await Promise.all([ctx.entries.read(shared, (value) => ctx.rejected(value)), ask.fleetBusy(tier)]);
      if (read.kind !== 'hit') return busy ? 'back' : undefined;
      const { fetchedAt } = read.entry;
      if (fetchedAt !== undefined && ask.rejectedFetchedAt !== undefined && fetchedAt < ask.rejectedFetchedAt) return undefined;
      return { entry: read.entry, tier: 'shared', fetched: false, asked: false };
    } catch (error) {
      if (!(error instanceof CacheError)) throw error;
    } finally {
      clearTimeout(timer);
    }
    return undefined;
  }

  /** Takes this host's slot for the fetch, under the lock of its fallback: SlotTaken where another process of the host took it first. */
  async take(store: GuardedStore, now: number): Promise<void> {
    if ((await this.#slots.take(store, now, DOWN_SPACING_MS, DOWN_SPACING_MAX_MS)) === undefined) throw new SlotTaken();
  }
}
