#!/usr/bin/env node
// `node scripts/test-durations.mjs`: writes scripts/test-durations.json, each test file's seconds in the
// last run's report (node_modules/.cache/wxkit/vitest.json, which `pnpm test` writes). The sequencer
// (scripts/test-sequencer.ts) starts the longest files first from it, so that on CI's two workers no
// long file is left to run alone at the end. Refresh it when files are added or grow much longer.
import { readFileSync, writeFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const report = JSON.parse(readFileSync(new URL('../node_modules/.cache/wxkit/vitest.json', import.meta.url), 'utf8'));
const seconds = {};
for (const file of report.testResults ?? []) {
  seconds[relative(root, file.name)] = Math.round((file.endTime - file.startTime) / 100) / 10;
}
const sorted = Object.fromEntries(Object.entries(seconds).sort(([a], [b]) => (a < b ? -1 : 1)));
writeFileSync(new URL('./test-durations.json', import.meta.url), `${JSON.stringify(sorted, null, 2)}\n`);
console.log(`${Object.keys(sorted).length} files written to scripts/test-durations.json`);
