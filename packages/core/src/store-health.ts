import type { TokenCache } from './cache.js';
import { CacheError } from './errors.js';

// After a failure the store is not asked again by callers: every call fails at once until a probe in the
// background (a read of the key whose call failed, so an ACL that allows the app's keys allows it) gets
// an answer. A hung store costs a caller at most one timeout, not one per call (nor one per step of the
// token protocol). Probes are 250 ms apart, growing to 1 s while the store stays down; their timer never
// keeps the process alive. The state is the store's, shared by every client of this process using it:
// N accounts on one Redis make one probe, not N.
const PROBE_MIN_MS = 250;
const PROBE_MAX_MS = 1_000;
// An outage that begins within a minute of the last one's end is the store flapping: most often its reads
// answer while its writes fail (a read-only replica, a store full under `noeviction`, an ACL without write
// rights), so the probe, a read, finds it back and the next write takes it down again, four times a second
// under steady traffic. The first such outage of a minute is written, saying so; the others of that
// minute, and their recoveries, are told as events only.
const FLAP_WINDOW_MS = 60_000;
// A flap not written is written once it has lasted this long (seen by a probe that fails): a store down
// for good right after a blip, or a flap that does not end, is an outage the log must tell of.
const FLAP_LASTING_MS = 5_000;

/** A client of a store, as its health sees it: a GuardedStore (see store.ts). */
export interface StoreUser {
  /** Where the client's events go (see GuardedStore.events). */
  readonly events: object;
  /** Where the client's log lines go (see GuardedStore.logSink). */
  readonly logSink: unknown;
  probe(key: string): Promise<unknown>;
  reportUnavailable(op: string, key: string | undefined, error: CacheError, clients: number, line: boolean, again: number): void;
  /** `emit`: false for a second handle of a client told already (its recovery listeners still run). */
  reportRecovered(op: string, clients: number, line: boolean, health: StoreHealth, emit: boolean): void;
  /** The line alone of an outage whose event was emitted when it began, not written then: it has lasted `lastedMs`. */
  reportStillDown(op: string, error: CacheError, clients: number, again: number, lastedMs: number): void;
}

/**
 * The health of one store in this process, shared by the clients that use it. It holds its clients
 * weakly: a client made per request and never closed (a common way to use an SDK) is collected with
 * its last reference, not kept for the life of the store.
 */
export class StoreHealth {
  down = false;
  readonly #users = new Set<WeakRef<StoreUser>>();
  readonly #refs = new WeakMap<StoreUser, WeakRef<StoreUser>>();
  // Drops the reference of a client collected without close().
  readonly #collected = new FinalizationRegistry<WeakRef<StoreUser>>((ref) => this.#users.delete(ref));
  #probeDelayMs = PROBE_MIN_MS;
  #probeTimer: NodeJS.Timeout | undefined;
  #probeKey = '';
  /** The probe under way (see ask()): one at a time, whoever sent it. */
  #asking: Promise<void> | undefined;
  /** The outage under way: its first failure, and the loggers that have its line. */
  // Its loggers held weakly: a client collected during the outage takes its logger with it.
  // Its failure kept as text: an error kept would hold its stack's frames, and the clients in them.
  // `heard`: the clients' logs (their events) told of it, so that a client's new handle on the store
  // (setCache() with the same store) does not hear of it twice.
  // `lines`: whether its lines are written (not so for a flap after the first of its minute, until it
  // has lasted FLAP_LASTING_MS). `since`: when (performance.now()) it began.
  #outage:
    | {
        op: string;
        failure: string;
        reason: CacheError['reason'];
        sinks: WeakSet<object>;
        heard: WeakSet<object>;
        lines: boolean;
        again: number;
        since: number;
      }
    | undefined;
  /** When (performance.now()) the last outage ended, and the flapping under way: outages so far, and when one was last written. */
  #flapping: { recoveredAt: number; outages: number; writtenAt: number | undefined } | undefined;

  join(user: StoreUser): void {
    const ref = new WeakRef(user);
    this.#users.add(ref);
    this.#refs.set(user, ref);
    this.#collected.register(user, ref, ref);
  }

