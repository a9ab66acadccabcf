import { createHash } from 'node:crypto';
import { KeyvMemcache } from '@keyv/memcache';
import { CacheError, ConfigError, type TokenCache } from '@wxkit/core';
import { assertTtl, checkOptions, durationMs, required, rule, typeName, type OptionSchema } from '@wxkit/core/internal';
import { hintOf, reasonOf, timedOut } from './failure.js';
import { ownSockets, type MemjsServer } from './memjs-sockets.js';

/** Options of {@link MemcachedCache}. */
export interface MemcachedCacheOptions {
  /**
   * `host:port`, several separated by commas, or an array of them. A `memcached://` prefix is accepted.
   * Keys are spread over several servers by hash, as memjs does.
   */
  servers: string | string[];
  /** SASL user name, for servers that require it. */
  username?: string;
  /** SASL password. Never shown in messages. */
  password?: string;
  /**
   * How long one request may take, in ms, before it counts as failed (as much again when it first waits
   * for its connection and SASL login); one past it fails its connection, and the next call connects
   * anew. A failed `get`, `set` or `delete`
   * is retried once; the conditional writes (`add`, and the CAS write of `deleteIfEquals` and
   * `compareAndSet`) are never resent blindly.
   * @default 500
   */
  timeoutMs?: number;
  /**
   * The flags memcached keeps beside each item written: a number, or one per item from its key and
   * value. wxkit reads an item's bytes whatever its flags; PHP's php-memcached reads the flags: with 0
   * it hands the bytes back as a string, with 4 it unserializes them as a value it serialized itself.
   * EasyWeChat 4 on Laravel's Memcached store (which hands EasyWeChat's array to php-memcached as it
   * is) reads an array there: give {@link phpMemcachedFlags}. Not for a PHP store that serializes the
   * value itself (ThinkPHP's): it would get an array where it expects a string.
   * @default 0
   */
  flags?: number | ((key: string, value: string) => number);
}

/**
 * The flags php-memcached gives a value it serialized itself (4), for a value that is PHP's `serialize()`
 * of an array (`a:2:{…}`: EasyWeChat 4's token and ticket entries); 0, a string, for any other. See
 * {@link MemcachedCacheOptions.flags}.
 */
export function phpMemcachedFlags(_key: string, value: string): number {
  return /^a:\d+:\{[\s\S]*\}$/.test(value) ? PHP_MEMCACHED_SERIALIZED : 0;
}

/** php-memcached's MEMC_VAL_IS_SERIALIZED: the value is PHP's serialize() of what was stored. */
const PHP_MEMCACHED_SERIALIZED = 4;

const DEFAULTS = Object.freeze({ timeoutMs: 500 });

const MEMCACHED_OPTIONS = {
  // memjs splits a server at its first colon: an IPv6 address ([::1]:11211) would never connect.
  servers: required(
    rule('"host:port" (a name or an IPv4 address), several separated by commas, or an array of them', (value) => parseServers(value) !== undefined, {
      nearMiss: (value) => (holdsCredentials(value) ? CREDENTIALS_NEAR_MISS : undefined),
    }),
  ),
  username: rule('a string', (value) => typeof value === 'string'),
  password: rule('a string', (value) => typeof value === 'string'),
  timeoutMs: durationMs(),
  flags: rule('a whole number from 0 to 4294967295, or a function (key, value) => flags', (value) => typeof value === 'function' || isFlags(value)),
} as const satisfies OptionSchema<keyof MemcachedCacheOptions>;

/** The part of memjs's client that wxkit uses. */
interface MemjsClient {
  servers: MemjsServer[];
  perform(key: string, request: Buffer, seq: number, callback: (error: Error | null, response?: MemjsResponse) => void, retries: number): void;
  server(key: string): MemjsServer | undefined;
  /** The index in `servers` of the server a key is placed on (the key's hash modulo their number). */
  getServer(key: string): number;
  incrSeq(): void;
  seq: number;
}

interface MemjsResponse {
  header: { status: number; cas: Buffer };
  val: Buffer;
}

// Binary protocol opcodes and statuses (memcached protocol_binary.h).
const OP_GET = 0x00;
const OP_SET = 0x01;
const OP_ADD = 0x02;
const OP_DELETE = 0x04;
const STATUS_OK = 0;
const STATUS_NOT_FOUND = 1;
const STATUS_EXISTS = 2;

