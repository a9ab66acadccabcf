import { TokenUnavailableError } from '../../errors.js';
import { awaitNewEntry, closedError, endingOf, stopIfEnded, type Refreshed, type RefreshRequest, type Refresher, type TokenContext } from '../refresher.js';

/**
 * Follower mode (`refresh: 'never'`): another program owns the refresh. Wait (bounded) for it to write a
 * valid entry, and never call WeChat's token endpoints, nor delete what the owner wrote.
 */
export class FollowRefresher implements Refresher {
  readonly fetches = false;
  readonly #ctx: TokenContext;

  constructor(ctx: TokenContext) {
    this.#ctx = ctx;
  }

  async refresh(request: RefreshRequest): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    if (request.force) {
      throw new TokenUnavailableError(`This client follows ${ctx.logKey} (refresh: 'never') and never fetches; refresh it where it is owned`);
    }
    if (request.ahead) return undefined;
    const waitMs = ctx.settings.lockWaitMs ?? FOLLOW_WAIT_MS;
    const started = performance.now();
    const found = await awaitNewEntry(ctx, waitMs, request.current, false, undefined, endingOf(ctx, request));
    if (found) return found;
    stopIfEnded(ctx, request);
    ctx.log.warn(
      { event: 'lock.wait_timeout', appId: ctx.appId, key: ctx.logKey, waitedMs: Math.round(performance.now() - started) },
      `No valid ${ctx.label} appeared under ${ctx.logKey} within ${waitMs} ms`,
    );
    throw new TokenUnavailableError(
      `No valid ${ctx.label} appeared in the store under ${ctx.logKey} within ${waitMs} ms. This client follows ` +
        `(refresh: 'never') and never fetches: check that the program that owns the refresh runs and writes that key`,
    );
  }

  async invalidate(): Promise<void> {
    // The owner's entry is the owner's: a follower waits for its next value instead of deleting this one.
  }
}

/** How long a follower waits for the owner's entry when lockWaitMs is not set. */
const FOLLOW_WAIT_MS = 20_000;
