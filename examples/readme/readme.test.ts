import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runChild } from '../child-process.js';

// The READMEs' snippets are what a new user pastes first; they must run and type-check.
const root = fileURLToPath(new URL('../..', import.meta.url));
const snippets = (file: string) =>
  [...readFileSync(join(root, file), 'utf8').matchAll(/```(ts|sh)\n([\s\S]*?)```/g)].map((m) => ({ lang: m[1]!, code: m[2]! }));
const blocks = snippets('README.md');
const packageReadmes = ['core', 'file', 'redis', 'memcached', 'keyv', 'cli'].map((name) => snippets(`packages/${name}/README.md`));
const tsBlocks = [...blocks, ...packageReadmes.flat()]
  .filter((block) => block.lang === 'ts')
  .map((block) => block.code);
// The docs' snippets are fragments of a larger program (an Express app, a database): each type-checks
// with what it uses and does not declare itself declared first.
const docBlocks = ['docs/key-schema.md', 'docs/open-platform.md'].flatMap((file) =>
  snippets(file)
    .filter((block) => block.lang === 'ts')
    .map((block) => ({ file, code: block.code })),
);
/** qs's ParsedQs as @types/qs declares it: Express's `req.query`, which the docs pass as it is. */
const EXPRESS = `interface ParsedQs { [key: string]: undefined | string | ParsedQs | (string | ParsedQs)[] }
interface Request { query: ParsedQs; body: string }
interface Response { send(body: string): void; end(): void; redirect(url: string): void; status(code: number): Response }
declare const express: { text(options: { type: string }): (req: Request, res: Response, next: () => void) => void };`;
const FREE: Record<string, string> = {
  app: `${EXPRESS}\ntype Handler = (req: Request, res: Response, next: () => void) => unknown;\ndeclare const app: { post(path: string, ...handlers: Handler[]): void; get(path: string, ...handlers: Handler[]): void };`,
  db: 'declare const db: { oneOrNone(sql: string, params: unknown[]): Promise<{ secret: string } | null> };',
  OpenPlatform: "import { OpenPlatform } from '@wxkit/core';",
  wxJava: "import { wxJava } from '@wxkit/core';",
  redis: "declare const redis: import('@wxkit/core').TokenCache;",
  ...Object.fromEntries(['appId', 'secret', 'token', 'encodingAESKey', 'authCode', 'touser', 'template_id', 'pageUrl', 'jsCode'].map((name) => [name, `declare const ${name}: string;`])),
  data: 'declare const data: Record<string, { value: string }>;',
};
// @wxkit/testing's snippets: the conformance suite's, written for the reader's own store, names it and
// where it is built.
const TESTING_FREE: Record<string, string> = {
  MyCache: `import type { TokenCache as MyCacheContract } from '@wxkit/core';
declare class MyCache implements MyCacheContract {
  constructor(url: string);
  get(key: string): Promise<string | undefined>;
  set(key: string, value: string, ttlSeconds: number): Promise<void>;
  delete(key: string): Promise<void>;
}`,
  url: 'declare const url: string;',
  fileUrlOfMyBuild: 'declare const fileUrlOfMyBuild: string;',
};
const testingBlocks = snippets('packages/testing/README.md').filter((block) => block.lang === 'ts');
/** The declarations `code` needs: the names it uses that it neither imports nor declares. */
function preludeOf(code: string, free: Record<string, string> = FREE): string {
  const declared = (name: string) =>
    new RegExp(`\\b(const|let|var|function|class)\\s+(\\{[^}]*\\b${name}\\b[^}]*\\}|${name}\\b)`).test(code) ||
    new RegExp(`import\\s[^;]*\\b${name}\\b[^;]*\\sfrom`).test(code);
  return Object.entries(free)
    .filter(([name]) => new RegExp(`\\b${name}\\b`).test(code) && !declared(name))
    .map(([, declaration]) => declaration)
    .join('\n');
}
// Inside the repository, so `@wxkit/*` resolve through the root node_modules as they do for a user.
const scratch = join(root, 'node_modules', '.cache', 'wxkit', 'readme');

describe('README', () => {
  it('the quick start is two commands, the demo and the tests, with the pinned pnpm', () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { packageManager: string };
    const quick = blocks.find((block) => block.lang === 'sh')!.code.trim().split('\n');
    expect(quick.map((line) => line.replace(/\s+#.*$/, ''))).toEqual([`npx -y ${pkg.packageManager} demo`, `npx -y ${pkg.packageManager} test`]);
    expect(readFileSync(join(root, '.ci', 'run'), 'utf8')).toContain(`npx -y ${pkg.packageManager} test`);
  });

  it('the “try it” snippet runs as a plain .mjs file and sends a message', async () => {
    const snippet = tsBlocks.find((code) => code.includes('startMockWeChat'));
    expect(snippet).toBeDefined();
    mkdirSync(scratch, { recursive: true });
    const file = join(scratch, 'try.mjs');
    writeFileSync(file, snippet!);
    const run = await runChild(process.execPath, [file], { cwd: scratch, timeoutMs: 30_000 });
    rmSync(join(scratch, '.wechat-cache'), { recursive: true, force: true });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/errcode: 0, errmsg: 'ok', msgid: '\d{19}'/);
  });

  it('every TypeScript snippet type-checks against the built packages', async () => {
    mkdirSync(scratch, { recursive: true });
    const files = tsBlocks.map((code, i) => {
      const file = join(scratch, `snippet-${i}.mts`);
      // Fragments use `app` from the prose around them; every other name they use, they declare.
      const prelude = /\bconst app\b/.test(code) ? '' : "declare const app: import('@wxkit/core').OfficialAccount;";
      writeFileSync(file, `${prelude}\n${code}\nexport {};\n`);
      return file;
    });
    for (const [i, { code }] of docBlocks.entries()) {
      const file = join(scratch, `doc-snippet-${i}.mts`);
      writeFileSync(file, `${preludeOf(code)}\n${code}\nexport {};\n`);
      files.push(file);
    }
    for (const [i, { code }] of testingBlocks.entries()) {
      const file = join(scratch, `testing-snippet-${i}.mts`);
      writeFileSync(file, `${preludeOf(code, TESTING_FREE)}\n${code}\nexport {};\n`);
      files.push(file);
    }
    writeFileSync(
      join(scratch, 'tsconfig.json'),
      JSON.stringify({
        extends: join(root, 'tsconfig.base.json'),
        compilerOptions: { noEmit: true, rootDir: scratch, noUnusedLocals: false },
        files,
      }),
    );
    const tsc = await runChild(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(scratch, 'tsconfig.json')]);
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.status).toBe(0);
    expect(files.length).toBeGreaterThanOrEqual(4);
    expect(docBlocks.length).toBeGreaterThanOrEqual(4);
    expect(testingBlocks.length).toBeGreaterThanOrEqual(2);
  });
});
