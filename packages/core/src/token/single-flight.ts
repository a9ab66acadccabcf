import { onAbort } from '../abort.js';
/**
 * One operation under way at a time: callers that come while it runs share it, and the first caller
 * after it ends starts a new one. The shared promise never leaves an unhandled rejection behind (a
 * caller may have stopped waiting), and it is forgotten in its own handlers, before any caller resumes:
 * a caller that resumes and calls again starts afresh rather than joining the operation that just ended.
 */
export class SingleFlight<T> {
  #current: Promise<T> | undefined;

  /** The operation under way, or `start()`'s. */
  run(start: () => Promise<T>): Promise<T> {
    if (!this.#current) {
      const flight: Promise<T> = handled(
        start().finally(() => {
          if (this.#current === flight) this.#current = undefined;
        }),
      );
      this.#current = flight;
    }
    return this.#current;
  }
}

/** Marks a shared promise as handled: a caller that stopped waiting leaves no unhandled rejection behind. */
export function handled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/**
 * Lets one caller stop waiting on a shared promise without cancelling it for the others. An aborted
 * signal rejects: never a synchronous throw.
 */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const stop = onAbort(signal, () => reject(signal.reason));
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
