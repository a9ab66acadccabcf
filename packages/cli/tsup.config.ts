import { defineConfig } from 'tsup';
import { defineBuild } from '../../tsup.base.js';

export default defineConfig(
  defineBuild(
    { index: 'src/index.ts', 'demo-worker': 'src/demo-worker.ts' },
    // The adapters and the test kit stay imports of the installed packages.
    { external: [/^@wxkit\//], shims: true },
  ),
);
