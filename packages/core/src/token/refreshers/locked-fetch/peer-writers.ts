import type { StoredEntry } from '../../entry.js';
import { Closing } from '../../closing.js';
import { awaitNewEntry, POLL_PACE, type Refreshed, type RefreshRequest, type TokenContext } from '../../refresher.js';
import type { Tier } from '../../tiers.js';
import type { Upstream } from '../../upstream.js';

// After a 40001, how long a process gives the newer token's writer (a program that refreshes without a
// lock) before it fetches one of its own, counted from the report of the rejection. It happens in the
// shared store only, where the store-down slot's two calls of the lease's store calls (leaseMs()) do
// not: its last look (a read, with a TTL query for formats without an expiry) takes their place, and the
// wait comes out of the lease's slack.
const PEER_WRITE_WAIT_MS = 200;

/** A wait nothing ends but its own budget. */
const UNENDED = new Closing();

/**
 * Writers of the shared store that hold no lock (a peer SDK that refreshes on its own): whether one has
 * shown itself, and the 40001 after which its newer token is waited for before this process fetches.
 */
export class PeerWriters {
  readonly #ctx: TokenContext;
  readonly #upstream: Upstream;
  /**
   * A rejected token this process held came without wxkit's `fetched_by`: another program's write, or a
   * format that cannot record it. A writer without the lock shares the store, and is waited for after a
   * 40001, from then on (until the store is swapped: see reset()).
   */
  #shown = false;
  /** When (performance.now()) this process last saw a token superseded with nothing newer in the store. */
  #supersededAt: number | undefined;

  constructor(ctx: TokenContext, upstream: Upstream) {
    this.#ctx = ctx;
    this.#upstream = upstream;
  }

  /** Whether a writer without the lock has shown itself. */
  get shown(): boolean {
    return this.#shown;
  }

  /** The store was swapped: what this process learnt of the old one's writers does not hold for the new one. */
  reset(): void {
    this.#shown = false;
    this.#supersededAt = undefined;
  }

  /**
   * WeChat rejected a token (`known`, the entry it came from) at `at` (performance.now()). Superseded
   * (40001): someone fetched a newer token, which the store may not hold yet (see await()). Noted before
   * the store is asked, so that a refresh of this process that takes the lock meanwhile waits too, and
   * kept whatever the store then answers: another token there may be a peer's earlier one, as dead as the
   * rejected one and deleted by another process before this one reads again, while the peer's newest is
   * still on its way. Where that token works, this process uses it; the note is looked at when a
   * holder's read under the lock misses next (the key expired, was cleared, or another process was
   * rejected with its token), and costs what is left of PEER_WRITE_WAIT_MS from the rejection, or one
   * look where nothing is left (see await()). Only a program without a lock writes to the shared store
   * that way (a fallback tier is the fleet's alone), and only once such a writer has shown itself: a
   * rejected token without wxkit's `fetched_by`.
   */
  rejected(known: StoredEntry | undefined, errcode: number | undefined, tier: Tier, at: number): void {
    if (known !== undefined && known.fetchedBy === undefined) this.#shown = true;
    // Where every writer takes the lock (WxJava's; its format records no `fetched_by`), whoever fetched
    // the newer token writes it before its release: a holder of the lock has nothing to wait for.
    const superseded = errcode === 40001 && tier.name === 'shared' && this.#shown && this.#ctx.entries.schema.writersLock !== true;
    if (superseded) this.#supersededAt = at;
  }

  /**
   * A 40001 a moment ago found nothing newer in the store: whoever fetched the newer token and holds no
   * lock writes it a store round trip after its fetch, or later. A fetch now would supersede that token
   * (and the one before it would die under the sends that carry it; the late write would then put a dead
   * token in the store). So the holder, under the lock (every other caller waits for it), gives that
   * writer until PEER_WRITE_WAIT_MS after the rejection, once, then fetches. Only a process that saw the
   * 40001 waits: another one whose own read missed meanwhile (a cold start, a memo that ran out in that
   * moment) knows of no rejection. And only where such a writer has shown itself: a program that fetches
   * without sharing the store writes nothing to wait for.
   */
  async await(tier: Tier, request: RefreshRequest): Promise<Refreshed | undefined> {
    const since = this.#supersededAt;
    // An upstream that reads a peer's own copy (fromPeer) looks there next, rather than wait here.
    if (since === undefined || tier.name !== 'shared' || this.#upstream.fromPeer) return undefined;
    this.#supersededAt = undefined;
    const left = since + PEER_WRITE_WAIT_MS - performance.now();
    // Not ended by close(), nor once every caller stopped waiting: the wait is the fleet's, not the
    // callers'. A holder that let the lock go early would hand it to another process that knows of no
    // 40001 and fetches at once, superseding the token the peer is about to write. It is short (close()
    // waits for the holder's section anyway), and a refresh nobody waits for fetches nothing after it.
    // A wait already over still takes one look: the read under the lock that missed may have been answered
    // before the peer's write, and taken up only after this process was held up past the wait's end.
    return awaitNewEntry(this.#ctx, left, request.current, true, POLL_PACE, UNENDED);
  }
}
