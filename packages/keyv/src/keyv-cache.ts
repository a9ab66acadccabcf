import { isUtf8 } from 'node:buffer';
import { CacheError, ConfigError, type TokenCache } from '@wxkit/core';
import { nodeRedisReason, socketReason, storeTtlMs, withoutPasswords } from '@wxkit/core/internal';
import type { Keyv, KeyvStoreAdapter } from 'keyv';
import { sqlTableOf, type SqlTable } from './sql-store.js';

/** A Keyv instance, or the store adapter underneath one (`new KeyvRedis(…)`, `new KeyvPostgres(…)`…). */
export type KeyvOrStore = Keyv | KeyvStoreAdapter;

type StoreLike = {
  get(key: string): Promise<unknown>;
  set(key: string, value: string, ttl?: number): Promise<unknown>;
  delete(key: string): Promise<unknown>;
  namespace?: string;
  throwOnErrors?: boolean;
  on?(event: string, listener: (...args: unknown[]) => void): unknown;
};

/**
 * Any Keyv store as a TokenCache, writing exactly the strings wxkit hands it: it talks to the store
 * adapter underneath Keyv, so neither Keyv's namespace (`keyv:`) nor its JSON envelope
 * (`{"value":…,"expires":…}`) ends up in the stored bytes.
 *
 * On @keyv/postgres, @keyv/mysql and @keyv/sqlite, KeyvCache runs its own statements through the
 * store's query function and has atomic `add`, `deleteIfEquals` and `compareAndSet`, so one process
 * refreshes for all. Those stores keep no expiry of their own, so the table gets a nullable `expires`
 * column (added on first use when missing). Other Keyv stores have no atomic operations: refreshes are
 * then single-flight within one process only.
 *
 * @example
 * ```ts
 * app.setCache(new KeyvCache(new KeyvPostgres({ uri: 'postgresql://localhost/app', table: 'wechat_tokens' })));
 * ```
 */
export class KeyvCache implements TokenCache {
  readonly #store: StoreLike;
  readonly #sql: SqlTable | undefined;
  /** The calls under way, told of a refusal the store reports as an event rather than to them. */
  readonly #waiting = new Set<(error: unknown) => void>();
  #closed = false;

  /**
   * Stores `value` only if `key` is absent or expired, atomically; resolves `true` when this call
   * stored it. Present on SQL stores only.
   */
  readonly add?: (key: string, value: string, ttlSeconds: number) => Promise<boolean>;
  /** Deletes `key` only if it holds exactly `expected`, atomically. Present on SQL stores only. */
  readonly deleteIfEquals?: (key: string, expected: string) => Promise<boolean>;
  /**
   * Replaces the value of `key` (and its TTL) only if it holds exactly `expected`, atomically; never
   * creates an absent key. Present on SQL stores only.
   */
  readonly compareAndSet?: (key: string, expected: string, value: string, ttlSeconds: number) => Promise<boolean>;

