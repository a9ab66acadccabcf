import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import KeyvMysql from '@keyv/mysql';
import { freePort, startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { describeTokenCache, describeTokenSharing } from '@wxkit/testing/suite';
import { OfficialAccount } from '@wxkit/core';
import { KeyvCache } from '../src/index.js';
import { refusedWritesKeepTokenOut } from './helpers.js';

// @keyv/mysql on the machine's MariaDB (127.0.0.1:3306, root without a password, database test).
// Every table is named at random for this run, so runs never meet, and dropped at the end.
const MYSQL = 'mysql://root@127.0.0.1:3306/test';
const fixtures = new URL('./fixtures/sql-caches.mjs', import.meta.url).href;
const tables: string[] = [];
const newTable = () => {
  const table = `wxkit_keyv_${randomBytes(5).toString('hex')}`;
  tables.push(table);
  return table;
};
const mariadb = (sql: string) => {
  const run = spawnSync('mariadb', ['-h', '127.0.0.1', '-P', '3306', '-u', 'root', '--batch', '--raw', '--skip-column-names', 'test', '-e', sql], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`mariadb failed: ${run.stderr}`);
  return run.stdout.replace(/\n$/, '');
};
// The table the README tells MySQL users to create: keys and values compared byte for byte, values
// up to 16 MiB (TEXT stops at 64 KiB), any Unicode, and the expiry column.
const createTable = (table: string) =>
  mariadb(
    `CREATE TABLE ${table} (id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, ` +
      'value MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin, expires BIGINT NULL DEFAULT NULL)',
  );

const stores: KeyvMysql[] = [];
const store = (table: string) => {
  const created = new KeyvMysql({ uri: MYSQL, table });
  stores.push(created);
  return created;
};
let mock: MockWeChat;
const suiteTable = newTable();
const sharingTable = newTable();
beforeAll(async () => {
  createTable(suiteTable);
  createTable(sharingTable);
  mock = await startMockWeChat();
});
afterAll(async () => {
  // Every store of this file shares the adapter's one pool for the URI: end it once.
  await stores[0]?.disconnect();
  mariadb(`DROP TABLE IF EXISTS ${tables.join(', ')}`);
  await mock?.close();
});

describeTokenCache('KeyvCache on @keyv/mysql (MariaDB)', {
  create: () => new KeyvCache(store(suiteTable)),
  shared: { module: fixtures, export: 'MysqlKeyvCache', args: [{ uri: MYSQL, table: suiteTable }] },
  supports: { add: true, deleteIfEquals: true, compareAndSet: true, ttl: true },
});

describeTokenSharing('KeyvCache on @keyv/mysql (MariaDB)', {
  store: { module: fixtures, export: 'MysqlKeyvCache', args: [{ uri: MYSQL, table: sharingTable }] },
});

describe('KeyvCache on @keyv/mysql (MariaDB)', () => {
  it('writes raw bytes, readable with plain SQL, and keeps the expiry in the expires column', async () => {
    const table = newTable();
    createTable(table);
    const { appId, secret } = mock.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new KeyvCache(store(table)), logger: false });
    const token = await app.accessToken.getToken();
    const [value, left] = mariadb(
      `SELECT value, expires - (UNIX_TIMESTAMP() * 1000 + MICROSECOND(NOW(6)) DIV 1000) FROM ${table} WHERE id = 'wechat:stable_access_token:${appId}'`,
    ).split('\t');
    expect(value).toMatch(new RegExp(`^\\{"access_token":"${token}","expires_at":\\d{10},"fetched_at":\\d{10},"fetched_by":"[^"]+:${process.pid}"\\}$`));
    // Store TTL = 7200 s - 300 s margin, counted by the database's clock.
    expect(Number(left)).toBeGreaterThan(6_890_000);
    expect(Number(left)).toBeLessThanOrEqual(6_900_000);
    // getToken() does not wait for the lock's release; close() does.
    await app.close();
    expect(mariadb(`SELECT count(*) FROM ${table} WHERE id = 'wechat:stable_access_token:${appId}:lock'`)).toBe('0');
  });

  it("on the adapter's own table (case-insensitive collation) it adds the expires column and still compares values byte for byte", async () => {
    const table = newTable();
    const adapter = store(table);
    await adapter.set('written-by-keyv', 'plain');
    const columns = () => mariadb(`SELECT GROUP_CONCAT(column_name ORDER BY ordinal_position) FROM information_schema.columns WHERE table_schema = 'test' AND table_name = '${table}'`);
    expect(columns()).toBe('id,value');
    const cache = new KeyvCache(adapter);
    expect(await cache.add!('wxkit-lock', 'owner', 60)).toBe(true);
    expect(columns()).toBe('id,value,expires');
    // The column compares 'OWNER' and 'owner ' equal to 'owner'; the lock's owner check must not.
    expect(mariadb(`SELECT count(*) FROM ${table} WHERE value = 'OWNER ' AND id = 'wxkit-lock'`)).toBe('1');
    for (const other of ['OWNER', 'owner ', 'Owner']) {
      expect(await cache.compareAndSet!('wxkit-lock', other, 'stolen', 60)).toBe(false);
      expect(await cache.deleteIfEquals!('wxkit-lock', other)).toBe(false);
    }
    expect(await cache.get('wxkit-lock')).toBe('owner');
    expect(await cache.deleteIfEquals!('wxkit-lock', 'owner')).toBe(true);
    // A row without an expiry (written by the adapter itself) never expires, and is not absent.
    expect(await cache.add!('written-by-keyv', 'other', 60)).toBe(false);
    expect(await cache.get('written-by-keyv')).toBe('plain');
  });

  it('a row whose expiry has passed is absent to get, deleteIfEquals and compareAndSet, and add takes it over', async () => {
    const table = newTable();
    createTable(table);
    const cache = new KeyvCache(store(table));
    await cache.set('k', 'old', 60);
    mariadb(`UPDATE ${table} SET expires = UNIX_TIMESTAMP() * 1000 - 1000 WHERE id = 'k'`);
    expect(await cache.get('k')).toBeUndefined();
    expect(await cache.deleteIfEquals!('k', 'old')).toBe(false);
    expect(await cache.compareAndSet!('k', 'old', 'new', 60)).toBe(false);
    expect(await cache.add!('k', 'mine', 60)).toBe(true);
    expect(await cache.get('k')).toBe('mine');
  });

  it('20 concurrent adds on an expired row through 4 clients: exactly one winner, no error', async () => {
    const table = newTable();
    createTable(table);
    const clients = Array.from({ length: 4 }, () => new KeyvCache(store(table)));
    for (let round = 0; round < 10; round += 1) {
      const key = `expired-${round}`;
      await clients[0]!.set(key, 'old', 60);
      mariadb(`UPDATE ${table} SET expires = UNIX_TIMESTAMP() * 1000 - 1000 WHERE id = '${key}'`);
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => clients[i % 4]!.add!(key, `owner-${i}`, 60)));
      expect(results.filter(Boolean)).toHaveLength(1);
      expect(await clients[1]!.get(key)).toBe(`owner-${results.indexOf(true)}`);
    }
  });

  it('a failed write keeps the token out of its error: mysql2 writes the values into the statement it attaches', async () => {
    const table = newTable();
    // A value column too short for a token entry: every write fails (strict mode), as a read-only replica would.
    mariadb(`CREATE TABLE ${table} (id VARCHAR(255) NOT NULL PRIMARY KEY, value VARCHAR(8), expires BIGINT NULL DEFAULT NULL)`);
    for (const error of await refusedWritesKeepTokenOut(new KeyvCache(store(table)), 'ER_DATA_TOO_LONG')) {
      // mysql2 attaches the statement: its placeholders, not the values.
      expect((error as { cause: { sql: string } }).cause.sql).toMatch(/\?/);
    }
  });

  it('a table dropped mid-run and made again without the expires column gets the column again', async () => {
    const table = newTable();
    createTable(table);
    const cache = new KeyvCache(store(table));
    await cache.set('k', 'v', 60); // the column is there, and checked
    mariadb(`DROP TABLE ${table}`);
    await expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
    // As @keyv/mysql makes it, in any process that starts meanwhile.
    mariadb(`CREATE TABLE ${table} (id VARCHAR(255) NOT NULL, value TEXT, PRIMARY KEY (id))`);
    expect(await cache.add!('k', 'w', 60)).toBe(true);
    expect(await cache.get('k')).toBe('w');
  });

  it('a failed statement rejects with ERR_WXKIT_CACHE, never a miss', async () => {
    const table = newTable();
    const adapter = store(table);
    await adapter.get('ready'); // the adapter has created its table
    mariadb(`DROP TABLE ${table}`);
    const cache = new KeyvCache(adapter);
    await expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', cause: { code: 'ER_NO_SUCH_TABLE' } });
    await expect(cache.add!('k', 'v', 60)).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE' });
  });

  it('a user without the right to write the table gets a CacheError of reason permission, and one with a wrong password of reason auth', () => {
    const table = newTable();
    createTable(table);
    const user = `wxkit_reader_${randomBytes(4).toString('hex')}`;
    mariadb(`CREATE USER '${user}'@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON test.${table} TO '${user}'@'%';`);
    // In a process of its own: @keyv/mysql keeps one pool for the whole process.
    const uris = [`mysql://${user}:pw@127.0.0.1:3306/test`, `mysql://${user}:wrong@127.0.0.1:3306/test`];
    const script = `Promise.all([import('@keyv/mysql'), import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)})]).then(async ([{ default: KeyvMysql }, { KeyvCache }]) => {
      const reasons = [];
      for (const uri of ${JSON.stringify(uris)}) {
        const store = new KeyvMysql({ uri, table: ${JSON.stringify(table)} });
        const cache = new KeyvCache(store);
        reasons.push(await cache.set('wechat:k', 'w', 60).then(() => 'stored', (e) => \`\${e.code} \${e.reason}\`));
        await store.disconnect().catch(() => undefined);
      }
      console.log(JSON.stringify(reasons));
    })`;
    try {
      const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', cwd: new URL('..', import.meta.url).pathname });
      expect(JSON.parse(child.stdout)).toEqual(['ERR_WXKIT_CACHE permission', 'ERR_WXKIT_CACHE auth']);
    } finally {
      mariadb(`DROP USER '${user}'@'%'`);
    }
  });

  it('a server that refused the adapter when it was made: every call fails with reason refused, saying the store will not try again', async () => {
    const port = await freePort(); // nothing listens on it
    const cache = new KeyvCache(new KeyvMysql({ uri: `mysql://root@127.0.0.1:${port}/test`, table: newTable() }));
    // The first call may share the check KeyvCache started when made; the failure is known kept from the next.
    await expect(cache.get('k')).rejects.toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'refused', cause: { code: 'ECONNREFUSED' } });
    for (const call of [() => cache.get('k'), () => cache.add!('k', 'v', 60)]) {
      const error = await call().catch((caught: unknown) => caught);
      expect(error).toMatchObject({ code: 'ERR_WXKIT_CACHE', reason: 'refused', cause: { code: 'ECONNREFUSED' } });
      expect((error as Error).message).toMatch(/could not connect or make its table when it was made, and it does not try again/);
    }
  });
});
