import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfficialAccount, easyWeChat4, easyWeChat6, nodeEasyWeChat, type KeySchema, type Logger } from '@wxkit/core';
import { MemcachedCache, phpMemcachedFlags, type MemcachedCacheOptions } from '@wxkit/memcached';
import { startMemcached, startMockWeChat, type MockApp, type MockWeChat, type StoreServer } from '@wxkit/testing';
import { fixture, nodeMessage, start } from './helpers.js';

// EasyWeChat on Memcached, through the PHP cache stores that sit on php-memcached (Debian's, with its
// defaults): Laravel's MemcachedStore, which hands values to php-memcached as they are, and Symfony
// Cache's MemcachedAdapter (fixtures/php-memcached-peer.php), one real memcached shared with wxkit, the
// mock WeChat upstream. docs/key-schema.md says which of them share with which profile.

let mock: MockWeChat;
let memcached: StoreServer;
const caches: MemcachedCache[] = [];
beforeAll(async () => {
  [mock, memcached] = await Promise.all([startMockWeChat(), startMemcached()]);
});
afterAll(async () => {
  await Promise.all(caches.map((cache) => cache.close()));
  await Promise.all([mock?.close(), memcached?.stop()]);
});

async function peer(action: string, key: string, ...args: string[]): Promise<Record<string, unknown>> {
  const { code, out, err } = await start('php', [fixture('php-memcached-peer.php'), memcached.url, action, key, ...args]).done;
  expect(code, err).toBe(0);
  return JSON.parse(out) as Record<string, unknown>;
}

function recordingLogger(): Logger & { events: (string | undefined)[] } {
  const events: (string | undefined)[] = [];
  const record = (fields: unknown) => void events.push((fields as { event?: string } | undefined)?.event);
  return { events, debug: () => undefined, info: () => undefined, warn: record, error: record };
}

function node(app: MockApp, schema: KeySchema, logger: Logger | false = false, options: Partial<MemcachedCacheOptions> = {}) {
  const cache = new MemcachedCache({ servers: memcached.url, ...options });
  caches.push(cache);
  const client = new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, cache, logger, schema });
  return { client, key: schema.accessTokenKey({ kind: 'official_account', appId: app.appId, secret: app.secret, endpoint: 'classic' }) };
}

/** A token fetched by a client of its own (the one fetch the mock counts), as the peer's fetch. */
async function peerFetch(app: MockApp): Promise<string> {
  const other = new OfficialAccount({ appId: app.appId, secret: app.secret, baseUrl: mock.url, logger: false });
  try {
    return await other.accessToken.getToken();
  } finally {
    await other.close();
  }
}

describe("EasyWeChat 4 on Laravel's MemcachedStore (php-memcached serializes the array, flags 4)", () => {
  it('the peer stores its array; wxkit reads it, with no fetch of its own, and sends', async () => {
    const app = mock.createApp();
    const { client, key } = node(app, easyWeChat4({ store: 'laravel' }));
    const token = await peerFetch(app);
    expect(await peer('write-array', key, token, '7200')).toEqual({ ok: true });
    expect(await peer('flags', key)).toEqual({ flags: 4 });
    expect(await client.accessToken.getToken()).toBe(token);
    await client.templateMessage.send(nodeMessage);
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1, templateSends: 1, rejectedCalls: 0 });
  });

  it('wxkit fetches and stores with phpMemcachedFlags; the peer reads the array it expects, not a string', async () => {
    const app = mock.createApp();
    const { client, key } = node(app, easyWeChat4({ store: 'laravel' }), false, { flags: phpMemcachedFlags });
    const token = await client.accessToken.getToken();
    expect(await peer('flags', key)).toEqual({ flags: 4 });
    expect(await peer('read-token', key)).toEqual({ token, type: 'array' });
    // The protocol's own items (the lock, released by now, and any marker) stay strings.
    expect(await peer('flags', `${key}:lock`)).toEqual({ flags: null });
  });

  it('without the option wxkit writes flags 0, which php-memcached hands back as a string (the flags are the store\'s, not the profile\'s)', async () => {
    const app = mock.createApp();
    const { client, key } = node(app, easyWeChat4({ store: 'laravel' }));
    const token = await client.accessToken.getToken();
    expect(await peer('flags', key)).toEqual({ flags: 0 });
    expect(await peer('read-token', key)).toMatchObject({ type: 'string' });
    expect(token).toBeTruthy();
  });

  it('an array php-memcached compressed (over 2000 bytes, flags 0x10 set): never taken for a token, never overwritten', async () => {
    const app = mock.createApp();
    const logger = recordingLogger();
    const { client, key } = node(app, easyWeChat4({ store: 'laravel' }), logger);
    expect(await peer('write-array', key, 'PEERTOKEN', '7200', '2100')).toEqual({ ok: true });
    expect(Number((await peer('flags', key)).flags) & 0x10).toBe(0x10);
    expect(await client.accessToken.getToken()).not.toBe('PEERTOKEN');
    expect(logger.events).toContain('cache.foreign_entry');
    expect(await peer('read-token', key)).toEqual({ token: 'PEERTOKEN', type: 'array' });
  });
});

describe('EasyWeChat 6 on Memcached', () => {
  it("Laravel's MemcachedStore keeps the bare token: nodeEasyWeChat() shares it both ways, with no fetch of either side's", async () => {
    const app = mock.createApp();
    const { client, key } = node(app, nodeEasyWeChat());
    expect(key).toBe(easyWeChat6().accessTokenKey({ kind: 'official_account', appId: app.appId, secret: app.secret, endpoint: 'classic' }));
    const token = await peerFetch(app);
    expect(await peer('write-string', key, token, '7200')).toEqual({ ok: true });
    expect(await client.accessToken.getToken()).toBe(token);

    const later = mock.createApp();
    const other = node(later, nodeEasyWeChat());
    const fresh = await other.client.accessToken.getToken();
    expect(await peer('read-token', other.key)).toEqual({ token: fresh, type: 'string' });
    expect(await peer('flags', other.key)).toEqual({ flags: 0 });
    expect(mock.counters(app.appId)).toMatchObject({ tokenRequests: 1 });
    expect(mock.counters(later.appId)).toMatchObject({ tokenRequests: 1 });
  });
});
