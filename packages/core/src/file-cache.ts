import { createHash, randomBytes } from 'node:crypto';
import { link, mkdir, readdir, readFile, readlink, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { TokenCache } from './cache.js';
import { CacheError, ConfigError } from './errors.js';

/** Options of {@link FileCache}. */
export interface FileCacheOptions {
  /**
   * The directory that holds one file per key. Every process that shares tokens points at the same one.
   * Created (recursively) with mode 0700 on first use when missing; an existing directory is used as it
   * is, never chmod-ed. The default lives under the OS temp directory, which some hosts clean on reboot
   * or by age: harmless (tokens are fetched again), but a directory of your own survives both.
   * @default `${os.tmpdir()}/wxkit-${process.getuid()}` (`wxkit-user` where there are no uids)
   */
  dir?: string;
  /**
   * Age in ms after which another writer's guard file (which serialises the writers of one key for a
   * few microseconds) is broken even though its process may still run. A guard whose process is gone is
   * broken at once, but only when it was written in this PID namespace on this boot: the PID of another
   * container sharing the directory means nothing here, so such a guard is judged by this age alone.
   * Lower recovers sooner from a hung or killed writer; too low could break the guard of a writer that
   * is merely paused (a stopped or swapped-out process).
   * @default 10000
   */
  guardStaleMs?: number;
  /**
   * How long, in ms, a write waits for another writer's guard before it fails with a CacheError.
   * Longer rides out a hung writer until its guard goes stale; shorter surfaces a stuck directory sooner.
   * @default 12000 (longer than guardStaleMs, so a hung writer's guard is broken first)
   */
  guardTimeoutMs?: number;
  /**
   * Clock in ms since the epoch that expiries are written and checked against, for tests that move time
   * forward. Guard ages always use the real clock.
   * @default Date.now
   */
  now?: () => number;
}

// A writer waits longer than a guard takes to go stale, so a hung holder is broken before writers give up.
const DEFAULTS = Object.freeze({ guardStaleMs: 10_000, guardTimeoutMs: 12_000 });

// A guard holds `<pid> <namespace id> <random>`; a temp file is named `<file>~<namespace id>-<pid>-<random>.tmp`.
const GUARD = /^(\d+) ([0-9a-f]{16}) [0-9a-f]+$/;
const TEMP = /^([0-9a-f]{16})-(\d+)-[0-9a-f]+\.tmp$/;

// An entry file is `v1 <expiresAtMs>\n<value>`. The header keeps the TTL next to the value, so any
// process can tell an expired entry without a side table.
const HEADER = /^v1 (\d{1,16})\n/;

/**
 * A TokenCache in a directory: one file per key, for the processes of one host. Writes are atomic
 * (temp file + rename), `add`, `deleteIfEquals` and `compareAndSet` are atomic across processes, files
 * are 0600.
 * Across hosts, use a Redis or Memcached adapter instead.
 *
 * @example
 * ```ts
 * app.setCache(new FileCache({ dir: '/var/lib/myapp/wechat' }));
 * ```
 */
export class FileCache implements TokenCache {
  readonly dir: string;
  readonly #guardStaleMs: number;
  readonly #guardTimeoutMs: number;
  readonly #now: () => number;
  #ready: Promise<void> | undefined;
  #closed = false;

  constructor(options: FileCacheOptions | string = {}) {
    const opts: FileCacheOptions = typeof options === 'string' ? { dir: options } : options;
    if (opts === null || typeof opts !== 'object') throw invalid('', 'an object or a directory path', opts);
    if (opts.dir !== undefined && (typeof opts.dir !== 'string' || opts.dir.length === 0)) {
      throw invalid('dir', 'a non-empty path', opts.dir);
    }
    for (const name of ['guardStaleMs', 'guardTimeoutMs'] as const) {
      const value = opts[name];
      if (value !== undefined && (typeof value !== 'number' || !Number.isFinite(value) || value <= 0)) {
        throw invalid(name, 'a number > 0', value);
      }
    }
    if (opts.now !== undefined && typeof opts.now !== 'function') throw invalid('now', 'a function', opts.now);
    this.dir = opts.dir ?? join(tmpdir(), `wxkit-${process.getuid?.() ?? 'user'}`);
    this.#guardStaleMs = opts.guardStaleMs ?? DEFAULTS.guardStaleMs;
    this.#guardTimeoutMs = opts.guardTimeoutMs ?? DEFAULTS.guardTimeoutMs;
    this.#now = opts.now ?? Date.now;
  }

  async get(key: string): Promise<string | undefined> {
    await this.#open('get');
    return (await this.#read(this.#path(key), 'get')).value;
  }

  async ttlMs(key: string): Promise<number | undefined> {
    await this.#open('ttlMs');
    const { value, expiresAt } = await this.#read(this.#path(key), 'ttlMs');
    return value === undefined ? undefined : expiresAt - this.#now();
  }

  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    const path = await this.#prepare('set', key, ttlSeconds);
    await this.#guarded(path, 'set', () => this.#write(path, value, ttlSeconds, 'set'));
  }

  async delete(key: string): Promise<void> {
    await this.#open('delete');
    const path = this.#path(key);
    await this.#guarded(path, 'delete', () => this.#unlink(path, 'delete'));
  }

  async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    const path = await this.#prepare('add', key, ttlSeconds);
    return this.#guarded(path, 'add', async () => {
      // An expired file counts as absent: that is how a lock whose holder died is recovered.
      if ((await this.#read(path, 'add')).value !== undefined) return false;
      await this.#write(path, value, ttlSeconds, 'add');
      return true;
    });
  }

  async deleteIfEquals(key: string, expected: string): Promise<boolean> {
    await this.#open('deleteIfEquals');
    const path = this.#path(key);
    return this.#guarded(path, 'deleteIfEquals', async () => {
      if ((await this.#read(path, 'deleteIfEquals')).value !== expected) return false;
      await this.#unlink(path, 'deleteIfEquals');
      return true;
    });
  }

  async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    const path = await this.#prepare('compareAndSet', key, ttlSeconds);
    return this.#guarded(path, 'compareAndSet', async () => {
      // An expired file counts as absent, and an absent key is never created.
      if ((await this.#read(path, 'compareAndSet')).value !== expected) return false;
      await this.#write(path, value, ttlSeconds, 'compareAndSet');
      return true;
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  /** The file that holds `key`: safe characters kept, every other byte as %XX, long names hashed. */
  #path(key: string): string {
    let name = '';
    for (const byte of Buffer.from(key, 'utf8')) {
      const ch = String.fromCharCode(byte);
      name += /[A-Za-z0-9_.-]/.test(ch) && !(name === '' && ch === '.') ? ch : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
    }
    // `%%` never occurs in an encoded name, so a hashed name cannot collide with a plain one.
    if (name.length > 200) name = `${name.slice(0, 150)}%%${createHash('sha256').update(key).digest('hex').slice(0, 40)}`;
    return join(this.dir, name);
  }

  async #read(path: string, op: string): Promise<{ value: string | undefined; expiresAt: number }> {
    let raw: Buffer;
    try {
      raw = await readFile(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { value: undefined, expiresAt: 0 };
      throw this.#error(op, error);
    }
    const text = raw.toString('utf8');
    const header = HEADER.exec(text);
    // An unreadable file is no entry: the next write replaces it. A reader never throws over it.
    if (!header || Number(header[1]) <= this.#now()) return { value: undefined, expiresAt: 0 };
    return { value: text.slice(header[0].length), expiresAt: Number(header[1]) };
  }

  /** Temp file in the same directory, then rename: readers see the old file or the new one, never a part. */
  async #write(path: string, value: string, ttlSeconds: number, op: string): Promise<void> {
    const temp = await tempName(path);
    const expiresAt = Math.ceil(this.#now() + ttlSeconds * 1000);
    try {
      await writeFile(temp, `v1 ${expiresAt}\n${value}`, { flag: 'wx', mode: 0o600 });
      await rename(temp, path);
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw this.#error(op, error);
    }
  }

  async #unlink(path: string, op: string): Promise<void> {
    try {
      await unlink(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw this.#error(op, error);
    }
  }

  /**
   * Runs `fn` holding `<file>~guard`, created exclusively, so the writers of one key never interleave
   * (an add between another's read and write would otherwise give two winners). Readers take no guard.
   */
  async #guarded<T>(path: string, op: string, fn: () => Promise<T>): Promise<T> {
    const guard = `${path}~guard`;
    const mine = `${process.pid} ${await namespaceId()} ${randomBytes(8).toString('hex')}`;
    const started = Date.now();
    for (let attempt = 0; ; attempt += 1) {
      try {
        await writeFile(guard, mine, { flag: 'wx', mode: 0o600 });
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw this.#error(op, error);
      }
      await this.#breakIfStale(guard, op);
      if (Date.now() - started > this.#guardTimeoutMs) {
        throw new CacheError(`FileCache ${op} waited ${this.#guardTimeoutMs} ms for another writer in ${this.dir}`);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(1 + attempt, 20)));
    }
    try {
      await this.#sweepTemps(path);
      return await fn();
    } finally {
      // Remove the guard only if it is still ours: had this process been paused past guardStaleMs, the
      // guard now there belongs to whoever broke ours.
      if ((await readFile(guard, 'utf8').catch(() => '')) === mine) await unlink(guard).catch(() => undefined);
    }
  }

  /**
   * A guard whose process is gone (judged only for guards of our own PID namespace), or that is older
   * than guardStaleMs, is taken away: renamed to a unique name (only one breaker can win that rename),
   * checked to be the same stale guard, then removed. If a live guard was caught instead, it is put back
   * with link(), which never overwrites.
   */
  async #breakIfStale(guard: string, op: string): Promise<void> {
    let content: string;
    let age: number;
    try {
      [content, age] = await Promise.all([readFile(guard, 'utf8'), stat(guard).then((s) => Date.now() - s.mtimeMs)]);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw this.#error(op, error);
    }
    const owner = GUARD.exec(content);
    const dead = owner !== null && (await gone(Number(owner[1]), owner[2]!));
    // An empty guard is written microseconds after it is created; one that stays empty for a second
    // belongs to a process that died in between. Any other content (a guard of an older format, or of
    // another program) is judged by its age alone.
    const limit = content === '' ? Math.min(1000, this.#guardStaleMs) : this.#guardStaleMs;
    if (!dead && age < limit) return;
    // Named like a temp file of ours, so it is swept should we die before removing it.
    const taken = await tempName(guard.slice(0, -'~guard'.length));
    try {
      await rename(guard, taken);
    } catch {
      return; // someone else broke it first
    }
    if ((await readFile(taken, 'utf8').catch(() => '')) !== content) await link(taken, guard).catch(() => undefined);
    await unlink(taken).catch(() => undefined);
  }

  /**
   * Under the guard no live process writes temp files for this key but us, so any other one was left by
   * a process that died mid-write (or mid-break): remove those whose process is gone, judged as guards
   * are (by PID in our own namespace, else by an age past guardStaleMs).
   */
  async #sweepTemps(path: string): Promise<void> {
    const prefix = `${basename(path)}~`;
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const left = await Promise.all(
      names
        .filter((name) => name.startsWith(prefix) && name.endsWith('.tmp'))
        .map(async (name) => {
          const temp = TEMP.exec(name.slice(prefix.length));
          if (temp && (await gone(Number(temp[2]), temp[1]!))) return name;
          const age = await stat(join(this.dir, name)).then((s) => Date.now() - s.mtimeMs, () => 0);
          return age >= this.#guardStaleMs ? name : undefined;
        }),
    );
    await Promise.all(left.filter((name) => name !== undefined).map((name) => unlink(join(this.dir, name)).catch(() => undefined)));
  }

  async #prepare(op: string, key: string, ttlSeconds: number): Promise<string> {
    if (typeof ttlSeconds !== 'number' || !Number.isFinite(ttlSeconds) || ttlSeconds <= 0) {
      throw new RangeError(`FileCache ttlSeconds must be a finite number > 0 (got ${String(ttlSeconds)})`);
    }
    await this.#open(op);
    return this.#path(key);
  }

  /** Checks the cache is open and creates the directory (0700) once, on first use. */
  #open(op: string): Promise<void> {
    if (this.#closed) return Promise.reject(new CacheError(`FileCache ${op} after close() (${this.dir})`));
    this.#ready ??= mkdir(this.dir, { recursive: true, mode: 0o700 }).then(
      () => undefined,
      (error: unknown) => {
        this.#ready = undefined;
        throw this.#error(op, error);
      },
    );
    return this.#ready;
  }

  #error(op: string, cause: unknown): CacheError {
    const code = (cause as NodeJS.ErrnoException | null)?.code;
    return new CacheError(`FileCache ${op} failed in ${this.dir}${code ? ` (${code})` : ''}`, { cause });
  }
}

