import { randomBytes } from 'node:crypto';
import { inspect } from 'node:util';
import { expect } from 'vitest';
import type { KeyvCache } from '../src/index.js';

/**
 * Writes a token entry with `set` and with `add` to a table that refuses every write, and checks each
 * error: a CacheError whose cause has `causeCode`, and nothing of the token in what a log that prints the
 * error object shows (the message, the cause and its fields). Resolves the errors, for checks of the SQL's own.
 */
export async function refusedWritesKeepTokenOut(cache: KeyvCache, causeCode: string): Promise<unknown[]> {
  const token = `TOKEN_${randomBytes(12).toString('hex')}`;
  const errors: unknown[] = [];
  for (const write of [() => cache.set('k', `{"access_token":"${token}"}`, 60), () => cache.add!('k2', `{"access_token":"${token}"}`, 60)]) {
    const error = await write().then(
      () => undefined,
      (failure: unknown) => failure,
    );
    expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', cause: { code: causeCode } });
    expect(inspect(error, { depth: 5 })).not.toContain(token);
    errors.push(error);
  }
  return errors;
}
