import { defineConfig } from 'vitest/config';

// Root options for every project in vitest.workspace.ts. Two test files run side by side: most of the
// suite waits on child processes, real stores and the mock's latency rather than on the CPU, so two
// files at a time fit the two cores CI has (vitest's default there would be one).
export default defineConfig({
  test: {
    maxWorkers: 2,
    minWorkers: 1,
  },
});
