import type { GuardedStore } from '../store.js';

/** Where an entry lives right now: the store the user chose, or a fallback while it is down. */
export interface Tier {
  /** `shared`: the store every process points at; `host`: this host's directory; `process`: this process. */
  readonly name: 'shared' | 'host' | 'process';
  /** Where the entry and its failure marker are read and written. */
  readonly entries: GuardedStore;
  /** Where the refresh lock is taken; undefined when nothing can hold one. */
  readonly lock: GuardedStore | undefined;
}

/**
 * The stores an entry falls back through. While the shared store answers, everything happens there
 * (a store without atomic `add`, such as most Keyv stores, gets its lock from the host's directory, so
 * the processes of one host still fetch one at a time). While it is down, the processes of one host share
 * tokens, locks and back-off through a directory of the OS temp dir, and a process that cannot write
 * there keeps to itself: a store outage costs one fetch per host, not one per process.
 */
export class StoreTiers {
  readonly #shared: () => GuardedStore;
  readonly #host: () => GuardedStore | undefined;
  readonly #process: GuardedStore;

  constructor(shared: () => GuardedStore, host: () => GuardedStore | undefined, processLocal: GuardedStore) {
    this.#shared = shared;
    this.#host = host;
    this.#process = processLocal;
  }

  /** The shared store, whatever its state. */
  get shared(): GuardedStore {
    return this.#shared();
  }

  current(): Tier {
    const shared = this.#shared();
    const host = this.#host();
    const hostUp = host !== undefined && !host.down ? host : undefined;
    if (!shared.down) return { name: 'shared', entries: shared, lock: shared.atomicAdd ? shared : (hostUp ?? this.#process) };
    if (hostUp) return { name: 'host', entries: hostUp, lock: hostUp };
    return { name: 'process', entries: this.#process, lock: this.#process };
  }
}
