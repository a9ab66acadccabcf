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
    // No host parsed (`user:secret@host:26379`, `redis:/:secret@host`, `redis:///:secret@host`: a scheme
    // left out or mistyped): the credentials sit in the path, and everything before the last `@` is masked.
    else if (parsed.host === '' && parsed.protocol !== 'file:' && url.includes('@')) return `${parsed.protocol}***${url.slice(url.lastIndexOf('@'))}`;
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}