/**
 * A TokenCache on Memcached, built on @keyv/memcache's memjs client: raw values (a plain `get` returns
 * the documented bytes; @keyv/memcache's own `get` would JSON-parse them), TTL in whole seconds, `add`
 * atomic, and `deleteIfEquals` / `compareAndSet` as a binary-protocol `DELETE` / `SET` carrying the CAS
 * of the value they compared, so a value written in between is never deleted or replaced.
 *
 * @example
 * ```ts
 * app.setCache(new MemcachedCache('10.0.0.7:11211'));
 * ```
 */
export class MemcachedCache implements TokenCache {
  readonly #client: MemjsClient;
  /** `host:port` of each server, in the order given. */
  readonly #servers: readonly string[];
  readonly #closeSockets: (reason: Error) => Promise<void>;
  readonly #where: string;
  readonly #timeoutMs: number;
  readonly #flags: (key: string, value: string) => number;
  #closed = false;

  constructor(options: string | MemcachedCacheOptions) {
    if (options === null || (typeof options !== 'object' && typeof options !== 'string')) {
      throw new ConfigError(`MemcachedCache options must be "host:port" or an options object (got ${typeName(options)})`, 'options');
    }
    const opts = checkOptions<MemcachedCacheOptions>('MemcachedCache', MEMCACHED_OPTIONS, typeof options === 'string' ? { servers: options } : options);
    const servers = parseServers(opts.servers)!;
    const timeoutMs = opts.timeoutMs ?? DEFAULTS.timeoutMs;
    this.#where = `memcached ${servers.join(',')}`;
    this.#timeoutMs = timeoutMs;
    const flags = opts.flags ?? 0;
    this.#flags = typeof flags === 'function' ? flags : () => flags;
    const store = new KeyvMemcache(servers.join(','), {
      username: opts.username,
      password: opts.password,
      // Every request has a deadline of its own (#send); memjs's idle timer, which would fire with it after
      // the process was held up and fail a request whose answer waits to be read, is left out of it.
      timeout: MEMJS_NO_TIMEOUT_S,
      conntimeout: timeoutMs / 1000,
      // memjs never resends (1 attempt): it would resend a stored ADD, and resend after close().
      // MemcachedCache decides which requests may go out again.
      retries: 1,
      keepAlive: true,
      // memjs logs every failed request to console; failures reach the caller as CacheErrors instead.
      logger: { log: () => undefined },
    } as never);
    store.on('error', () => undefined);
    this.#client = store.client as unknown as MemjsClient;
    this.#servers = servers;
    this.#closeSockets = ownSockets(this.#client.servers);
  }

  /**
   * The server that holds `key` and its companions (`host:port`), so that the token protocol takes only
   * that server for down when a call there fails: the entries on the others are shared as before. With
   * one server, '' (the store fails as a whole).
   */
  partition(key: string): string {
    if (this.#servers.length < 2) return '';
    return this.#servers[this.#client.getServer(wireKey(placement(key)))] ?? '';
  }

  get(key: string): Promise<string | undefined> {
    return this.#run('get', key, async () => (await this.#get(key))?.value.toString('latin1'));
  }

  // The writes check their value and TTL before #run: a bad one is the caller's bug, rejected with a
  // RangeError as every other store rejects it, not a failure of memcached.
  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    const body = { extras: this.#extras(key, value, ttlSeconds), value: binary(value) };
    return this.#run('set', key, async () => {
      answered('SET', await this.#send(key, (seq) => request(OP_SET, seq, key, body), 2), STATUS_OK);
    });
  }

