import { connect } from 'node:net';
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { maskPasswords, scrubError, withoutPasswords } from '../src/redact.js';

// A store driver's error as a CacheError keeps it (`cause`): no password of a URL it quotes, wherever in
// the error it sits, in what a log that prints the error shows.
const PASSWORD = 'pw-6b2e81f0c4';
const URL_WITH_PASSWORD = `redis://app:${PASSWORD}@store.internal:6379`;

/** Everything a log may print of `error`: util.inspect with hidden fields, without a depth limit. */
function shown(error: unknown): string {
  return inspect(error, { depth: Infinity, showHidden: true });
}

/** Node's own happy-eyeballs failure: an AggregateError (message '') of one connect error per address. */
async function happyEyeballsError(): Promise<AggregateError> {
  const socket = connect({
    host: 'store.internal',
    port: 9,
    autoSelectFamily: true,
    lookup: ((_host: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) =>
      options.all
        ? callback(null, [
            { address: '127.0.0.1', family: 4 },
            { address: '::1', family: 6 },
          ])
        : callback(null, '127.0.0.1', 4)) as never,
  });
  return new Promise((resolve) => socket.once('error', (error) => resolve(error as AggregateError)));
}

describe('withoutPasswords', () => {
  it("keeps Node's happy-eyeballs AggregateError as it is, and its errors in a copy made around it", async () => {
    const refused = await happyEyeballsError();
    expect(refused).toBeInstanceOf(AggregateError);
    expect(refused.errors.map((error: { address?: string }) => error.address).sort()).toEqual(['127.0.0.1', '::1']);
    expect(withoutPasswords(refused)).toBe(refused);
    // A driver that names the store by its URL, around Node's error: a copy, with Node's error as it was.
    const wrapped = withoutPasswords(new Error(`cannot connect to ${URL_WITH_PASSWORD}`, { cause: refused })) as Error;
    expect(wrapped.message).toBe('cannot connect to redis://app:***@store.internal:6379');
    expect(wrapped.cause).toBe(refused);
  });

  it("an AggregateError of errors that quote the URL (one per node tried) is copied with each error's copy, and Node's causes kept", async () => {
    const refused = await happyEyeballsError();
    const nodes = refused.errors.map((error: Error) => new Error(`node ${URL_WITH_PASSWORD} failed`, { cause: error }));
    const driver = new Error('no node answered', { cause: Object.assign(new AggregateError(nodes, 'every node failed'), { code: 'ECONNREFUSED' }) });
    const scrubbed = withoutPasswords(driver) as Error;
    expect(shown(scrubbed)).not.toContain(PASSWORD);
    const all = scrubbed.cause as AggregateError;
    expect(all).toBeInstanceOf(AggregateError);
    expect(all).toMatchObject({ message: 'every node failed', code: 'ECONNREFUSED' });
    expect(all.errors.map((error: Error) => error.message)).toEqual(Array(2).fill('node redis://app:***@store.internal:6379 failed'));
    expect(all.errors.map((error: Error) => error.cause)).toEqual(refused.errors);
    expect((all.errors[0] as Error).cause).toBe(refused.errors[0]);
  });

  it('looks down a cause chain of any length, and through the errors of an AggregateError in it', () => {
    const chain = (length: number, bottom: Error): Error => {
      let error = bottom;
      for (let i = 0; i < length; i += 1) error = new Error(`layer ${i}`, { cause: error });
      return error;
    };
    const bottom = Object.assign(new Error(`ECONNREFUSED ${URL_WITH_PASSWORD}`), { code: 'ECONNREFUSED' });
    for (const error of [chain(8, bottom), chain(3, new AggregateError([new Error('first'), chain(3, bottom)]))]) {
      const scrubbed = withoutPasswords(error);
      expect(scrubbed).not.toBe(error);
      expect(shown(scrubbed)).not.toContain(PASSWORD);
      expect(shown(scrubbed)).toContain('ECONNREFUSED redis://app:***@store.internal:6379');
    }
  });

  it('finds the URL under a symbol key, in a Map or a Set, and as a URL object', () => {
    const symbol = Object.assign(new Error('connect failed'), { [Symbol('options')]: { url: URL_WITH_PASSWORD } });
    const map = Object.assign(new Error('connect failed'), { nodes: new Map([['primary', { url: URL_WITH_PASSWORD }]]) });
    const set = Object.assign(new Error('connect failed'), { tried: new Set([URL_WITH_PASSWORD]) });
    const url = Object.assign(new Error('connect failed'), { options: { url: new URL(URL_WITH_PASSWORD) } });
    for (const error of [symbol, map, set, url]) {
      expect(shown(error)).toContain(PASSWORD);
      const scrubbed = withoutPasswords(error);
      expect(scrubbed).toMatchObject({ message: 'connect failed' });
      expect(shown(scrubbed)).not.toContain(PASSWORD);
    }
  });

  it('ends on cycles and on a large error at once, and keeps nothing it did not look through', () => {
    // A field whose getter throws: the error is copied, not thrown out of the store's failure.
    const lazy = Object.defineProperty(new Error('lazy'), 'details', { enumerable: true, get: () => { throw new Error('not loaded'); } });
    const copied = withoutPasswords(lazy);
    expect(copied === lazy).toBe(false);
    expect(copied).toMatchObject({ message: 'lazy' });
    const cyclic = new Error('cyclic') as Error & { self?: unknown; ring?: Map<string, unknown> };
    cyclic.self = cyclic;
    cyclic.ring = new Map<string, unknown>([['back', cyclic]]);
    cyclic.cause = new AggregateError([cyclic], 'again');
    expect(withoutPasswords(cyclic)).toBe(cyclic);
    (cyclic.cause as AggregateError).errors.push(new Error(URL_WITH_PASSWORD));
    expect(shown(withoutPasswords(cyclic))).not.toContain(PASSWORD);
    // More values than it looks through (a secret could be the last): a copy, without them.
    // Bytes are not looked into, nor their indices counted.
    const bytes = Object.assign(new Error('bytes'), { packet: Buffer.alloc(1 << 20) });
    let masked = 0;
    const counting = (text: string) => {
      masked += 1;
      return maskPasswords(text);
    };
    expect(scrubError(bytes, counting)).toBe(bytes);
    expect(masked).toBeLessThan(10);
    masked = 0;
    const large = Object.assign(new Error('large'), { rows: Array.from({ length: 100_000 }, (_, i) => `row ${i}`) });
    const scrubbed = scrubError(large, counting) as Error & { rows?: unknown };
    expect(masked).toBeLessThan(10_000);
    expect(scrubbed).toMatchObject({ message: 'large' });
    expect(scrubbed.rows).toBeUndefined();
  });
});
