import { fileURLToPath } from 'node:url';
import { defineWorkspace } from 'vitest/config';

// One project per package. Multi-process tests spawn real Node children against the mock server and
// real stores, so their timeouts are generous; they assert counts, never durations.
const project = (name: string, alias: Record<string, string> = {}, root = `./packages/${name}`, include = ['test/**/*.test.ts']) => ({
  resolve: { alias },
  test: {
    name,
    root,
    include,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});

// @wxkit/core cannot depend on @wxkit/testing (testing depends on core), so core's tests reach the
// test kit's built files directly.
const testingDist = (file: string) => fileURLToPath(new URL(`./packages/testing/dist/${file}`, import.meta.url));

export default defineWorkspace([
  project('core', { '@wxkit/testing/suite': testingDist('suite.js'), '@wxkit/testing': testingDist('index.js') }),
  project('file'),
  project('redis'),
  project('memcached'),
  project('keyv'),
  project('cli'),
  project('testing'),
  // Runnable examples and the README's snippets, run as a user would run them.
  project('examples', {}, './examples', ['*/*.test.ts']),
  // The token protocol at its edges, one file per failure: real stores, real processes, the mock's counters.
  project('faults', {}, './tests/faults', ['*.test.ts']),
  // The peers' own code (node-easywechat from npm, Symfony Cache and PHP from Debian) sharing one real
  // Redis with wxkit, the mock WeChat server upstream.
  project('peers', {}, './tests/peers', ['*.test.ts']),
]);
