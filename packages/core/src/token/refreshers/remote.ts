import type { TokenSource, TokenSourceRequest } from '../../token-source.js';
import type { Refreshed, RefreshRequest, Refresher, TokenContext } from '../refresher.js';

/**
 * Takes values from a token service (`wxkit serve`) that owns the refresh under its own lock; WeChat's
 * rejections are reported to it, and it refreshes only if the rejected value is still its current one.
 * The value is kept in this client's store for the memo's sake, never shared from here.
 */
export class RemoteRefresher implements Refresher {
  readonly fetches = true;
  readonly #ctx: TokenContext;
  readonly #source: TokenSource;
  readonly #request: TokenSourceRequest;

  constructor(ctx: TokenContext, source: TokenSource, request: TokenSourceRequest) {
    this.#ctx = ctx;
    this.#source = source;
    this.#request = request;
  }

  async refresh(request: RefreshRequest): Promise<Refreshed | undefined> {
    // The service refreshes ahead on its own; a client has nothing to do early.
    if (request.ahead) return undefined;
    const ctx = this.#ctx;
    const started = performance.now();
    const fetched = await this.#source.fetch(this.#request);
    const fresh = ctx.entries.encode(fetched, Math.floor(ctx.settings.now() / 1000), ctx.writer);
    const tier = ctx.tiers.current();
    const outcome = await ctx.entries.write(tier.entries, fresh, fetched).catch(() => ({ entry: fresh.entry, stored: false }));
    ctx.log.info(
      { event: `${ctx.label}.fetched`, appId: ctx.appId, key: ctx.logKey, source: 'remote', stored: outcome.stored, expiresIn: fetched.expiresIn, ms: Math.round(performance.now() - started) },
      `Got a ${ctx.label} from the token service`,
    );
    return { entry: outcome.entry, tier: tier.name, fetched: true };
  }

  async invalidate(value: string): Promise<void> {
    const ctx = this.#ctx;
    await ctx.entries.deleteIfHolds(ctx.tiers.current().entries, value).catch(() => undefined);
    await this.#source.invalidate(this.#request, value);
    ctx.log.info({ event: `${ctx.label}.invalidated`, appId: ctx.appId, key: ctx.logKey, source: 'remote' }, `Reported a rejected ${ctx.label} to the token service`);
  }
}
