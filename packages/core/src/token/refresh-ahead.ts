import type { Refreshed, Refresher, TokenContext } from './refresher.js';

/**
 * Refresh-ahead: once an entry has less than `refreshAheadMs` left in the store, one process (the one
 * that takes the lock, after a random delay so processes do not all try at once) fetches a new value in
 * the background while the current one keeps serving. Callers never wait for it. At most one attempt per
 * value: an endpoint that hands back the same token (stable, WeCom) is left to the entry's expiry.
 */
export class RefreshAhead {
  readonly #ctx: TokenContext;
  readonly #refresher: Refresher;
  readonly #onRefreshed: (refreshed: Refreshed) => void;
  /** The value a background refresh was last started for. */
  #startedFor: string | undefined;

  constructor(ctx: TokenContext, refresher: Refresher, onRefreshed: (refreshed: Refreshed) => void) {
    this.#ctx = ctx;
    this.#refresher = refresher;
    this.#onRefreshed = onRefreshed;
  }

  /** Looks at the value served from memory; `staleAt` is when it leaves the store (unix ms), if known. */
  consider(value: string, staleAt: number | undefined, now: number): void {
    const { refreshAheadMs, refreshAheadJitterMs } = this.#ctx.settings;
    if (refreshAheadMs <= 0 || !this.#refresher.fetches || staleAt === undefined) return;
    if (staleAt - now >= refreshAheadMs || this.#startedFor === value) return;
    this.#startedFor = value;
    const timer = setTimeout(() => void this.#run(value), Math.random() * refreshAheadJitterMs);
    timer.unref?.();
  }

  async #run(current: string): Promise<void> {
    const ctx = this.#ctx;
    try {
      const refreshed = await this.#refresher.refresh({ force: false, ahead: true, current });
      if (refreshed) this.#onRefreshed(refreshed);
    } catch (error) {
      ctx.log.warn(
        { event: `${ctx.label}.refresh_ahead_failed`, appId: ctx.appId, key: ctx.logKey, error: (error as Error)?.message },
        `A background refresh of the ${ctx.label} failed; the current one keeps serving until it expires`,
      );
    }
  }
}
