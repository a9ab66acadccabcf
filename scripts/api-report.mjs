#!/usr/bin/env node
// The public API of every package, as its users' compiler sees it: for each entry point in package.json
// `exports`, the built declarations (dist/*.d.ts, with the chunks they import) in etc/<package>.api.md.
// The reports are checked in, so a change to what a package exports shows in review.
//   node scripts/api-report.mjs          rewrites the reports (after `pnpm build`)
//   node scripts/api-report.mjs --check  fails when a report differs from the build (run by `pnpm lint`)
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const check = process.argv.includes('--check');
const etc = join(root, 'etc');

// Shared chunks carry a content hash in their name (servers-BhUtEaw1.d.ts); the report names them
// without it, so that only a change to their content shows.
const chunkName = (file) => (/-[\w-]{8}$/.test(file) ? file.slice(0, -9) : file);

function section(dist, file, seen) {
  if (seen.has(file)) return [];
  seen.add(file);
  const path = join(dist, `${file}.d.ts`);
  const text = readFileSync(path, 'utf8').replace(/'\.\/([\w.-]+)\.js'/g, (_, name) => `'./${chunkName(name)}.js'`);
  const imported = [...readFileSync(path, 'utf8').matchAll(/from '\.\/([\w.-]+)\.js'/g)].map((m) => m[1]);
  return [{ file: `dist/${chunkName(file)}.d.ts`, text }, ...imported.flatMap((next) => section(dist, next, seen))];
}

function report(dir) {
  const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  const dist = join(dir, 'dist');
  const lines = [
    `# ${manifest.name}: public API`,
    '',
    'Written by `pnpm api` from the declarations the build ships (`dist/*.d.ts`) for each entry point in',
    "package.json `exports`. Do not edit it by hand: `pnpm lint` fails when it differs from the build.",
    '',
  ];
  // A chunk shared by two entry points is shown once, under the first.
  const seen = new Set();
  for (const [subpath, target] of Object.entries(manifest.exports ?? {})) {
    const types = typeof target === 'object' ? target.import?.types : undefined;
    if (!types) continue;
    const entry = `${manifest.name}${subpath === '.' ? '' : subpath.slice(1)}`;
    const file = types.replace(/^\.\/dist\//, '').replace(/\.d\.ts$/, '');
    if (!existsSync(join(dist, `${file}.d.ts`))) throw new Error(`${entry}: ${types} is missing; run pnpm build first`);
    lines.push(`## \`${entry}\``, '');
    if (subpath === './internal') {
      lines.push('For the wxkit packages only; not covered by semver.', '');
    }
    for (const part of section(dist, file, seen)) {
      lines.push(`### ${part.file}`, '', '```ts', part.text.trimEnd(), '```', '');
    }
  }
  return `${lines.join('\n').trimEnd()}\n`;
}

let stale = 0;
mkdirSync(etc, { recursive: true });
for (const name of readdirSync(join(root, 'packages')).sort()) {
  const dir = join(root, 'packages', name);
  if (!existsSync(join(dir, 'package.json'))) continue;
  const target = join(etc, `${name}.api.md`);
  const text = report(dir);
  const current = existsSync(target) ? readFileSync(target, 'utf8') : undefined;
  if (current === text) continue;
  if (check) {
    stale += 1;
    process.stdout.write(`api: etc/${name}.api.md differs from the build; run pnpm api and review the change\n`);
  } else {
    writeFileSync(target, text);
    process.stdout.write(`api: wrote etc/${name}.api.md\n`);
  }
}
if (stale > 0) process.exit(1);
