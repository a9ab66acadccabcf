import { createHash } from 'node:crypto';

/**
 * The first 16 hex digits of the SHA-256 of `text`'s UTF-8 bytes: what the key schema keeps of a secret,
 * a refresh token or a ticket where it must recognise one and hold no copy of it (docs/key-schema.md).
 */
export function shortDigest(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex').slice(0, 16);
}