  constructor(keyvOrStore: KeyvOrStore) {
    const store = storeOf(keyvOrStore);
    if (isKeyvMemcache(store)) {
      throw new ConfigError(
        "KeyvCache cannot use @keyv/memcache: its get() hands back Keyv's parsed envelope, not the stored bytes (a miss reads as " +
          'an object, a value as JSON parsed and altered), and throws out of the driver on bytes that are no JSON. Use MemcachedCache ' +
          'from @wxkit/memcached, on the same memjs client: raw bytes and atomic add',
        'keyvOrStore',
      );
    }
    if (store.namespace) {
      throw new ConfigError(
        `KeyvCache needs a store without a namespace, or wxkit's keys would be stored under "${store.namespace}" ` +
          '(Keyv gives its store the namespace "keyv" unless told otherwise). Give wxkit a store of its own, ' +
          'e.g. new KeyvCache(new KeyvRedis({ url, commandOptions: { timeout: 1000 } })) (a timeout below cacheTimeoutMs: ' +
          'without one, node-redis holds the commands sent while Redis is down and sends them late, over newer values), ' +
          'or create the Keyv instance with { namespace: undefined }',
        'keyvOrStore',
      );
    }
    // A store that swallows errors (as @keyv/redis does unless told) turns an outage into a miss, and a
    // miss sends every process to WeChat. Keyv instances still swallow on their own level, so this
    // changes nothing for other users of the store through Keyv.
    if (store.throwOnErrors === false) store.throwOnErrors = true;
    // Stores re-emit driver errors as 'error' events; the calls that fail report them instead. A server
    // that refuses the connection itself (@keyv/redis with a wrong password: WRONGPASS at the handshake)
    // fails no call, though: the driver reconnects for ever and the calls wait for a connection that never
    // comes. Those calls fail with the refusal instead, so the error says what to fix.
    store.on?.('error', (error: unknown) => {
      // Only a refusal of the connection: @keyv/redis emits every failed command too (a write refused
      // READONLY, OOM or NOPERM), which is that command's failure alone, not the reads' under way.
      if (refusalOf(error) !== 'auth') return;
      for (const fail of this.#waiting) fail(error);
    });
    this.#store = store;
    const sql = sqlTableOf(store);
    this.#sql = sql;
    if (sql) {
      sql.start();
      this.add = (key, value, ttlSeconds) => this.#run('add', () => sql.add(key, toStoredText(value), ttlMs(ttlSeconds)));
      this.deleteIfEquals = (key, expected) => this.#run('deleteIfEquals', () => sql.deleteIfEquals(key, toStoredText(expected)));
      this.compareAndSet = (key, expected, value, ttlSeconds) =>
        this.#run('compareAndSet', () => sql.compareAndSet(key, toStoredText(expected), toStoredText(value), ttlMs(ttlSeconds)));
    }
  }

  get(key: string): Promise<string | undefined> {
    return this.#run('get', async () => {
      const value = await (this.#sql ?? this.#store).get(key);
      if (value === undefined || value === null) return undefined;
      if (typeof value === 'string') return fromStoredText(value);
      // Anything else was written by something else: its bytes, or its JSON, so wxkit sees a corrupt
      // entry (and replaces it) rather than a crash.
      // JSON.stringify gives undefined for a function or a symbol: those are their type's name, never a miss.
      if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('latin1');
      return toBinary(JSON.stringify(value) ?? `[${typeof value}]`);
    });
  }

