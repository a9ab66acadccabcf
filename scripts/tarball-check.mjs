// What a package tarball must hold: every file its manifest points to (main, module, types, bin, each
// target of exports and typesVersions). A package packed before it was built holds none of its dist/,
// and npm installs it without a word; the import fails only in the user's project.
import { spawnSync } from 'node:child_process';

/** The relative paths a manifest points to, without the leading `./`; patterns (`*`) left out. */
export function manifestTargets(manifest) {
  const targets = new Set();
  const add = (value) => {
    if (typeof value === 'string') {
      if (!value.includes('*')) targets.add(value.replace(/^\.\//, ''));
    } else if (Array.isArray(value)) {
      value.forEach(add);
    } else if (value && typeof value === 'object') {
      Object.values(value).forEach(add);
    }
  };
  add(manifest.main);
  add(manifest.module);
  add(manifest.types);
  add(manifest.typings);
  add(typeof manifest.bin === 'string' ? manifest.bin : manifest.bin && Object.values(manifest.bin));
  add(manifest.exports);
  for (const paths of Object.values(manifest.typesVersions ?? {})) add(Object.values(paths));
  return [...targets].sort();
}

/** The problems of one tarball (`package/…` entries, as npm and pnpm pack them): [] when it is whole. */
export function tarballProblems(tarball) {
  const listing = spawnSync('tar', ['-tzf', tarball], { encoding: 'utf8' });
  if (listing.status !== 0) return [`${tarball}: tar cannot list it: ${(listing.stderr ?? '').trim()}`];
  const files = new Set(listing.stdout.split('\n').filter(Boolean).map((entry) => entry.replace(/^package\//, '')));
  if (!files.has('package.json')) return [`${tarball}: no package.json`];
  const read = spawnSync('tar', ['-xOzf', tarball, 'package/package.json'], { encoding: 'utf8' });
  const manifest = JSON.parse(read.stdout);
  const problems = [];
  for (const target of manifestTargets(manifest)) {
    if (!files.has(target)) problems.push(`${manifest.name}: ${target} is named in package.json but not in the tarball`);
  }
  for (const [name, range] of Object.entries({ ...manifest.dependencies, ...manifest.peerDependencies })) {
    if (String(range).startsWith('workspace:')) problems.push(`${manifest.name}: ${name} keeps the range ${range}`);
  }
  return problems;
}
