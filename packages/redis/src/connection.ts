import type { RedisClientType, RedisClusterType, RedisSentinelType } from '@keyv/redis';
import { CALLER_CLOSED, lasting, reasonOf } from './failure.js';

/** How long calls fail with a lasting refusal before the next attempt: at most one handshake a second. */
const REFUSAL_HOLD_MS = 1_000;

// The package's own casts to this type go through `unknown`: comparing node-redis's generic client types
// with the union costs the type check seconds a cast (16 s for the cluster's).
/** A node-redis client, cluster or sentinel, e.g. from `createClient()`, `createCluster()` or `createSentinel()` of @keyv/redis. */
export type RedisClientLike = RedisClientType | RedisClusterType | RedisSentinelType;

/**
 * The client RedisCache talks through, and its life. The first call connects, waiting at most
 * `timeoutMs`; concurrent first calls share that attempt. Once connected, node-redis reconnects on its
 * own after an outage (RedisCache's calls fail fast meanwhile). close() ends every client it made.
 *
 * An attempt that fails or times out ends its client for good, and the next call makes a new one. One
 * the server refused for good (a wrong password, a database it lacks, a certificate not trusted: see
 * {@link lasting}) fails at once, with the server's error, where node-redis would retry the same
 * handshake until the timeout: each call makes at most one attempt, and that attempt one handshake.
 * A client given up is never connect()ed again: its reconnect loop may still be asleep, a second loop
 * would run beside it, and once the server answers each opens a socket, of which destroy() closes only
 * the one the client holds; the other keeps the process alive after close().
 */
export class Connection {
  readonly #create: ((ended: AbortSignal) => RedisClientLike) | undefined;
  readonly #given: RedisClientLike | undefined;
  readonly #timeoutMs: number;
  /** Our client once it has connected. */
  #client: Owned | undefined;
  #connecting: Promise<RedisClientLike> | undefined;
  /**
   * A lasting refusal (see {@link lasting}) and until when calls fail with it without a new attempt: a
   * caller outside wxkit's breaker (a loop, `wxkit serve`'s health probe) would otherwise open a connection
   * and send one handshake per call, thousands a second, each refused.
   */
  #refused: { error: unknown; until: number } | undefined;
  /** Fails the attempt under way at once, for close(). */
  #giveUp: ((error: Error) => void) | undefined;
  /** Every client we made and have not finished ending. */
  readonly #owned = new Set<Owned>();
  /** Our clients that stalled() ended. */
  readonly #silent = new WeakSet<RedisClientLike>();
  #closed = false;
  /**
   * The caller ended their client (close(), quit(), destroy(): node-redis says 'end', which a reconnect
   * strategy that gave up does not). It is not connected again: neither wxkit, which never ends a
   * caller's client, nor the caller, who already did, would end it, and it would keep the process alive.
   */
  #givenEnded = false;
  /** Removes the listeners put on a caller's client. */
  #unlisten: (() => void) | undefined;

