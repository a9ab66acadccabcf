import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

// Seconds each test file took in a recent run (scripts/test-durations.mjs writes them). A file it does
// not know yet counts as a long one: it starts early rather than risk ending the run alone.
const UNKNOWN_SECONDS = 20;
let durations: Record<string, number> = {};
try {
  durations = JSON.parse(readFileSync(new URL('./test-durations.json', import.meta.url), 'utf8')) as Record<string, number>;
} catch {
  // No list: every file counts as unknown, and vitest's own cache (where it has one) still orders them.
}

/**
 * Starts the longest test files first. A fresh checkout has no result cache for vitest to order the files
 * by, and its default (largest file first) put the multi-process suites, small files that run for tens
 * of seconds, at the end, where one of them ran alone on one of CI's two workers for most of a minute.
 * Where vitest has a result of its own for a file (a checkout that ran the tests before), that result
 * counts, as in vitest's own order: files that failed first, then the longest.
 */
export default class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const root = this.ctx.config.root;
    const order = new Map<TestSpecification, { failed: boolean; seconds: number }>();
    for (const spec of files) {
      const path = relative(root, spec.moduleId);
      const cached = this.ctx.cache.getFileTestResults(`${spec.project.name}:${path}`);
      order.set(spec, { failed: cached?.failed ?? false, seconds: cached ? cached.duration / 1000 : (durations[path] ?? UNKNOWN_SECONDS) });
    }
    return [...files].sort((a, b) => {
      const [x, y] = [order.get(a)!, order.get(b)!];
      return x.failed === y.failed ? y.seconds - x.seconds : x.failed ? -1 : 1;
    });
  }
}
