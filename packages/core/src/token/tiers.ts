import { createHash } from 'node:crypto';
import { lstatSync } from 'node:fs';
import { dirname } from 'node:path';
import type { TokenCache } from '../cache.js';
import { makeDirectorySync } from '../dirs.js';
import { FileCache } from '../file-cache.js';
import type { GuardedStore } from '../store.js';
import { LocalBackoffs } from './local-backoff.js';

/** Where an entry lives right now: the store the user chose, or a fallback while it is down. */
export interface Tier {
  /** `shared`: the store every process points at; `host`: this host's directory; `process`: this process. */
  readonly name: 'shared' | 'host' | 'process';
  /** Where the entry and its failure marker are read and written. */
  readonly entries: GuardedStore;
  /** Where the refresh lock is taken; undefined when nothing can hold one. */
  readonly lock: GuardedStore | undefined;
}

/** Where StoreTiers finds each store (a client's core); the fallbacks are made when first asked for. */
export interface TierStores {
  /** The store the user chose. */
  readonly store: GuardedStore;
  /**
   * This host's directory, or undefined when it is not used; with `existing`, also undefined where the
   * directory has not been made yet (nothing was ever written there).
   */
  hostStore(existing?: boolean): GuardedStore | undefined;
  /** This process's own: asked for only when neither the store nor the host's directory can serve. */
  processStore(): GuardedStore;
  /**
   * fallback() for one look while the store answers: the handle the client holds, or where it holds none
   * yet, one made for the look (`made`), for the caller to hand to lookedIn() after it.
   */
  fallbackForLook(): { name: 'host' | 'process'; entries: GuardedStore; made: boolean };
  /**
   * A handle fallbackForLook() made, after its look: let go, unless the look found that store down or
   * took it for down. The client keeps it then, as a handle made for use: it probes the store and hears
   * of the outage's end, as it heard of its start.
   */
  lookedIn(name: 'host' | 'process', entries: GuardedStore): void;
  /** Where an entry's refresh lock lives (the key schema's), for a store whose parts fail one at a time. */
  readonly schema?: { lockKey(entryKey: string): string };
}

/**
 * The stores an entry falls back through. While the shared store answers, everything happens there
 * (a store without atomic `add`, such as most Keyv stores, gets its lock from the host's directory, so
 * the processes of one host still fetch one at a time). While it is down, the processes of one host share
 * tokens, locks and back-off through a directory of the OS temp dir, and a process that cannot write
 * there keeps to itself: a store outage costs one fetch per host, not one per process.
 */
export class StoreTiers {
  readonly #stores: TierStores;
  /**
   * This process's own back-off of the fetches that never left it, by entry: held here, with the stores
   * the clients of a pool share, so that a client the pool makes anew keeps its predecessor's pause.
   */
  readonly unsent = new LocalBackoffs();

  constructor(stores: TierStores) {
    this.#stores = stores;
  }

  /** The shared store, whatever its state. */
  get shared(): GuardedStore {
    return this.#stores.store;
  }

  /**
   * Where the entry of `key` lives now. For a store whose parts fail one at a time (TokenCache.partition),
   * only the parts that hold the entry and its refresh lock count.
   */
  current(key: string): Tier {
    const shared = this.#stores.store;
    const sharedDown = shared.downFor(key) || this.#lockDown(shared, key);
    // The usual case needs nothing of the host's directory: no handle on it is made until it does.
    if (!sharedDown && shared.atomicAdd) return { name: 'shared', entries: shared, lock: shared };
    const hostUp = this.#hostUp(false);
    if (!sharedDown) return { name: 'shared', entries: shared, lock: shared.atomicAdd ? shared : (hostUp ?? this.#stores.processStore()) };
    return this.#fallback(hostUp);
  }

  /**
   * Where the entry would live if the shared store were down now: this host's directory, or this
   * process's own where the directory cannot serve. Asked while the shared store answers, it makes no
   * directory that is not there yet: the usual case needs none.
   */
  fallback(): Tier {
    return this.#fallback(this.#hostUp(true));
  }

  /**
   * `look` at fallback() while the shared store answers, through a handle made for the look and let go
   * after it where this client holds none yet: every account's first fetch looks there once (KeptTokens),
   * and 10,000 accounts would otherwise each keep a handle (about 0.2 KB) on a store they may never use.
   */
  async lookInFallback<T>(look: (fallback: Tier) => Promise<T>): Promise<T> {
    const { name, entries, made } = this.#stores.fallbackForLook();
    try {
      return await look({ name, entries, lock: entries });
    } finally {
      if (made) this.#stores.lookedIn(name, entries);
    }
  }

  /** This host's directory where it is used and not down (see TierStores.hostStore for `existing`). */
  #hostUp(existing: boolean): GuardedStore | undefined {
    const host = this.#stores.hostStore(existing);
    return host !== undefined && !host.down ? host : undefined;
  }

  #fallback(hostUp: GuardedStore | undefined): Tier {
    if (hostUp) return { name: 'host', entries: hostUp, lock: hostUp };
    const local = this.#stores.processStore();
    return { name: 'process', entries: local, lock: local };
  }