  set(key: string, value: string, ttlSeconds: number): Promise<void> {
    return this.#run('set', async () => {
      // Keyv stores take milliseconds. A store without TTL support keeps the entry until it is
      // overwritten; wxkit's readers then go by the expiry inside the value.
      const text = toStoredText(value);
      if (this.#sql) await this.#sql.set(key, text, ttlMs(ttlSeconds));
      else await this.#store.set(key, text, ttlMs(ttlSeconds));
    });
  }

  delete(key: string): Promise<void> {
    return this.#run('delete', async () => {
      await (this.#sql ?? this.#store).delete(key);
    });
  }

  /** Marks this cache closed. The store is yours: KeyvCache never disconnects it. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  async #run<T>(op: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new CacheError(`KeyvCache ${op} after close()`, { reason: 'closed' });
    let fail: (error: unknown) => void = () => undefined;
    const refused = new Promise<never>((_, reject) => {
      fail = reject;
    });
    this.#waiting.add(fail);
    try {
      const call = fn();
      // Settled later, after a refusal failed the call: nobody waits for it any more.
      call.catch(() => undefined);
      return await Promise.race([call, refused]);
    } catch (error) {
      if (error instanceof RangeError) throw error;
      // The driver's error, without the password of any URL it quotes (@keyv/mysql keeps the whole
      // connection URL as the `input` of the TypeError of a URL it cannot parse).
      const cause = withoutPasswords(error);
      // Redis behind Keyv (@keyv/redis) answering for a key that holds a hash, list or set: another
      // program's data at that key, not an outage (CacheErrorReason `type`).
      if (/^WRONGTYPE\b/.test(String((error as { message?: unknown } | null)?.message))) {
        throw new CacheError(`KeyvCache ${op} found another kind of value than a string at that key in the Keyv store (another program's data)`, { cause, reason: 'type' });
      }
      const refusal = refusalOf(error);
      const reason = refusal ?? socketReason((error as { code?: unknown } | null)?.code) ?? (typeof error === 'object' && error !== null ? nodeRedisReason(error) : undefined);
      if (this.#sql?.keeps(error)) {
        throw new CacheError(
          `KeyvCache ${op} failed: the Keyv store could not connect or make its table when it was made, and it does not try again ` +
            '(@keyv/mysql and @keyv/sqlite keep their first failure for good): make a new store once the database can be reached',
          { cause, reason },
        );
      }
      throw new CacheError(`KeyvCache ${op} failed in the Keyv store${refusal ? `: ${REFUSALS[refusal]}` : ''}`, { cause, reason });
    } finally {
      this.#waiting.delete(fail);
    }
  }
}

const REFUSALS = {
  auth: 'the server refused the credentials (NOAUTH or WRONGPASS, a failed database login): check the user and password in the URL',
  permission: 'the user may not run this command on this key or table (NOPERM, a missing privilege)',
  readonly: 'the store takes no writes (a read-only replica or standby, a read-only session, a full memory or disk)',
  // The statement did nothing: not a miss, not a lock held by another process.
  timeout: 'another connection holds the SQLite database locked (SQLITE_BUSY, SQLITE_LOCKED): give @keyv/sqlite a busyTimeout, so that a statement waits for the lock',
} as const;

// The database's refusals, by the code its driver gives: PostgreSQL's SQLSTATE, mysql2's and sqlite3's names.
const SQL_REFUSALS: Readonly<Record<string, keyof typeof REFUSALS>> = {
  '28000': 'auth', // invalid_authorization_specification
  '28P01': 'auth', // invalid_password
  '42501': 'permission', // insufficient_privilege
  '25006': 'readonly', // read_only_sql_transaction (a hot standby, default_transaction_read_only)
  '53100': 'readonly', // disk_full
  ER_ACCESS_DENIED_ERROR: 'auth',
  ER_DBACCESS_DENIED_ERROR: 'permission',
  ER_TABLEACCESS_DENIED_ERROR: 'permission',
  ER_COLUMNACCESS_DENIED_ERROR: 'permission',
  ER_OPTION_PREVENTS_STATEMENT: 'readonly', // --read-only
  ER_READ_ONLY_MODE: 'readonly',
  ER_RECORD_FILE_FULL: 'readonly',
  ER_DISK_FULL: 'readonly',
  SQLITE_READONLY: 'readonly',
  SQLITE_FULL: 'readonly',
  SQLITE_PERM: 'permission',
  SQLITE_AUTH: 'permission',
  SQLITE_BUSY: 'timeout', // another connection holds the file's lock past busyTimeout, or no busyTimeout was given
  SQLITE_LOCKED: 'timeout',
};

/**
 * A server's refusal of the client: Redis's (@keyv/redis) by the first word of its reply, as RedisCache
 * reads it, a SQL database's by its error code.
 */
function refusalOf(error: unknown): keyof typeof REFUSALS | undefined {
  const word = /^[A-Z]+\b/.exec(String((error as { message?: unknown } | null)?.message))?.[0];
  if (word === 'NOAUTH' || word === 'WRONGPASS') return 'auth';
  if (word === 'NOPERM') return 'permission';
  if (word === 'READONLY' || word === 'NOREPLICAS' || word === 'MISCONF' || word === 'OOM') return 'readonly';
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && Object.hasOwn(SQL_REFUSALS, code) ? SQL_REFUSALS[code] : undefined;
}

// TokenCache values are binary strings (one character per byte). Keyv stores keep text (a SQL TEXT
// column, node-redis's UTF-8 strings), so a value whose bytes are UTF-8 (every wxkit entry, every token)
// is stored as that text: the store holds exactly its UTF-8 bytes, as any other program reading the
// column or key sees them. Bytes that are no UTF-8 (a PHP peer's igbinary entry), or hold a NUL, have no
// text form in every store and are stored as BINARY_PREFIX + base64; pick RedisCache or MemcachedCache to share such entries with
// the peer itself.
const BINARY_PREFIX = 'wxkit-binary:base64,';

