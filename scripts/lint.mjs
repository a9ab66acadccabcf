#!/usr/bin/env node
// `pnpm lint`: the type check over sources and tests, then publint and are-the-types-wrong on every
// publishable package (ESM, CJS, node10/node16/bundler type resolution). Run after `pnpm build`.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const bin = (name) => join(root, 'node_modules', '.bin', name);
let failures = 0;

function step(label, command, args, cwd = root) {
  process.stdout.write(`lint: ${label}\n`);
  const result = spawnSync(command, args, { cwd, stdio: 'inherit' });
  if (result.status !== 0) {
    failures += 1;
    process.stdout.write(`lint: ${label} FAILED\n`);
  }
}

step('tsc --noEmit', bin('tsc'), ['-p', 'tsconfig.json', '--noEmit']);

for (const name of readdirSync(join(root, 'packages')).sort()) {
  const dir = join(root, 'packages', name);
  const manifest = join(dir, 'package.json');
  if (!existsSync(manifest) || JSON.parse(readFileSync(manifest, 'utf8')).private) continue;
  if (!existsSync(join(dir, 'dist'))) {
    process.stdout.write(`lint: ${name} has no dist/; run pnpm build first\n`);
    failures += 1;
    continue;
  }
  step(`publint ${name}`, bin('publint'), ['--strict', '--pack', 'npm', dir]);
  // node16 profile: ESM and CJS under node16 and bundler resolution. Subpath exports such as
  // @wxkit/testing/suite cannot resolve under the old node10 rules, which no supported Node uses.
  step(`attw ${name}`, bin('attw'), ['--pack', dir, '--profile', 'node16', '--format', 'ascii'], dir);
}

if (failures > 0) {
  process.stdout.write(`lint: ${failures} check(s) failed\n`);
  process.exit(1);
}
process.stdout.write('lint: 0 problems\n');
