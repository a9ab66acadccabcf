import { defineConfig } from 'tsup';
import { defineBuild } from '../../tsup.base.js';

// The adapters and the test kit stay imports of the installed packages. Both builds write into dist/,
// which the package's build script empties first (two builds cleaning it would race).
const shared = { external: [/^@wxkit\//], shims: true, clean: false, dts: { entry: { index: 'src/index.ts' }, compilerOptions: { stripInternal: true } } };

export default defineConfig([
  // `main` is the binary's entry (bin/wxkit.mjs): it reaches serve's module (prom-client, pino, all of
  // undici) and the store adapters only through import(), so a command loads what it runs. Split into
  // chunks, so that the index (the package's API, which exports serve's functions) and the binary share
  // one copy of each module. Declarations for the package's API only.
  defineBuild({ index: 'src/index.ts', main: 'src/main.ts', 'demo-worker': 'src/demo-worker.ts' }, { ...shared, format: ['esm'], splitting: true }),
  // CommonJS, for require('wxkit'): not split. tsup's split CommonJS build goes through another transform,
  // which moved the metrics' public class fields after their private ones, so that serve failed at start.
  defineBuild({ index: 'src/index.ts', 'demo-worker': 'src/demo-worker.ts' }, { ...shared, format: ['cjs'], splitting: false }),
]);
