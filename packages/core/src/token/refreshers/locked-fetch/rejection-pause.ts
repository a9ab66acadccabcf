import { TokenUnavailableError } from '../../../errors.js';
import { withRetryAt } from '../../../retry-at.js';
import type { GuardedStore } from '../../../store.js';
import { heldPause, refetchPause, REFETCH_PAUSE_MAX_MS, type FetchSpacing, type SpacingSlot } from '../../spacing.js';
import type { RefreshRequest } from '../../refresher.js';

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

/** A pause of fetches after a rejected token, on the clients' clock (unix ms). */
export interface RefetchPause {
  until: number;
  step: number;
}

/** The pause after a rejection a refresh started (and the slot it wrote), and the one before it. */
export interface StartedPause {
  started: RefetchPause;
  previous: RefetchPause | undefined;
  put?: { store: GuardedStore; value: string; replaced: string | undefined };
}

/** The fleet's pause as the holder read it beside the entry: `raw` undefined where the store holds none. */
export interface FleetPause {
  raw: string | undefined;
  slot: SpacingSlot | undefined;
}

/** The holder of the lock is within its pause after a rejection: it lets the lock go, then waits without it. */
export class InPause extends Error {}

/**
 * One entry's pause of fetches after WeChat rejected a token before any call went through with it, as
 * this process knows it: its own reports of rejected tokens, the pause it started or read in the shared
 * store ({key}:refetch), and one it started but could not write there.
 */
export class RejectionPause {
  readonly #key: string;
  readonly #label: string;
  /**
   * This process's last report of a token WeChat rejected: when (performance.now()), and whether a call
   * had gone through with it first.
   */
  #lastReport: { at: number; accepted: boolean } | undefined;
  /** The last pause of fetches after such rejections this process started or read in the store, on the clients' clock (unix ms). */
  #current: RefetchPause | undefined;
  /** A pause this process started whose write to the store failed (see #learn). */
  #unshared: RefetchPause | undefined;

  constructor(key: string, label: string) {
    this.#key = key;
    this.#label = label;
  }

  /** The fleet's pause in the store (not kept: a refresh is rare, an account many). */
  get #spacing(): FetchSpacing {
    return refetchPause(this.#key);
  }

  /** The store was swapped: its pause is not the new store's. */
  reset(): void {
    this.#lastReport = undefined;
    this.#current = undefined;
    this.#unshared = undefined;
  }

  /**
   * This process reported a token WeChat rejected, at `at` (performance.now()): one a call had gone
   * through with (`accepted`) ends the pause, as WeChat does take the fleet's tokens.
   */
  report(at: number, accepted: boolean): void {
    this.#lastReport = { at, accepted };
    if (accepted) this.#current = undefined;
  }

  /**
   * Whether a refresh follows this process's report of a token no call of it went through with: one
   * made in the last AFTER_REJECTION_MS, or a pause of its own still remembered (within a pause its
   * callers reach WeChat no more, and report nothing new).
   */
  follows(request: RefreshRequest, now: number): boolean {
    if (request.force || request.ahead) return false;
    if (this.reportedLately(false)) return true;
    const last = this.#last(now);
    return last !== undefined && now < last.until + last.step;
  }

  /** Whether this process's last report, made in the last AFTER_REJECTION_MS, was of a token a call had (`accepted`) or had not gone through with. */
  reportedLately(accepted: boolean): boolean {
    const report = this.#lastReport;
    return report !== undefined && report.accepted === accepted && performance.now() - report.at < AFTER_REJECTION_MS;
  }

  /** When this process's pause after such a rejection ends (unix ms), while it is in force. */
  inForce(now: number): number | undefined {
    const last = this.#last(now);
    return last !== undefined && last.until > now ? last.until : undefined;
  }

  /** The fleet's pause, read beside the entry; undefined where the store did not answer. */
  read(store: GuardedStore, now: number): Promise<FleetPause | undefined> {
    return this.#spacing.read(store, now).catch(() => undefined);
  }

