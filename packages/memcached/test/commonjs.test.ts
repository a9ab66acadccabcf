import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memcachedGet, startMemcached, type StoreServer } from '@wxkit/testing';

// The package ships a CJS build beside the ESM one; a CommonJS program gets `dist/index.cjs`, whose
// import of @keyv/memcache goes through the bundler's interop, not Node's. Both builds must make a
// cache that reaches the server.
const run = promisify(execFile);
const builds = {
  cjs: { file: fileURLToPath(new URL('../dist/index.cjs', import.meta.url)), load: (file: string) => `require(${JSON.stringify(file)})` },
  esm: { file: new URL('../dist/index.js', import.meta.url).href, load: (file: string) => `await import(${JSON.stringify(file)})` },
};

let memcached: StoreServer;
beforeAll(async () => {
  memcached = await startMemcached();
});
afterAll(async () => {
  await memcached?.stop();
});

describe('MemcachedCache from each build', () => {
  for (const [kind, build] of Object.entries(builds)) {
    it(`${kind}: a cache made from the string shorthand sets and reads on a real memcached`, async () => {
      const key = `wxkit-${kind}-${Math.random().toString(36).slice(2)}`;
      const program = [
        '(async () => {',
        `  const { MemcachedCache } = ${build.load(build.file)};`,
        `  const cache = new MemcachedCache(${JSON.stringify(memcached.url)});`,
        `  await cache.set(${JSON.stringify(key)}, 'value-1', 60);`,
        `  const read = await cache.get(${JSON.stringify(key)});`,
        '  await cache.close();',
        '  console.log(JSON.stringify({ read }));',
        '})();',
      ].join('\n');
      const { stdout, stderr } = await run(process.execPath, ['--input-type=commonjs', '-e', program], { timeout: 30_000 });
      expect(stderr).toBe('');
      expect(JSON.parse(stdout)).toEqual({ read: 'value-1' });
      expect(await memcachedGet(memcached.port, key)).toBe('value-1');
    });
  }
});
