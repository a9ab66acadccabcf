import { defineConfig } from 'tsup';
import { defineBuild } from '../../tsup.base.js';

export default defineConfig(
  defineBuild(
    {
      index: 'src/index.ts',
      suite: 'src/suite.ts',
      cli: 'src/cli.ts',
      worker: 'src/worker.ts',
      'cache-child': 'src/cache-child.ts',
    },
    // vitest stays an import of the caller's copy; bundling it would run a second vitest.
    { external: ['vitest', '@wxkit/core'], shims: true },
  ),
);
