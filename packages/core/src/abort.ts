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

/** Calls `listener` once when `signal` aborts; the function returned stops that (idempotent). */
export function onAbort(signal: AbortSignal, listener: () => void): () => void {
  let listeners = bySignal.get(signal);
  if (!listeners) {
    const calls = new Set<() => void>();
    const fire = () => {
      bySignal.delete(signal);
      for (const call of calls) call();
    };
    listeners = { calls, fire };
    bySignal.set(signal, listeners);
    signal.addEventListener('abort', fire, { once: true });
  }
  const { calls, fire } = listeners;
  // A listener added twice is called once, as addEventListener does; each call wraps its own.
  const call = () => listener();
  calls.add(call);
  return () => {
    if (!calls.delete(call) || calls.size > 0) return;
    bySignal.delete(signal);
    signal.removeEventListener('abort', fire);
  };
}
