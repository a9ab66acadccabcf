import type { TokenContext } from '../../refresher.js';

/**
 * What this process knows of a shared store that acknowledges the entry's writes and drops them (an
 * eviction under maxmemory, a replica that lags): the token it last wrote there, and whether the store
 * showed it gone.
 */
export class DroppedWrites {
  readonly #ctx: TokenContext;
  /** The token this process last fetched and wrote to the shared store. */
  #written: string | undefined;
  /** A token this process wrote, found gone from the shared store while still good (see dropped()). */
  #vanished: string | undefined;
  /** The shared store drops the entry's writes: found so twice in a row (see dropped()). */
  #dropsEntries = false;
  /** The token this process wrote as it started a pause after a rejection, found gone at once when read back (see dropped()). */
  #droppedInPause: string | undefined;

  constructor(ctx: TokenContext) {
    this.#ctx = ctx;
  }

  /**
   * The shared store showed no entry where this process holds `value`, still good. A store that drops
   * the entry's writes shows none to anyone: each process would fetch on each read, and on the classic
   * endpoint each fetch ends the token of another process, which fetches again on its 40001. The first
   * time this process's own token is gone, it takes it for a deletion (`wxkit token clear`, a peer's
   * after a 40001) and fetches, reading the entry back once written (shown, the store holds its writes:
   * see wrote()); if the token it wrote then is gone too, the store drops its writes: this process serves
   * its token from memory while the store shows none, until WeChat rejects it (its refetch is spaced: see
   * LockedFetchRefresher.invalidate()) or it nears its expiry. Within the pause its fetch started after a
   * rejection (`inPause`), it serves that token at once where the store showed none right after its write
   * (a token gone later may have been deleted by a process WeChat refused it to). Any entry the store
   * shows ends that (stored()).
   */
  dropped(value: string, inPause: () => boolean): boolean {
    if (value !== this.#written) return false;
    // Within this process's pause after a rejection it fetches nothing: the token it wrote as the pause
    // began, which the store dropped at once, is the fleet's newest as far as it knows, and serves (else
    // every call failed until the pause ended, that token still good).
    if (value === this.#droppedInPause && inPause()) return true;
    if (!this.#dropsEntries) {
      if (this.#vanished === undefined || this.#vanished === value) {
        this.#vanished = value;
        return false;
      }
      this.#dropsEntries = true;
    }
    return true;
  }

  /** The shared store showed an entry: it holds the entry's writes. */
  stored(): void {
    this.#vanished = undefined;
    this.#dropsEntries = false;
    this.#droppedInPause = undefined;
  }

  /** The store was swapped. */
  reset(): void {
    this.#written = undefined;
    this.stored();
  }

  /** Whether `value`, which WeChat rejected, is a token of this process's that the store drops. */
  droppedOwn(value: string): boolean {
    return this.#dropsEntries && value === this.#written;
  }

  /**
   * This process fetched `value` and wrote it to the shared store. Fetched after a token of this
   * process's went missing, or as a pause after a rejection began (`pauseStarted`): read back once. A
   * store that shows it holds what is written to it, and the token was deleted (`wxkit token clear`),
   * not dropped.
   */
  async wrote(value: string, pauseStarted: boolean): Promise<void> {
    this.#written = value;
    this.#droppedInPause = undefined;
    if ((this.#vanished !== undefined && !this.#dropsEntries) || pauseStarted) {
      const gone = await this.#readBack(value);
      if (gone && pauseStarted) this.#droppedInPause = value;
    }
  }

  /**
   * Takes the store for one that holds the entry's writes when it shows `value`, just written (see
   * dropped()). Resolves whether it showed no entry at all (false where the read failed).
   */
  async #readBack(value: string): Promise<boolean> {
    const ctx = this.#ctx;
    const read = await ctx.entries.read(ctx.tiers.shared, (held) => ctx.rejected(held)).catch(() => undefined);
    if (read?.kind === 'hit' && read.entry.value === value) this.stored();
    return read?.kind === 'miss' && read.absent === true;
  }
}
