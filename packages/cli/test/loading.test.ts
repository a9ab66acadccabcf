import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { bin } from './run-cli.js';

// The command loads what it runs: node-redis (400 files) for a redis:// store, memjs for memcached://,
// prom-client, pino and all of undici for serve. `wxkit --help` loaded every one of them.
const dir = mkdtempSync(join(tmpdir(), 'wxkit-loading-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// Preloaded into the command's process: at its exit, the CommonJS files it loaded (every package
// below is CommonJS, whether imported or required), by package.
const hook = join(dir, 'loaded.cjs');
writeFileSync(
  hook,
  `process.on('exit', () => {
    const names = new Set();
    for (const file of Object.keys(require.cache)) {
      const match = /node_modules\\/(?:\\.pnpm\\/[^/]+\\/node_modules\\/)?((?:@[^/]+\\/)?[^/]+)\\/(.*)$/.exec(file);
      if (match) names.add(match[2] === 'index.js' ? match[1] + '/index.js' : match[1]);
    }
    require('node:fs').writeFileSync(process.env.WXKIT_LOADED, JSON.stringify([...names]));
  });`,
);

function loadedBy(args: string[]): { code: number | null; loaded: string[] } {
  const out = join(dir, `loaded-${args.join('-').replace(/\W+/g, '_')}.json`);
  const run = spawnSync(process.execPath, ['--require', hook, bin, ...args], {
    encoding: 'utf8',
    env: { ...process.env, WXKIT_LOADED: out, WECHAT_APPID: '', WECHAT_SECRET: '' },
  });
  return { code: run.status, loaded: JSON.parse(readFileSync(out, 'utf8')) as string[] };
}

const HEAVY = ['@redis/client', 'memjs', 'prom-client', 'pino', 'undici/index.js'];

describe('what a command loads', () => {
  it('--help and --version: no store adapter, no metrics, logger or HTTP client', () => {
    for (const args of [['--help'], ['--version']]) {
      const { code, loaded } = loadedBy(args);
      expect(code, args.join(' ')).toBe(0);
      expect(loaded.filter((name) => HEAVY.includes(name)), args.join(' ')).toEqual([]);
    }
  });

  it('a token command loads the adapter its --store names, and no other', () => {
    // Nothing listens on port 1: the store is down (exit 3), after its adapter was loaded to find that out.
    const redis = loadedBy(['token', 'inspect', '--store', 'redis://127.0.0.1:1', '--app', 'oa:wx1']);
    expect(redis.code).toBe(3);
    expect(redis.loaded.filter((name) => HEAVY.includes(name))).toEqual(['@redis/client']);
    const memcached = loadedBy(['token', 'inspect', '--store', 'memcached://127.0.0.1:1', '--app', 'oa:wx1']);
    expect(memcached.code).toBe(3);
    expect(memcached.loaded.filter((name) => HEAVY.includes(name))).toEqual(['memjs']);
    const file = loadedBy(['token', 'inspect', '--store', `file://${dir}`, '--app', 'oa:wx1']);
    expect(file.code).toBe(5);
    expect(file.loaded.filter((name) => HEAVY.includes(name))).toEqual([]);
  });

  it('serve loads its metrics, its logger and undici', () => {
    // Refused for want of a config file, after the command's own module was loaded.
    const { code, loaded } = loadedBy(['serve', '--store', `file://${dir}`, '--config', join(dir, 'none.json')]);
    expect(code).toBe(7);
    expect(loaded).toEqual(expect.arrayContaining(['prom-client', 'pino', 'undici/index.js']));
  });
});

describe("the package's two builds", () => {
  // The ESM build is split into chunks (the binary loads what it runs), the CommonJS one is not: both
  // must start the service. A split CommonJS build failed here (the metrics' fields built out of order).
  const config = join(dir, 'serve.json');
  writeFileSync(config, JSON.stringify({ keysEnv: 'LOADING_KEYS', apps: [{ app: 'oa:wx0123456789abcdef', secretEnv: 'LOADING_SECRET' }], baseUrl: 'http://127.0.0.1:1' }));

  /** Runs `main(['serve', …])` of a build in a process of its own; stopped by SIGTERM once it listens. */
  function serve(format: 'esm' | 'cjs'): Promise<{ code: number | null; out: string }> {
    const built = fileURLToPath(new URL(`../dist/index.${format === 'esm' ? 'js' : 'cjs'}`, import.meta.url));
    const load = format === 'esm' ? `import(${JSON.stringify(built)})` : `Promise.resolve(require(${JSON.stringify(built)}))`;
    const args = JSON.stringify(['serve', '--store', `file://${join(dir, 'store')}`, '--config', config, '--port', '0']);
    const child = spawn(process.execPath, ['-e', `${load}.then(({ main }) => main(${args})).then((code) => (process.exitCode = code));`], {
      env: { ...process.env, LOADING_KEYS: 'loading-test-key-0123456789', LOADING_SECRET: 'secret', WXKIT_STORE: '' },
    });
    let out = '';
    // One signal: a second one ends the service at once, by design.
    let signalled = false;
    const seen = (chunk: Buffer) => {
      out += chunk.toString();
      if (!signalled && out.includes('serve.listening')) signalled = child.kill('SIGTERM');
    };
    child.stdout.on('data', seen);
    child.stderr.on('data', seen);
    return new Promise((resolve) => child.on('close', (code) => resolve({ code, out })));
  }

  it.each(['esm', 'cjs'] as const)("%s: main(['serve', …]) listens, and stops with exit 0 on SIGTERM", async (format) => {
    const { code, out } = await serve(format);
    expect(out).toContain('serve.listening');
    expect(code, out).toBe(0);
  });
});
