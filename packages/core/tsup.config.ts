import { defineConfig } from 'tsup';
import { defineBuild } from '../../tsup.base.js';

// `internal`: helpers shared with the other wxkit packages (@wxkit/core/internal, not covered by semver).
// Shims: the CommonJS build's import.meta.url, for the require() that loads undici's Pool (undici-pool.ts).
export default defineConfig(defineBuild({ index: 'src/index.ts', internal: 'src/internal.ts' }, { shims: true }));