  delete(key: string): Promise<void> {
    return this.#run('delete', key, async () => {
      answered('DELETE', await this.#send(key, (seq) => request(OP_DELETE, seq, key), 2), STATUS_OK, STATUS_NOT_FOUND);
    });
  }

  async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    const body = { extras: this.#extras(key, value, ttlSeconds), value: binary(value) };
    return this.#run('add', key, async () => {
      let response: MemjsResponse;
      try {
        // Sent once, never resent blindly: an ADD whose answer was lost may have been stored, and a
        // resend would then answer EXISTS, so the process would wait a whole lease for its own lock.
        response = await this.#send(key, (seq) => request(OP_ADD, seq, key, body), 1);
      } catch (lost) {
        if (this.#closed) throw lost;
        // The store knows whether it was stored: our value means this call stored it. Absent, it was
        // not stored or is gone already, and unreadable, nothing is known: both reject.
        const current = await this.#get(key).catch(() => undefined);
        if (!current) throw lost;
        return current.value.equals(body.value);
      }
      return answered('ADD', response, STATUS_OK, STATUS_EXISTS) === STATUS_OK;
    });
  }

  async deleteIfEquals(key: string, expected: string): Promise<boolean> {
    const expectedBytes = binary(expected);
    return this.#run('deleteIfEquals', key, async () => {
      const current = await this.#conditional(key, expectedBytes);
      if (!current) return false;
      // DELETE with the CAS we read: memcached refuses it (EXISTS) if anyone wrote the key since. Sent
      // once: a resend after a lost answer would find the key gone and answer NOT_FOUND.
      const response = await this.#send(key, (seq) => request(OP_DELETE, seq, key, { cas: current.cas }), 1);
      return answered('DELETE', response, STATUS_OK, STATUS_NOT_FOUND, STATUS_EXISTS) === STATUS_OK;
    });
  }

  async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    const [extras, expectedBytes, bytes] = [this.#extras(key, value, ttlSeconds), binary(expected), binary(value)];
    return this.#run('compareAndSet', key, async () => {
      const current = await this.#conditional(key, expectedBytes);
      if (!current) return false;
      // SET with the CAS we read: memcached refuses it (EXISTS) if anyone wrote the key since, and
      // (NOT_FOUND) if it is gone. Sent once: had its answer been lost after it was stored, a resend
      // would meet our own write and answer EXISTS.
      const body = { extras, value: bytes, cas: current.cas };
      const response = await this.#send(key, (seq) => request(OP_SET, seq, key, body), 1);
      return answered('SET', response, STATUS_OK, STATUS_NOT_FOUND, STATUS_EXISTS) === STATUS_OK;
    });
  }

  /** The extras of a SET or ADD of `value` at `key`: its flags (the option's) and its expiration. */
  #extras(key: string, value: string, ttlSeconds: number): Buffer {
    const flags = this.#flags(key, value);
    if (!isFlags(flags)) throw new RangeError(`MemcachedCache flags must be a whole number from 0 to 4294967295 (the flags option gave ${typeName(flags)} for a value)`);
    return storeExtras(ttlSeconds, flags);
  }

  /**
   * Closes every connection, fails calls still waiting for an answer, and resolves once nothing is
   * left open: the process can then exit by itself. Later calls reject with a CacheError.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#closeSockets(new Error('MemcachedCache was closed before memcached answered'));
  }

  /**
   * The key's value and CAS when it holds `expected`, for a write conditional on that CAS; undefined when
   * it holds something else or nothing. On a memcached -C the CAS is 0, and the write unconditional (see
   * the README).
   */
  async #conditional(key: string, expected: Buffer): Promise<{ value: Buffer; cas: Buffer } | undefined> {
    const current = await this.#get(key);
    return current && current.value.equals(expected) ? current : undefined;
  }

  /** A binary GET that keeps the value's bytes and CAS (memjs's own get drops the CAS). */
  async #get(key: string): Promise<{ value: Buffer; cas: Buffer } | undefined> {
    const response = await this.#send(key, (seq) => request(OP_GET, seq, key), 2);
    if (answered('GET', response, STATUS_OK, STATUS_NOT_FOUND) === STATUS_NOT_FOUND) return undefined;
    return { value: response.val, cas: response.header.cas };
  }

  /**
   * Sends the request `build` makes for a fresh sequence number and resolves memcached's answer.
   * `attempts` 2 is for requests that may go out twice (a connection memcached dropped since the last
   * call fails the first), 1 for the conditional writes; never again once closed.
   */
  async #send(key: string, build: (seq: number) => Buffer, attempts: 1 | 2): Promise<MemjsResponse> {
    for (let attempt = 1; ; attempt += 1) {
      // A call's next request after close() (a conditional write once its read is answered) is not
      // sent: it would open a connection again, which nothing would close.
      if (this.#closed) throw new Error('MemcachedCache was closed before the request was sent');
      this.#client.incrSeq();
      // Unsigned, as memjs reads the opaque of an answer (its own counter turns negative past 2^31).
      const seq = this.#client.seq >>> 0;
      let deadline: NodeJS.Timeout | undefined;
      let settled = false;
      try {
        return await new Promise<MemjsResponse>((resolve, reject) => {
          const settle = (error: Error | null, response?: MemjsResponse) => {
            settled = true;
            if (error || !response) reject(error ?? new Error('memcached gave no response'));
            else resolve(response);
          };
          // memjs times a request out with its socket's idle timer, which every new request restarts:
          // against a server that stopped answering, calls made one after another (waiters polling)
          // would keep each other waiting for ever. Each request has its own deadline; when it passes,
          // the connection is failed as memjs would (its pending requests fail, the next call connects).
          // A request that must wait for its connection (and its SASL login) first has timeoutMs for
          // that too, as memjs gives a connection (conntimeout).
          // memjs picks the server by the key it is given; the request carries the key itself.
          const route = wireKey(placement(key));
          const server = this.#client.server(route);
          const budgetMs = server?.connected ? this.#timeoutMs : 2 * this.#timeoutMs;
          // Decided one turn of the event loop later: timers run before I/O, so a process held up past the
          // deadline (a long synchronous task) would otherwise fail a request whose answer came meanwhile.
          deadline = setTimeout(() => {
            setImmediate(() => {
              if (settled) return;
              reject(timedOut(`memcached did not answer within ${budgetMs} ms`));
              server?.error(timedOut('socket timed out waiting on response.'));
            });
          }, budgetMs);
          deadline.unref?.();
          this.#client.perform(route, build(seq), seq, settle, 1);
        });
      } catch (error) {
        if (attempt >= attempts || this.#closed) throw error;
      } finally {
        clearTimeout(deadline);
      }
    }
  }

  async #run<T>(op: string, key: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new CacheError(`MemcachedCache ${op} after close() (${this.#where})`, { reason: 'closed' });
    try {
      return await fn();
    } catch (error) {
      // A call still waiting when close() was called fails with close()'s error: closed, whatever else.
      const reason = this.#closed ? 'closed' : reasonOf(error);
      throw new CacheError(`MemcachedCache ${op} failed on ${this.#where}${hintOf(reason)}`, { cause: error, ...(reason ? { reason } : {}) });
    }
  }
}

