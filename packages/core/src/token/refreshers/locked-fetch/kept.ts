import { CacheError } from '../../../errors.js';
import type { Refreshed, RefreshRequest, TokenContext } from '../../refresher.js';
import type { Tier } from '../../tiers.js';

/**
 * `{key}:kept`, in this host's fallback: the token a holder of the shared lock kept there when the
 * shared store refused to hold it (memcached out of memory, a cluster node that refuses writes), for the
 * process of this host that takes the lock next.
 */
export class KeptTokens {
  readonly #ctx: TokenContext;

  constructor(ctx: TokenContext) {
    this.#ctx = ctx;
  }

  get #key(): string {
    return `${this.#ctx.key}:kept`;
  }

  /**
   * The holder of the shared lock found no entry: a process of this host that held the lock moments
   * before (a lease at most) may have fetched a token the shared store refused to hold while it took the
   * lock, and kept it in this host's fallback. Taken from there rather than fetched again: each fetch
   * would end the token before it (classic endpoint), one per process of the host. Never a token this
   * process knows WeChat rejected, nor the one an ahead-of-expiry refresh is to replace.
   */
  async find(request: RefreshRequest): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    return ctx.tiers.lookInFallback(async (fallback) => {
      try {
        const kept = await fallback.entries.getBeside(this.#key);
        if (kept === undefined || kept === request.current || ctx.rejected(kept)) return undefined;
        const read = await ctx.entries.read(fallback.entries, (value) => ctx.rejected(value));
        if (read.kind !== 'hit' || read.entry.value !== kept) return undefined;
        return { entry: read.entry, tier: fallback.name, fetched: false, asked: false };
      } catch (error) {
        if (!(error instanceof CacheError)) throw error;
        return undefined;
      }
    });
  }

  /**
   * Keeps `value`, which the shared store refused and `fallback` took, for a lease (`leaseMs`): written
   * before the lock is let go, as the process of this host that takes it next may find the shared store
   * answering, without the entry.
   */
  async keep(fallback: Tier, value: string, leaseMs: number): Promise<void> {
    await fallback.entries.setBeside(this.#key, value, Math.ceil(leaseMs / 1000)).catch(() => undefined);
  }

  /** WeChat rejected `value`: the other processes of the host know nothing of it, and must not take it from the fallback. */
  async forget(value: string): Promise<void> {
    await this.#ctx.tiers.fallback().entries.deleteBesideIfEquals(this.#key, value).catch(() => undefined);
  }
}
