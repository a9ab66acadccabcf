import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { runChild } from '../child-process.js';
// @ts-expect-error: a plain .mjs script of the repository, without declarations
import { manifestTargets, tarballProblems } from '../../scripts/tarball-check.mjs';

// `pnpm pack:all` is what the README tells a user to run in a fresh clone before a release is on the
// registry: there, no package is built yet, and `pnpm pack` alone packs each without its dist/.
const root = fileURLToPath(new URL('../..', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'wxkit-pack-all-'));

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** A tarball as pnpm packs it, from `files` (paths under package/ → contents). */
async function tarball(name: string, files: Record<string, string>): Promise<string> {
  const dir = join(scratch, name);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(dir, 'package', path, '..'), { recursive: true });
    writeFileSync(join(dir, 'package', path), text);
  }
  const file = join(scratch, `${name}.tgz`);
  const run = await runChild('tar', ['-czf', file, '-C', dir, 'package']);
  expect(run.status).toBe(0);
  return file;
}

const core = JSON.parse(readFileSync(join(root, 'packages', 'core', 'package.json'), 'utf8')) as Record<string, unknown>;
const coreManifest = JSON.stringify({ ...core, dependencies: { undici: '^7.30.2' } });

describe('pnpm pack:all', () => {
  it('builds the packages before it packs them, and checks the tarballs', () => {
    const { scripts } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(scripts['pack:all']).toBe('node scripts/task.mjs pack');
    const task = readFileSync(join(root, 'scripts', 'task.mjs'), 'utf8');
    const body = task.slice(task.indexOf('function pack()'));
    expect(body.indexOf("prepare('pack')")).toBeGreaterThan(-1);
    expect(body.indexOf("prepare('pack')")).toBeLessThan(body.indexOf("'pack', '--pack-destination'"));
    expect(body).toContain('tarballProblems(');
  });

  it("names every file core's manifest points to", () => {
    expect(manifestTargets(core)).toEqual([
      'dist/index.cjs',
      'dist/index.d.cts',
      'dist/index.d.ts',
      'dist/index.js',
      'dist/internal.cjs',
      'dist/internal.d.cts',
      'dist/internal.d.ts',
      'dist/internal.js',
      'package.json',
    ]);
  });

  it('finds a tarball packed before the build (no dist/) wanting, and a whole one whole', async () => {
    const unbuilt = await tarball('unbuilt', { 'package.json': coreManifest, 'README.md': '# core\n', LICENSE: 'MIT\n' });
    const problems = tarballProblems(unbuilt) as string[];
    expect(problems).toHaveLength(8);
    expect(problems).toContain('@wxkit/core: dist/index.js is named in package.json but not in the tarball');
    const dist = Object.fromEntries(manifestTargets(core).filter((path: string) => path.startsWith('dist/')).map((path: string) => [path, '']));
    const built = await tarball('built', { 'package.json': coreManifest, ...dist });
    expect(tarballProblems(built)).toEqual([]);
    const workspaceRange = await tarball('workspace', { 'package.json': JSON.stringify({ ...core, dependencies: { '@wxkit/core': 'workspace:^' } }), ...dist });
    expect(tarballProblems(workspaceRange)).toEqual(['@wxkit/core: @wxkit/core keeps the range workspace:^']);
  });
});