  /**
   * Asks the shared store whether it answers again for the entry of `key`: the part that holds the entry,
   * and the one that holds its refresh lock (see #lockDown), where each is taken for down. Resolves once
   * they answered (a probe of each, joined where one is under way: GuardedStore.answers), or at once
   * where neither is down; rejects with the first failure.
   */
  async answers(key: string): Promise<void> {
    const shared = this.#stores.store;
    const lockKey = this.#lockElsewhere(shared, key);
    const down = [key, ...(lockKey === undefined ? [] : [lockKey])].filter((each) => shared.downFor(each));
    await Promise.all(down.map((each) => shared.answers(each)));
  }

  /**
   * Whether the part of a partitioned store that holds the refresh lock of `key` is down, where the key
   * schema puts the lock elsewhere than `{key}:lock` (a peer's `…:lock:{appId}:accessTokenLock`): the
   * entry cannot be refreshed there, and falls back as if its own part were down.
   */
  #lockDown(shared: GuardedStore, key: string): boolean {
    const lockKey = this.#lockElsewhere(shared, key);
    return lockKey !== undefined && shared.downFor(lockKey);
  }

  /** The refresh lock's key of `key` on a partitioned store, where the key schema puts it elsewhere than `{key}:lock` (which lives on the entry's part). */
  #lockElsewhere(shared: GuardedStore, key: string): string | undefined {
    if (typeof shared.cache.partition !== 'function') return undefined;
    let lockKey: string | undefined;
    try {
      lockKey = this.#stores.schema?.lockKey(key);
    } catch {
      return undefined;
    }
    return typeof lockKey === 'string' && lockKey !== `${key}:lock` ? lockKey : undefined;
  }
}

const hostFallbacks = new Map<string, TokenCache>();

/**
 * This host's fallback in `dir`, one per directory and process: a FileCache (files 0600) whose file names
 * are hashes of the keys (a profile's key may hold the secret). The directory must belong to this user
 * and be writable by nobody else, nor the one it sits in unless that is sticky (/tmp), or another user
 * could plant tokens and markers there: a string says why it cannot be used. That is not kept: a
 * directory that could not be made (a full disk) or whose mode is fixed serves when next asked for.
 */
export function hostFallback(dir: string): TokenCache | string {
  let found = hostFallbacks.get(dir);
  if (found === undefined) {
    const refused = checkPrivateDir(dir);
    if (refused !== undefined) return refused;
    found = hashedKeys(new FileCache({ dir }));
    hostFallbacks.set(dir, found);
  }
  return found;
}

function checkPrivateDir(dir: string): string | undefined {
  try {
    makeDirectorySync(dir, 0o700);
    for (const path of [dirname(dir), dir]) {
      const stat = lstatSync(path);
      const uid = process.getuid?.();
      if (!stat.isDirectory()) return `${path} is not a directory`;
      if (uid !== undefined && stat.uid !== uid && !(path === dirname(dir) && (stat.mode & 0o1000) !== 0 && stat.uid === 0)) {
        return `${path} belongs to another user`;
      }
      const sticky = path !== dir && (stat.mode & 0o1000) !== 0;
      if ((stat.mode & 0o022) !== 0 && !sticky) return `${path} may be written by other users (mode ${(stat.mode & 0o777).toString(8)})`;
    }
  } catch (error) {
    return `${dir} cannot be used (${(error as NodeJS.ErrnoException).code ?? 'error'})`;
  }
  return undefined;
}

function hashedKeys(cache: TokenCache): TokenCache {
  const name = (key: string) => createHash('sha256').update(key).digest('hex');
  return {
    get: (key) => cache.get(name(key)),
    set: (key, value, ttl) => cache.set(name(key), value, ttl),
    delete: (key) => cache.delete(name(key)),
    add: (key, value, ttl) => cache.add!(name(key), value, ttl),
    deleteIfEquals: (key, expected) => cache.deleteIfEquals!(name(key), expected),
    compareAndSet: (key, expected, value, ttl) => cache.compareAndSet!(name(key), expected, value, ttl),
    watch: (key, onChange) => cache.watch!(name(key), onChange),
    close: () => cache.close?.() ?? Promise.resolve(),
  };
}