/** A unique temp file name beside `path`, carrying who writes it so that a sweeper can tell it is left over. */
async function tempName(path: string): Promise<string> {
  return `${path}~${await namespaceId()}-${process.pid}-${randomBytes(6).toString('hex')}.tmp`;
}

/**
 * Whether the process that wrote a guard or temp file is known to be gone. A PID means something only in
 * the PID namespace it was issued in, on the boot it was issued on: two containers sharing a volume each
 * see the other's PIDs as dead, or as some unrelated process. So only our own namespace's PIDs are checked.
 */
async function gone(pid: number, namespace: string): Promise<boolean> {
  return namespace === (await namespaceId()) && Number.isInteger(pid) && pid > 0 && pid !== process.pid && !alive(pid);
}

let ownNamespace: Promise<string> | undefined;

/**
 * 16 hex digits naming this process's PID namespace on this boot of this host, the same for every process
 * that shares it. On Linux, a hash of the boot id and of the PID namespace's identity; where /proc cannot
 * tell (another OS, a masked /proc), an id drawn once per host and kept in the OS temp directory. Should
 * even that fail, an id of this process alone: its guards are then judged by age, which is slow but safe.
 */
function namespaceId(): Promise<string> {
  ownNamespace ??= linuxNamespaceId()
    .catch(() => hostNamespaceId())
    .catch(() => randomBytes(8).toString('hex'));
  return ownNamespace;
}

