import type { TokenCache } from '@wxkit/core';

/** Options of {@link startLocklessPeer}. */
export interface LocklessPeerOptions {
  /** The mock's URL (or WeChat's). */
  baseUrl: string;
  appId: string;
  secret: string;
  /** The store the peer shares with wxkit. */
  cache: TokenCache;
  /** The key the peer writes. @default wxkit's native classic key, `wechat:access_token:{appId}` */
  key?: string;
  /** The bytes the peer writes for a token. @default wxkit's native value, without `fetched_by` */
  encode?: (token: string, expiresIn: number, fetchedAt: number) => string;
  /** Classic fetches in a row per round, each one written as it comes. @default 2 */
  fetchesPerRound?: number;
  /** Pause between rounds, in ms. @default 50 */
  intervalMs?: number;
  /** Rounds before the peer stops on its own. @default Infinity (until `stop()`) */
  rounds?: number;
  /**
   * How long after a fetch's answer its write reaches the store, in ms: a peer far from its store, or
   * busy. The next fetch of the round starts after the write, as it does without a lag. @default 0
   */
  writeLagMs?: number;
}

/** A running lockless peer. */
export interface LocklessPeer {
  /** Classic fetches the peer made (count them out of the mock's counters). */
  readonly fetches: number;
  /** Rounds completed. */
  readonly rounds: number;
  /**
   * For each write, in order: how long it took from the start of its fetch to the store's
   * acknowledgement of the write, in ms. A write reaches the store after the token it carries was issued
   * and before this lag ran out from then: a test can tell a late write (a busy machine) from a prompt one.
   */
  readonly writeLags: readonly number[];
  /** Resolves once `count` rounds have completed: an event to wait for instead of a sleep. */
  roundsDone(count: number): Promise<void>;
  /** Stops after the round under way; resolves when it has ended. */
  stop(): Promise<void>;
}

/**
 * Plays an SDK that refreshes without a lock and shares the store (node-easywechat, wechatpy,
 * EasyWeChat): every round it fetches the classic token `fetchesPerRound` times in a row, each fetch
 * invalidating the token before the previous one, and writes each one to the store with a plain
 * `set` once its answer is in (the store lags the fetches). Tests run it beside wxkit's processes to check that their sends survive it.
 */
export function startLocklessPeer(options: LocklessPeerOptions): LocklessPeer {
  const key = options.key ?? `wechat:access_token:${options.appId}`;
  const encode =
    options.encode ??
    ((token: string, expiresIn: number, fetchedAt: number) =>
      JSON.stringify({ access_token: token, expires_at: fetchedAt + expiresIn, fetched_at: fetchedAt }));
  const perRound = options.fetchesPerRound ?? 2;
  const intervalMs = options.intervalMs ?? 50;
  const maxRounds = options.rounds ?? Number.POSITIVE_INFINITY;
  const writeLagMs = options.writeLagMs ?? 0;
  const url = new URL(`${options.baseUrl.replace(/\/+$/, '')}/cgi-bin/token`);
  url.search = new URLSearchParams({ grant_type: 'client_credential', appid: options.appId, secret: options.secret }).toString();
  let fetches = 0;
  let rounds = 0;
  const writeLags: number[] = [];
  let stopped = false;
  const waiters: { count: number; resolve: () => void }[] = [];

  const loop = (async () => {
    while (!stopped && rounds < maxRounds) {
      let last: { access_token: string; expires_in: number } | undefined;
      for (let i = 0; i < perRound; i += 1) {
        const fetchedAt = Math.floor(Date.now() / 1000);
        const started = performance.now();
        const body = (await (await fetch(url)).json()) as { access_token?: string; expires_in?: number };
        fetches += 1;
        if (typeof body.access_token === 'string' && typeof body.expires_in === 'number') {
          last = { access_token: body.access_token, expires_in: body.expires_in };
          if (writeLagMs > 0) await new Promise((resolve) => setTimeout(resolve, writeLagMs));
          await options.cache.set(key, encode(last.access_token, last.expires_in, fetchedAt), last.expires_in);
          writeLags.push(performance.now() - started);
        }
      }
      rounds += 1;
      for (const waiter of waiters.filter((w) => rounds >= w.count)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  })();

  return {
    get fetches() {
      return fetches;
    },
    get rounds() {
      return rounds;
    },
    get writeLags() {
      return writeLags;
    },
    roundsDone(count) {
      if (rounds >= count) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ count, resolve }));
    },
    async stop() {
      stopped = true;
      await loop;
    },
  };
}
