import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memcachedGet, startMemcached, type StoreServer } from '@wxkit/testing';
import { describeStore, memcachedOptions, openStore } from '../src/stores.js';

// --store memcached://… as the CLI's usage and the README write it: several servers, and SASL
// credentials in the URL's user part.
let servers: StoreServer[] = [];
beforeAll(async () => {
  servers = await Promise.all([startMemcached(), startMemcached()]);
});
afterAll(async () => {
  await Promise.all(servers.map((server) => server.stop()));
});

describe('openStore(memcached://…)', () => {
  it('takes several servers, host:port,host:port, and spreads the keys over them', async () => {
    const cache = await openStore(`memcached://${servers.map((server) => server.url).join(',')}`);
    const keys = Array.from({ length: 20 }, (_, i) => `wxkit-stores:${i}`);
    await Promise.all(keys.map((key) => cache.set(key, `v-${key}`, 60)));
    for (const key of keys) expect(await cache.get(key)).toBe(`v-${key}`);
    const held = await Promise.all(servers.map(async (server) => (await Promise.all(keys.map((key) => memcachedGet(server.port, key)))).filter(Boolean).length));
    expect(held.every((count) => count > 0)).toBe(true);
    expect(held[0]! + held[1]!).toBe(keys.length);
    await cache.close?.();
  });

  it('hands the SASL credentials of the user part to the store, decoded, for every server', () => {
    expect(memcachedOptions('memcached://wechat:p%40ss%3Aword@h1:11211,h2:11211')).toEqual({ servers: 'h1:11211,h2:11211', username: 'wechat', password: 'p@ss:word' });
    expect(memcachedOptions('MEMCACHED://wechat:pw:with:colons@h1:11211')).toEqual({ servers: 'h1:11211', username: 'wechat', password: 'pw:with:colons' });
    expect(memcachedOptions('memcached://h1:11211/')).toEqual({ servers: 'h1:11211/' });
    // Per-server credentials, or a raw @, would be read as another host or password: refused, never echoed.
    for (const url of ['memcached://u:first-secret@h1:11211,u:second-secret@h2:11211', 'memcached://u:raw@secret@h1:11211']) {
      let error: unknown;
      try {
        memcachedOptions(url);
      } catch (caught) {
        error = caught;
      }
      expect(error, url).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'store' });
      expect((error as Error).message).not.toMatch(/secret/);
    }
    expect(describeStore('memcached://u:raw@secret@h1:11211')).toBe('memcached://u:***@h1:11211');
  });

  it('takes SASL credentials in the user part, percent-encoded, and never shows the password', async () => {
    const url = `memcached://wechat:p%40ss%3Aword@${servers[0]!.url},${servers[1]!.url}`;
    const cache = await openStore(url);
    expect(describeStore(url)).toBe(`memcached://wechat:***@${servers[0]!.url},${servers[1]!.url}`);
    await cache.close?.();
    let error: unknown;
    try {
      await openStore('memcached://wechat:%E0%A4%A@127.0.0.1:11211');
    } catch (caught) {
      error = caught;
    }
    expect(error).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'store' });
    expect((error as Error).message).not.toContain('%E0%A4%A');
  });
});

describe('openStore(file:…)', () => {
  it('takes an absolute directory only: a relative or empty path is refused, not read from the root directory', async () => {
    // `file:./tokens` is /tokens to a URL parser, and `file://` is /: a token fetched there is shared with nobody.
    for (const url of ['file:./tokens', 'file:tokens', 'file://', 'FILE://']) {
      let error: unknown;
      try {
        await openStore(url);
      } catch (caught) {
        error = caught;
      }
      expect(error, url).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'store' });
      expect((error as Error).message, url).toContain('file:///var/lib/wechat');
    }
    for (const url of ['file:///tmp/wxkit-stores', 'file://localhost/tmp/wxkit-stores', 'file:/tmp/wxkit-stores', 'file:///']) await expect(openStore(url), url).resolves.toBeDefined();
  });
});
