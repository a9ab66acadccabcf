/**
 * One 'abort' listener per signal, however many calls wait on it: a caller that hands one signal (a
 * shutdown signal, a request's) to many calls at once would otherwise add a listener per call, and Node
 * warns of a leak from the eleventh on. The listener goes when the signal's last call is done.
 */
interface Listeners {
  readonly calls: Set<() => void>;
  readonly fire: () => void;
}

const bySignal = new WeakMap<AbortSignal, Listeners>();

/** Calls `listener` once when `signal` aborts (on a later microtask if it has already); the function returned stops that (idempotent). */
export function onAbort(signal: AbortSignal, listener: () => void): () => void {
  if (signal.aborted) {
    let stopped = false;
    queueMicrotask(() => stopped || listener());
    return () => void (stopped = true);
  }
  let listeners = bySignal.get(signal);
  if (!listeners) {
    const calls = new Set<() => void>();
    const fire = () => {
      bySignal.delete(signal);
      callEach(calls);
    };
    listeners = { calls, fire };
    bySignal.set(signal, listeners);
    signal.addEventListener('abort', fire, { once: true });
  }
  const own = listeners;
  // A listener added twice is called once per addition; each addition wraps its own.
  const call = () => listener();
  own.calls.add(call);
  return () => {
    if (!own.calls.delete(call) || own.calls.size > 0) return;
    bySignal.delete(signal);
    signal.removeEventListener('abort', own.fire);
  };
}

/**
 * Calls each of `listeners`, as separate 'abort' listeners would be called: one that throws does not
 * keep the rest from running, and its error is reported as an uncaught one, as a listener's would be.
 */
export function callEach(listeners: Iterable<() => void>): void {
  for (const listener of listeners) {
    try {
      listener();
    } catch (error) {
      queueMicrotask(() => {
        throw error;
      });
    }
  }
}
