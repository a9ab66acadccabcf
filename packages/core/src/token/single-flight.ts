import { onAbort } from '../abort.js';
import { Closing, type Ending } from './closing.js';
/**
 * One operation under way at a time: callers that come while it runs share it, and the first caller
 * after it ends starts a new one. The shared promise never leaves an unhandled rejection behind (a
 * caller may have stopped waiting), and it is forgotten in its own handlers, before any caller resumes:
 * a caller that resumes and calls again starts afresh rather than joining the operation that just ended.
 *
 * A caller may stop waiting (its `signal`). Once every caller has (each passed a signal, and each one
 * aborted), the operation is for nobody: the Ending `start` was handed aborts, so that its waits end (a
 * process that gave up on its token can exit rather than poll the store until the wait's budget runs
 * out). A caller that comes meanwhile takes what it brings, or starts the next one once it has ended.
 */
export class SingleFlight<T> {
  #current: Flight<T> | undefined;

  /** The operation under way, or `start()`'s, joined by a caller that may stop waiting (`signal`). */
  run(start: (unwanted: Ending) => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    let flight = this.#current;
    if (flight?.unwanted.aborted) {
      // Every caller of the operation under way stopped waiting, and its waits are ending: its outcome is
      // awaited (a fetch it had started is never made twice over), and if it brought nothing, the caller
      // starts the next one.
      const ending = flight.promise.catch(() => this.run(start, signal));
      return abortable(ending, signal);
    }
    if (!flight) {
      const made: Flight<T> = { promise: undefined as unknown as Promise<T>, waiting: 0, held: false, unwanted: new Closing() };
      made.promise = handled(
        start(made.unwanted).finally(() => {
          if (this.#current === made) this.#current = undefined;
        }),
      );
      flight = this.#current = made;
    }
    // A caller that cannot stop waiting holds the operation to its end.
    if (!signal) {
      flight.held = true;
      return flight.promise;
    }
    const joined = flight;
    joined.waiting += 1;
    return abortable(joined.promise, signal, () => {
      joined.waiting -= 1;
      if (joined.waiting === 0 && !joined.held) joined.unwanted.abort();
    });
  }
}

interface Flight<T> {
  promise: Promise<T>;
  /** Callers waiting that may stop (each with a signal not yet aborted). */
  waiting: number;
  /** A caller without a signal joined: the operation is wanted to its end. */
  held: boolean;
  /** Aborted once every caller stopped waiting. */
  unwanted: Closing;
}

/** Marks a shared promise as handled: a caller that stopped waiting leaves no unhandled rejection behind. */
export function handled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/**
 * Lets one caller stop waiting on a shared promise without cancelling it for the others. An aborted
 * signal rejects: never a synchronous throw. `gaveUp` is told when the signal ends the wait.
 */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined, gaveUp?: () => void): Promise<T> {
  if (!signal) return promise;
  // Aborted already (by something the operation's own start did): the caller gave up all the same.
  if (signal.aborted) {
    gaveUp?.();
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const stop = onAbort(signal, () => {
      reject(signal.reason);
      gaveUp?.();
    });
    promise.then(
      (value) => {
        stop();
        resolve(value);
      },
      (error: unknown) => {
        stop();
        reject(error);
      },
    );
  });
}
