import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The READMEs' snippets are what a new user pastes first; they must run and type-check.
const root = fileURLToPath(new URL('../..', import.meta.url));
const snippets = (file: string) =>
  [...readFileSync(join(root, file), 'utf8').matchAll(/```(ts|sh)\n([\s\S]*?)```/g)].map((m) => ({ lang: m[1]!, code: m[2]! }));
const blocks = snippets('README.md');
const packageReadmes = ['core', 'file', 'redis', 'memcached', 'keyv', 'cli'].map((name) => snippets(`packages/${name}/README.md`));
const tsBlocks = [...blocks, ...packageReadmes.flat()]
  .filter((block) => block.lang === 'ts')
  .map((block) => block.code);
// Inside the repository, so `@wxkit/*` resolve through the root node_modules as they do for a user.
const scratch = join(root, 'node_modules', '.cache', 'wxkit', 'readme');

describe('README', () => {
  it('the quick start is two commands, the demo and the tests, with the pinned pnpm', () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { packageManager: string };
    const quick = blocks.find((block) => block.lang === 'sh')!.code.trim().split('\n');
    expect(quick.map((line) => line.replace(/\s+#.*$/, ''))).toEqual([`npx -y ${pkg.packageManager} demo`, `npx -y ${pkg.packageManager} test`]);
    expect(readFileSync(join(root, '.ci', 'run'), 'utf8')).toContain(`npx -y ${pkg.packageManager} test`);
  });

  it('the “try it” snippet runs as a plain .mjs file and sends a message', () => {
    const snippet = tsBlocks.find((code) => code.includes('startMockWeChat'));
    expect(snippet).toBeDefined();
    mkdirSync(scratch, { recursive: true });
    const file = join(scratch, 'try.mjs');
    writeFileSync(file, snippet!);
    const run = spawnSync(process.execPath, [file], { cwd: scratch, encoding: 'utf8', timeout: 30_000 });
    rmSync(join(scratch, '.wechat-cache'), { recursive: true, force: true });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/errcode: 0, errmsg: 'ok', msgid: '\d{19}'/);
  });

  it('every TypeScript snippet type-checks against the built packages', () => {
    mkdirSync(scratch, { recursive: true });
    const files = tsBlocks.map((code, i) => {
      const file = join(scratch, `snippet-${i}.mts`);
      // Fragments use `app`, `openid` or `pageUrl` from the prose around them; declare what they do not.
      const prelude = [
        /\bconst app\b/.test(code) ? '' : "declare const app: import('@wxkit/core').OfficialAccount;",
        'declare const openid: string;',
        'declare const pageUrl: string;',
        'declare const jsCode: string;',
      ].join('\n');
      writeFileSync(file, `${prelude}\n${code}\nexport {};\n`);
      return file;
    });
    writeFileSync(
      join(scratch, 'tsconfig.json'),
      JSON.stringify({
        extends: join(root, 'tsconfig.base.json'),
        compilerOptions: { noEmit: true, rootDir: scratch, noUnusedLocals: false },
        files,
      }),
    );
    const tsc = spawnSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(scratch, 'tsconfig.json')], {
      encoding: 'utf8',
    });
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.status).toBe(0);
    expect(files.length).toBeGreaterThanOrEqual(4);
  });
});
