import type { SpawnOptions } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runChild } from '../child-process.js';

// The packages as a user gets them: packed by pnpm (which rewrites `workspace:` ranges), installed by npm
// into a project outside the workspace, with nothing of this repository on the resolution path.
const root = fileURLToPath(new URL('../..', import.meta.url));
const rootManifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { packageManager: string };
const packageDirs = readdirSync(join(root, 'packages')).filter((dir) => existsSync(join(root, 'packages', dir, 'package.json')));
const manifests = packageDirs.map((dir) => JSON.parse(readFileSync(join(root, 'packages', dir, 'package.json'), 'utf8')) as Manifest);
const names = manifests.filter((m) => !m.private).map((m) => m.name);

interface Manifest {
  name: string;
  version: string;
  private?: boolean;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

// The README's install line and first snippet, found by their markers: the test runs what the README shows.
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const afterMarker = (marker: string, lang: string): string => {
  const at = readme.indexOf(`<!-- ${marker} -->`);
  if (at === -1) throw new Error(`README.md has no <!-- ${marker} --> marker`);
  const block = new RegExp('```' + lang + '\\n([\\s\\S]*?)```').exec(readme.slice(at));
  if (!block) throw new Error(`README.md has no \`\`\`${lang} block after <!-- ${marker} -->`);
  return block[1]!;
};
const installLine = afterMarker('readme:install', 'sh').trim();
const snippet = afterMarker('readme:try-it', 'ts');
const installed = installLine.replace(/^npm install\s+/, '').split(/\s+/);
const imported = [...snippet.matchAll(/from '([^']+)'/g)].map((m) => m[1]!);

let scratch: string;
let tarballs: string;
const tarball = (name: string) => {
  const { version } = manifests.find((m) => m.name === name)!;
  return join(tarballs, `${name.replace(/^@/, '').replace('/', '-')}-${version}.tgz`);
};

async function sh(command: string, args: string[], options: SpawnOptions & { timeoutMs?: number } = {}) {
  const { status, signal, stdout, stderr } = await runChild(command, args, options);
  return { status, signal, stdout, stderr };
}

/** pnpm through the copy that runs the tests, or the pinned one from the registry. */
function pnpm(): string[] {
  const execPath = process.env.npm_execpath ?? '';
  if (/pnpm/.test(execPath) && existsSync(execPath)) {
    return /\.c?js$/.test(execPath) ? [process.execPath, execPath] : [execPath];
  }
  return ['npx', '-y', rootManifest.packageManager];
}

/** An environment without the npm_* settings pnpm and vitest pass down: npm in the scratch project is a user's npm. */
function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^(npm_|pnpm_)/i.test(key) && !/^npm_config_(registry|cache)$/i.test(key)) continue;
    if (key === 'NODE_PATH' || key === 'NODE_OPTIONS') continue;
    env[key] = value;
  }
  return env;
}

async function npmInstall(specs: string[]): Promise<void> {
  // Under its hook's 240 s (pnpm pack's 60 s with it): a hung install is killed and reported with its
  // output, where the hook's own timeout would leave it running, unreported, past the file's end.
  const run = await sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', ...specs], { cwd: scratch, env: userEnv(), timeoutMs: 170_000 });
  if (run.status !== 0) throw new Error(`npm install failed (exit ${run.status}${run.signal ? `, ${run.signal}` : ''}):\n${run.stdout}\n${run.stderr}`);
}

function node(file: string) {
  return sh(process.execPath, [file], { cwd: scratch, env: userEnv(), timeoutMs: 60_000 });
}

beforeAll(async () => {
  scratch = realpathSync(mkdtempSync(join(tmpdir(), 'wxkit-scratch-')));
  tarballs = join(scratch, 'tarballs');
  const [command, ...prefix] = pnpm();
  const pack = await sh(command!, [...prefix, '-r', '--filter=./packages/*', 'pack', '--pack-destination', tarballs], { cwd: root, timeoutMs: 60_000 });
  if (pack.status !== 0) throw new Error(`pnpm pack failed (exit ${pack.status}):\n${pack.stdout}\n${pack.stderr}`);
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'wxkit-scratch', version: '1.0.0', private: true }, null, 2));
  // The README's install line, each package name standing for its tarball; then the compiler and the
  // newest Node typings, as a new TypeScript project has them.
  await npmInstall([...installed.map((name) => (names.includes(name) ? tarball(name) : name)), 'typescript@5.9.3', '@types/node@latest']);
}, 240_000);

