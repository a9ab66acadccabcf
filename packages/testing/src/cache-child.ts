/**
 * A child process for cross-process TokenCache tests, started with `fork()`: it builds a client of the
 * shared store from a StoreSpec, says it is ready, waits for 'go', runs its operation(s), reports the
 * result(s) over IPC, closes the client and exits. Tests start several and send 'go' to all at once, so
 * the operations race for real.
 *
 * Protocol:
 * - setup: JSON `{ spec, op }` or `{ spec, ops }` in the WXKIT_CACHE_CHILD env variable, or as argv[2];
 * - child → parent: `{ ready: true }` once the client is built;
 * - parent → child: `'go'`, or `{ go: true, ops }` to hand over operations too large for the
 *   environment (a long run of big values);
 * - child → parent: a {@link CacheChildResult} for `op`, or `{ results: CacheChildResult[] }` for `ops`
 *   (run one after the other, in order).
 */
import { createStore, type StoreSpec } from './processes.js';

/** One operation a cache child runs. */
export type CacheChildOp =
  | { op: 'get'; key: string }
  | { op: 'set'; key: string; value: string; ttlSeconds: number }
  | { op: 'add'; key: string; value: string; ttlSeconds: number }
  | { op: 'deleteIfEquals'; key: string; value: string }
  | { op: 'compareAndSet'; key: string; expected: string; value: string; ttlSeconds: number };

/** What a cache child reports for one operation: its result (`null` for a miss), or the `code` of the error it threw. */
export interface CacheChildResult {
  result?: unknown;
  error?: string;
}

/** The setup a cache child reads from WXKIT_CACHE_CHILD or argv[2]. */
export interface CacheChildSetup {
  spec: StoreSpec;
  op?: CacheChildOp;
  ops?: CacheChildOp[];
  /**
   * Close the store, report what is still open, let go of the parent and end without process.exit():
   * the process then exits only if the store left nothing open.
   */
  exitByItself?: boolean;
}

export async function runCacheOp(cache: Awaited<ReturnType<typeof createStore>>, op: CacheChildOp): Promise<CacheChildResult> {
  try {
    if (op.op === 'get') return { result: (await cache.get(op.key)) ?? null };
    if (op.op === 'set') return { result: await cache.set(op.key, op.value, op.ttlSeconds) };
    if (op.op === 'add') return { result: await cache.add!(op.key, op.value, op.ttlSeconds) };
    if (op.op === 'deleteIfEquals') return { result: await cache.deleteIfEquals!(op.key, op.value) };
    if (op.op === 'compareAndSet') return { result: await cache.compareAndSet!(op.key, op.expected, op.value, op.ttlSeconds) };
    return { error: `unknown op ${String((op as { op: unknown }).op)}` };
  } catch (error) {
    return { error: (error as { code?: string } | null)?.code ?? String(error) };
  }
}

async function main(): Promise<void> {
  const setup = JSON.parse(process.env.WXKIT_CACHE_CHILD ?? process.argv[2] ?? 'null') as CacheChildSetup | null;
  if (!setup?.spec || !process.send) throw new Error('cache-child.js is started by a test through fork(), with a setup');
  const cache = await createStore(setup.spec);
  const go = await new Promise<unknown>((resolve) => {
    process.once('message', resolve);
    process.send!({ ready: true });
  });
  const ops = (go as { ops?: CacheChildOp[] } | null)?.ops ?? setup.ops;
  let report: CacheChildResult | { results: CacheChildResult[] };
  if (ops) {
    const results: CacheChildResult[] = [];
    for (const op of ops) results.push(await runCacheOp(cache, op));
    report = { results };
  } else if (setup.op) {
    report = await runCacheOp(cache, setup.op);
  } else {
    report = { error: 'no operation given' };
  }
  await cache.close?.();
  if (setup.exitByItself) {
    // Let sockets that close() ended finish closing before looking at what is left.
    await new Promise((resolve) => setImmediate(resolve));
    const resources = process.getActiveResourcesInfo().filter((name) => name !== 'PipeWrap' && name !== 'TTYWrap');
    process.send!({ ...report, resources }, () => process.disconnect());
    return;
  }
  // Exit only once the report is flushed to the parent; an early exit would lose it.
  process.send!(report, () => process.exit(0));
}

main().catch((error: unknown) => {
  process.stderr.write(`cache child failed: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
