import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

// Seconds each test file took in a recent run (scripts/test-durations.mjs writes them). A file it does
// not know yet counts as a long one: it starts early rather than risk ending the run alone.
const durations = JSON.parse(readFileSync(new URL('./test-durations.json', import.meta.url), 'utf8')) as Record<string, number>;
const UNKNOWN_SECONDS = 20;

/**
 * Starts the longest test files first. A fresh checkout has no result cache for vitest to order the files
 * by, and its default (largest file first) put the multi-process suites, small files that run for tens
 * of seconds, at the end, where one of them ran alone on one of CI's two workers for most of a minute.
 */
export default class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const root = this.ctx.config.root;
    const seconds = (spec: TestSpecification) => durations[relative(root, spec.moduleId)] ?? UNKNOWN_SECONDS;
    return (await super.sort(files)).sort((a, b) => seconds(b) - seconds(a));
  }
}