async function linuxNamespaceId(): Promise<string> {
  const [bootId, pidNamespace] = await Promise.all([readFile('/proc/sys/kernel/random/boot_id', 'utf8'), readlink('/proc/self/ns/pid')]);
  if (bootId.trim() === '' || !pidNamespace.startsWith('pid:')) throw new Error('no boot id or PID namespace in /proc');
  return createHash('sha256').update(`${bootId.trim()}\n${pidNamespace}`).digest('hex').slice(0, 16);
}

/** Whichever process comes first writes the id; link() never overwrites, so every process reads the same one. */
async function hostNamespaceId(): Promise<string> {
  const file = join(tmpdir(), 'wxkit-namespace-id');
  const read = async () => {
    const id = (await readFile(file, 'utf8')).trim();
    if (!/^[0-9a-f]{16}$/.test(id)) throw new Error(`${file} holds no namespace id`);
    return id;
  };
  try {
    return await read();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const id = randomBytes(8).toString('hex');
  const temp = `${file}.${process.pid}-${randomBytes(6).toString('hex')}`;
  await writeFile(temp, `${id}\n`, { mode: 0o644 });
  try {
    await link(temp, file);
    return id;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    return await read();
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function invalid(name: string, rule: string, value: unknown): ConfigError {
  const type = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
  return new ConfigError(`FileCache options${name ? `.${name}` : ''} must be ${rule} (got ${type})`, name || 'options');
}
