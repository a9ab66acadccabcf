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
 * One record per refresher and no timer: it is read when a refresh starts, and forgotten when a fetch
 * reaches WeChat (a token, or a failure WeChat answered, which the shared marker then governs).
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

  /** The last unsent fetch, while a shared marker of it would still be kept (so the next pause grows). */
  #remembered(now: number): FailureMarker | undefined {
    if (this.#last && this.#last.retryAt + REMEMBER_MS <= now) this.#last = undefined;
    return this.#last;
  }
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