  leave(user: StoreUser): void {
    const ref = this.#refs.get(user);
    if (ref === undefined) return;
    this.#refs.delete(user);
    this.#users.delete(ref);
    this.#collected.unregister(ref);
    if (this.#users.size === 0) {
      clearTimeout(this.#probeTimer);
      this.#probeTimer = undefined;
    }
  }

  has(user: StoreUser): boolean {
    return this.#refs.has(user);
  }

  /** The clients still open (and not collected). */
  users(): StoreUser[] {
    const live: StoreUser[] = [];
    for (const ref of this.#users) {
      const user = ref.deref();
      if (user === undefined) this.#users.delete(ref);
      else live.push(user);
    }
    return live;
  }

  failed(user: StoreUser, op: string, key: string, error: CacheError): void {
    this.#probeKey = key;
    if (this.down) {
      this.#probeDelayMs = Math.min(this.#probeDelayMs * 2, PROBE_MAX_MS);
      this.#lasting();
    } else {
      this.down = true;
      this.#probeDelayMs = PROBE_MIN_MS;
      const users = this.users();
      const { lines, again } = this.#flap();
      this.#outage = { op, failure: describeError(error), reason: error.reason, sinks: new WeakSet(), heard: new WeakSet(), lines, again, since: performance.now() };
      for (const each of users) this.#outage.heard.add(each.events);
      const clients = StoreHealth.clients(users);
      this.#report(
        users,
        user,
        (each, line, emit) => {
          if (emit) each.reportUnavailable(op, each === user ? key : undefined, error, clients, line && lines, again);
        },
        this.#outage.sinks,
      );
    }
    this.#scheduleProbe(user);
  }

