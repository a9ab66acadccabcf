import { createHash } from 'node:crypto';

/** A token's fingerprint: enough to see that two programs hold the same token, without printing it. */
export function fingerprint(token: string): string {
  return createHash('sha256').update(token).digest('hex').slice(0, 12);
}

/** One JSON line on stdout, for the scenario runner (and for your log collector). */
export function report(fields: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(fields)}\n`);
}

/** Runs `count` sends at once; counts the ones that arrived and keeps the errors' codes and messages. */
export async function sendAll(count: number, send: (i: number) => Promise<unknown>): Promise<{ sent: number; errors: string[] }> {
  const results = await Promise.allSettled(Array.from({ length: count }, (_, i) => send(i)));
  const errors = results
    .filter((result): result is PromiseRejectedResult => result.status === 'rejected')
    .map(({ reason }) => `${(reason as { code?: string }).code}: ${(reason as Error).message}`);
  return { sent: results.length - errors.length, errors };
}
