import { callEach } from '../abort.js';

/**
 * What a token wait needs of the event that ends it: an AbortSignal, or a client's {@link Closing}.
 */
export interface Ending {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/**
 * A client's close(), as its token managers see it: `aborted`, and listeners called once when it
 * happens, as an AbortSignal's 'abort' listeners are. Not an AbortSignal: each is an EventTarget of
 * about 0.8 KB once made, and a process holds one per client, 10,000 clients for a platform's accounts.
 */
export class Closing implements Ending {
  #aborted = false;
  #listeners: Set<() => void> | undefined;

  get aborted(): boolean {
    return this.#aborted;
  }

  addEventListener(_type: 'abort', listener: () => void): void {
    if (!this.#aborted) (this.#listeners ??= new Set()).add(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    // An empty set is dropped: each wait adds a listener and removes it, and most clients wait once.
    if (this.#listeners?.delete(listener) && this.#listeners.size === 0) this.#listeners = undefined;
  }

  /** Calls each listener once; one that throws does not keep the rest from running, and is reported as uncaught. */
  abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    const listeners = this.#listeners;
    this.#listeners = undefined;
    if (listeners) callEach(listeners);
  }
}

/**
 * Ended when either `a` or `b` is: a refresh's waits end when its client closes, and when every caller
 * stopped waiting for it. A listener added may be called once by each.
 */
export function either(a: Ending, b: Ending): Ending {
  return {
    get aborted() {
      return a.aborted || b.aborted;
    },
    addEventListener(type, listener, options) {
      a.addEventListener(type, listener, options);
      b.addEventListener(type, listener, options);
    },
    removeEventListener(type, listener) {
      a.removeEventListener(type, listener);
      b.removeEventListener(type, listener);
    },
  };
}
