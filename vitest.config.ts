import { defineConfig } from 'vitest/config';
import LongestFirst from './scripts/test-sequencer.js';

// Root options for every project in vitest.workspace.ts. Two test files run side by side: most of the
// suite waits on child processes, real stores and the mock's latency rather than on the CPU, so two
// files at a time fit the two cores CI has (vitest's default there would be one). The longest files
// start first (scripts/test-sequencer.ts), so that none is left to run alone at the end.
export default defineConfig({
  test: {
    maxWorkers: 2,
    minWorkers: 1,
    sequence: { sequencer: LongestFirst },
  },
});
