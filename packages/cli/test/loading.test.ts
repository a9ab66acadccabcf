import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
