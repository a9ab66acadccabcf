import { createHash, randomBytes } from 'node:crypto';
import { constants, watch, type FSWatcher, type Stats } from 'node:fs';
import { access, link, lstat, open, readdir, readFile, readlink, rename, stat, symlink, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { TokenCache } from './cache.js';
import { binaryToBuffer } from './bytes.js';
import { makeDirectory } from './dirs.js';
import { markLocality } from './locality.js';
import { assertTtl } from './ttl.js';
import { CacheError, ConfigError, type CacheErrorReason } from './errors.js';
import { checkOptions, durationMs, fn, rule, typeName, type OptionSchema } from './validate.js';

/** Options of {@link FileCache}. */
export interface FileCacheOptions {
  /**
   * The directory that holds one file per key. Every process that shares tokens points at the same one.
   * Created (recursively) with mode 0700 on first use when missing, and again should it be removed while
   * in use; an existing directory is used as it is, never chmod-ed: whoever may create files in it can
   * plant token entries, so let only the users that share tokens write there. The default directory is
   * refused (every call fails with a CacheError that says why) unless it is this user's own and no one
   * else may write to it: another local user may have made it first. It lives under the OS temp
   * directory, which some hosts clean on reboot or by age: harmless (tokens are fetched again), but a
   * directory of your own survives both.
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

const FILE_CACHE_OPTIONS = {
  dir: rule('a non-empty path', (value) => typeof value === 'string' && value.length > 0),
  guardStaleMs: durationMs(),
  guardTimeoutMs: durationMs(),
  now: fn(),
} as const satisfies OptionSchema<keyof FileCacheOptions>;

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
 * (a temp file renamed, or for `add` linked, into place), `add`, `deleteIfEquals` and `compareAndSet`
 * are atomic across processes, files are 0600.
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
  /** Whether `dir` is the default one, which must be this user's own. */
  readonly #defaultDir: boolean;
  /** In the default directory, the uid every entry must belong to (this user's); undefined elsewhere. */
  readonly #owner: number | undefined;
  #closed = false;
  /** Who waits for which file to change, and the one directory watch that tells them (while anyone waits). */
  readonly #watchers = new Map<string, Set<() => void>>();
  #dirWatch: FSWatcher | undefined;
  /**
   * When this process last swept each key's leftovers. A sweep reads the whole directory,
   * which holds every account's files, so it runs at a key's first guarded write, then at most once per
   * guardStaleMs (nothing younger may be swept unless its process is gone), and after breaking a guard.
   * On the monotonic clock, so that a step of the wall clock neither stops sweeps nor forces them.
   */
  readonly #swept = new Map<string, number>();
  /**
   * Each guard or claim this process found standing, by file: its content and when it was first seen, on
   * the monotonic clock. A content never comes back once removed, so one seen unchanged has stood at least
   * that long, whatever its mtime says: one dated ahead (written before the wall clock was stepped back,
   * or by another host's clock) still goes stale.
   */
  readonly #standing = new Map<string, { content: string; since: number }>();

  constructor(options: FileCacheOptions | string = {}) {
    if (options === null || typeof options !== 'object' && typeof options !== 'string') {
      throw new ConfigError(`FileCache options must be an object or a directory path (got ${typeName(options)})`, 'options');
    }
    const opts = checkOptions<FileCacheOptions>('FileCache', FILE_CACHE_OPTIONS, typeof options === 'string' ? { dir: options } : options);
    this.#defaultDir = opts.dir === undefined;
    this.dir = opts.dir ?? join(tmpdir(), `wxkit-${process.getuid?.() ?? 'user'}`);
    markLocality(this, { scope: 'host', dir: this.dir });
    this.#owner = this.#defaultDir && process.platform !== 'win32' ? process.getuid?.() : undefined;
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
    // A key seen live is a lost add as of that read, with no guard taken: the waiters of a refresh lock
    // retry add() over and over, and would otherwise crowd out the holder's own release of the lock.
    const seen = await this.#read(path, 'add');
    if (seen.value !== undefined) return false;
    // No file at all: link() creates the name only where there is none, so the add is atomic without
    // the guard, in a few file operations instead of a dozen. The guarded add below creates with link()
    // too, so of two adds only one wins; a set() replaces whatever is there, as it would after any add.
    if (!seen.present) {
      if (await this.#create(path, value, ttlSeconds, 'add')) return true;
      if ((await this.#read(path, 'add')).value !== undefined) return false;
    }
    return this.#guarded(path, 'add', async (held) => {
      // An expired file counts as absent: that is how a lock whose holder died is recovered. Only a
      // guarded writer removes it, so it is still the one we read when we unlink it (unless our guard
      // was broken meanwhile: then what is there may be the breaker's, and is left); after that, an
      // unguarded add may link its own first, and ours loses.
      const current = await this.#read(path, 'add');
      if (current.value !== undefined) return false;
      if (!(await held())) return false;
      // A name that reads as absent can still be there: a symlink to nothing. No unguarded add can link
      // over it, so it too is removed here (a regular file found instead is another add's, and wins).
      if (current.present || (await this.#isSymlink(path, 'add'))) await this.#unlink(path, 'add');
      return this.#create(path, value, ttlSeconds, 'add');
    });
  }

  async deleteIfEquals(key: string, expected: string): Promise<boolean> {
    await this.#open('deleteIfEquals');
    const path = this.#path(key);
    // As in add(): a value seen to differ decides the outcome as of that read, without the guard.
    if ((await this.#read(path, 'deleteIfEquals')).value !== expected) return false;
    return this.#guarded(path, 'deleteIfEquals', async (held) => {
      if ((await this.#read(path, 'deleteIfEquals')).value !== expected) return false;
      // A guard broken while we compared (a pause past guardStaleMs): the file may be the breaker's now.
      if (!(await held())) return false;
      await this.#unlink(path, 'deleteIfEquals');
      return true;
    });
  }

  async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    const path = await this.#prepare('compareAndSet', key, ttlSeconds);
    if ((await this.#read(path, 'compareAndSet')).value !== expected) return false;
    return this.#guarded(path, 'compareAndSet', async (held) => {
      // An expired file counts as absent, and an absent key is never created.
      if ((await this.#read(path, 'compareAndSet')).value !== expected) return false;
      // Written only while the guard is still ours: one broken while we compared or wrote the draft (a
      // pause past guardStaleMs) lets a newer value in, which ours would replace.
      return this.#write(path, value, ttlSeconds, 'compareAndSet', held);
    });
  }

  /**
   * Calls `onChange` when the file of `key` is replaced or removed, by any process: one `fs.watch` of the
   * directory while anyone waits, which never keeps the process alive. Throws when the directory cannot
   * be watched (it does not exist yet, or the host is out of inotify watches): the caller polls then.
   */
  watch(key: string, onChange: () => void): () => void {
    if (this.#closed) throw new CacheError(`FileCache watch after close() (${this.dir})`, { reason: 'closed' });
    const name = basename(this.#path(key));
    if (!this.#dirWatch) {
      const self = basename(this.dir);
      const dirWatch = watch(this.dir, { persistent: false }, (event, file) => {
        const name = file === null ? undefined : String(file);
        this.#changed(name);
        // The directory itself removed or renamed (Linux tells no error then): the watch is dead, and a
        // waiter relying on it would wait for a safety-net poll. Every waiter looks once, and the next
        // watch() watches the directory there is now, or throws so that its caller polls.
        // (A file of the same name as the directory ends the watch too: its waiters only look once more.)
        if (event === 'rename' && name === self) this.#watchEnded(dirWatch);
      });
      // A watch that fails tells nobody again: it ends as when its directory went, every waiter looking
      // once (else each would wait for a safety-net poll), and the next watch() starts a new one.
      dirWatch.on('error', () => this.#watchEnded(dirWatch));
      this.#dirWatch = dirWatch;
    }
    let listeners = this.#watchers.get(name);
    if (!listeners) this.#watchers.set(name, (listeners = new Set()));
    listeners.add(onChange);
    return () => {
      listeners.delete(onChange);
      if (listeners.size === 0 && this.#watchers.get(name) === listeners) this.#watchers.delete(name);
      if (this.#watchers.size === 0) this.#stopWatching();
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#stopWatching();
  }

  /** A file of the directory changed (its name unknown on some platforms: then everyone looks). */
  #changed(file: string | undefined): void {
    const listeners = file === undefined ? [...this.#watchers.values()].flatMap((set) => [...set]) : this.#watchers.get(file);
    if (!listeners) return;
    for (const listener of listeners) listener();
  }

  /** Ends `dirWatch`, whose directory went, telling every waiter; their next watch() starts a new one. */
  #watchEnded(dirWatch: FSWatcher): void {
    if (this.#dirWatch !== dirWatch) return;
    const listeners = [...this.#watchers.values()].flatMap((set) => [...set]);
    dirWatch.close();
    this.#dirWatch = undefined;
    for (const listener of listeners) listener();
  }

  #stopWatching(): void {
    this.#dirWatch?.close();
    this.#dirWatch = undefined;
    this.#watchers.clear();
  }

  /** The file that holds `key`: safe characters kept, every other byte as %XX, long names hashed. */
  #path(key: string): string {
    let name = '';
    for (const byte of Buffer.from(key, 'utf8')) {
      const ch = String.fromCharCode(byte);
      name += /[A-Za-z0-9_.-]/.test(ch) && !(name === '' && ch === '.') ? ch : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
    }
    // The empty key: `%` alone, which no other key encodes to, and not the directory itself.
    if (name === '') name = '%';
    // `%%` never occurs in an encoded name, so a hashed name cannot collide with a plain one.
    if (name.length > 200) name = `${name.slice(0, 150)}%%${createHash('sha256').update(key).digest('hex').slice(0, 40)}`;
    return join(this.dir, name);
  }

  /** The live value of a file, if any; `present` tells an expired or unreadable file from no file at all. */
  async #read(path: string, op: string): Promise<{ value: string | undefined; expiresAt: number; present: boolean }> {
    let raw: Buffer | undefined;
    try {
      raw = await readRegular(path, this.#owner);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return { value: undefined, expiresAt: 0, present: false };
      // A file this user may not read in a directory it may read and write: another user's (a root cron
      // job's, an operator's `sudo` run, mode 0600), which this user's next write replaces. That is about
      // this key, as a directory at it is (CacheErrorReason `type`), not an outage of the store: taken for
      // one, it would send every account to WeChat. In a directory this user may not write to (one handed
      // to another user whole, `chown -R`), no key can be read or written: an outage, as a write says.
      if ((code === 'EACCES' || code === 'EPERM') && (await access(this.dir, constants.R_OK | constants.W_OK | constants.X_OK).then(() => true, () => false))) {
        throw new CacheError(`FileCache ${op} found a file at that key in ${this.dir} that this user may not read (another user's; left as it is)`, {
          cause: this.#withoutNames(error),
          reason: 'type',
        });
      }
      if (code !== FOREIGN) throw this.#error(op, error);
      // Another user's file in the default directory: the directory may have been removed and made again
      // by someone else since it was checked. Check it again (a refusal is this call's error); where it is
      // still this user's own, the file is no entry, and the next write replaces it.
      this.#ready = undefined;
      await this.#open(op);
      return { value: undefined, expiresAt: 0, present: true };
    }
    // A symlink, a FIFO, a device or a file far larger than any entry: no entry, replaced by the next write.
    if (raw === undefined) return { value: undefined, expiresAt: 0, present: true };
    // Values are binary strings (one character per byte), and the header is ASCII.
    const text = raw.toString('latin1');
    const header = HEADER.exec(text);
    // An unreadable file is no entry: the next write replaces it. A reader never throws over it.
    if (!header || Number(header[1]) <= this.#now()) return { value: undefined, expiresAt: 0, present: true };
    return { value: text.slice(header[0].length), expiresAt: Number(header[1]), present: true };
  }

  /** Temp file, then link(): the file is created whole, and only where no file of that name is; false if one is. */
  async #create(path: string, value: string, ttlSeconds: number, op: string): Promise<boolean> {
    const temp = await this.#draft(path, value, ttlSeconds, op);
    try {
      await link(temp, path);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw this.#error(op, error);
    } finally {
      await unlink(temp).catch(() => undefined);
    }
  }

  /**
   * Temp file in the same directory, then rename: readers see the old file or the new one, never a part.
   * With `held`, renamed only if it still says the guard is ours; resolves whether it was.
   */
  async #write(path: string, value: string, ttlSeconds: number, op: string, held?: () => Promise<boolean>): Promise<boolean> {
    const temp = await this.#draft(path, value, ttlSeconds, op);
    try {
      if (held && !(await held())) {
        await unlink(temp).catch(() => undefined);
        return false;
      }
      await rename(temp, path);
      return true;
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw this.#error(op, error);
    }
  }

  /** A temp file beside `path` holding the entry (0600), written whole; the caller renames, links or removes it. */
  async #draft(path: string, value: string, ttlSeconds: number, op: string): Promise<string> {
    const bytes = binaryToBuffer(value, 'FileCache');
    // A TTL meant as "for ever" (1e13 s, 2 ** 53) still makes a header the reader takes: beyond 16 digits,
    // or in exponent form, the entry would read as unreadable, absent, and replaced by the next add.
    const expiresAt = Math.min(Math.ceil(this.#now() + ttlSeconds * 1000), Number.MAX_SAFE_INTEGER);
    const content = Buffer.concat([Buffer.from(`v1 ${expiresAt}\n`, 'latin1'), bytes]);
    // A reader takes a larger file for no entry: written, it would read as a miss, and every add() over
    // it would win. Refused before anything is written, as a bad TTL is.
    if (content.length > MAX_ENTRY_BYTES) {
      throw new RangeError(`FileCache ${op}: an entry must be at most ${MAX_ENTRY_BYTES} bytes, its header included (got ${content.length}); nothing was written`);
    }
    const temp = await tempName(path);
    try {
      await this.#writeNew(temp, content, op);
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw this.#error(op, error);
    }
    return temp;
  }

  /**
   * Creates `file` (0600) holding `content`. Should the directory be gone (a cleaner of the temp
   * directory, an operator), it is made again, once, and the write tried again: without that every
   * write would fail until the process restarts.
   */
  async #writeNew(file: string, content: Buffer | string, op: string): Promise<void> {
    const flag = 'wx';
    try {
      await writeFile(file, content, { flag, mode: 0o600 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      this.#ready = undefined;
      await this.#open(op);
      await writeFile(file, content, { flag, mode: 0o600 });
    }
  }

  async #isSymlink(path: string, op: string): Promise<boolean> {
    try {
      return (await lstat(path)).isSymbolicLink();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
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
  async #guarded<T>(path: string, op: string, fn: (held: () => Promise<boolean>) => Promise<T>): Promise<T> {
    const guard = `${path}~guard`;
    const mine = `${process.pid} ${await namespaceId()} ${randomBytes(8).toString('hex')}`;
    // The guard is written whole beside its place, then linked there: link() creates a name only where
    // there is none, so a guard is never seen empty or half written. The draft is written afresh for
    // each attempt, so that a guard gained after a long wait does not look old.
    const draft = await tempName(path);
    // On the monotonic clock: a step of the wall clock neither ends the wait early nor makes it last hours.
    const started = performance.now();
    let broke = false;
    try {
      for (let attempt = 0; ; attempt += 1) {
        // Where the file system has no room for the draft, the guard and this attempt's claims are symlinks.
        let mark: ((file: string) => Promise<void>) | undefined;
        try {
          mark = await this.#marker(draft, mine, op);
          await mark(guard);
          break;
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw this.#error(op, error);
        }
        // (No mark when a file was planted at the draft's name: this attempt claims nothing.)
        if (mark && (await this.#breakIfStale(path, mark, op))) broke = true;
        if (performance.now() - started > this.#guardTimeoutMs) {
          throw new CacheError(`FileCache ${op} waited ${this.#guardTimeoutMs} ms for another writer in ${this.dir}`, { reason: 'timeout' });
        }
        await new Promise((resolve) => setTimeout(resolve, Math.min(1 + attempt, 20)));
      }
    } finally {
      await unlink(draft).catch(() => undefined);
    }
    try {
      // A guard broken is a writer that died: what else it left is swept at once.
      const due = this.#sweepDue(path);
      if (broke || due) await this.#sweep(path, mine);
      // Whether the guard is still ours, for `fn` to ask right before what it cannot take back.
      return await fn(async () => (await this.#inspect(guard, op).catch(() => undefined))?.content === mine);
    } finally {
      // Remove the guard only if it is still ours: had this process been paused past guardStaleMs, the
      // guard now there belongs to whoever broke ours.
      if ((await this.#inspect(guard, op).catch(() => undefined))?.content === mine) await unlink(guard).catch(() => undefined);
    }
  }

  /**
   * How this attempt makes its guard or claims, each holding `mine`: the draft, written now, linked there
   * (link() creates a name only where there is none, and a file written whole is never seen half written).
   * Where the file system has no room for the draft (full, or over quota), a symlink whose target is
   * `mine`: symlink() too creates a name only where there is none, its target is set whole with it, and a
   * target this short is kept in the inode itself (ext4, XFS, tmpfs), so it needs no data block. That
   * keeps delete() and deleteIfEquals() (and an add() over an expired lock, which removes it first) working
   * on a full file system: they free room rather than take any, and a refresh lock's release must not wait
   * for its lease. A symlink in GUARD's form is read as a guard (#inspect), never followed.
   */
  async #marker(draft: string, mine: string, op: string): Promise<(file: string) => Promise<void>> {
    // Removed and created anew (O_EXCL), never rewritten in place: opened without O_EXCL, a symlink
    // another user of a shared directory swapped in for it would be followed, and whatever file it
    // points to overwritten. (EEXIST, should one be planted in between, is one more attempt.)
    await unlink(draft).catch(() => undefined);
    try {
      await this.#writeNew(draft, mine, op);
      return (file) => link(draft, file);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOSPC' && code !== 'EDQUOT') throw error;
      // Created before its write failed: an empty file no sweep would tell from a live writer's draft.
      await unlink(draft).catch(() => undefined);
      return async (file) => {
        try {
          await symlink(mine, file);
        } catch (failure) {
          // No room even for that (no inode left), or no symlinks here: the file system's own answer stands.
          if ((failure as NodeJS.ErrnoException).code === 'EEXIST') throw failure;
          throw error;
        }
      };
    }
  }

  /**
   * Breaks the guard of `path` if it is abandoned: its process is gone (judged only for guards of our own
   * PID namespace) or it is older than guardStaleMs. Resolves whether this process broke it.
   *
   * Many waiters see the same abandoned guard at once, and a guard is only a name: a waiter that removed
   * it by name a moment late would remove the next holder's guard and let a third writer in beside it.
   * So a given guard is broken by one process only, the one that creates its claim file
   * `<file>~break-<hash of the guard>-0` (made as our guard would be, by `mark`: never empty). The
   * claimant reads the guard again: a guard's content is unique and never comes back once removed, so
   * finding it unchanged means no one else has broken it, and no one else may until the claim is gone.
   * Should a claimant die, its claim is abandoned like a guard, and the next claim (`-1`, `-2`, …) is
   * taken instead; abandoned claims are never removed while their guard stands, so no claim is ever
   * removed from under a live one.
   */
  async #breakIfStale(path: string, mark: (file: string) => Promise<void>, op: string): Promise<boolean> {
    const guard = `${path}~guard`;
    const seen = await this.#inspect(guard, op);
    if (!seen || !(await this.#abandoned(guard, seen))) return false;
    const id = createHash('sha256').update(seen.content).digest('hex').slice(0, 16);
    const claims: string[] = [];
    for (let k = 0; ; k += 1) {
      const claim = `${path}~break-${id}-${k}`;
      claims.push(claim);
      try {
        await mark(claim);
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw this.#error(op, error);
      }
      const other = await this.#inspect(claim, op);
      if (other && !(await this.#abandoned(claim, other))) return false; // someone is breaking it right now
    }
    try {
      // Gone or replaced: someone broke it before we claimed it, and it never comes back.
      if ((await this.#inspect(guard, op))?.content !== seen.content) return false;
      // Named like a temp file of ours, so it is swept should we die before removing it.
      const taken = await tempName(path);
      try {
        await rename(guard, taken);
      } catch {
        return false;
      }
      // Only the guard's own holder, waking from a pause past guardStaleMs, can have removed it in the
      // meantime; if another writer's guard was caught instead, it is put back (link never overwrites).
      // Read as the guard was, through #inspect: a FIFO taken would otherwise be opened waiting for a writer.
      const found = await this.#inspect(taken, op).catch(() => undefined);
      const caught = found?.content === seen.content;
      // A symlink is put back as a new one of the same target: link() of a symlink follows it on some systems.
      if (!caught) await (found?.symlink ? symlink(found.content, guard) : link(taken, guard)).catch(() => undefined);
      else this.#standing.delete(guard);
      await unlink(taken).catch(() => undefined);
      return caught;
    } finally {
      // The guard these claims were for is gone for good, so they guard nothing any more.
      await Promise.all(claims.map((claim) => unlink(claim).catch(() => undefined)));
    }
  }

  /**
   * A guard's or a claim's content and age, read through one handle; undefined when there is none.
   * Writers link regular files there, or where the file system is full, make a symlink whose target is
   * the content (#marker): such a symlink is read with readlink(), never followed. Anything else (a FIFO,
   * a socket, a symlink to anything but a guard's content) is no writer's guard: it is never followed nor
   * read (a FIFO would wait for a writer), and is abandoned at once, known by its inode, so that it is
   * broken as a dead writer's guard is.
   */
  async #inspect(file: string, op: string): Promise<Inspected | undefined> {
    // A name replaced between two looks of one inspection (a symlink guard by a file guard, or the other
    // way round, as writers on a file system that is full one moment and not the next make them) is
    // inspected again: judged from two looks at two guards, a live one could pass for no writer's and be
    // broken. A name that keeps changing is taken for none this time.
    for (let looks = 0; looks < 4; looks += 1) {
      const seen = await this.#look(file, op);
      if (seen !== CHANGED) return seen;
    }
    return undefined;
  }

  /** One look of #inspect: CHANGED when the name was seen to hold another file in between. */
  async #look(file: string, op: string): Promise<Inspected | typeof CHANGED | undefined> {
    let handle: FileHandle | undefined;
    try {
      handle = await open(file, READ_FLAGS);
      const stats = await handle.stat();
      if (!stats.isFile() && !stats.isDirectory()) return { content: `${NOT_A_GUARD}${stats.dev}:${stats.ino}`, age: Infinity };
      return { content: await handle.readFile('utf8'), age: Date.now() - stats.mtimeMs };
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined;
      if (code === 'ELOOP' || code === 'EMLINK' || code === 'ENXIO') {
        const stats = await lstat(file).catch(() => undefined);
        if (!stats) return undefined;
        if (stats.isSymbolicLink()) return this.#lookAtSymlink(file, stats, op);
        // A file open() would have opened: what it refused is gone.
        if (stats.isFile() || stats.isDirectory()) return CHANGED;
        return { content: `${NOT_A_GUARD}${stats.dev}:${stats.ino}`, age: Infinity };
      }
      throw this.#error(op, error);
    } finally {
      await handle?.close();
    }
  }

  /**
   * A symlink at a guard or claim (`first`, as lstat() saw it): a writer's, made where the file system was
   * full (#marker), when its target has a guard's form, and as old as the symlink; else no writer's. The
   * target is read before and after the age: a guard's content never comes back once removed, so the same
   * target both times means the age is of that guard (or of the same guard put back by a breaker, younger:
   * never broken sooner for it).
   */
  async #lookAtSymlink(file: string, first: Stats, op: string): Promise<Inspected | typeof CHANGED | undefined> {
    try {
      const content = await readlink(file);
      const stats = await lstat(file);
      if (!GUARD.test(content)) {
        if (!stats.isSymbolicLink() || stats.ino !== first.ino || stats.dev !== first.dev) return CHANGED;
        return { content: `${NOT_A_GUARD}${stats.dev}:${stats.ino}`, age: Infinity };
      }
      if ((await readlink(file)) !== content) return CHANGED;
      return { content, age: Date.now() - stats.mtimeMs, symlink: true };
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined;
      // No longer a symlink: readlink() refuses anything else.
      if (code === 'EINVAL') return CHANGED;
      throw this.#error(op, error);
    }
  }

  /**
   * A guard or claim is abandoned when it is older than guardStaleMs, or when it names a process of our
   * own namespace that is gone. Anything else (another namespace, an older format) is judged by age only:
   * by its mtime, or by how long this process has seen it standing, whichever is longer.
   */
  async #abandoned(file: string, { content, age }: { content: string; age: number }): Promise<boolean> {
    const now = performance.now();
    const standing = this.#standing.get(file);
    if (standing?.content !== content) {
      // Bounded: forgetting costs only a guard dated ahead waited for a little longer.
      if (this.#standing.size >= 4096) this.#standing.clear();
      this.#standing.set(file, { content, since: now });
    } else if (now - standing.since > age) {
      age = now - standing.since;
    }
    if (age >= this.#guardStaleMs) return true;
    const owner = GUARD.exec(content);
    return owner !== null && (await gone(Number(owner[1]), owner[2]!));
  }

  /**
   * Under the guard, the other temp files of this key are the drafts of waiting writers (rewritten at
   * every attempt) and files left by processes that died mid-write or mid-break: remove those whose
   * process is gone, judged as guards are (by PID in our own namespace, else by an age past
   * guardStaleMs). Claims to break a guard other than ours are claims on a guard that is gone: remove
   * them too.
   */
  async #sweep(path: string, mine: string): Promise<void> {
    const prefix = `${basename(path)}~`;
    const ours = `${prefix}break-${createHash('sha256').update(mine).digest('hex').slice(0, 16)}-`;
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const left = await Promise.all(
      names
        .filter((name) => name.startsWith(prefix))
        .map(async (name) => {
          if (name.startsWith(`${prefix}break-`)) return name.startsWith(ours) ? undefined : name;
          if (!name.endsWith('.tmp')) return undefined;
          const temp = TEMP.exec(name.slice(prefix.length));
          if (temp && (await gone(Number(temp[2]), temp[1]!))) return name;
          // Its own age, never followed: a symlink guard a breaker took aside is a symlink at a temp name,
          // whose target (the guard's content) names nothing, and would pass for young for ever.
          const age = await lstat(join(this.dir, name)).then((s) => Date.now() - s.mtimeMs, () => 0);
          return age >= this.#guardStaleMs ? name : undefined;
        }),
    );
    await Promise.all(left.filter((name) => name !== undefined).map((name) => unlink(join(this.dir, name)).catch(() => undefined)));
  }

  /** Whether the leftovers of `path` are due for a sweep, noting that one runs now. */
  #sweepDue(path: string): boolean {
    const now = performance.now();
    const last = this.#swept.get(path);
    if (last !== undefined && now - last < this.#guardStaleMs) return false;
    // Bounded: past this many keys written within guardStaleMs, forgetting costs only an early sweep.
    if (this.#swept.size >= 4096) this.#swept.clear();
    this.#swept.set(path, now);
    return true;
  }

  async #prepare(op: string, key: string, ttlSeconds: number): Promise<string> {
    assertTtl('FileCache', ttlSeconds);
    await this.#open(op);
    return this.#path(key);
  }

  /** Checks the cache is open and creates the directory (0700) once, on first use. */
  #open(op: string): Promise<void> {
    if (this.#closed) return Promise.reject(new CacheError(`FileCache ${op} after close() (${this.dir})`, { reason: 'closed' }));
    // Not kept when it fails: a directory made later, or whose mode is fixed, serves without a restart.
    this.#ready ??= (async () => {
      await makeDirectory(this.dir, 0o700);
      await this.#checkDir(op);
    })().catch((error: unknown) => {
      this.#ready = undefined;
      throw this.#error(op, error);
    });
    return this.#ready;
  }

  /**
   * The default directory (a name anyone can predict, in a directory every local user may write to) is
   * refused unless it is this user's own and no one else may write to it: another user who made it first
   * could plant token entries there. A directory passed as `dir` is the caller's choice and used as it is
   * (a volume shared between containers is often mode 0777). Where the platform has no uids or modes
   * (Windows), nothing is checked.
   */
  async #checkDir(op: string): Promise<void> {
    const uid = process.getuid?.();
    if (!this.#defaultDir || uid === undefined || process.platform === 'win32') return;
    const refuse = (why: string) => {
      throw new CacheError(
        `FileCache ${op}: refusing the default directory ${this.dir}: ${why}, so another local user could plant token entries there; pass a directory of your own as \`dir\``,
        { reason: 'permission' },
      );
    };
    // A link another user made at the name would lead the entries wherever it points (into a directory
    // of this user's, where the checks below pass), and could be pointed elsewhere later. Root's (an
    // administrator's, systemd-tmpfiles') is followed: root may write anywhere already.
    const link = await lstat(this.dir);
    if (link.isSymbolicLink() && link.uid !== uid && link.uid !== 0) refuse(`it is a symbolic link that belongs to uid ${link.uid}, not to this user (${uid})`);
    const stats = link.isSymbolicLink() ? await stat(this.dir) : link;
    if (stats.uid !== uid) refuse(`it belongs to uid ${stats.uid}, not to this user (${uid})`);
    if ((stats.mode & 0o022) !== 0) refuse(`others may write to it (mode ${(stats.mode & 0o7777).toString(8)})`);
  }

  #error(op: string, failure: unknown): CacheError {
    const code = (failure as NodeJS.ErrnoException | null)?.code;
    if (failure instanceof CacheError) return failure;
    const cause = this.#withoutNames(failure);
    // A directory where a key's file belongs is another program's, as a Redis hash at a key is: an answer
    // about that key (CacheErrorReason `type`), not an outage of the store, and it is left as it is.
    if (code === 'EISDIR') {
      return new CacheError(`FileCache ${op} found a directory, not an entry, at that key in ${this.dir} (another program's; left as it is)`, { cause, reason: 'type' });
    }
    const reason = code === undefined ? undefined : ERRNO_REASONS[code];
    return new CacheError(`FileCache ${op} failed in ${this.dir}${code ? ` (${code})` : ''}`, { cause, ...(reason ? { reason } : {}) });
  }

  /**
   * `failure` without the names of the files it was about: a file's name is its key, and a profile's key
   * may hold the app's secret (easyWeChat6). Node's errors name the file in their message and `path`; the
   * cause kept has the directory in their place, and the code, errno and syscall.
   */
  #withoutNames(failure: unknown): unknown {
    if (!(failure instanceof Error)) return failure;
    const { code, errno, syscall } = failure as NodeJS.ErrnoException;
    let message = failure.message;
    // The files' paths are join(dir, name): the directory as given (`./cache`, `/srv//tokens/`) comes
    // out normalized (`cache/…`, `/srv/tokens/…`), so both forms are looked for.
    for (const form of new Set([this.dir, join(this.dir, '.')])) {
      for (let at = message.indexOf(form); at >= 0; at = message.indexOf(form, at + this.dir.length)) {
        let end = at + form.length;
        while (end < message.length && !/['"\s]/.test(message[end]!)) end += 1;
        message = `${message.slice(0, at)}${this.dir}/…${message.slice(end)}`;
      }
    }
    return Object.assign(new Error(message), code === undefined ? {} : { code }, errno === undefined ? {} : { errno }, syscall === undefined ? {} : { syscall });
  }
}

/**
 * The CacheErrorReason of a file system error, where one says what an operator must fix: the user may
 * not write there (`permission`), the file system takes no writes (`readonly`: read-only, full, over
 * quota), or the directory is not one (`database`, as a Redis database that does not exist).
 */
const ERRNO_REASONS: Readonly<Record<string, CacheErrorReason>> = {
  EACCES: 'permission',
  EPERM: 'permission',
  EROFS: 'readonly',
  ENOSPC: 'readonly',
  EDQUOT: 'readonly',
  ENOTDIR: 'database',
  ENOENT: 'database',
};

/** The content #inspect gives a guard or claim that is no writer's (no regular file, nor a symlink to a guard's content), with its inode: never a writer's content. */
const NOT_A_GUARD = '\0not a guard ';

/** What #inspect tells of a guard or claim: its content, its age in ms, and whether it is a symlink (#marker). */
interface Inspected {
  content: string;
  age: number;
  symlink?: true;
}

/** A look of #inspect that saw the name hold another file in between. */
const CHANGED = Symbol('changed');

/** readRegular()'s code for a file of another user than the one it was asked to require. */
const FOREIGN = 'WXKIT_FOREIGN_OWNER';

// Opening never follows a symlink (ELOOP) nor waits for a writer (a FIFO opened non-blocking).
const READ_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);
/** Far above any entry (a few hundred bytes); a larger file is no entry, and is not read. */
const MAX_ENTRY_BYTES = 1 << 20;

/**
 * The bytes of `path` if it is a regular file of at most MAX_ENTRY_BYTES; undefined when it is anything
 * else (a symlink, a FIFO, a device, a huge file). Rejects with FOREIGN when `owner` is given and the file
 * is another uid's, with ENOENT when there is nothing there, and
 * with EISDIR when a directory is.
 */
async function readRegular(path: string, owner: number | undefined): Promise<Buffer | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(path, READ_FLAGS);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // ELOOP: a symlink (EMLINK on the BSDs); ENXIO: a socket; none is an entry.
    if (code === 'ELOOP' || code === 'EMLINK' || code === 'ENXIO') return undefined;
    throw error;
  }
  try {
    const stats = await handle.stat();
    // A directory cannot be replaced by a write as the others can: it stays, and is said (EISDIR).
    if (stats.isDirectory()) throw Object.assign(new Error(`${path} is a directory`), { code: 'EISDIR' });
    if (!stats.isFile() || stats.size > MAX_ENTRY_BYTES) return undefined;
    if (owner !== undefined && stats.uid !== owner) throw Object.assign(new Error(`${path} belongs to uid ${stats.uid}`), { code: FOREIGN });
    // The size is known: read it at once (handle.readFile() would stat the file a second time, one more
    // trip to the thread pool on the path every waiter and every store read takes). Entries are replaced
    // by rename, never written in place, so the file opened keeps that size.
    const buffer = Buffer.allocUnsafe(stats.size);
    let filled = 0;
    while (filled < buffer.length) {
      const { bytesRead } = await handle.read(buffer, filled, buffer.length - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return buffer.subarray(0, filled);
  } finally {
    await handle.close();
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
  try {
    // Inside the try: a write that fails (a full file system) may have created the file already.
    await writeFile(temp, `${id}\n`, { mode: 0o644 });
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

