import { HttpError } from '../errors.js';
import { REMEMBER_MS, markerFor, type FailureMarker } from './failure.js';

/**
 * The back-off of fetches that never left this process (`HttpError.sent` false: connection refused, DNS
 * failure, connect timeout, no free connection within the queue window). Such a failure says nothing
 * about WeChat, only about this host's way out, so it is not shared: no `{key}:failed` is written, and
 * the rest of the fleet refreshes as usual (a waiter on this process's lock takes it at its release and
 * fetches). This process alone pauses as a shared transient failure would (1 s, 2 s, 4 s … at most
 * 60 s, ± 20 %), so its callers fail at once instead of each trying to connect again.
 *
 * One record per entry and no timer, kept in {@link LocalBackoffs}: it is read when a refresh starts, and
 * forgotten when a fetch reaches WeChat (a token, or a failure WeChat answered, which the shared marker
 * then governs).
 */
export class LocalBackoff {
  readonly #label: string;
  #last: FailureMarker | undefined;

  constructor(label: string) {
    this.#label = label;
  }

  /** Whether `error` is a fetch that never left this process: backed off here, not shared. */
  static covers(error: unknown): error is HttpError {
    return error instanceof HttpError && !error.sent;
  }

  /** Records an unsent fetch; the pause grows with each one in a row, as a shared marker's `attempt` does. */
  record(error: HttpError, now: number, failedBy: string): void {
    const previous = this.#remembered(now);
    this.#last = markerFor(error, previous ? previous.attempt + 1 : 1, now, failedBy);
  }

  /** The pause in force at `now`, if any. */
  active(now: number): FailureMarker | undefined {
    const last = this.#remembered(now);
    return last && last.retryAt > now ? last : undefined;
  }

  /**
   * Throws while a pause is in force: the class and code the unsent fetch failed with, still `sent`
   * false. `force` (an explicit forceRefresh()) passes, as it passes a shared transient marker: the
   * caller may just have fixed the network.
   */
  check(now: number, force: boolean): void {
    const pause = force ? undefined : this.active(now);
    if (!pause) return;
    const path = pause.path ?? 'the token endpoint';
    throw new HttpError(
      pause.code === 'ERR_WXKIT_TIMEOUT' ? 'ERR_WXKIT_TIMEOUT' : 'ERR_WXKIT_HTTP',
      `This host could not reach WeChat: a fetch of the ${this.#label} was not sent at ${iso(pause.failedAt)} ` +
        `(${pause.message ?? `the request to ${path} failed`}); this process asks again after ${iso(pause.retryAt)}, ` +
        'other processes are not held back. Check this host\'s network, DNS, proxy or firewall',
      { path, sent: false },
    );
  }

  /** A fetch reached WeChat: this host's way out works. */
  clear(): void {
    this.#last = undefined;
  }

  /** Whether nothing is remembered any more at `now`: the record may be dropped. */
  forgotten(now: number): boolean {
    return this.#remembered(now) === undefined;
  }

  /** The last unsent fetch, while a shared marker of it would still be kept (so the next pause grows). */
  #remembered(now: number): FailureMarker | undefined {
    if (this.#last && this.#last.retryAt + REMEMBER_MS <= now) this.#last = undefined;
    return this.#last;
  }
}

/**
 * The local back-offs of the entries of the clients that share their stores (a ClientPool's clients, an
 * OpenPlatform's authorizer clients; a plain client's own), by entry key. A pool lets go of a client it
 * has not used for a while (idle, beyond maxClients) and makes the account's client anew at its next use:
 * the pause the one let go of was in holds the new one too, as the shared failure marker does for a
 * failure WeChat answered. Kept per client, it would be lost with each client made anew, and every call of
 * an account used less often than the pool keeps its client would try to connect again, and log it.
 * Records of entries past remembering are dropped at most once a minute, as a record is read or made: no
 * timer.
 */
export class LocalBackoffs {
  /** Made with the first record: a client whose fetches all left the host keeps none (10,000 accounts, 1.8 MB). */
  #byKey: Map<string, LocalBackoff> | undefined;
  #sweptAt = 0;

  /** How many entries have a record. */
  get size(): number {
    return this.#byKey?.size ?? 0;
  }

  /**
   * The record of the entry of `key`, if one of its fetches failed unsent and it is not forgotten yet.
   * Read as every refresh starts, so it sweeps too: once the way out works again no record is made,
   * and the records of accounts not used since would otherwise be kept for the life of the process.
   */
  of(key: string, now: number): LocalBackoff | undefined {
    this.#sweep(now);
    return this.#byKey?.get(key);
  }

  /** Records an unsent fetch of the entry of `key` (see {@link LocalBackoff.record}). */
  record(key: string, label: string, error: HttpError, now: number, failedBy: string): void {
    this.#sweep(now);
    const byKey = (this.#byKey ??= new Map());
    let backoff = byKey.get(key);
    if (backoff === undefined) byKey.set(key, (backoff = new LocalBackoff(label)));
    backoff.record(error, now, failedBy);
  }

  /** A fetch of the entry of `key` reached WeChat. */
  clear(key: string): void {
    if (this.#byKey?.delete(key) && this.#byKey.size === 0) this.#byKey = undefined;
  }

  #sweep(now: number): void {
    const byKey = this.#byKey;
    if (byKey === undefined || now - this.#sweptAt < SWEEP_MS) return;
    this.#sweptAt = now;
    for (const [key, backoff] of byKey) if (backoff.forgotten(now)) byKey.delete(key);
    if (byKey.size === 0) this.#byKey = undefined;
  }
}

const SWEEP_MS = 60_000;

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