  recovered(op: string): void {
    clearTimeout(this.#probeTimer);
    this.#probeTimer = undefined;
    this.down = false;
    const lines = this.#outage?.lines ?? true;
    this.#outage = undefined;
    this.#probeDelayMs = PROBE_MIN_MS;
    this.#flapping = { recoveredAt: performance.now(), outages: this.#flapping?.outages ?? 1, writtenAt: this.#flapping?.writtenAt };
    const users = this.users();
    const clients = StoreHealth.clients(users);
    this.#report(users, undefined, (each, line, emit) => each.reportRecovered(op, clients, line && lines, this, emit));
  }

  /**
   * The store still fails: an outage not written (a flap after the first of its minute) that has lasted
   * FLAP_LASTING_MS is written now, once per logger, its event not emitted again; its recovery is written too.
   */
  #lasting(): void {
    const outage = this.#outage;
    if (outage === undefined || outage.lines) return;
    const lastedMs = performance.now() - outage.since;
    if (lastedMs < FLAP_LASTING_MS) return;
    outage.lines = true;
    if (this.#flapping) this.#flapping.writtenAt = performance.now();
    const users = this.users();
    const clients = StoreHealth.clients(users);
    const error = new CacheError(outage.failure, { reason: outage.reason });
    this.#report(users, undefined, (each, line) => {
      if (!line) return;
      outage.sinks.add(each.logSink as object);
      each.reportStillDown(outage.op, error, clients, outage.again, lastedMs);
    });
  }

  /**
   * An outage begins: whether its lines are written, and how many outages in a row (this one included)
   * each began within FLAP_WINDOW_MS of the last one's end (0 where it is the first).
   */
  #flap(): { lines: boolean; again: number } {
    const now = performance.now();
    const last = this.#flapping;
    if (last === undefined || now - last.recoveredAt >= FLAP_WINDOW_MS) {
      this.#flapping = undefined;
      return { lines: true, again: 0 };
    }
    const outages = last.outages + 1;
    const lines = last.writtenAt === undefined || now - last.writtenAt >= FLAP_WINDOW_MS;
    this.#flapping = { recoveredAt: last.recoveredAt, outages, writtenAt: lines ? now : last.writtenAt };
    return { lines, again: outages };
  }

  /**
   * Tells every client of the store (their events, their recovery listeners), and writes the line once
   * per logger, through `first` where it is one: 10,000 clients on one store and one logger make one
   * line per outage, not 10,000.
   */
  #report(
    users: readonly StoreUser[],
    first: StoreUser | undefined,
    tell: (each: StoreUser, line: boolean, emit: boolean) => void,
    written: WeakSet<object> = new WeakSet(),
  ): void {
    const line = (each: StoreUser) => {
      const sink = each.logSink as object | undefined;
      if (sink === undefined || written.has(sink)) return false;
      written.add(sink);
      return true;
    };
    // Two handles of one client on this store (an OpenPlatform whose durable store is its cache) share
    // their events: the client hears of it once.
    const told = new WeakSet<object>();
    const emit = (each: StoreUser) => {
      if (told.has(each.events)) return false;
      told.add(each.events);
      return true;
    };
    if (first !== undefined && this.has(first)) tell(first, line(first), emit(first));
    for (const each of users) if (each !== first) tell(each, line(each), emit(each));
  }

  /** The clients among `users`: handles that share their events (see #report) count once. */
  static clients(users: readonly StoreUser[]): number {
    return new Set(users.map((each) => each.events)).size;
  }

  /**
   * `user` joined while the store is taken for down (the first call of a client to this part of a
   * partitioned store, any use of it a client makes while it is down: see refused()): it hears of the
   * outage as those that saw it begin did, once, and its logger gets the line if it has not yet.
   */
  joinedDuringOutage(user: StoreUser): void {
    const outage = this.#outage;
    if (!this.down || outage === undefined || !this.has(user) || outage.heard.has(user.events)) return;
    outage.heard.add(user.events);
    const sink = user.logSink as object | undefined;
    const line = sink !== undefined && !outage.sinks.has(sink);
    if (line) outage.sinks.add(sink);
    user.reportUnavailable(outage.op, undefined, new CacheError(outage.failure, { reason: outage.reason }), StoreHealth.clients(this.users()), line && outage.lines, outage.again);
  }

  /**
   * `user` would have used the store, which is taken for down: a client made during the outage hears of
   * it now (its logger would else get the recovery line without the warning), and the store is probed
   * again if no probe is due. The clients that saw the outage begin may all be gone (closed, or
   * collected), and nothing else would find the store back.
   */
  refused(user: StoreUser): void {
    this.joinedDuringOutage(user);
    if (this.#probeTimer === undefined) this.#scheduleProbe(user);
  }

  /**
   * Sends `probe`, unless a probe of this store (of this part of it) is under way already: that one is
   * joined. A process whose clients all ask at once (10,000 accounts refreshing during an outage, each
   * asking before it fetches in its fallback) sends one probe, not one per client, and a hung store holds
   * one call of theirs at a time, not thousands.
   */
  ask(probe: () => Promise<unknown>): Promise<void> {
    if (this.#asking) return this.#asking;
    const asking = Promise.resolve()
      .then(probe)
      .then(() => undefined)
      .finally(() => {
        if (this.#asking === asking) this.#asking = undefined;
      });
    this.#asking = asking;
    return asking;
  }

  #scheduleProbe(user: StoreUser): void {
    if (this.#probeTimer || !this.has(user)) return;
    // The timer holds the client weakly too: one collected meanwhile hands the probe to another.
    const ref = this.#refs.get(user);
    this.#probeTimer = setTimeout(() => {
      this.#probeTimer = undefined;
      const own = ref?.deref();
      const prober = own !== undefined && this.has(own) ? own : this.users()[0];
      if (!this.down || !prober) return;
      const key = this.#probeKey;
      this.ask(() => prober.probe(key)).catch(() => undefined);
    }, this.#probeDelayMs);
    this.#probeTimer.unref?.();
  }
}

/** The health of each store in this process: of the whole, or of each part for a store that names them (TokenCache.partition). */
const healths = new WeakMap<TokenCache, StoreHealth | Map<string, StoreHealth>>();

/** The shared health of part `name` of `cache` ('' for the whole, or a partitioned store's keys without a part). */
export function storeHealth(cache: TokenCache, name: string): StoreHealth {
  let found = healths.get(cache);
  if (!found) healths.set(cache, (found = typeof cache.partition === 'function' ? new Map() : new StoreHealth()));
  if (found instanceof StoreHealth) return found;
  let health = found.get(name);
  if (!health) found.set(name, (health = new StoreHealth()));
  return health;
}

/** A store failure as the outage's warning says it: its message, and its cause's code. */
export function describeError(error: CacheError): string {
  const cause = error.cause as { code?: unknown; message?: unknown } | undefined;
  // The code of the cause, unless the message names it already (FileCache's do).
  const causeCode = typeof cause?.code === 'string' && !error.message.includes(`(${cause.code})`) ? ` (${cause.code})` : '';
  return `${error.message}${causeCode}`;
}