  /**
   * Where the holder would fetch, the pause decides (the fleet's, `fleet`, or this process's own where the
   * store holds none), before any store-down slot is taken: within it, InPause (the lock is let go, and
   * the process waits without it). Else a fetch that follows a rejection starts the next pause (on
   * `progress`, for giveBack()), and the fleet learns it in `shared` (the shared store; a fallback tier is
   * this host's, and its own memory serves); one that knows of no rejection starts none. Resolves the
   * write, which settles once the store answered. The clock (`now`) is read only where the pause
   * decides: a refresh that knows of no rejection, with no pause in the store, does not read it.
   */
  begin(progress: { pause?: StartedPause }, follows: boolean, fleet: FleetPause | undefined, shared: GuardedStore | undefined, now: () => number): Promise<void> | undefined {
    if (!follows && fleet?.slot === undefined) return undefined;
    const at = now();
    if (fleet) this.#learn(fleet.slot, at);
    if (this.inForce(at) !== undefined) throw new InPause();
    if (!follows) return undefined;
    const started: StartedPause = { previous: this.#current, started: this.#start(at) };
    progress.pause = started;
    if (shared === undefined) return undefined;
    const { value, written } = this.#spacing.put(shared, at, started.started.step);
    started.put = { store: shared, value, replaced: fleet?.raw };
    return written.then(
      () => void (this.#unshared = undefined),
      // Not written: the store's answer (none) must not take it from this process (#learn).
      () => void (this.#unshared = started.started),
    );
  }

  /**
   * Takes back the pause a refresh started, if any, when its fetch handed out no token: here, and in the
   * store once its write has settled (whatever it answered: one that timed out may have landed), where
   * the pause it replaced goes back, so that the fleet's next step is still the one after it.
   */
  async giveBack(progress: { pause?: StartedPause }, written: Promise<void> | undefined, now: () => number): Promise<void> {
    const pause = progress.pause;
    if (!pause) return;
    progress.pause = undefined;
    await written;
    if (this.#current === pause.started) this.#current = pause.previous;
    if (this.#unshared === pause.started) this.#unshared = undefined;
    const put = pause.put;
    if (put) await this.#spacing.restore(put.store, put.value, put.replaced, now()).catch(() => undefined);
  }

  /** The callers' error within the pause, which ends at `until`. */
  error(until: number): Error {
    const label = this.#label;
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

  /** This process's last pause, unless it reaches further ahead than its step (the clock was set back): then it is over. */
  #last(now: number): RefetchPause | undefined {
    const last = this.#current;
    return last !== undefined && last.until - now <= last.step ? last : undefined;
  }

  /** Starts the next pause (none is in force): 1 s, doubled while pauses follow each other closely (one step after the last one's end), at most 60 s. */
  #start(now: number): RefetchPause {
    const last = this.#last(now);
    const follows = last !== undefined && now < last.until + last.step;
    const step = follows ? Math.min(last.step * 2, REFETCH_PAUSE_MAX_MS) : REJECTION_SPACING_MS;
    return (this.#current = { until: now + step, step });
  }

  /**
   * Takes the fleet's pause, as the store answered it, for this process's own (heldPause(): on this
   * host's clock). The store is the fleet's word: where it holds none (`wxkit token clear` deleted it,
   * or two steps passed), this process keeps none either; only where the store did not answer does the
   * process go by what it knew.
   */
  #learn(slot: SpacingSlot | undefined, now: number): void {
    const held = heldPause(slot, now);
    // A pause this process started and could not write stays its own while remembered, unless the
    // store holds one that ends later.
    const unshared = this.#unshared;
    const keep = unshared !== undefined && unshared === this.#last(now) && now < unshared.until + unshared.step && (held === undefined || unshared.until >= held.until);
    if (!keep) this.#unshared = undefined;
    this.#current = keep ? unshared : held;
  }
}
