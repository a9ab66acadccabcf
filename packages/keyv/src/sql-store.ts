import { ConfigError } from '@wxkit/core';

/**
 * What KeyvCache runs in the table of a Keyv SQL store (@keyv/postgres, @keyv/mysql, @keyv/sqlite),
 * through the query function the store exposes, so each operation is one atomic statement.
 *
 * These stores keep no expiry of their own (Keyv puts it in a JSON envelope, which KeyvCache does not
 * write), yet a lock taken with `add` needs a lease. So the table gets a nullable `expires` column:
 * absolute milliseconds since the epoch, NULL for no expiry, the layout @keyv/postgres 6 adopts.
 * Expiries are computed by the database's clock, one clock for every process whatever host it runs on.
 * A row past its expiry counts as absent for every operation; it stays until a later write replaces it.
 */
export interface SqlTable {
  /** Checks the table at once, as the first call would. */
  start(): void;
  /** Whether `error` is the failure of the adapter's own start, which it keeps for good (see ExpiringTable). */
  keeps(error: unknown): boolean;
  get(key: string): Promise<unknown>;
  set(key: string, value: string, ttlMs: number): Promise<void>;
  delete(key: string): Promise<void>;
  add(key: string, value: string, ttlMs: number): Promise<boolean>;
  deleteIfEquals(key: string, expected: string): Promise<boolean>;
  compareAndSet(key: string, expected: string, value: string, ttlMs: number): Promise<boolean>;
}

type Row = { value?: unknown };
/** Rows a statement returned (SELECT, RETURNING) and the rows it affected, as each driver reports them. */
type Result = { rows: Row[]; affected: number; insertId?: number };
type Exec = (sql: string, params: unknown[]) => Promise<Result>;
type SqlOptions = { dialect?: unknown; table?: unknown; schema?: unknown };

/**
 * The SQL table behind a Keyv store, or undefined for any other store. Recognised by the `dialect` the
 * three SQL adapters record in `opts` and the `query` function they expose; other stores have neither.
 */
export function sqlTableOf(store: object): SqlTable | undefined {
  const { opts, query } = store as { opts?: SqlOptions; query?: unknown };
  if (typeof query !== 'function' || typeof opts !== 'object' || opts === null) return undefined;
  const call = (query as (...args: unknown[]) => Promise<unknown>).bind(store);
  const rows = (result: unknown): Result => {
    const list = Array.isArray(result) ? (result as Row[]) : [];
    return { rows: list, affected: list.length };
  };
  switch (opts.dialect) {
    case 'postgres':
      // @keyv/postgres writes `schema.table` unquoted (so Postgres folds it to lower case); ours must name
      // the same table, and only a plain identifier is safe to write unquoted.
      return new ReturningTable(
        'postgres',
        `${plainIdentifier(opts.schema ?? 'public', 'schema')}.${plainIdentifier(opts.table ?? 'keyv', 'table')}`,
        async (sql, params) => {
          for (let attempt = 1; ; attempt += 1) {
            try {
              return rows(await call(sql, params));
            } catch (error) {
              // A database whose default isolation is REPEATABLE READ or SERIALIZABLE
              // (default_transaction_isolation) fails a statement that meets a row another one changed
              // since its snapshot (40001), where READ COMMITTED would wait and look again: two adds of
              // one lock, two compare-and-sets of one entry. Each statement runs alone (autocommit), so
              // one that failed so did nothing, and each failure means another statement on that row
              // committed: run it again, on a new snapshot, rather than report the store down.
              if (isRetryable(error) && attempt < SERIALIZATION_RETRIES) continue;
              throw scrubbed(error);
            }
          }
        },
      );
    case 'sqlite':
      // @keyv/sqlite has already reduced its table name to letters, digits and underscores.
      return new ReturningTable('sqlite', plainIdentifier(opts.table ?? 'keyv', 'table'), async (sql, params) => rows(await call(sql, params)));
    case 'mysql':
      // @keyv/mysql hands its argument to mysql2's pool.query(), which also takes `{ sql, values }`
      // and fills the placeholders with the driver's own escaping.
      return new MysqlTable(backquoted(String(opts.table ?? 'keyv')), async (sql, values) => {
        let result: unknown;
        try {
          result = await call({ sql, values });
        } catch (error) {
          // mysql2 gives its error the statement as sent, the values written in (`sql`): the token, in
          // every log that prints the error. It keeps the statement with its placeholders instead.
          if (typeof error === 'object' && error !== null && typeof (error as { sql?: unknown }).sql === 'string') (error as { sql: string }).sql = sql;
          throw error;
        }
        if (Array.isArray(result)) return rows(result);
        const { affectedRows, insertId } = result as { affectedRows?: unknown; insertId?: unknown };
        return { rows: [], affected: Number(affectedRows ?? 0), insertId: Number(insertId) };
      });
    default:
      return undefined;
  }
}

