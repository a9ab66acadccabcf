import type { TokenCache } from '@wxkit/core';

/** What the probe last saw of the store. */
export interface StoreState {
  up: boolean;
  /** Unix ms of the last change between up and down (not of a change of reason while down). */
  since: number;
  /** Why it is down: the CacheError's reason when the adapter gives one (`refused`, `auth`…). */
  reason?: string;
  /** The adapter's message, for the log only: it may name the store's host and port. */
  message?: string;
}

/**
 * Reads one key of the store every `intervalMs` (a read the clients' ACL allows: an app's token key) and
 * reports each change between up and down once, through `onChange`. The first probe runs at once; the
 * timer never keeps the process alive.
 */
export class StoreProbe {
  #state: StoreState | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly #cache: TokenCache;
  readonly #key: string;
  readonly #intervalMs: number;
  readonly #timeoutMs: number;
  readonly #onChange: (state: StoreState) => void;

  constructor(cache: TokenCache, key: string, options: { intervalMs: number; timeoutMs: number; onChange: (state: StoreState) => void }) {
    this.#cache = cache;
    this.#key = key;
    this.#intervalMs = options.intervalMs;
    this.#timeoutMs = options.timeoutMs;
    this.#onChange = options.onChange;
  }

  /** Undefined until the first probe has answered. */
  get state(): StoreState | undefined {
    return this.#state;
  }

  /** Probes now and then every interval; resolves after the first probe. */
  async start(): Promise<void> {
    await this.#probe();
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  async #probe(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    let next: StoreState;
    try {
      await Promise.race([
        this.#cache.get(this.#key),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(Object.assign(new Error(`the store did not answer within ${this.#timeoutMs} ms`), { reason: 'timeout' })), this.#timeoutMs);
          // A probe of a hung store must not keep a process that is shutting down alive.
          timer.unref();
        }),
      ]);
      next = { up: true, since: Date.now() };
    } catch (error) {
      const { reason, message } = error as { reason?: string; message?: string };
      // The key holds another kind of value (a Redis hash): the store answered, about that key.
      next = reason === 'type' ? { up: true, since: Date.now() } : { up: false, since: Date.now(), ...(reason ? { reason } : {}), message: message ?? String(error) };
    } finally {
      clearTimeout(timer);
    }
    // Stopped meanwhile: what a probe under way at stop() meets (the store closed by its owner) is no news.
    if (this.#stopped) return;
    this.#set(next);
    this.#timer = setTimeout(() => void this.#probe(), this.#intervalMs);
    this.#timer.unref();
  }

  #set(next: StoreState): void {
    const last = this.#state;
    // Down for another reason (refused, then a wrong password) is a change too: /healthz and the log say
    // the reason the store gives now, and `since` stays when the store went down.
    const changed = last === undefined || last.up !== next.up || (!next.up && last.reason !== next.reason);
    if (!changed) return;
    if (last !== undefined && !last.up && !next.up) next = { ...next, since: last.since };
    this.#state = next;
    this.#onChange(next);
  }
}
