import { getEventListeners } from 'node:events';
import { describe, expect, it, vi } from 'vitest';
import { onAbort } from '../src/abort.js';

// One 'abort' listener per signal for every call waiting on it (src/abort.ts), behaving as separate
// listeners would.
describe('onAbort', () => {
  it('one listener on the signal for many calls; it goes with the last call', () => {
    const controller = new AbortController();
    const stops = Array.from({ length: 20 }, () => onAbort(controller.signal, () => undefined));
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(1);
    for (const stop of stops) stop();
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });

  it('a listener that throws keeps none of the others from running, and its error is thrown on its own', () => {
    const deferred: (() => void)[] = [];
    const spy = vi.spyOn(globalThis, 'queueMicrotask').mockImplementation((callback) => void deferred.push(callback));
    try {
      const controller = new AbortController();
      const called: number[] = [];
      onAbort(controller.signal, () => called.push(1));
      onAbort(controller.signal, () => {
        throw new Error('listener two');
      });
      onAbort(controller.signal, () => called.push(3));
      controller.abort();
      expect(called).toEqual([1, 3]);
      expect(deferred).toHaveLength(1);
      expect(() => deferred[0]!()).toThrow('listener two');
    } finally {
      spy.mockRestore();
    }
  });

  it('a signal already aborted calls the listener on a later microtask, unless stopped first', async () => {
    const signal = AbortSignal.abort();
    const called: string[] = [];
    onAbort(signal, () => called.push('kept'));
    onAbort(signal, () => called.push('stopped'))();
    expect(called).toEqual([]);
    await Promise.resolve();
    expect(called).toEqual(['kept']);
  });
});
