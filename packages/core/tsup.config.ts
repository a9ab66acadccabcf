import { defineConfig } from 'tsup';
import { defineBuild } from '../../tsup.base.js';

// `internal`: helpers shared with the other wxkit packages (@wxkit/core/internal, not covered by semver).
export default defineConfig(defineBuild({ index: 'src/index.ts', internal: 'src/internal.ts' }));
