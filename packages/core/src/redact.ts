/**
 * `redis://user:secret@host` → `redis://user:***@host`: a store URL as messages and output may show it,
 * never with its password. Shared by the adapters and the CLI through `@wxkit/core/internal`.
 */
export function maskUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}
