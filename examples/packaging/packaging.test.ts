import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

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

function sh(command: string, args: string[], options: SpawnSyncOptions = {}) {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...options });
  if (result.error) throw result.error;
  return { status: result.status, stdout: String(result.stdout), stderr: String(result.stderr) };
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

function npmInstall(specs: string[]): void {
  const run = sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', ...specs], { cwd: scratch, env: userEnv() });
  if (run.status !== 0) throw new Error(`npm install failed (exit ${run.status}):\n${run.stdout}\n${run.stderr}`);
}

function node(file: string) {
  return sh(process.execPath, [file], { cwd: scratch, env: userEnv(), timeout: 60_000 });
}

beforeAll(() => {
  scratch = realpathSync(mkdtempSync(join(tmpdir(), 'wxkit-scratch-')));
  tarballs = join(scratch, 'tarballs');
  const [command, ...prefix] = pnpm();
  const pack = sh(command!, [...prefix, '-r', '--filter=./packages/*', 'pack', '--pack-destination', tarballs], { cwd: root });
  if (pack.status !== 0) throw new Error(`pnpm pack failed (exit ${pack.status}):\n${pack.stdout}\n${pack.stderr}`);
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'wxkit-scratch', version: '1.0.0', private: true }, null, 2));
  // The README's install line, each package name standing for its tarball; then the compiler and the
  // newest Node typings, as a new TypeScript project has them.
  npmInstall([...installed.map((name) => (names.includes(name) ? tarball(name) : name)), 'typescript@5.9.3', '@types/node@latest']);
}, 240_000);

afterAll(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('the packages, packed by pnpm and installed by npm outside the workspace', () => {
  it('every tarball names real version ranges, never workspace:', () => {
    for (const name of names) {
      const manifest = sh('tar', ['-xOzf', tarball(name), 'package/package.json']);
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

  it("the README's first snippet, as shown, sends a message through the mock server", () => {
    writeFileSync(join(scratch, 'try.mjs'), snippet);
    const run = node(join(scratch, 'try.mjs'));
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/errcode: 0, errmsg: 'ok', msgid: '\d{19}'/);
  });

  describe('with every package installed', () => {
    beforeAll(() => {
      npmInstall(names.filter((name) => !installed.includes(name)).map(tarball));
    }, 240_000);

    // Each package's main entry, and the subpath the wxkit packages share helpers through.
    const entries = [...names, '@wxkit/core/internal'];

    it('each package loads from ESM and from CJS, with the same exports, from the scratch project', () => {
      const report = (kind: 'esm' | 'cjs') => {
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
        const run = node(file);
        expect(run.stderr).toBe('');
        expect(run.status).toBe(0);
        return JSON.parse(run.stdout) as Record<string, { keys: string[]; file: string }>;
      };
      const esm = report('esm');
      const cjs = report('cjs');
      for (const name of entries) {
        expect(esm[name]!.file.startsWith(join(scratch, 'node_modules'))).toBe(true);
        expect(cjs[name]!.file.startsWith(join(scratch, 'node_modules'))).toBe(true);
        expect(esm[name]!.file).toMatch(/\.js$/);
        expect(cjs[name]!.file).toMatch(/\.cjs$/);
        expect(esm[name]!.keys.length).toBeGreaterThan(0);
        expect(esm[name]!.keys).toEqual(cjs[name]!.keys);
      }
    });

    it("core's public types declare none of its internals", () => {
      const types = readFileSync(join(scratch, 'node_modules', '@wxkit', 'core', 'dist', 'index.d.ts'), 'utf8');
      expect(types).toMatch(/declare class OfficialAccount\b/);
      for (const internal of ['ClientCore', 'TokenManager', 'GuardedStore', 'HttpClient', 'Log', 'EntryStore', 'StoreTiers']) {
        expect(types).not.toMatch(new RegExp(`\\b(class|interface|type) ${internal}\\b`));
      }
    });

    it('a strict TypeScript project compiles against the shipped types, ESM and CJS, without skipLibCheck', () => {
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
      const tsc = sh(process.execPath, [join(scratch, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', scratch], { cwd: scratch, env: userEnv() });
      expect(tsc.stdout + tsc.stderr).toBe('');
      expect(tsc.status).toBe(0);
    });
  });
});