/**
 * How many times a PostgreSQL statement is run when it keeps failing to serialize: each failure is
 * another statement on the same row committing first, so a few writers of one key settle well within it.
 */
const SERIALIZATION_RETRIES = 10;

/** PostgreSQL's serialization_failure and deadlock_detected: the statement did nothing, and may run again. */
function isRetryable(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === '40001' || code === '40P01';
}

/**
 * PostgreSQL's error, without what may quote the statement's values: the detail of a constraint or data
 * error quotes the row or key it refused (`Failing row contains (key, value, …)`), and its context the
 * text it could not parse: the token, in every log that prints the error.
 */
function scrubbed(error: unknown): unknown {
  const failure = (error ?? {}) as { code?: unknown; detail?: unknown; where?: unknown };
  if (typeof failure.code === 'string' && /^2[23]/.test(failure.code)) {
    for (const field of ['detail', 'where'] as const) {
      if (typeof failure[field] === 'string') failure[field] = '(left out by wxkit: it may quote the values of the statement)';
    }
  }
  return error;
}

/** Runs every statement after making sure the table has the `expires` column, adding it once if not. */
abstract class ExpiringTable implements SqlTable {
  #ready: Promise<void> | undefined;
  /** The error the last attempt at the column failed with. */
  #failure: unknown;
  /** The adapter's own start failed, and it keeps that failure: the error every statement fails with. */
  #kept: object | undefined;

  constructor(protected readonly exec: Exec) {}

  /**
   * @keyv/mysql and @keyv/sqlite connect and make their table as soon as they are made, and keep the
   * outcome for good: a failure there is a rejection nobody holds until a first call (Node ends the
   * process on it), and every later statement fails with that same error object. Checking the column at
   * once holds it from the moment KeyvCache is made.
   */
  start(): void {
    this.#prepare().catch(() => undefined);
  }

  keeps(error: unknown): boolean {
    return error !== undefined && error === this.#kept;
  }

  abstract get(key: string): Promise<unknown>;
  abstract set(key: string, value: string, ttlMs: number): Promise<void>;
  abstract delete(key: string): Promise<void>;
  abstract add(key: string, value: string, ttlMs: number): Promise<boolean>;
  abstract deleteIfEquals(key: string, expected: string): Promise<boolean>;
  abstract compareAndSet(key: string, expected: string, value: string, ttlMs: number): Promise<boolean>;

  /** A statement that fails on a table without the column, one that adds it, and how their errors read. */
  protected abstract readonly probe: string;
  protected abstract readonly addColumn: string;
  protected abstract columnError(error: unknown): 'missing' | 'exists' | undefined;

  protected async run(sql: string, params: unknown[]): Promise<Result> {
    const ready = this.#prepare();
    await ready;
    try {
      return await this.exec(sql, params);
    } catch (error) {
      // The column found once is gone: the table was dropped and made again without it (by the adapter
      // of a process started meanwhile, by hand). The statement did nothing; the column is checked
      // again, once, and the statement run again.
      if (this.columnError(error) !== 'missing') throw error;
      if (this.#ready === ready) this.#ready = undefined;
      await this.#prepare();
      return this.exec(sql, params);
    }
  }

  #prepare(): Promise<void> {
    // A failed attempt (the database was down) is forgotten, so the next call tries again.
    return (this.#ready ??= this.#addColumnIfMissing().catch((error: unknown) => {
      this.#ready = undefined;
      // Two attempts failed with the very same error object: the adapter's kept start failure, not one of
      // the moment (a driver makes a new error for each failed statement).
      if (typeof error === 'object' && error !== null && error === this.#failure) this.#kept = error;
      this.#failure = error;
      throw error;
    }));
  }

  async #addColumnIfMissing(): Promise<void> {
    // Probe first: ALTER TABLE takes an exclusive lock on the table even when there is nothing to do.
    try {
      await this.exec(this.probe, []);
      return;
    } catch (error) {
      if (this.columnError(error) !== 'missing') throw error;
    }
    try {
      await this.exec(this.addColumn, []);
    } catch (error) {
      // Another process added it between our probe and our ALTER.
      if (this.columnError(error) !== 'exists') throw error;
    }
  }
}

