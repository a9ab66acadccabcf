import { describe, expect, it } from 'vitest';
import { MemoryCache, easyWeChat4, nativeSchema, silenceper, wechatpy, wxJava, type EntryField, type KeySchema } from '../src/index.js';
import { Log } from '../src/logger.js';
import { GuardedStore } from '../src/store.js';
import { EntryStore } from '../src/token/entry-store.js';

const key = 'wechat:access_token:wx4202f388888ab123';

function setUp(schema: KeySchema = nativeSchema(), cache = new MemoryCache(), field: EntryField = 'access_token') {
  const log = new Log(false);
  const store = new GuardedStore(cache, 1000, log, 'wx4202f388888ab123');
  const entries = new EntryStore({ key, field, schema, label: field, appId: 'wx4202f388888ab123', logKey: key, log, now: Date.now });
  return { cache, store, entries };
}

const fetched = (value: string) => ({ value, expiresIn: 7200 });
const native = (value: string, fetchedAt: number) => JSON.stringify({ access_token: value, expires_at: fetchedAt + 7200, fetched_at: fetchedAt });

describe('writes never go back in time', () => {
  it('a token asked for earlier than the stored one is not written; the stored one is kept and returned', async () => {
    const { cache, store, entries } = setUp();
    const now = Math.floor(Date.now() / 1000);
    await cache.set(key, native('NEWER', now), 6900);
    const outcome = await entries.write(store, entries.encode(fetched('OLDER'), now - 20, 'web-1:1'));
    expect(outcome).toMatchObject({ stored: false, entry: { value: 'NEWER', fetchedAt: now } });
    expect(await cache.get(key)).toBe(native('NEWER', now));
  });

  it('a token asked for later replaces the stored one, with its own fetched_by', async () => {
    const { cache, store, entries } = setUp();
    const now = Math.floor(Date.now() / 1000);
    await cache.set(key, native('OLDER', now - 20), 6900);
    const outcome = await entries.write(store, entries.encode(fetched('NEWER'), now, 'web-1:1'));
    expect(outcome).toMatchObject({ stored: true, entry: { value: 'NEWER' } });
    expect(JSON.parse((await cache.get(key))!)).toEqual({ access_token: 'NEWER', expires_at: now + 7200, fetched_at: now, fetched_by: 'web-1:1' });
  });

  it('a stored token dated later but past its life (a peer that wrote expires_in as expires_at, its clock ahead) does not win: the fresh one is written', async () => {
    const { cache, store, entries } = setUp();
    const now = Math.floor(Date.now() / 1000);
    await cache.set(key, JSON.stringify({ access_token: 'PEER_TOKEN', expires_at: 7200, fetched_at: now + 5 }), 6900);
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'miss' });
    const outcome = await entries.write(store, entries.encode(fetched('FRESH'), now, 'web-1:1'));
    expect(outcome).toMatchObject({ stored: true, entry: { value: 'FRESH' } });
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'hit', entry: { value: 'FRESH' } });
  });

  it("a peer's fetched_at in other units beside a good expires_at is a token that lives: served, and kept over a fetch", async () => {
    const { cache, store, entries } = setUp();
    const now = Math.floor(Date.now() / 1000);
    await cache.set(key, JSON.stringify({ access_token: 'PEER_MICROSECONDS', expires_at: now + 7000, fetched_at: now * 1_000_000 }), 6900);
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'hit', entry: { value: 'PEER_MICROSECONDS' } });
    const outcome = await entries.write(store, entries.encode(fetched('FRESH'), now, 'web-1:1'));
    expect(outcome).toMatchObject({ stored: false, entry: { value: 'PEER_MICROSECONDS' } });
  });

  it('a newer token written between the read and the write wins: the compare-and-set fails, the next read keeps it', async () => {
    const inner = new MemoryCache();
    const now = Math.floor(Date.now() / 1000);
    let raced = false;
    const racing = Object.assign(inner, {
      compareAndSet: async (k: string, expected: string, value: string, ttl: number) => {
        if (!raced) {
          raced = true;
          // Another writer, holding a token asked for after ours, gets in first.
          await MemoryCache.prototype.set.call(inner, k, native('NEWEST', now + 5), 6900);
        }
        return MemoryCache.prototype.compareAndSet.call(inner, k, expected, value, ttl);
      },
    });
    const { store, entries } = setUp(nativeSchema(), racing);
    await inner.set(key, native('OLD', now - 100), 6900);
    const outcome = await entries.write(store, entries.encode(fetched('MINE'), now, 'web-1:1'));
    expect(raced).toBe(true);
    expect(outcome).toMatchObject({ stored: false, entry: { value: 'NEWEST' } });
    expect(await inner.get(key)).toBe(native('NEWEST', now + 5));
  });

  it('a writer whose lease ran out does not replace an entry whose age it cannot compare (a profile without fetched_at)', async () => {
    const { cache, store, entries } = setUp(wechatpy());
    await cache.set(key, '"NEWER"', 7200);
    const late = await entries.write(store, entries.encode(fetched('OLDER'), Math.floor(Date.now() / 1000) - 30, 'web-1:1'), { leaseHeld: false });
    expect(late).toMatchObject({ stored: false, entry: { value: 'NEWER' } });
    expect(await cache.get(key)).toBe('"NEWER"');
    // Still holding the lock, it is the writer of record.
    const held = await entries.write(store, entries.encode(fetched('MINE'), Math.floor(Date.now() / 1000), 'web-1:1'), { leaseHeld: true });
    expect(held.stored).toBe(true);
    expect(await cache.get(key)).toBe('"MINE"');
  });

  it("a writer whose lease ran out replaces a wechatpy ticket its companion says has ended, and keeps one it says lives", async () => {
    const { cache, store, entries } = setUp(wechatpy(), new MemoryCache(), 'ticket');
    const now = Math.floor(Date.now() / 1000);
    // As wechatpy writes a ticket: a JSON string, its life in `…_expires_at`.
    await cache.set(key, '"ENDED"', 86_400);
    await cache.set(`${key}_expires_at`, String(now - 60), 86_400);
    const late = await entries.write(store, entries.encode(fetched('MINE'), now, 'web-1:1'), { leaseHeld: false });
    expect(late).toMatchObject({ stored: true, entry: { value: 'MINE' } });
    expect(await cache.get(`${key}_expires_at`)).toBe(String(now + 7200));
    await cache.set(key, '"LIVES"', 86_400);
    await cache.set(`${key}_expires_at`, String(now + 3600), 86_400);
    const kept = await entries.write(store, entries.encode(fetched('LATER'), now, 'web-1:1'), { leaseHeld: false });
    expect(kept).toMatchObject({ stored: false, entry: { value: 'LIVES' } });
  });

  it('a writer that replaces no undated entry (a token offered back after an outage) keeps one it does not know older, and replaces one it names, or an unreadable one', async () => {
    const { cache, store, entries } = setUp(easyWeChat4());
    const now = Math.floor(Date.now() / 1000);
    const offer = () => entries.write(store, entries.encode(fetched('OFFERED'), now, 'web-1:1'), { rejected: (value) => value === 'KNOWN_OLDER', replacesUndated: false });
    await cache.set(key, entries.encode(fetched('UNDATED'), now, '').raw, 6900);
    expect(await offer()).toMatchObject({ stored: false, entry: { value: 'UNDATED' } });
    await cache.set(key, entries.encode(fetched('KNOWN_OLDER'), now, '').raw, 6900);
    expect(await offer()).toMatchObject({ stored: true, entry: { value: 'OFFERED' } });
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'hit', entry: { value: 'OFFERED' } });
    // An unreadable entry of a schema whose writers all take the lock (the native one) is replaced still.
    const native = setUp();
    await native.cache.set(key, '{"access_tok', 6900);
    const offered = native.entries.encode(fetched('OFFERED'), now, 'web-1:1');
    expect(await native.entries.write(native.store, offered, { replacesUndated: false })).toMatchObject({ stored: true });
    expect(await native.cache.get(key)).toBe(offered.raw);
  });

  it('a value in an encoding the schema recognises as another program\'s is never replaced: the fleet shares its token beside it', async () => {
    const { cache, store, entries } = setUp(easyWeChat4());
    const igbinary = '\u0000\u0000\u0000\u0002\u0014\u0002';
    await cache.set(key, igbinary, 600);
    const outcome = await entries.write(store, entries.encode(fetched('MINE'), Math.floor(Date.now() / 1000), 'web-1:1'));
    expect(outcome).toMatchObject({ stored: true, entry: { value: 'MINE' } });
    expect(await cache.get(key)).toBe(igbinary);
    expect(JSON.parse((await cache.get(`${key}:wxkit`))!)).toMatchObject({ access_token: 'MINE', fetched_by: 'web-1:1' });
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'hit', entry: { value: 'MINE' } });
  });

  it("a token shared beside another program's value lives by the TTL rule of the key it stands for (silenceper's stable key: expires_in - 300, not the classic - 1500)", async () => {
    const schema = silenceper();
    const stableKey = schema.accessTokenKey({ kind: 'official_account', appId: 'wx4202f388888ab123', endpoint: 'stable' });
    const log = new Log(false);
    const cache = new MemoryCache();
    const store = new GuardedStore(cache, 1000, log, 'wx4202f388888ab123');
    const entries = new EntryStore({ key: stableKey, field: 'access_token', schema, label: 'access_token', appId: 'wx4202f388888ab123', logKey: stableKey, log, now: Date.now });
    // Another program's value there: no plausible token (it holds a space).
    await cache.set(stableKey, 'not a token', 600);
    const now = Math.floor(Date.now() / 1000);
    // Fetched 6000 s ago: the stable key's rule keeps it 6900 s, as the TTL it is written with says.
    const fresh = entries.encode(fetched('BESIDE'), now - 6000, 'web-1:1');
    expect(fresh.ttlSeconds).toBe(6900);
    expect(await entries.write(store, fresh)).toMatchObject({ stored: true });
    expect(await cache.get(`${stableKey}:wxkit`)).toBeDefined();
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'hit', entry: { value: 'BESIDE' } });
  });

  it("a token shared beside another program's value is not served once the fleet wrote a newer one at the key itself (the other program's value went, and came back)", async () => {
    const { cache, store, entries } = setUp(easyWeChat4());
    const igbinary = '\u0000\u0000\u0000\u0002\u0014\u0002';
    const now = Math.floor(Date.now() / 1000);
    await cache.set(key, igbinary, 600);
    expect(await entries.write(store, entries.encode(fetched('BESIDE'), now - 60, 'web-1:1'))).toMatchObject({ stored: true });
    // The other program's value ran out: the fleet's next token is written at the key itself (on the
    // classic endpoint, its fetch ended the one beside).
    await cache.delete(key);
    expect(await entries.write(store, entries.encode(fetched('NEWER'), now, 'web-1:1'))).toMatchObject({ stored: true });
    // The other program writes its value again: what lies beside it is older than the fleet's last token.
    await cache.set(key, igbinary, 600);
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'miss', foreign: true });
  });

  it("a write at an empty key does not delete a newer token the fleet wrote beside another program's value that came back after its add", async () => {
    const inner = new MemoryCache();
    const igbinary = '\u0000\u0000\u0000\u0002\u0014\u0002';
    const now = Math.floor(Date.now() / 1000);
    let racing: (() => Promise<void>) | undefined;
    const cache = Object.assign(inner, {
      add: async (k: string, value: string, ttl: number) => {
        const added = await MemoryCache.prototype.add.call(inner, k, value, ttl);
        const race = k === key && added ? racing : undefined;
        if (race) racing = undefined;
        await race?.();
        return added;
      },
    });
    const { store, entries } = setUp(easyWeChat4(), cache);
    const other = setUp(easyWeChat4(), cache);
    // Between this writer's add and its clean-up, the other program writes its value again, and another
    // process of the fleet (a newer fetch) shares its token beside it.
    racing = async () => {
      await MemoryCache.prototype.set.call(inner, key, igbinary, 600);
      expect(await other.entries.write(other.store, other.entries.encode(fetched('NEWER'), now + 5, 'web-2:1'))).toMatchObject({ stored: true });
    };
    expect(await entries.write(store, entries.encode(fetched('OLDER'), now, 'web-1:1'))).toMatchObject({ stored: true });
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'hit', entry: { value: 'NEWER' } });
  });

  it('an absent entry is added, never blindly set: a writer that loses the add keeps the winner', async () => {
    const inner = new MemoryCache();
    const now = Math.floor(Date.now() / 1000);
    const racing = Object.assign(inner, {
      add: async (k: string, value: string, ttl: number) => {
        await MemoryCache.prototype.set.call(inner, k, native('FIRST', now + 1), 6900);
        return MemoryCache.prototype.add.call(inner, k, value, ttl);
      },
    });
    const { store, entries } = setUp(nativeSchema(), racing);
    const outcome = await entries.write(store, entries.encode(fetched('MINE'), now, 'web-1:1'));
    expect(outcome).toMatchObject({ stored: false, entry: { value: 'FIRST' } });
  });
});

