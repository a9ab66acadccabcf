import { describe, expect, it } from 'vitest';
import type { Ending } from '../src/token/closing.js';
import { SingleFlight } from '../src/token/single-flight.js';

// The structure every read, refresh and wait of a token goes through: one operation at a time, joined by
// its callers, and ended once every caller that could stop waiting did.
describe('SingleFlight', () => {
  it("ends the operation's waits when its only caller gives up, even while the operation is still starting", async () => {
    const controller = new AbortController();
    const reason = new Error('gave up');
    let unwanted: Ending | undefined;
    const flight = new SingleFlight<string>();
    // The operation's own start aborts the caller's signal (a listener reacting to what it began).
    const call = flight.run((ending) => {
      unwanted = ending;
      controller.abort(reason);
      return new Promise<string>(() => undefined);
    }, controller.signal);
    await expect(call).rejects.toBe(reason);
    expect(unwanted?.aborted).toBe(true);
  });

  it('keeps the operation going while another caller still waits, and ends it when the last one gives up', async () => {
    const [first, second] = [new AbortController(), new AbortController()];
    let unwanted: Ending | undefined;
    let resolve!: (value: string) => void;
    const flight = new SingleFlight<string>();
    const start = (ending: Ending) => {
      unwanted = ending;
      return new Promise<string>((done) => (resolve = done));
    };
    const one = flight.run(start, first.signal);
    const two = flight.run(start, second.signal);
    first.abort(new Error('first gave up'));
    await expect(one).rejects.toThrow('first gave up');
    expect(unwanted?.aborted).toBe(false);
    second.abort(new Error('second gave up'));
    await expect(two).rejects.toThrow('second gave up');
    expect(unwanted?.aborted).toBe(true);
    resolve('late');
  });
});
