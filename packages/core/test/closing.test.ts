import { afterEach, describe, expect, it, vi } from 'vitest';
import { Closing } from '../src/token/closing.js';

// A client's close() as its token waits see it: an AbortSignal's `aborted` and 'abort' listeners,
// without an EventTarget per client.

describe('Closing', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('calls each listener once, the ones still added only, and none added after', () => {
    const closing = new Closing();
    const calls: string[] = [];
    const kept = () => calls.push('kept');
    const removed = () => calls.push('removed');
    closing.addEventListener('abort', kept);
    closing.addEventListener('abort', removed);
    closing.removeEventListener('abort', removed);
    expect(closing.aborted).toBe(false);
    closing.abort();
    closing.abort();
    closing.addEventListener('abort', () => calls.push('late'));
    expect(closing.aborted).toBe(true);
    expect(calls).toEqual(['kept']);
  });

  it('a listener that throws does not keep the others from running, and its error is thrown on its own', () => {
    const deferred: (() => void)[] = [];
    vi.spyOn(globalThis, 'queueMicrotask').mockImplementation((callback) => void deferred.push(callback));
    const closing = new Closing();
    const calls: string[] = [];
    closing.addEventListener('abort', () => {
      throw new Error('listener failed');
    });
    closing.addEventListener('abort', () => calls.push('second'));
    closing.abort();
    expect(calls).toEqual(['second']);
    expect(deferred).toHaveLength(1);
    expect(() => deferred[0]!()).toThrow('listener failed');
  });
});