/** The status of memcached's answer; any other than `expected` is a failure (out of memory, too large…). */
function answered(command: string, response: MemjsResponse, ...expected: number[]): number {
  if (!expected.includes(response.header.status)) throw new Error(`memcached ${command} answered status ${response.header.status}`);
  return response.header.status;
}

/** A binary-protocol request (memcached protocol_binary.h): header, extras, key, value. */
function request(opcode: number, seq: number, key: string, body: { extras?: Buffer; value?: Buffer; cas?: Buffer } = {}): Buffer {
  const keyBytes = Buffer.from(wireKey(key), 'utf8');
  const extras = body.extras ?? Buffer.alloc(0);
  const value = body.value ?? Buffer.alloc(0);
  const buffer = Buffer.alloc(24 + extras.length + keyBytes.length + value.length);
  buffer.writeUInt8(0x80, 0); // request magic
  buffer.writeUInt8(opcode, 1);
  buffer.writeUInt16BE(keyBytes.length, 2);
  buffer.writeUInt8(extras.length, 4);
  buffer.writeUInt32BE(extras.length + keyBytes.length + value.length, 8); // total body length
  buffer.writeUInt32BE(seq, 12); // opaque: memjs matches the response by it
  body.cas?.copy(buffer, 16);
  extras.copy(buffer, 24);
  keyBytes.copy(buffer, 24 + extras.length);
  value.copy(buffer, 24 + extras.length + keyBytes.length);
  return buffer;
}

/**
 * The key memcached is sent: the key itself, or past memcached's 250 bytes, or holding a space or control
 * character (a peer schema's prefix may), a digest of it. The protocol's companions (`{key}:lock`,
 * `:failed`, `:refetch`) are longer than their entry's key: refused, a key of 243 to 250 bytes would take
 * the store for down in every process, each fetching on its own; so would every key of a prefix with a
 * space. No client of another language can hold such a key in memcached, so the digest shares with
 * nobody it could have.
 */
function wireKey(key: string): string {
  return Buffer.byteLength(key) <= 250 && !/[\s\u0000-\u001f\u007f]/.test(key) ? key : `wxkit:sha256:${createHash('sha256').update(key).digest('hex')}`;
}

