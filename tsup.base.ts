import type { Options } from 'tsup';

/**
 * The build every package shares: ESM and CJS side by side with their own declarations
 * (`.d.ts` for `import`, `.d.cts` for `require`), as the package.json `exports` maps expect.
 */
export function defineBuild(entry: Record<string, string>, overrides: Partial<Options> = {}): Options {
  return {
    entry,
    format: ['esm', 'cjs'],
    dts: true,
    clean: true,
    sourcemap: true,
    target: 'node20',
    platform: 'node',
    splitting: false,
    shims: false,
    ...overrides,
  };
}
