import type { Options } from 'tsup';

/**
 * The build every package shares: ESM and CJS side by side with their own declarations
 * (`.d.ts` for `import`, `.d.cts` for `require`), as the package.json `exports` maps expect.
 * Declarations tagged `@internal` (constructors users never call, the plumbing a client holds) are left
 * out of the .d.ts, so the published types say only what users call and implement.
 */
export function defineBuild(entry: Record<string, string>, overrides: Partial<Options> = {}): Options {
  return {
    entry,
    format: ['esm', 'cjs'],
    dts: { compilerOptions: { stripInternal: true } },
    clean: true,
    sourcemap: true,
    target: 'node20',
    platform: 'node',
    splitting: false,
    shims: false,
    ...overrides,
  };
}
