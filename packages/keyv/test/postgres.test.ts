import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Keyv from 'keyv';
import KeyvPostgres from '@keyv/postgres';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { describeTokenCache, describeTokenSharing } from '@wxkit/testing/suite';
import { OfficialAccount } from '@wxkit/core';
import { KeyvCache } from '../src/index.js';
import { refusedWritesKeepTokenOut } from './helpers.js';

// @keyv/postgres on the machine's PostgreSQL (127.0.0.1:5432, database test, trust auth). Every table
// is named at random for this run, so runs never meet, and dropped at the end.
const POSTGRES = 'postgresql://postgres@127.0.0.1:5432/test';
const fixtures = new URL('./fixtures/sql-caches.mjs', import.meta.url).href;
const tables: string[] = [];
const newTable = () => {
  const table = `wxkit_keyv_${randomBytes(5).toString('hex')}`;
  tables.push(table);
  return table;
};
const psql = (sql: string) => {
  const run = spawnSync('psql', [POSTGRES, '-v', 'ON_ERROR_STOP=1', '-Atc', sql], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`psql failed: ${run.stderr}`);
  return run.stdout.trim();
};

const stores: KeyvPostgres[] = [];
const store = (table: string) => {
  const created = new KeyvPostgres({ uri: POSTGRES, table });
  stores.push(created);
  return created;
};
let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  // Every store of this file shares the adapter's one pool for the URI: end it once.
  await stores[0]?.disconnect();
  if (tables.length > 0) psql(tables.map((table) => `DROP TABLE IF EXISTS public.${table};`).join(' '));
  await mock?.close();
});

const suiteTable = newTable();
describeTokenCache('KeyvCache on @keyv/postgres', {
  create: () => new KeyvCache(store(suiteTable)),
  shared: { module: fixtures, export: 'PostgresKeyvCache', args: [{ uri: POSTGRES, table: suiteTable }] },
  supports: { add: true, deleteIfEquals: true, compareAndSet: true, ttl: true },
  textStore: true,
  rawBytes: async (key) => {
    const hex = psql(`SELECT encode(convert_to(value, 'UTF8'), 'hex') FROM public.${suiteTable} WHERE key = '${key}'`);
    return hex === '' ? undefined : Buffer.from(hex, 'hex');
  },
});

describeTokenSharing('KeyvCache on @keyv/postgres', {
  store: { module: fixtures, export: 'PostgresKeyvCache', args: [{ uri: POSTGRES, table: newTable() }] },
});