describe('a format without an expiry, on a store whose TTL makes no sense', () => {
  it("reads a TTL of -1, 0 or NaN (an adapter handing over Redis's code for no expiry) as unknown: a hit until the entry disappears, not a miss per read", async () => {
    for (const answer of [-1, 0, Number.NaN]) {
      const cache = new MemoryCache();
      cache.ttlMs = async () => answer;
      const { store, entries } = setUp(wxJava(), cache);
      await cache.set(key, 'BARE_TOKEN_0123456789', 7000);
      expect(await entries.read(store, () => false)).toMatchObject({ kind: 'hit', entry: { value: 'BARE_TOKEN_0123456789' } });
    }
  });

  it("reads Redis's -2 (no such key: it went after the read) as a miss, as it reads undefined", async () => {
    for (const answer of [-2, undefined]) {
      const cache = new MemoryCache();
      cache.ttlMs = async () => answer;
      const { store, entries } = setUp(wxJava(), cache);
      await cache.set(key, 'BARE_TOKEN_0123456789', 7000);
      expect(await entries.read(store, () => false), String(answer)).toMatchObject({ kind: 'miss' });
    }
  });
});

describe('what a read serves', () => {
  it('an entry past its store life is a miss, though WeChat has not expired it (a store without TTL keeps it)', async () => {
    const { cache, store, entries } = setUp();
    const now = Math.floor(Date.now() / 1000);
    // Fetched 6950 s ago: the store life (7200 − 300 s) has passed, 250 s of WeChat's remain.
    await cache.set(key, native('STALE', now - 6950), 6900);
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'miss' });
  });

  it('an entry within 30 s of its expiry is a miss, even without a fetch time', async () => {
    const { cache, store, entries } = setUp();
    const now = Math.floor(Date.now() / 1000);
    await cache.set(key, JSON.stringify({ access_token: 'SOON', expires_at: now + 20 }), 20);
    expect(await entries.read(store, () => false)).toMatchObject({ kind: 'miss' });
  });
});

describe('a write after the key was read absent', () => {
  it('reads the key again on a store without atomic add: a token written meanwhile is not overwritten blindly', async () => {
    const inner = new MemoryCache();
    const withoutAdd = {
      get: (k: string) => inner.get(k),
      set: (k: string, value: string, ttl: number) => inner.set(k, value, ttl),
      delete: (k: string) => inner.delete(k),
      deleteIfEquals: (k: string, expected: string) => inner.deleteIfEquals(k, expected),
      compareAndSet: (k: string, expected: string, value: string, ttl: number) => inner.compareAndSet(k, expected, value, ttl),
    };
    const { store, entries } = setUp(nativeSchema(), withoutAdd as unknown as MemoryCache);
    const now = Math.floor(Date.now() / 1000);
    // Another host (a store without add gives no fleet-wide lock) wrote a newer token after our read.
    await inner.set(key, native('NEWER', now), 6900);
    const outcome = await entries.write(store, entries.encode(fetched('MINE'), now - 10, 'web-1:1'), { absent: true });
    expect(outcome).toMatchObject({ stored: false, entry: { value: 'NEWER' } });
    expect(await inner.get(key)).toBe(native('NEWER', now));
  });
});
