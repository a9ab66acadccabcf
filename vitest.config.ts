import { defineConfig } from 'vitest/config';
import LongestFirst from './scripts/test-sequencer.js';

// Root options for every project in vitest.workspace.ts. Three test files run side by side on CI's two
// cores: much of the suite waits on child processes, real stores and the mock's latency rather than on
// the CPU, and while one worker loads its next file two others run theirs (vitest's default there would
// be one). On a 2-core machine two workers took 566-581 s and three 429-478 s, the CPU 172-175 % busy. The
// longest files start first (scripts/test-sequencer.ts), so that none is left to run alone at the end.
export default defineConfig({
  test: {
    maxWorkers: 3,
    minWorkers: 1,
    sequence: { sequencer: LongestFirst },
  },
});
