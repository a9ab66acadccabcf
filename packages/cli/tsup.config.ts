import { defineConfig } from 'tsup';
import { defineBuild } from '../../tsup.base.js';

export default defineConfig(
  defineBuild(
    // `main` is the binary's entry (bin/wxkit.mjs): it reaches serve's module (prom-client, pino, all of
    // undici) and the store adapters only through import(), so a command loads what it runs. Split into
    // chunks, so that the index (the package's API, which exports serve's functions) and the binary
    // share one copy of each module.
    { index: 'src/index.ts', main: 'src/main.ts', 'demo-worker': 'src/demo-worker.ts' },
    // The adapters and the test kit stay imports of the installed packages.
    // Declarations for the package's API only: the binary's entry is no import of anyone's.
    { external: [/^@wxkit\//], shims: true, splitting: true, dts: { entry: { index: 'src/index.ts' }, compilerOptions: { stripInternal: true } } },
  ),
);
