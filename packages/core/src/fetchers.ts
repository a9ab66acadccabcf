import { BadResponseError } from './errors.js';
import type { Fetched } from './token-manager.js';

// WeChat documents expires_in as "up to 7200"; accept anything sane and refuse what would poison the store.
const MAX_EXPIRES_IN = 7 * 24 * 3600;

/**
 * Checks a token or ticket response before anything is stored: a non-empty printable string and a
 * positive integer lifetime. A response that fails is a BadResponseError, and nothing is cached.
 */
export function validateFetched(body: Record<string, unknown>, field: string, path: string): Fetched {
  const value = body[field];
  const expiresIn = body.expires_in;
  if (typeof value !== 'string' || !/^[\x21-\x7e]{1,2048}$/.test(value)) {
    throw new BadResponseError(`WeChat answered ${path} without a usable ${field}`, { path });
  }
  if (typeof expiresIn !== 'number' || !Number.isInteger(expiresIn) || expiresIn <= 0 || expiresIn > MAX_EXPIRES_IN) {
    throw new BadResponseError(`WeChat answered ${path} without a usable expires_in`, { path });
  }
  return { value, expiresIn, response: body };
}