describe('KeyvCache on @keyv/postgres', () => {
  it('writes raw bytes, readable with plain SQL, and keeps the expiry in the expires column', async () => {
    const table = newTable();
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new KeyvCache(store(table)), logger: false });
    const token = await app.accessToken.getToken();
    const [value, left] = psql(
      `SELECT value, expires - (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint FROM public.${table} WHERE key = 'wechat:stable_access_token:${appId}'`,
    ).split('|');
    expect(value).toMatch(new RegExp(`^\\{"access_token":"${token}","expires_at":\\d{10},"fetched_at":\\d{10},"fetched_by":"[^"]+:${process.pid}"\\}$`));
    // Store TTL = 7200 s - 300 s margin, counted by the database's clock.
    expect(Number(left)).toBeGreaterThan(6_890_000);
    expect(Number(left)).toBeLessThanOrEqual(6_900_000);
    // The lock was taken and released: nothing is left under it.
    // getToken() does not wait for the lock's release; close() does.
    await app.close();
    expect(psql(`SELECT count(*) FROM public.${table} WHERE key = 'wechat:stable_access_token:${appId}:lock'`)).toBe('0');
  });

  it('adds the expires column to a table the adapter made without one, and the adapter keeps working on it', async () => {
    const table = newTable();
    const adapter = store(table);
    await adapter.set('written-by-keyv', 'plain');
    const columns = () => psql(`SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = '${table}'`);
    expect(columns()).toBe('key,value');
    const cache = new KeyvCache(adapter);
    expect(await cache.add!('wxkit-lock', 'owner', 60)).toBe(true);
    expect(columns()).toBe('key,value,expires');
    // A row without an expiry (written by the adapter itself) never expires, and is not absent.
    expect(await cache.get('written-by-keyv')).toBe('plain');
    expect(await cache.add!('written-by-keyv', 'other', 60)).toBe(false);
    await adapter.set('written-by-keyv', 'again');
    expect(await adapter.get('wxkit-lock')).toBe('owner');
    expect(await cache.get('written-by-keyv')).toBe('again');
  });

  it('a row whose expiry has passed is absent to get, deleteIfEquals and compareAndSet, and add takes it over', async () => {
    const table = newTable();
    const cache = new KeyvCache(store(table));
    await cache.set('k', 'old', 60);
    psql(`UPDATE public.${table} SET expires = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint - 1 WHERE key = 'k'`);
    expect(await cache.get('k')).toBeUndefined();
    expect(await cache.deleteIfEquals!('k', 'old')).toBe(false);
    expect(await cache.compareAndSet!('k', 'old', 'new', 60)).toBe(false);
    expect(await cache.add!('k', 'mine', 60)).toBe(true);
    expect(await cache.get('k')).toBe('mine');
  });

  it('a row the adapter wrote without an expiry, past its time by the value, is refreshed by wxkit, not served', async () => {
    const { appId, secret } = mock.createApp();
    const adapter = store(newTable());
    const now = Math.floor(Date.now() / 1000);
    // Fetched 7000 s ago with 7200 s of life: its store TTL (6900 s) has passed, though the token has not.
    await adapter.set(`wechat:stable_access_token:${appId}`, `{"access_token":"OLD","expires_at":${now + 200},"fetched_at":${now - 7000}}`);
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new KeyvCache(adapter), logger: false });
    expect(await app.accessToken.getToken()).not.toBe('OLD');
    expect(mock.counters(appId).tokenRequests).toBe(1);
    await app.close();
  });

  it('a failed statement rejects with ERR_WXKIT_CACHE, never a miss, and the next call tries again', async () => {
    const table = newTable();
    const adapter = store(table);
    await adapter.get('ready'); // the adapter has created its table
    psql(`DROP TABLE public.${table}`);
    const cache = new KeyvCache(adapter);
    await expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', cause: { code: '42P01' } });
    await expect(cache.add!('k', 'v', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    psql(`CREATE TABLE public.${table} (key VARCHAR(255) PRIMARY KEY, value TEXT)`);
    expect(await cache.add!('k', 'v', 60)).toBe(true);
    expect(await cache.get('k')).toBe('v');
  });

  it('a table dropped mid-run and made again without the expires column (by the adapter elsewhere, by hand) gets the column again', async () => {
    const table = newTable();
    const cache = new KeyvCache(store(table));
    await cache.set('k', 'v', 60); // the column is there, and checked
    psql(`DROP TABLE public.${table}`);
    await expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', cause: { code: '42P01' } });
    // As @keyv/postgres makes it, in any process that starts meanwhile.
    psql(`CREATE TABLE public.${table} (key VARCHAR(255) PRIMARY KEY, value TEXT)`);
    expect(await cache.add!('k', 'w', 60)).toBe(true);
    expect(await cache.get('k')).toBe('w');
  });

  it('a failed write keeps the token out of its error: PostgreSQL quotes the failing row in its detail', async () => {
    const table = newTable();
    // A table with a column of its own that wxkit does not fill: every write fails, as a constraint would.
    psql(`CREATE TABLE public.${table} (key VARCHAR(255) PRIMARY KEY, value TEXT, expires BIGINT, owner TEXT NOT NULL)`);
    await refusedWritesKeepTokenOut(new KeyvCache(store(table)), '23502');
  });

  it('a database that takes no writes (a standby, a read-only session) is a CacheError of reason readonly; a missing right, of reason permission', async () => {
    const table = newTable();
    await new KeyvCache(store(table)).set('wechat:k', 'v', 60);
    const role = `wxkit_reader_${randomBytes(4).toString('hex')}`;
    psql(`CREATE ROLE ${role} LOGIN; GRANT USAGE, CREATE ON SCHEMA public TO ${role}; GRANT SELECT ON public.${table} TO ${role};`);
    // In a process of its own: @keyv/postgres keeps one pool for the whole process, replaced by a store
    // of another URI. A session whose transactions are read-only (as on a hot standby), and a user that
    // may only read the table.
    const uris = [`${POSTGRES}?options=-c%20default_transaction_read_only%3Don`, `postgresql://${role}@127.0.0.1:5432/test`];
    const script = `Promise.all([import('@keyv/postgres'), import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)})]).then(async ([{ default: KeyvPostgres }, { KeyvCache }]) => {
      const reasons = [];
      for (const uri of ${JSON.stringify(uris)}) {
        const store = new KeyvPostgres({ uri, table: ${JSON.stringify(table)} });
        reasons.push(await new KeyvCache(store).set('wechat:k', 'w', 60).then(() => 'stored', (e) => \`\${e.code} \${e.reason}\`));
        await store.disconnect();
      }
      console.log(JSON.stringify(reasons));
    })`;
    try {
      const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', cwd: new URL('..', import.meta.url).pathname });
      expect(child.stderr).toBe('');
      expect(JSON.parse(child.stdout)).toEqual(['ERR_WXKIT_CACHE readonly', 'ERR_WXKIT_CACHE permission']);
      expect(psql(`SELECT value FROM public.${table} WHERE key = 'wechat:k'`)).toBe('v');
    } finally {
      psql(`REVOKE ALL ON public.${table} FROM ${role}; REVOKE ALL ON SCHEMA public FROM ${role}; DROP ROLE ${role};`);
    }
  });

  it('on a database whose default isolation is REPEATABLE READ or SERIALIZABLE, racing adds and compare-and-sets never fail: one winner each', async () => {
    // default_transaction_isolation set by the DBA (here for this pool's sessions only): a statement that
    // meets a row another one changed since its snapshot fails to serialize (40001), where READ COMMITTED
    // waits. Reported as a failed store, it makes a waiter take the store for down and fetch its own token.
    const require = createRequire(createRequire(import.meta.url).resolve('@keyv/postgres'));
    type Pool = { query(sql: string, params: unknown[]): Promise<{ rows: unknown[] }>; end(): Promise<void> };
    const { Pool } = require('pg') as { Pool: new (options: object) => Pool };
    for (const level of ['repeatable\\ read', 'serializable']) {
      const table = newTable();
      psql(`CREATE TABLE public.${table} (key VARCHAR(255) PRIMARY KEY, value TEXT, expires BIGINT)`);
      const pool = new Pool({ connectionString: POSTGRES, max: 8, options: `-c default_transaction_isolation=${level}` });
      // The shape KeyvCache finds a @keyv/postgres store by: its options and its query function.
      const adapter = {
        opts: { dialect: 'postgres', table },
        query: async (sql: string, params: unknown[]) => (await pool.query(sql, params)).rows,
        get: () => undefined,
        set: () => undefined,
        delete: () => undefined,
      };
      try {
        const clients = Array.from({ length: 4 }, () => new KeyvCache(adapter as never));
        for (let round = 0; round < 5; round += 1) {
          const key = `race-${round}`;
          await clients[0]!.set(key, 'old', 60);
          psql(`UPDATE public.${table} SET expires = 0 WHERE key = '${key}'`);
          const adds = await Promise.all(Array.from({ length: 20 }, (_, i) => clients[i % 4]!.add!(key, `owner-${i}`, 60)));
          expect(adds.filter(Boolean)).toHaveLength(1);
          const owner = `owner-${adds.indexOf(true)}`;
          const swaps = await Promise.all(Array.from({ length: 8 }, (_, i) => clients[i % 4]!.compareAndSet!(key, owner, `token-${i}`, 60)));
          expect(swaps.filter(Boolean)).toHaveLength(1);
          expect(await clients[1]!.get(key)).toBe(`token-${swaps.indexOf(true)}`);
        }
      } finally {
        await pool.end();
      }
    }
  });

  it('is found through a Keyv instance too', () => {
    const keyv = new Keyv(store(suiteTable), { namespace: undefined });
    expect(typeof new KeyvCache(keyv).add).toBe('function');
  });

  it('refuses a table name it could not write safely into its SQL, naming the option', () => {
    const odd = new KeyvPostgres({ uri: POSTGRES, table: 'x; DROP TABLE y' });
    stores.push(odd);
    expect(() => new KeyvCache(odd)).toThrow(/options\.table to be letters, digits and underscores.*\(got "x; DROP TABLE y"\)/);
  });
});