/** PostgreSQL and SQLite: upserts with a condition, and RETURNING to tell whether a row was written. */
class ReturningTable extends ExpiringTable {
  protected readonly probe: string;
  protected readonly addColumn: string;
  readonly #sql: Record<'get' | 'set' | 'delete' | 'add' | 'deleteIfEquals' | 'compareAndSet', string>;

  constructor(
    private readonly dialect: 'postgres' | 'sqlite',
    table: string,
    exec: Exec,
  ) {
    super(exec);
    // SQLite's ?NNN binds by number, as Postgres's $NNN does, so one text serves both.
    const p = (n: number) => (dialect === 'postgres' ? `$${n}` : `?${n}`);
    const now = dialect === 'postgres' ? '(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint' : "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
    const live = `(expires IS NULL OR expires > ${now})`;
    this.probe = `SELECT expires FROM ${table} WHERE 1 = 0`;
    this.addColumn = `ALTER TABLE ${table} ADD COLUMN ${dialect === 'postgres' ? 'IF NOT EXISTS expires BIGINT' : 'expires INTEGER'} DEFAULT NULL`;
    this.#sql = {
      get: `SELECT value FROM ${table} WHERE key = ${p(1)} AND ${live}`,
      set:
        `INSERT INTO ${table} (key, value, expires) VALUES (${p(1)}, ${p(2)}, ${now} + ${p(3)}) ` +
        'ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires',
      delete: `DELETE FROM ${table} WHERE key = ${p(1)}`,
      // Inserts, or takes over a row whose expiry has passed; a live row is left alone and nothing is
      // returned. The conflict check and the update happen under the row's lock, so of any number of
      // concurrent adds exactly one returns a row.
      add:
        `INSERT INTO ${table} AS t (key, value, expires) VALUES (${p(1)}, ${p(2)}, ${now} + ${p(3)}) ` +
        `ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires WHERE t.expires <= ${now} RETURNING key`,
      // Text equality compares bytes here (deterministic collations in Postgres, BINARY in SQLite).
      deleteIfEquals: `DELETE FROM ${table} WHERE key = ${p(1)} AND value = ${p(2)} AND ${live} RETURNING key`,
      compareAndSet: `UPDATE ${table} SET value = ${p(3)}, expires = ${now} + ${p(4)} WHERE key = ${p(1)} AND value = ${p(2)} AND ${live} RETURNING key`,
    };
  }

  protected columnError(error: unknown): 'missing' | 'exists' | undefined {
    const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
    if (this.dialect === 'postgres') return code === '42703' ? 'missing' : code === '42701' ? 'exists' : undefined;
    const text = String(message);
    // A SELECT or a WHERE says `no such column`, an INSERT `table … has no column named`.
    return /no such column: expires|has no column named expires/.test(text) ? 'missing' : /duplicate column name: expires/.test(text) ? 'exists' : undefined;
  }

  async get(key: string): Promise<unknown> {
    return (await this.run(this.#sql.get, [key])).rows[0]?.value;
  }
  async set(key: string, value: string, ttlMs: number): Promise<void> {
    await this.run(this.#sql.set, [key, value, ttlMs]);
  }
  async delete(key: string): Promise<void> {
    await this.run(this.#sql.delete, [key]);
  }
  async add(key: string, value: string, ttlMs: number): Promise<boolean> {
    return (await this.run(this.#sql.add, [key, value, ttlMs])).affected === 1;
  }
  async deleteIfEquals(key: string, expected: string): Promise<boolean> {
    return (await this.run(this.#sql.deleteIfEquals, [key, expected])).affected === 1;
  }
  async compareAndSet(key: string, expected: string, value: string, ttlMs: number): Promise<boolean> {
    return (await this.run(this.#sql.compareAndSet, [key, expected, value, ttlMs])).affected === 1;
  }
}

/** MySQL and MariaDB: no RETURNING on UPDATE, so the driver's counts tell what a statement did. */
class MysqlTable extends ExpiringTable {
  // Server time in ms. UNIX_TIMESTAMP() and NOW(6) both read the statement's start time; converting
  // NOW() through UNIX_TIMESTAMP(NOW(3)) instead would go through the session's time zone, and be off
  // by an hour inside a daylight-saving change.
  static readonly #now = '(UNIX_TIMESTAMP() * 1000 + MICROSECOND(NOW(6)) DIV 1000)';
  static readonly #live = `(expires IS NULL OR expires > ${MysqlTable.#now})`;
  // The column's collation may ignore case and trailing spaces: compare the UTF-8 bytes instead.
  static readonly #sameValue = 'CAST(CONVERT(value USING utf8mb4) AS BINARY) = CAST(CONVERT(? USING utf8mb4) AS BINARY)';

  protected readonly probe: string;
  protected readonly addColumn: string;

  constructor(
    private readonly table: string,
    exec: Exec,
  ) {
    super(exec);
    this.probe = `SELECT expires FROM ${table} WHERE 1 = 0`;
    this.addColumn = `ALTER TABLE ${table} ADD COLUMN expires BIGINT NULL DEFAULT NULL`;
  }

  protected columnError(error: unknown): 'missing' | 'exists' | undefined {
    const code = (error as { code?: unknown } | null)?.code;
    return code === 'ER_BAD_FIELD_ERROR' ? 'missing' : code === 'ER_DUP_FIELDNAME' ? 'exists' : undefined;
  }

  async get(key: string): Promise<unknown> {
    return (await this.run(`SELECT value FROM ${this.table} WHERE id = ? AND ${MysqlTable.#live}`, [key])).rows[0]?.value;
  }
  async set(key: string, value: string, ttlMs: number): Promise<void> {
    const expires = `${MysqlTable.#now} + ?`;
    await this.run(
      `INSERT INTO ${this.table} (id, value, expires) VALUES (?, ?, ${expires}) ON DUPLICATE KEY UPDATE value = ?, expires = ${expires}`,
      [key, value, ttlMs, value, ttlMs],
    );
  }
  async delete(key: string): Promise<void> {
    await this.run(`DELETE FROM ${this.table} WHERE id = ?`, [key]);
  }
  async add(key: string, value: string, ttlMs: number): Promise<boolean> {
    // One statement: insert, or take over a row whose expiry has passed. The assignments run left to
    // right, so both conditions still read the old expiry. A live row is left as it is, and the losing
    // branch marks the statement through LAST_INSERT_ID(1), which the server reports as its insert id:
    // the affected-rows count cannot tell, as it reads 1 both for an insert and (with mysql2's default
    // FOUND_ROWS flag) for a row left unchanged. The table has no AUTO_INCREMENT, so a win reports 0
    // (and a driver that reported nothing would count as a loss, never as a second winner).
    const now = MysqlTable.#now;
    const sql =
      `INSERT INTO ${this.table} (id, value, expires) VALUES (?, ?, ${now} + ?) ON DUPLICATE KEY UPDATE ` +
      `value = IF(expires <= ${now}, ?, value), expires = IF(expires <= ${now}, ${now} + ?, IF(LAST_INSERT_ID(1), expires, expires))`;
    return (await this.run(sql, [key, value, ttlMs, value, ttlMs])).insertId === 0;
  }
  async deleteIfEquals(key: string, expected: string): Promise<boolean> {
    const sql = `DELETE FROM ${this.table} WHERE id = ? AND ${MysqlTable.#sameValue} AND ${MysqlTable.#live}`;
    return (await this.run(sql, [key, expected])).affected === 1;
  }
  async compareAndSet(key: string, expected: string, value: string, ttlMs: number): Promise<boolean> {
    // mysql2 reports matched rows (FOUND_ROWS), and the new expiry differs from the old one anyway.
    const sql =
      `UPDATE ${this.table} SET value = ?, expires = ${MysqlTable.#now} + ? ` +
      `WHERE id = ? AND ${MysqlTable.#sameValue} AND ${MysqlTable.#live}`;
    return (await this.run(sql, [value, ttlMs, key, expected])).affected === 1;
  }
}

function plainIdentifier(name: unknown, option: 'schema' | 'table'): string {
  if (typeof name === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) return name;
  throw new ConfigError(
    `KeyvCache needs the SQL store's options.${option} to be letters, digits and underscores, not starting with a digit, ` +
      `as the store writes it into its SQL unquoted (got ${typeof name === 'string' ? JSON.stringify(name) : typeof name})`,
    'keyvOrStore',
  );
}

/** Quoted as @keyv/mysql quotes it: each dot-separated part in backquotes, inner backquotes doubled. */
function backquoted(name: string): string {
  return name
    .split('.')
    .map((part) => `\`${part.replace(/`/g, '``')}\``)
    .join('.');
}
