import type { TokenContext } from './refresher.js';

/**
 * Refresh-ahead: once an entry has less than `refreshAheadMs` left in the store, one process (the one
 * that takes the lock, after a random delay so processes do not all try at once) fetches a new value in
 * the background while the current one keeps serving. Callers never wait for it. At most one attempt per
 * value: an endpoint that hands back the same token (stable, WeCom) is left to the entry's expiry.
 */
export class RefreshAhead {
  readonly #ctx: TokenContext;
  readonly #owner: { refreshAhead(current: string): Promise<boolean> };
  /** The value a background refresh was last started for. */
  #startedFor: string | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** Set by cancel(): the client closed, or its pool let go of it. */
  #stopped = false;

  /** `owner.refreshAhead()` refreshes in the background in place of `current`, keeps what it brings back, and resolves whether it asked upstream. */
  constructor(ctx: TokenContext, owner: { refreshAhead(current: string): Promise<boolean> }) {
    this.#ctx = ctx;
    this.#owner = owner;
  }

  /**
   * Looks at the value served from memory: `staleAt` is when it leaves the store, `fetchedAt` when it was
   * asked for (unix ms), if known. The window never opens before half the entry's life has passed, or a
   * window longer than the life of a token would refresh every new value at once.
   */
  consider(value: string, staleAt: number | undefined, fetchedAt: number | undefined, now: number): void {
    const { refreshAheadMs, refreshAheadJitterMs } = this.#ctx.settings;
    if (refreshAheadMs <= 0 || staleAt === undefined || this.#startedFor === value || this.#stopped || this.#ctx.closed.aborted) return;
    const windowMs = fetchedAt === undefined ? refreshAheadMs : Math.min(refreshAheadMs, (staleAt - fetchedAt) / 2);
    if (staleAt - now >= windowMs) return;
    this.#startedFor = value;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#run(value);
    }, Math.random() * refreshAheadJitterMs);
    this.#timer.unref?.();
  }

  /** The client closed, or its pool let go of it: a refresh not yet started never starts, nor does any later one. */
  cancel(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  async #run(current: string): Promise<void> {
    const ctx = this.#ctx;
    const skipped = () =>
      ctx.log.debug(
        { event: `${ctx.label}.refresh_ahead_skipped`, appId: ctx.appId, key: ctx.logKey },
        `A background refresh of the ${ctx.label} asked nothing: another process held the lock or had stored a newer one, a back-off was in force, the store did not answer, a token service refreshes on its own, or the client closed`,
      );
    try {
      if (!(await this.#owner.refreshAhead(current))) skipped();
    } catch (error) {
      // The client closed under it: a shutdown, not a failure.
      if (ctx.closed.aborted) return skipped();
      ctx.log.warn(
        { event: `${ctx.label}.refresh_ahead_failed`, appId: ctx.appId, key: ctx.logKey, error: (error as Error)?.message },
        `A background refresh of the ${ctx.label} failed; the current one keeps serving until it expires`,
      );
    }
  }
}