  /**
   * `source`: a caller's client, used as it is and never ended, or how to make one of our own; its
   * reconnect strategy must give up once `ended` is aborted.
   */
  constructor(source: RedisClientLike | ((ended: AbortSignal) => RedisClientLike), timeoutMs: number) {
    if (typeof source === 'function') this.#create = source;
    else {
      this.#given = source;
      // Listened for only where the client says so (a node-redis client, cluster or sentinel).
      const events = source as unknown as Partial<Record<'on' | 'off', (event: string, listener: () => void) => unknown>>;
      if (typeof events.on === 'function') {
        const onEnd = () => void (this.#givenEnded = true);
        // Connected again by the caller: theirs to use again.
        const onConnect = () => void (this.#givenEnded = false);
        events.on.call(source, 'end', onEnd);
        events.on.call(source, 'connect', onConnect);
        // Taken back by close(): the caller's client outlives this cache (one cache per tenant or job on
        // one client would pile up listeners, and keep each closed cache's connection reachable).
        this.#unlisten = () => {
          if (typeof events.off !== 'function') return;
          events.off.call(source, 'end', onEnd);
          events.off.call(source, 'connect', onConnect);
        };
      }
    }
    this.#timeoutMs = timeoutMs;
  }

  /** The connected client. */
  client(): Promise<RedisClientLike> {
    const current = this.#given ?? this.#client?.client;
    if (current?.isOpen) return Promise.resolve(current);
    if (this.#given && this.#givenEnded) return Promise.reject(new Error(CALLER_CLOSED));
    if (this.#refused && performance.now() < this.#refused.until) return Promise.reject(this.#refused.error);
    this.#connecting ??= this.#connect().finally(() => (this.#connecting = undefined));
    return this.#connecting;
  }

  /**
   * `client` left a command unanswered longer than stallTimeoutMs (a NAT or firewall that lost
   * the connection's state, a half-dead proxy): node-redis would wait on that socket until the kernel
   * gives it up, 15 minutes or more. Our client is ended, which fails its pending commands, and the next
   * call connects anew; a caller's client is the caller's to mend.
   */
  stalled(client: RedisClientLike): void {
    if (this.#client?.client !== client) return;
    this.#silent.add(client);
    this.#end(this.#client);
    this.#client = undefined;
  }

  /** Whether stalled() ended `client`: every command it still had pending then went unanswered too. */
  endedAsSilent(client: RedisClientLike | undefined): boolean {
    return client !== undefined && this.#silent.has(client);
  }

  /** Ends every client it made, including one still connecting; a caller's client stays open. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#unlisten?.();
    this.#unlisten = undefined;
    this.#giveUp?.(new Error('closed while connecting'));
    await Promise.all([...this.#owned].map((owned) => owned.end()));
  }

  async #connect(): Promise<RedisClientLike> {
    if (this.#given) {
      await this.#within(this.#given.connect(), () => undefined);
      return this.#given;
    }
    // Our last client stopped reconnecting (a reconnectStrategy in clientOptions said so).
    if (this.#client) this.#end(this.#client);
    this.#client = undefined;
    const owned = new Owned(this.#create!);
    this.#owned.add(owned);
    try {
      await this.#within(Promise.race([owned.connect(), owned.refused]), () => owned.lastError);
      if (this.#closed) throw new Error('closed while connecting');
    } catch (error) {
      this.#end(owned);
      // A discovery that gave up (a Cluster's root nodes, a Sentinel's rounds) says only that: the last
      // error node-redis reported on the way says why (a wrong password on each node).
      const cause = !this.#closed && reasonOf(error) === undefined && reasonOf(owned.lastError) !== undefined ? owned.lastError : error;
      if (lasting(cause)) this.#refused = { error: cause, until: performance.now() + REFUSAL_HOLD_MS };
      throw cause;
    }
    this.#client = owned;
    this.#refused = undefined;
    return owned.client;
  }

  /** Waits for `connecting` at most timeoutMs, or until close(). */
  async #within(connecting: Promise<unknown>, lastError: () => unknown): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<never>((_, reject) => {
      this.#giveUp = reject;
      timer = setTimeout(() => reject(lastError() ?? new Error(`no connection within ${this.#timeoutMs} ms`)), this.#timeoutMs);
    });
    try {
      await Promise.race([connecting, bound]);
    } finally {
      clearTimeout(timer);
      this.#giveUp = undefined;
    }
  }

  /** Ends a client in the background; close() waits for what is still ending. */
  #end(owned: Owned): void {
    const done = () => this.#owned.delete(owned);
    void owned.end().then(done, done);
  }
}

/** A client we made, watched so that it can be ended for good. */
class Owned {
  readonly client: RedisClientLike;
  /** The last error node-redis reported: why an attempt that timed out did not connect. */
  lastError: unknown;
  /**
   * Rejects with the first error that no retry can mend (see {@link lasting}): from a single server, or
   * from a Sentinel's primary or replica. Not from a Cluster's nodes, nor from the Sentinels themselves:
   * node-redis tries the next root node or Sentinel, which may take what one refused (and it fails a
   * Cluster's discovery on its own once every root node has failed once).
   */
  readonly refused: Promise<never>;
  /** A TCP connect is under way. */
  #dialing = false;
  readonly #ending = new AbortController();
  #ended: Promise<void> | undefined;

  constructor(create: (ended: AbortSignal) => RedisClientLike) {
    const client = create(this.#ending.signal);
    this.client = client;
    let refuse: (error: unknown) => void = () => undefined;
    this.refused = new Promise<never>((_, reject) => (refuse = reject));
    // Heard by the attempt, which races it; caught here too, for a client that never connects.
    this.refused.catch(() => undefined);
    const single = 'unref' in client;
    // node-redis reports each failed attempt as an 'error' event; an unheard one would crash the process.
    client.on('error', (error: unknown) => {
      const node = single ? undefined : sentinelNodeError(error);
      this.lastError = node?.cause ?? error;
      this.#dialing = false;
      if ((single || node?.data) && lasting(this.lastError)) refuse(this.lastError);
    });
    client.on('connect', () => (this.#dialing = false));
    client.on('reconnecting', () => (this.#dialing = true));
  }

  connect(): Promise<unknown> {
    this.#dialing = true;
    return this.client.connect();
  }

  end(): Promise<void> {
    this.#ended ??= this.#end();
    return this.#ended;
  }

  async #end(): Promise<void> {
    const { client } = this;
    // No more reconnecting: a retry loop that will not stop (a wrong password) would hold a Sentinel's
    // destroy() for ever, as it waits for its discovery to finish first.
    this.#ending.abort();
    if (!client.isOpen) return;
    // destroy() closes the socket the client holds, not one whose TCP connect is under way: that one
    // would connect later, unseen, and keep the process alive. So let it land or fail first (node-redis
    // bounds it with socket.connectTimeout). A single-server client only: a cluster's node clients are
    // out of reach, and it reports no such step.
    if (this.#dialing && 'unref' in client) {
      await new Promise((resolve) => {
        client.once('connect', resolve);
        client.once('error', resolve);
      });
    }
    // Checked again: a connect that failed after the abort above closed the client itself.
    if (!client.isOpen) return;
    try {
      await client.destroy();
    } catch {
      // Closed in between: nothing left to end.
    }
  }
}

/**
 * A Sentinel client's report of one of its node clients' errors (`Master Client (host:port): …`, with
 * the node client's error as cause): that error, and whether it came from a data node rather than a
 * Sentinel. Undefined for any other error.
 */
function sentinelNodeError(error: unknown): { cause: unknown; data: boolean } | undefined {
  if (!(error instanceof Error) || error.cause === undefined) return undefined;
  const kind = /^(Master|Replica|Sentinel) Client \(/.exec(error.message)?.[1];
  return kind === undefined ? undefined : { cause: error.cause, data: kind !== 'Sentinel' };
}
