#!/usr/bin/env node
// `pnpm lint`: the type check over sources and tests, then publint and are-the-types-wrong on the
// tarball of every publishable package as pnpm packs it (ESM, CJS, node16/bundler type resolution).
// Run after `pnpm build`.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tarballProblems } from './tarball-check.mjs';

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

/** pnpm through the copy that runs this script, or the pinned one from the registry. */
function pnpm() {
  const execPath = process.env.npm_execpath ?? '';
  if (/pnpm/.test(execPath) && existsSync(execPath)) {
    return /\.c?js$/.test(execPath) ? [process.execPath, execPath] : [execPath];
  }
  return ['npx', '-y', JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).packageManager];
}

// The type check runs beside the tarball checks (each takes one core); its output is printed when it ends.
// It writes to a file, not a pipe: the checks below run synchronously, and nothing would read a pipe
// until they end (tsc would stop at its first 64 KB of errors and wait for them).
process.stdout.write('lint: tsc --noEmit (beside the tarball checks)\n');
const typeCheckDir = mkdtempSync(join(tmpdir(), 'wxkit-lint-tsc-'));
const typeCheckLog = join(typeCheckDir, 'tsc.log');
const typeCheckFd = openSync(typeCheckLog, 'w');
const typeCheck = spawn(bin('tsc'), ['-p', 'tsconfig.json', '--noEmit'], { cwd: root, stdio: ['ignore', typeCheckFd, typeCheckFd] });
closeSync(typeCheckFd);
// A failure below that ends this script (an exception) does not leave the type check running.
process.once('exit', () => typeCheck.exitCode === null && typeCheck.signalCode === null && typeCheck.kill());
const typeChecked = new Promise((resolve) => {
  typeCheck.once('error', (error) => resolve({ status: 1, error }));
  typeCheck.once('exit', (status, signal) => resolve({ status, signal }));
});

// The checks read the tarballs pnpm makes, which are what gets published: `npm pack` would keep the
// `workspace:` ranges that pnpm rewrites.
const tarballs = mkdtempSync(join(tmpdir(), 'wxkit-lint-'));
const [pnpmCommand, ...pnpmPrefix] = pnpm();
const packed = spawnSync(pnpmCommand, [...pnpmPrefix, '-r', '--filter=./packages/*', 'pack', '--pack-destination', tarballs], {
  cwd: root,
  encoding: 'utf8',
});
if (packed.status !== 0) {
  process.stdout.write(`${packed.stdout ?? ''}${packed.stderr ?? ''}lint: pnpm pack FAILED\n`);
  failures += 1;
}

for (const name of readdirSync(join(root, 'packages')).sort()) {
  const dir = join(root, 'packages', name);
  const manifest = join(dir, 'package.json');
  if (!existsSync(manifest)) continue;
  const { name: packageName, version, private: unpublished } = JSON.parse(readFileSync(manifest, 'utf8'));
  if (unpublished) continue;
  if (!existsSync(join(dir, 'dist'))) {
    process.stdout.write(`lint: ${name} has no dist/; run pnpm build first\n`);
    failures += 1;
    continue;
  }
  const tarball = join(tarballs, `${packageName.replace(/^@/, '').replace('/', '-')}-${version}.tgz`);
  step(`publint ${packageName}`, bin('publint'), ['--strict', tarball]);
  for (const problem of existsSync(tarball) ? tarballProblems(tarball) : [`${packageName}: no tarball`]) {
    process.stdout.write(`lint: ${problem}\n`);
    failures += 1;
  }
  // node16 profile: ESM and CJS under node16 and bundler resolution. @wxkit/core/internal (shared by the
  // wxkit packages alone) cannot resolve under the old node10 rules; @wxkit/testing/suite does, through
  // typesVersions (examples/packaging checks a "module": "commonjs" project).
  step(`attw ${packageName}`, bin('attw'), [tarball, '--profile', 'node16', '--format', 'ascii'], dir);
}
rmSync(tarballs, { recursive: true, force: true });

// Every pending changeset names packages of the workspace (the CLI is published as `wxkit`): one that
// names another fails `changeset version` at release time, and `changeset status` now.
process.stdout.write('lint: changesets\n');
const workspace = new Set(
  readdirSync(join(root, 'packages'))
    .map((name) => join(root, 'packages', name, 'package.json'))
    .filter((manifest) => existsSync(manifest))
    .map((manifest) => JSON.parse(readFileSync(manifest, 'utf8')).name),
);
for (const file of readdirSync(join(root, '.changeset')).filter((name) => name.endsWith('.md') && name !== 'README.md')) {
  const front = /^---\n([\s\S]*?)\n---/.exec(readFileSync(join(root, '.changeset', file), 'utf8'))?.[1];
  const names = [...(front ?? '').matchAll(/^['"]?([^'":]+)['"]?\s*:\s*(major|minor|patch)\s*$/gm)].map((match) => match[1]);
  const unknown = names.filter((name) => !workspace.has(name));
  if (front === undefined || names.length === 0 || unknown.length > 0) {
    process.stdout.write(`lint: .changeset/${file} ${unknown.length > 0 ? `names ${unknown.join(', ')}, not a package of the workspace` : 'has no package: bump lines'}\n`);
    failures += 1;
  }
}

// The checked-in API reports (etc/*.api.md) must match what the build exports.
step('api reports', process.execPath, [join(root, 'scripts', 'api-report.mjs'), '--check']);

const { status: typeStatus, signal: typeSignal, error: typeError } = await typeChecked;
process.stdout.write(readFileSync(typeCheckLog, 'utf8'));
rmSync(typeCheckDir, { recursive: true, force: true });
if (typeStatus !== 0) {
  failures += 1;
  const why = typeError ? ` (${typeError.message})` : typeSignal ? ` (killed by ${typeSignal})` : '';
  process.stdout.write(`lint: tsc --noEmit FAILED${why}\n`);
}

if (failures > 0) {
  process.stdout.write(`lint: ${failures} check(s) failed\n`);
  process.exit(1);
}
process.stdout.write('lint: 0 problems\n');