afterAll(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('the packages, packed by pnpm and installed by npm outside the workspace', () => {
  it('every tarball names real version ranges, never workspace:', async () => {
    for (const name of names) {
      const manifest = await sh('tar', ['-xOzf', tarball(name), 'package/package.json']);
      expect(manifest.status).toBe(0);
      const { dependencies = {}, peerDependencies = {} } = JSON.parse(manifest.stdout) as Manifest;
      const ranges = Object.values({ ...dependencies, ...peerDependencies });
      expect(ranges.filter((range) => range.startsWith('workspace:'))).toEqual([]);
      for (const [dep, range] of Object.entries({ ...dependencies, ...peerDependencies })) {
        if (names.includes(dep)) expect(range).toBe(`^${manifests.find((m) => m.name === dep)!.version}`);
      }
    }
  });

  it("the README's install line names every package its first snippet imports", () => {
    expect(imported.length).toBeGreaterThanOrEqual(2);
    expect(installLine).toMatch(/^npm install /);
    expect(imported.filter((name) => !installed.includes(name))).toEqual([]);
    expect(installed).toContain('@wxkit/testing');
  });

  it("the README's first snippet, as shown, sends a message through the mock server", async () => {
    writeFileSync(join(scratch, 'try.mjs'), snippet);
    const run = await node(join(scratch, 'try.mjs'));
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/errcode: 0, errmsg: 'ok', msgid: '\d{19}'/);
  });

  describe('with every package installed', () => {
    beforeAll(async () => {
      await npmInstall(names.filter((name) => !installed.includes(name)).map(tarball));
    }, 240_000);

    // Each package's main entry, and the subpath the wxkit packages share helpers through.
    const entries = [...names, '@wxkit/core/internal'];

    it('each package loads from ESM and from CJS, with the same exports, from the scratch project', async () => {
      const report = async (kind: 'esm' | 'cjs') => {
        const file = join(scratch, `load.${kind === 'esm' ? 'mjs' : 'cjs'}`);
        const load = kind === 'esm' ? 'await import(name)' : 'require(name)';
        const where = kind === 'esm' ? 'fileURLToPath(import.meta.resolve(name))' : 'require.resolve(name)';
        writeFileSync(
          file,
          [
            kind === 'esm' ? "import { fileURLToPath } from 'node:url';" : "const { realpathSync } = require('node:fs');",
            kind === 'esm' ? "import { realpathSync } from 'node:fs';" : '',
            'const out = {};',
            `for (const name of ${JSON.stringify(entries)}) {`,
            `  const mod = ${load};`,
            `  out[name] = { keys: Object.keys(mod).filter((k) => k !== 'default' && k !== 'module.exports').sort(), file: realpathSync(${where}) };`,
            '}',
            'console.log(JSON.stringify(out));',
          ].join('\n'),
        );
        const run = await node(file);
        expect(run.stderr).toBe('');
        expect(run.status).toBe(0);
        return JSON.parse(run.stdout) as Record<string, { keys: string[]; file: string }>;
      };
      const esm = await report('esm');
      const cjs = await report('cjs');
      for (const name of entries) {
        expect(esm[name]!.file.startsWith(join(scratch, 'node_modules'))).toBe(true);
        expect(cjs[name]!.file.startsWith(join(scratch, 'node_modules'))).toBe(true);
        expect(esm[name]!.file).toMatch(/\.js$/);
        expect(cjs[name]!.file).toMatch(/\.cjs$/);
        expect(esm[name]!.keys.length).toBeGreaterThan(0);
        expect(esm[name]!.keys).toEqual(cjs[name]!.keys);
      }
    });

    // The CLI depends on @wxkit/testing, whose vitest peer is optional but still a constraint: a project on a
    // vitest the range leaves out cannot install the CLI at all (npm ERESOLVE). The suite runs on 3.2, 4.1, 5.1.
    it('a project on vitest 4 or 5 installs the CLI and the test kit, and npm finds no invalid peer', async () => {
      // The two projects install side by side (npm's cache takes concurrent installs).
      const versions = ['4.1.12', '5.1.2'];
      const installs = await Promise.all(
        versions.map(async (vitest) => {
          const project = join(scratch, `vitest-${vitest}`);
          mkdirSync(project);
          writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'on-vitest', version: '1.0.0', private: true, devDependencies: { vitest } }, null, 2));
          const install = await sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', ...names.map(tarball)], { cwd: project, env: userEnv() });
          const ls = install.status === 0 ? await sh('npm', ['ls', 'vitest'], { cwd: project, env: userEnv() }) : undefined;
          return { vitest, install, ls };
        }),
      );
      for (const { vitest, install, ls } of installs) {
        expect(install.stderr, vitest).not.toMatch(/ERESOLVE/);
        expect(install.status, vitest).toBe(0);
        expect(ls!.stdout).toContain(`vitest@${vitest}`);
        expect(ls!.status).toBe(0);
      }
      // And the suite runs there: the newest vitest the range takes checks FileCache's contract.
      const project = join(scratch, 'vitest-5.1.2');
      writeFileSync(
        join(project, 'file-cache.test.mjs'),
        [
          "import { describeTokenCache } from '@wxkit/testing/suite';",
          "import { FileCache } from '@wxkit/file';",
          "import { mkdtempSync } from 'node:fs';",
          "import { tmpdir } from 'node:os';",
          "import { join } from 'node:path';",
          "const dir = mkdtempSync(join(tmpdir(), 'wxkit-vitest5-'));",
          "describeTokenCache('FileCache on vitest 5', { create: () => new FileCache({ dir }), shared: { module: import.meta.resolve('@wxkit/file'), export: 'FileCache', args: [{ dir }] }, supports: { compareAndSet: true, ttlMs: true, watch: true } });",
        ].join('\n'),
      );
      const run = await sh(join(project, 'node_modules', '.bin', 'vitest'), ['run', '--reporter=dot'], { cwd: project, env: { ...userEnv(), NO_COLOR: '1', FORCE_COLOR: '0' } });
      expect(run.stdout + run.stderr).toMatch(/Tests\s+\d+ passed/);
      expect(run.status, run.stdout + run.stderr).toBe(0);
    }, 240_000);

    it("core's public types declare none of its internals", () => {
      const types = readFileSync(join(scratch, 'node_modules', '@wxkit', 'core', 'dist', 'index.d.ts'), 'utf8');
      expect(types).toMatch(/declare class OfficialAccount\b/);
      for (const internal of ['ClientCore', 'TokenManager', 'GuardedStore', 'HttpClient', 'Log', 'EntryStore', 'StoreTiers']) {
        expect(types).not.toMatch(new RegExp(`\\b(class|interface|type) ${internal}\\b`));
      }
    });

    // `tsc --init`'s "module": "commonjs" resolves with the node10 rules, which read no exports map: the
    // documented subpath @wxkit/testing/suite needs typesVersions there.
    it('a "module": "commonjs" TypeScript project (node10 resolution) finds the types of every documented entry', async () => {
      const dir = join(scratch, 'node10');
      mkdirSync(dir);
      writeFileSync(
        join(dir, 'uses.ts'),
        [...names.map((name, i) => `import * as m${i} from '${name}';`), "import { describeTokenCache } from '@wxkit/testing/suite';", `export const all = [${names.map((_, i) => `m${i}`).join(', ')}, describeTokenCache];`].join('\n'),
      );
      writeFileSync(
        join(dir, 'tsconfig.json'),
        JSON.stringify({ compilerOptions: { strict: true, skipLibCheck: true, module: 'commonjs', moduleResolution: 'node10', target: 'es2022', types: ['node'], noEmit: true }, files: ['uses.ts'] }),
      );
      const tsc = await sh(process.execPath, [join(scratch, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir], { cwd: scratch, env: userEnv() });
      expect(tsc.stdout + tsc.stderr).toBe('');
      expect(tsc.status).toBe(0);
    });

    it('a strict TypeScript project compiles against the shipped types, ESM and CJS, without skipLibCheck', async () => {
      const program = readFileSync(fileURLToPath(new URL('./uses-api.ts', import.meta.url)), 'utf8');
      writeFileSync(join(scratch, 'uses-api.mts'), program);
      writeFileSync(join(scratch, 'uses-api.cts'), program);
      writeFileSync(
        join(scratch, 'tsconfig.json'),
        JSON.stringify({
          compilerOptions: {
            strict: true,
            noUncheckedIndexedAccess: true,
            skipLibCheck: false,
            module: 'nodenext',
            moduleResolution: 'nodenext',
            target: 'es2022',
            types: ['node'],
            noEmit: true,
          },
          files: ['uses-api.mts', 'uses-api.cts'],
        }),
      );
      const typesNode = JSON.parse(readFileSync(join(scratch, 'node_modules', '@types', 'node', 'package.json'), 'utf8')) as { version: string };
      expect(Number(typesNode.version.split('.')[0])).toBeGreaterThan(20);
      const tsc = await sh(process.execPath, [join(scratch, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', scratch], { cwd: scratch, env: userEnv() });
      expect(tsc.stdout + tsc.stderr).toBe('');
      expect(tsc.status).toBe(0);
    });
  });
});
