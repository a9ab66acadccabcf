import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import Keyv from 'keyv';
import KeyvSqlite from '@keyv/sqlite';
import { describeTokenCache, describeTokenSharing } from '@wxkit/testing/suite';
import { CacheError } from '@wxkit/core';
import { KeyvCache } from '../src/index.js';

// @keyv/sqlite on a database file of this run, shared by the processes of the cross-process tests.
// Every connection waits for the file's write lock (busyTimeout) instead of failing with SQLITE_BUSY.
const dir = mkdtempSync(join(tmpdir(), 'wxkit-keyv-sqlite-'));
const uri = `sqlite://${join(dir, 'tokens.sqlite')}`;
const fixtures = new URL('./fixtures/sql-caches.mjs', import.meta.url).href;
const newTable = () => `wxkit_keyv_${randomBytes(5).toString('hex')}`;
const options = (table: string) => ({ uri, table, busyTimeout: 10_000 });

const stores: KeyvSqlite[] = [];
const store = (table: string) => {
  const created = new KeyvSqlite(options(table));
  stores.push(created);
  return created;
};
afterAll(async () => {
  await Promise.all(stores.map((created) => created.disconnect()));
  rmSync(dir, { recursive: true, force: true });
});

const suiteTable = newTable();
describeTokenCache('KeyvCache on @keyv/sqlite', {
  create: () => new KeyvCache(store(suiteTable)),
  shared: { module: fixtures, export: 'SqliteKeyvCache', args: [options(suiteTable)] },
  supports: { add: true, deleteIfEquals: true, compareAndSet: true, ttl: true },
});

describeTokenSharing('KeyvCache on @keyv/sqlite', {
  store: { module: fixtures, export: 'SqliteKeyvCache', args: [options(newTable())] },
});

describe('KeyvCache on @keyv/sqlite', () => {
  it('adds the expires column to the table the adapter made, and the adapter reads the raw bytes', async () => {
    const table = newTable();
    const adapter = store(table);
    const columns = async () => ((await adapter.query(`PRAGMA table_info(${table})`)) as { name: string }[]).map((column) => column.name);
    expect(await columns()).toEqual(['key', 'value']);
    const cache = new KeyvCache(adapter);
    const value = '{"access_token":"86_abc","expires_at":1764003600,"fetched_at":1763996400}';
    expect(await cache.add!('wechat:access_token:wx1', value, 60)).toBe(true);
    expect(await columns()).toEqual(['key', 'value', 'expires']);
    expect(await adapter.get('wechat:access_token:wx1')).toBe(value);
  });

  it('a table dropped mid-run and made again without the expires column gets the column again', async () => {
    const table = newTable();
    const adapter = store(table);
    const cache = new KeyvCache(adapter);
    await cache.set('k', 'v', 60); // the column is there, and checked
    await adapter.query(`DROP TABLE ${table}`);
    await expect(cache.get('k')).rejects.toBeInstanceOf(CacheError);
    // As @keyv/sqlite makes it, in any process that starts meanwhile.
    await adapter.query(`CREATE TABLE ${table} (key VARCHAR(255) PRIMARY KEY, value TEXT)`);
    expect(await cache.add!('k', 'w', 60)).toBe(true);
    expect(await cache.get('k')).toBe('w');
  });

  it('a row whose expiry has passed is absent to get, deleteIfEquals and compareAndSet, and add takes it over', async () => {
    const table = newTable();
    const adapter = store(table);
    const cache = new KeyvCache(adapter);
    await cache.set('k', 'old', 60);
    await adapter.query(`UPDATE ${table} SET expires = expires - 61000 WHERE key = ?`, ['k']);
    expect(await cache.get('k')).toBeUndefined();
    expect(await cache.deleteIfEquals!('k', 'old')).toBe(false);
    expect(await cache.compareAndSet!('k', 'old', 'new', 60)).toBe(false);
    expect(await cache.add!('k', 'mine', 60)).toBe(true);
    expect(await cache.get('k')).toBe('mine');
  });

  it("through a subclass of Keyv (an application's own), it still writes the raw bytes and keeps its atomic operations", async () => {
    class AppCache extends Keyv {}
    const table = newTable();
    const adapter = store(table);
    const cache = new KeyvCache(new AppCache({ store: adapter, namespace: undefined }));
    expect(typeof cache.add).toBe('function');
    const value = '{"access_token":"86_abc","expires_at":1764003600,"fetched_at":1763996400}';
    await cache.set('wechat:access_token:wx1', value, 60);
    // No `{"value":…,"expires":…}` envelope around it: what a peer in another language reads.
    expect(await adapter.get('wechat:access_token:wx1')).toBe(value);
  });

  it('a database that cannot be opened ends no process: the calls fail with a CacheError that says the store will not try again', async () => {
    const unhandled: unknown[] = [];
    const record = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', record);
    try {
      // The adapter opens its file when made and keeps the failure: a rejection nobody holds until a call.
      const adapter = new KeyvSqlite(`sqlite://${join(dir, 'no-such-directory', 'tokens.sqlite')}`);
      const failed = once(adapter, 'error');
      const cache = new KeyvCache(adapter);
      await failed;
      await new Promise(setImmediate); // the turn in which Node reports a rejection that nobody holds
      expect(unhandled).toEqual([]);
      const error = await cache.get('k').catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(CacheError);
      expect(error).toMatchObject({ cause: { code: 'SQLITE_CANTOPEN' } });
      expect((error as Error).message).toMatch(/could not connect or make its table when it was made, and it does not try again/);
    } finally {
      process.off('unhandledRejection', record);
    }
  });

  it('a file another connection holds locked (no busyTimeout: SQLITE_BUSY) fails every call with a CacheError of reason timeout: never a miss, never a lock held by another', async () => {
    const file = join(dir, `busy-${randomBytes(4).toString('hex')}.sqlite`);
    const adapter = new KeyvSqlite({ uri: `sqlite://${file}`, table: newTable() });
    stores.push(adapter);
    const cache = new KeyvCache(adapter);
    await cache.set('k', 'v', 100);
    // sqlite3's shell holds the file's write lock until it reads ROLLBACK.
    const holder = spawn('sqlite3', [file], { stdio: ['pipe', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => {
      holder.stdout.on('data', (data) => String(data).includes('locked') && resolve());
      holder.stdin.write("BEGIN EXCLUSIVE; SELECT 'locked';\n");
    });
    try {
      const calls: Promise<unknown>[] = [cache.get('k'), cache.add!('k:lock', 'me', 10), cache.set('k', 'w', 10), cache.compareAndSet!('k', 'v', 'w', 10), cache.deleteIfEquals!('k', 'v')];
      const outcomes = await Promise.all(calls.map((call) => call.then((value) => ({ resolved: value }), (caught: unknown) => caught)));
      for (const error of outcomes) {
        expect(error).toBeInstanceOf(CacheError);
        expect(error).toMatchObject({ reason: 'timeout', cause: { code: 'SQLITE_BUSY' } });
        expect((error as Error).message).toMatch(/busyTimeout/);
      }
    } finally {
      holder.stdin.end('ROLLBACK;\n');
      await once(holder, 'exit');
    }
    expect(await cache.get('k')).toBe('v');
  });
});
