/**
 * `redis://user:secret@host` → `redis://user:***@host`: a store URL as messages and output may show it,
 * never with its password. Shared by the adapters and the CLI through `@wxkit/core/internal`.
 */
export function maskUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    // A userinfo without ':' is the password in redis-cli's (and PHP's, Python's) reading of
    // `redis://secret@host`: shown as a user name it would print that secret in clear.
    else if (parsed.username) parsed.username = '***';
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}