function toStoredText(value: string): string {
  if (/[^\x00-\xff]/.test(value)) {
    throw new RangeError('KeyvCache values are binary strings (char codes 0–255, one per byte); encode text as UTF-8 first');
  }
  const bytes = Buffer.from(value, 'latin1');
  // PostgreSQL's text refuses NUL, valid UTF-8 as it is; a text that starts like the envelope is put in
  // one too, so that it reads back as itself.
  const textual = isUtf8(bytes) && !bytes.includes(0) && !value.startsWith(BINARY_PREFIX);
  return textual ? bytes.toString('utf8') : `${BINARY_PREFIX}${bytes.toString('base64')}`;
}

function fromStoredText(text: string): string {
  if (text.startsWith(BINARY_PREFIX)) return Buffer.from(text.slice(BINARY_PREFIX.length), 'base64').toString('latin1');
  return toBinary(text);
}

/** The binary string of a text's UTF-8 bytes. */
function toBinary(text: string): string {
  return /^[\x00-\x7f]*$/.test(text) ? text : Buffer.from(text, 'utf8').toString('latin1');
}

function ttlMs(ttlSeconds: number): number {
  return storeTtlMs('KeyvCache', ttlSeconds);
}

/**
 * @keyv/memcache's store: its get() resolves `{ value, expires }` with the bytes run through Keyv's JSON
 * parser (`":x"` read as `"x"`), and a value that is no JSON throws in memjs's socket callback, where
 * nothing can catch it. Known by its class, or by the memjs client it holds.
 */
function isKeyvMemcache(store: StoreLike): boolean {
  const { client } = store as { client?: { flush?: unknown; stats?: unknown; increment?: unknown } | null };
  const memjs = typeof client?.flush === 'function' && typeof client.stats === 'function' && typeof client.increment === 'function';
  return store.constructor?.name === 'KeyvMemcache' || (memjs && typeof (store as { formatKey?: unknown }).formatKey === 'function');
}

function storeOf(keyvOrStore: unknown): StoreLike {
  const candidate = keyvOrStore as { store?: unknown; opts?: unknown } | null;
  // A Keyv instance holds its adapter in `store`; an adapter is used as it is.
  const isKeyv = candidate !== null && typeof candidate === 'object' && isKeyvInstance(candidate);
  const store = (isKeyv ? candidate.store : candidate) as StoreLike | null;
  if (!store || typeof store !== 'object' || typeof store.get !== 'function' || typeof store.set !== 'function' || typeof store.delete !== 'function') {
    throw new ConfigError(
      `KeyvCache needs a Keyv instance or a Keyv store such as new KeyvRedis({ url, commandOptions: { timeout: 1000 } }) (got ${keyvOrStore === null ? 'null' : typeof keyvOrStore})`,
      'keyvOrStore',
    );
  }
  return store;
}

/**
 * Whether `candidate` is a Keyv instance, not a store adapter: of class Keyv or of a subclass of it (an
 * application's `class Cache extends Keyv`), or shaped as one where a bundler renamed the class (its
 * `hooks` and `stats` managers, and the adapter in `store`). Taken for an adapter, its get() and set()
 * would put Keyv's JSON envelope around every stored value, and the SQL adapter underneath would lend
 * no atomic operation.
 */
function isKeyvInstance(candidate: object): boolean {
  for (let proto = Object.getPrototypeOf(candidate) as object | null; proto !== null && proto !== Object.prototype; proto = Object.getPrototypeOf(proto) as object | null) {
    if ((proto as { constructor?: { name?: unknown } }).constructor?.name === 'Keyv') return true;
  }
  const { hooks, stats, store } = candidate as { hooks?: unknown; stats?: unknown; store?: unknown };
  return typeof hooks === 'object' && hooks !== null && typeof stats === 'object' && stats !== null && typeof (store as { get?: unknown } | null)?.get === 'function';
}