/**
 * The key whose server holds `key`: the entry's own for the protocol's companions (`{key}:lock`,
 * `:failed`, `:refetch`, `:forced`, `:end`), so that an entry and its lock live on one server. Hashed apart (with
 * two servers they always were: the suffixes change the hash's parity), one server down of several would
 * break the lock or the entry of every app, and each host would fetch on its own. So does the entry the
 * fleet shares beside a key holding another program's value (`{key}:wxkit`, and its companions): every
 * read of it reads the key first. And the `wxkit` command's write check (`{key}:probe`): elsewhere, it
 * would refuse to fetch for a key whose server is up.
 */
function placement(key: string): string {
  return key.replace(/(?::wxkit)?(?::(?:lock|failed|refetch|forced|end|probe))?$/, '');
}

/** The extras of SET and ADD: the flags and the expiration. */
function storeExtras(ttlSeconds: number, flags: number): Buffer {
  const extras = Buffer.alloc(8);
  extras.writeUInt32BE(flags, 0);
  extras.writeUInt32BE(expires(ttlSeconds), 4);
  return extras;
}

/**
 * memcached counts whole seconds from a clock it reads once a second, whole seconds again: that clock runs
 * up to 2 s behind, so an entry sent with N may go after N − 2 seconds. Round up and add those 2, so that
 * an entry never expires before its TTL (a refresh lock would otherwise lose up to 2 s of the lease its
 * holder counts on).
 */
function expires(ttlSeconds: number): number {
  assertTtl('MemcachedCache', ttlSeconds);
  const seconds = Math.ceil(ttlSeconds) + CLOCK_LAG_S;
  // memcached reads a number above 30 days as a Unix time: a longer TTL is sent as the time it ends (at
  // most the field's last one, in 2106), so a one-year refresh token is not dropped after 30 days.
  return seconds <= MAX_RELATIVE_S ? seconds : Math.min(Math.floor(Date.now() / 1000) + seconds, 0xffffffff);
}

/** Whether `value` fits memcached's 32-bit flags. */
function isFlags(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0xffffffff;
}

/** The longest expiration memcached reads as seconds from now: 30 days. */
const MAX_RELATIVE_S = 30 * 24 * 3600;

/** memjs's request timeout, in seconds: the longest a Node timer takes (2^31 − 1 ms), so it never fires. */
const MEMJS_NO_TIMEOUT_S = 2_147_483;

/** How far memcached's clock may run behind the caller's, in whole seconds. */
const CLOCK_LAG_S = 2;

/** The servers as memjs takes them, `host:port` each; undefined when they are not that. */
function parseServers(servers: unknown): string[] | undefined {
  const list = typeof servers === 'string' ? servers.split(',') : Array.isArray(servers) ? servers : undefined;
  const parsed = list?.map((entry) => (typeof entry === 'string' ? entry.trim().replace(/^memcached:\/\//, '').replace(/\/$/, '') : ''));
  if (!parsed || parsed.length === 0 || !parsed.every(isServer)) return undefined;
  return parsed;
}

// The CLI's --store takes memcached://user:password@host:port; the class takes the credentials as options.
const CREDENTIALS_NEAR_MISS =
  'must be "host:port" without a user or password: give SASL credentials as the username and password options, ' +
  "new MemcachedCache({ servers: 'host:11211', username, password }) (the value is not shown: it holds a password)";

/** Whether a `servers` value carries `user:password@` before a host, as a URL would. */
function holdsCredentials(servers: unknown): boolean {
  const list = typeof servers === 'string' ? servers.split(',') : Array.isArray(servers) ? servers : [];
  return list.some((entry) => typeof entry === 'string' && /^(memcached:\/\/)?[^/@]*@/.test(entry.trim()));
}

/** `host:port` with a port from 1 to 65535: past it, net.connect throws and every call would fail as an outage. */
function isServer(entry: string): boolean {
  const port = /^[A-Za-z0-9.\-_]+:(\d{1,5})$/.exec(entry)?.[1];
  return port !== undefined && Number(port) >= 1 && Number(port) <= 65535;
}

/**
 * The bytes of a value: TokenCache values are binary strings, one character per byte (see TokenCache),
 * stored as they are, flags 0.
 */
function binary(value: string): Buffer {
  if (/[^\x00-\xff]/.test(value)) {
    throw new RangeError('MemcachedCache values are binary strings (char codes 0–255, one per byte); encode text as UTF-8 first');
  }
  return Buffer.from(value, 'latin1');
}
