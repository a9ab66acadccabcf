import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

const root = fileURLToPath(new URL('.', import.meta.url));

// The files that took longest on two cores (seconds of one worker each, a CI run of December 2026).
// vitest starts the files it has no timings for (a fresh clone, as CI is) largest first, which left the
// slow, short ones (each store's token-sharing suite) to run alone at the end: 30 s and more of one idle
// core. These start first; the list says only where a file starts, and a file it misses runs as before.
const SLOW_FIRST = [
  'packages/core/test/rejection-spacing.test.ts', // 65
  'examples/packaging/packaging.test.ts', // 54
  'packages/keyv/test/postgres.test.ts', // 39
  'packages/redis/test/sentinel.test.ts', // 37
  'packages/redis/test/cluster.test.ts', // 32
  'packages/memcached/test/memcached-cache.test.ts', // 31
  'tests/faults/issue-11-lease.test.ts', // 31
  'packages/cli/test/exit-codes.test.ts', // 29
  'packages/keyv/test/mysql.test.ts', // 28
  'packages/redis/test/token-sharing.test.ts', // 26
  'packages/keyv/test/sqlite.test.ts', // 26
  'packages/redis/test/refused-at-once.test.ts', // 25
  'tests/faults/issue-11-backoff.test.ts', // 24
  'packages/memcached/test/token-sharing.test.ts', // 22
  'packages/file/test/namespaces.test.ts', // 21
  'packages/file/test/file-cache.test.ts', // 21
  'packages/cli/test/cli.test.ts', // 21
  'packages/cli/test/demo.test.ts', // 18
  'packages/file/test/token-sharing.test.ts', // 16
  'packages/file/test/guard-breaking.test.ts', // 16
  'packages/core/test/lying-store.test.ts', // 15
  'packages/cli/test/serve-config.test.ts', // 15
  'packages/redis/test/clean-exit.test.ts', // 13
  'examples/readme/readme.test.ts', // 12
  'packages/redis/test/redis-cache.test.ts', // 11
  'packages/memcached/test/clean-exit.test.ts', // 11
  'packages/core/test/open-platform-kill.test.ts', // 11
  'packages/cli/test/serve-close.test.ts', // 11
  'tests/faults/issue-11-clean-exit.test.ts', // 11
  'packages/file/test/hammer.test.ts', // 11
];

/** vitest's order where it has timings of every file (a second run), the slow files first where not. */
class SlowFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const timed = sorted.every((spec) => this.ctx.cache.getFileTestResults(`${spec.project.name}:${relative(this.ctx.config.root, spec.moduleId)}`));
    if (timed) return sorted;
    const rank = (spec: TestSpecification) => {
      const at = SLOW_FIRST.indexOf(relative(root, spec.moduleId).split('\\').join('/'));
      return at < 0 ? SLOW_FIRST.length : at;
    };
    return sorted.map((spec, order) => ({ spec, order, rank: rank(spec) })).sort((a, b) => a.rank - b.rank || a.order - b.order).map(({ spec }) => spec);
  }
}

// Root options for every project in vitest.workspace.ts. Two test files run side by side: most of the
// suite waits on child processes, real stores and the mock's latency rather than on the CPU, so two
// files at a time fit the two cores CI has (vitest's default there would be one).
export default defineConfig({
  test: {
    maxWorkers: 2,
    minWorkers: 1,
    sequence: { sequencer: SlowFirst },
  },
});
