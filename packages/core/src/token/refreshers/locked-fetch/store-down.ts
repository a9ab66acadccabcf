import { TokenUnavailableError } from '../../../errors.js';
import type { GuardedStore } from '../../../store.js';
import { FetchSpacing } from '../../spacing.js';
import { endingOf, stopIfEnded, Wakeup, type Refreshed, type RefreshRequest, type TokenContext } from '../../refresher.js';
import type { Tier } from '../../tiers.js';

// While the shared store is down, classic fetches of one host are at least this far apart, growing to
// the maximum while the store stays down: each one invalidates the token other hosts hold.
const DOWN_SPACING_MS = 1_000;
const DOWN_SPACING_MAX_MS = 16_000;

/** Another process of this host took the store-down slot first: start over, and take its token. */
export class SlotTaken extends Error {}

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
   */
  async await(tier: Tier, request: RefreshRequest, now: number, lockWaitMs: number): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
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

  /** Takes this host's slot for the fetch, under the lock of its fallback: SlotTaken where another process of the host took it first. */
  async take(store: GuardedStore, now: number): Promise<void> {
    if ((await this.#slots.take(store, now, DOWN_SPACING_MS, DOWN_SPACING_MAX_MS)) === undefined) throw new SlotTaken();
  }
}
