import { createHash } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { CacheError, type TokenCache } from '@wxkit/core';
import { storeTtlMs } from '@wxkit/core/internal';
import { Connection, type RedisClientLike } from './connection.js';
import { failureMessage, reasonOf } from './failure.js';
import { primaryClientOf, resolveOptions, type RedisCacheOptions } from './options.js';

export type { RedisClientLike } from './connection.js';
export type { RedisCacheOptions, RedisCacheSentinelOptions } from './options.js';

/**
 * The channel every wxkit writer PUBLISHes to after it wrote or deleted a key, so that processes waiting
 * for another's refresh re-read at once (docs/key-schema.md, "Write notifications"). The message is
 * {@link writtenMessage} of the key, not its name.
 */
export const WRITTEN_CHANNEL = 'wxkit:written';

/**
 * What a writer publishes for `key`: the SHA-256 of its name, lowercase hex. Never the name itself, which
 * any subscriber would see and which may hold a secret (EasyWeChat 6's keys hold the AppSecret).
 */
export function writtenMessage(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}
// A subscriber that could not be set up is not tried again for this long; waiters poll meanwhile. One
// the server refused for want of rights (NOPERM: an ACL user without `&wxkit:written`, as Redis 7 users
// start) is not tried again at all: each attempt would leave the waiter that made it on the slow pace of
// a store that tells of writes, while nothing tells it (0.5 s and more per refresh, instead of ~10 ms).
const SUBSCRIBE_RETRY_MS = 30_000;

/** What watch() needs of a node-redis connection in subscriber mode. */
interface Subscriber {
  connect(): Promise<unknown>;
  subscribe(channels: string, listener: (message: string, channel: string) => void): Promise<void>;
  unsubscribe(channels: string, listener?: (message: string, channel: string) => void): Promise<void>;
  destroy(): unknown;
  on(event: 'error', listener: (error: unknown) => void): unknown;
  on(event: 'ready', listener: () => void): unknown;
}

// Each script reads and writes one key, so it runs on Redis Cluster too, on the node that owns it. A
// script that wrote also publishes the key's digest (ARGV: …, channel, message): the notification leaves
// the server with the write, not a round trip later from a writer whose process may be busy by then. It
// publishes with pcall: an ACL user without rights on the channel (Redis 7 users start with none) still
// writes, and only its notification is lost, as a refused PUBLISH of its own would be.
// ADD answers a key of another kind (a hash or list: another program's, never a lock, with no lease to run
// out) as GET would, WRONGTYPE, not as a lock held. Its TYPE is a pcall too: a user refused TYPE gets 0.
const ADD = script(
  "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then redis.pcall('PUBLISH', ARGV[3], ARGV[4]) return 1 end local kind = redis.pcall('TYPE', KEYS[1]).ok if kind and kind ~= 'string' and kind ~= 'none' then return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value') end return 0",
);
const COMPARE_AND_DELETE = script(
  "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) redis.pcall('PUBLISH', ARGV[2], ARGV[3]) return 1 else return 0 end",
);
// GET of an absent key is false in Lua, never equal to a string: an absent key is never created. The same
// value again only moves the key's expiry (a lock's renewal): nothing a waiter waits for, so no PUBLISH.
const COMPARE_AND_SET = script(
  "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) if ARGV[1] ~= ARGV[2] then redis.pcall('PUBLISH', ARGV[4], ARGV[5]) end return 1 else return 0 end",
);

/**
 * A TokenCache on Redis, through node-redis as @keyv/redis ships it: raw keys and values
 * (`redis-cli GET wechat:…` prints the documented value); `add` (`SET NX PX`), `deleteIfEquals` and
 * `compareAndSet` as one-key Lua scripts. Standalone servers, ACL users, databases, TLS, Redis Cluster
 * and Redis Sentinel.
 *
 * @example
 * ```ts
 * app.setCache(new RedisCache('redis://:password@10.0.0.5:6379/0'));
 * ```
 */
export class RedisCache implements TokenCache {
  readonly #connection: Connection;
  /** The URL or node list with passwords masked, for messages. */
  readonly #where: string;
  #closed = false;
  readonly #connectTimeoutMs: number;
  readonly #stallTimeoutMs: number;
  /** A call unanswered after stallTimeoutMs ends the connection too (a single server's client of our own). */
  readonly #endsStalled: boolean;
  /** Who waits for which key, and the subscriber connection that tells them (made on the first watch). */
  readonly #watchers = new Map<string, Set<() => void>>();
  /** The watched keys by their {@link writtenMessage}. */
  readonly #byMessage = new Map<string, string>();
  #subscriber: Promise<Subscriber | undefined> | undefined;
  /** The subscriber connection while it connects and subscribes. */
  #opening: Subscriber | undefined;
  /**
   * The subscriber once subscribed, and the client it was made from: it lives and dies with that client
   * (it shares its reconnect strategy, which gives up once the client is given up).
   */
  #live: { subscriber: Subscriber; parent: RedisClientLike; unfollow?: () => void } | undefined;
  #subscriberFailedAt = -Infinity;
  /**
   * A subscriber failed while watchers were registered: the next call the store answers asks for one
   * again, once (see {@link #subscribe}).
   */
  #retryWhenAnswered = false;
  /** The server refused the subscription (NOPERM): no subscriber is asked for again. */
  #subscribeRefused = false;
  /** `__keyspace@<db>__:` when the server sends keyspace notifications for strings and deletes, else undefined. */
  #keyspace: string | undefined;
  /** PUBLISHes not answered yet: close() lets them go out, or a process that writes and exits wakes nobody. */
  readonly #publishing = new Set<Promise<unknown>>();

  constructor(options: string | RedisCacheOptions | RedisClientLike) {
    const { source, where, connectTimeoutMs, stallTimeoutMs, endsStalled } = resolveOptions(options);
    this.#where = where;
    this.#connectTimeoutMs = connectTimeoutMs;
    this.#stallTimeoutMs = stallTimeoutMs;
    this.#endsStalled = endsStalled;
    this.#connection = new Connection(source, connectTimeoutMs);
  }

  get(key: string): Promise<string | undefined> {
    return this.#run('get', async (client) => {
      // Bulk strings as Buffers, not UTF-8 text: an igbinary entry is binary, and node-redis's default
      // decoding would turn each byte that is not UTF-8 into U+FFFD.
      const value = (await asBytes(client).get(key)) as Buffer | null;
      return value === null ? undefined : value.toString('latin1');
    });
  }

  // The writes check their value and TTL before #run: a bad one is the caller's bug, rejected with a
  // RangeError as every other store rejects it, not a failure of Redis (nor one met only once connected).
  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    const bytes = binary(value);
    const px = ttlMs(ttlSeconds);
    return this.#run('set', async (client) => {
      await client.set(key, bytes, { expiration: { type: 'PX', value: px } });
      this.#publish(client, key);
    });
  }

  delete(key: string): Promise<void> {
    return this.#run('delete', async (client) => {
      // Nothing removed, nothing changed: a waiter woken for it would only read the key again.
      if (Number(await client.del(key)) > 0) this.#publish(client, key);
    });
  }

  async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    const args = [binary(value), String(ttlMs(ttlSeconds))];
    return this.#run('add', async (client) => evalWrite(client, ADD, key, args));
  }

  async deleteIfEquals(key: string, expected: string): Promise<boolean> {
    const args = [binary(expected)];
    return this.#run('deleteIfEquals', async (client) => evalWrite(client, COMPARE_AND_DELETE, key, args));
  }

  async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
    const args = [binary(expected), binary(value), String(ttlMs(ttlSeconds))];
    return this.#run('compareAndSet', async (client) => evalWrite(client, COMPARE_AND_SET, key, args));
  }

  /**
   * Calls `onChange` when `key` is written or deleted: on the {@link WRITTEN_CHANNEL} that wxkit's
   * writers publish to, and through Redis keyspace notifications when the server sends them
   * (`notify-keyspace-events` with `K` and `$g` or `A`), which also tell of writers that do not publish.
   * One subscriber connection per RedisCache, opened on the first watch and closed by close(). Throws
   * while no subscriber can be had (a client that cannot make one, a recent failure): the caller polls.
   */
  watch(key: string, onChange: () => void): () => void {
    if (this.#closed) throw new CacheError(`RedisCache watch after close() (${this.#where})`);
    if (this.#subscribeRefused) {
      throw new CacheError(`RedisCache may not subscribe to ${WRITTEN_CHANNEL} on ${this.#where} (NOPERM): grant the user &${WRITTEN_CHANNEL} for prompt wake-ups`, { reason: 'permission' });
    }
    if (!this.#subscriber && performance.now() - this.#subscriberFailedAt < SUBSCRIBE_RETRY_MS) {
      throw new CacheError(`RedisCache could not subscribe to write notifications lately (${this.#where})`);
    }
    let listeners = this.#watchers.get(key);
    const first = !listeners;
    if (!listeners) {
      this.#watchers.set(key, (listeners = new Set()));
      this.#byMessage.set(writtenMessage(key), key);
    }
    listeners.add(onChange);
    const subscribed = this.#subscribe();
    if (first) void subscribed.then((subscriber) => this.#keyspaceWatch(subscriber, key, true));
    return () => {
      listeners.delete(onChange);
      if (listeners.size > 0 || this.#watchers.get(key) !== listeners) return;
      this.#watchers.delete(key);
      this.#byMessage.delete(writtenMessage(key));
      // The subscriber of now: the one this watch began on may have been replaced since.
      void (this.#subscriber ?? subscribed).then((subscriber) => this.#keyspaceWatch(subscriber, key, false));
    };
  }

  ttlMs(key: string): Promise<number | undefined> {
    return this.#run('ttlMs', async (client) => {
      // PTTL: -2 when absent, -1 when the key has no expiry (not one wxkit wrote).
      const pttl = Number(await client.pTTL(key));
      return pttl === -2 ? undefined : pttl === -1 ? Number.POSITIVE_INFINITY : pttl;
    });
  }

  /** Closes the connection it opened, or is opening; a client passed in stays open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#watchers.clear();
    this.#byMessage.clear();
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    // The connection is destroyed, not quit: a notification still queued on it would be dropped, and
    // the other processes' waiters would find the write only at their next safety-net poll.
    if (this.#publishing.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.allSettled([...this.#publishing]),
        new Promise((resolve) => (timer = setTimeout(resolve, this.#connectTimeoutMs))),
      ]);
      clearTimeout(timer);
    }
    // One still opening is ended now; the open attempt then fails, and settles, on its own.
    const opening = this.#opening;
    this.#live?.unfollow?.();
    await Promise.all([
      this.#connection.close(),
      opening ? endQuietly(opening) : subscriber?.then((sub) => sub && endQuietly(sub)),
    ]);
  }

  /**
   * Tells the watchers of `key` in every process that it changed, by its digest. Not awaited by the write;
   * a lost notification costs a waiter one poll step.
   */
  #publish(client: RedisClientLike, key: string): void {
    const sent: Promise<unknown> = (client as unknown as { publish(channel: string, message: string): Promise<unknown> })
      .publish(WRITTEN_CHANNEL, writtenMessage(key))
      .catch(() => undefined)
      .finally(() => this.#publishing.delete(sent));
    this.#publishing.add(sent);
  }

  /**
   * The subscriber connection, made once; undefined when none can be had (then every waiter is told to
   * look). Waiters registered when it fails stay registered, polling at the slow pace of a store that
   * tells of writes, and no new watch() asks for one for a while: a store that was down or paused (the
   * failure then often comes of the same outage that ended the last subscriber) gets one more attempt at
   * its next answered call. `retried`: this is that attempt, and its failure is final.
   */
  #subscribe(retried = false): Promise<Subscriber | undefined> {
    if (this.#subscriber) return this.#subscriber;
    const subscribed: Promise<Subscriber | undefined> = this.#openSubscriber().then(
      (live) => {
        this.#live = live;
        this.#retryWhenAnswered = false;
        // Writes made before the subscription was in place went unseen: every waiter looks once now.
        this.#notifyAll();
        return live.subscriber;
      },
      (error: unknown) => {
        if (this.#subscriber === subscribed) this.#subscriber = undefined;
        this.#subscriberFailedAt = performance.now();
        if (reasonOf(error) === 'permission') this.#subscribeRefused = true;
        this.#retryWhenAnswered = !retried && !this.#subscribeRefused && !this.#closed;
        this.#notifyAll();
        return undefined;
      },
    );
    this.#subscriber = subscribed;
    return subscribed;
  }

  /**
   * The client the subscriber was made from was given up (a connection gone silent, or one that stopped
   * reconnecting): so is the subscriber, which on a silent connection would hear nothing, and once its
   * client is given up would never reconnect. The watchers would wait on it for ever, polling only at the
   * slow pace meant for a store that tells of writes. A new subscriber is made at once for the keys still
   * watched; once it is in place every watcher looks once, for the writes made in between.
   */
  #dropSubscriber(parent: RedisClientLike): void {
    const live = this.#live;
    if (live?.parent !== parent) return;
    this.#live = undefined;
    this.#subscriber = undefined;
    live.unfollow?.();
    void endQuietly(live.subscriber);
    this.#subscribeWatched(false);
  }

  /** A subscriber for the keys still watched, when there are any and none is there or coming. */
  #subscribeWatched(retried: boolean): void {
    if (this.#closed || this.#subscriber || this.#watchers.size === 0) return;
    const subscribed = this.#subscribe(retried);
    for (const key of this.#watchers.keys()) void subscribed.then((subscriber) => this.#keyspaceWatch(subscriber, key, true));
  }

  async #openSubscriber(): Promise<{ subscriber: Subscriber; parent: RedisClientLike; unfollow?: () => void }> {
    const client = await this.#connection.client();
    // A Sentinel client's own pub/sub connection is out of reach: it reconnects and subscribes anew
    // unseen, telling of nothing. Ours goes to the primary the Sentinel names, as its primary's clients
    // do, and is made anew once the Sentinel names another (a caller's Sentinel client subscribes itself).
    const toPrimary = primaryClientOf(client);
    // Followed from before the primary is asked for: a failover while the subscriber opens is not missed.
    const events = client as unknown as Pick<EventEmitter, 'on' | 'off'>;
    let moved = false;
    const onTopology = (event: { type?: string }) => {
      if (event?.type !== 'MASTER_CHANGE') return;
      moved = true;
      this.#dropSubscriber(client);
    };
    const unfollow = () => events.off('topology-change', onTopology);
    if (toPrimary) events.on('topology-change', onTopology);
    try {
      const live = await this.#openSubscriberOn(client, toPrimary, () => moved);
      // A failover from now on: the subscriber on the old primary goes, and one on the new primary is made.
      return toPrimary ? { ...live, unfollow } : live;
    } catch (error) {
      unfollow();
      throw error;
    }
  }

  async #openSubscriberOn(
    client: RedisClientLike,
    toPrimary: ReturnType<typeof primaryClientOf>,
    moved: () => boolean,
  ): Promise<{ subscriber: Subscriber; parent: RedisClientLike }> {
    const primary = toPrimary && (await within(primaryOf(client), this.#connectTimeoutMs, 'no primary named in time'));
    if (this.#closed) throw new Error('closed');
    const duplicate = (client as unknown as { duplicate?: () => Subscriber }).duplicate;
    const subscriber =
      toPrimary && primary ? (toPrimary(primary) as unknown as Subscriber) : typeof duplicate === 'function' ? duplicate.call(client) : ownPubSub(client);
    // node-redis reports failed reconnects as 'error' events; an unheard one would crash the process.
    subscriber.on('error', () => undefined);
    // Held for close(), which ends it even while its connect or SUBSCRIBE goes unanswered.
    this.#opening = subscriber;
    try {
      // Both bounded: a server (or proxy) that never answers SUBSCRIBE would hold close() for ever.
      const subscribed = (async () => {
        await subscriber.connect();
        // A message is a key's digest; a writer that publishes the name itself is heard too.
        await subscriber.subscribe(WRITTEN_CHANNEL, (message) => this.#notify(this.#byMessage.get(message) ?? message));
      })();
      await within(subscribed, this.#connectTimeoutMs, 'subscriber connect timed out');
    } catch (error) {
      await endQuietly(subscriber);
      throw error;
    } finally {
      this.#opening = undefined;
    }
    if (this.#closed) {
      await endQuietly(subscriber);
      throw new Error('closed');
    }
    // Subscribed anew after a drop (a Redis restart, a failover, a killed connection): a write made while
    // it was away went unheard, so every waiter looks once, as after the first subscription, instead of
    // waiting for its next safety-net poll.
    onResubscribed(subscriber, () => {
      if (this.#live?.subscriber === subscriber && !this.#closed) this.#notifyAll();
    });
    this.#keyspace = await keyspacePrefix(client, this.#connectTimeoutMs);
    // Closed, or (Sentinel) the primary changed while this one opened: it may be on the old primary.
    if (this.#closed || moved()) {
      await endQuietly(subscriber);
      throw new Error(this.#closed ? 'closed' : 'the primary changed while the subscriber opened');
    }
    return { subscriber, parent: client };
  }

  /** Subscribes to (or leaves) the keyspace channel of `key`, when the server sends keyspace notifications. */
  async #keyspaceWatch(subscriber: Subscriber | undefined, key: string, on: boolean): Promise<void> {
    if (!subscriber || this.#keyspace === undefined || this.#closed) return;
    const channel = `${this.#keyspace}${key}`;
    try {
      if (on && this.#watchers.has(key)) await subscriber.subscribe(channel, () => this.#notify(key));
      else if (!on && !this.#watchers.has(key)) await subscriber.unsubscribe(channel);
    } catch {
      // The channel is a shortcut; the waiters' polling covers for it.
    }
  }

  #notify(key: string): void {
    const listeners = this.#watchers.get(key);
    if (listeners) for (const listener of listeners) listener();
  }

  #notifyAll(): void {
    for (const listeners of this.#watchers.values()) for (const listener of listeners) listener();
  }

  async #run<T>(op: string, fn: (client: RedisClientLike) => Promise<T>): Promise<T> {
    if (this.#closed) throw new CacheError(`RedisCache ${op} after close() (${this.#where})`, { reason: 'closed' });
    let connecting = true;
    let stall: NodeJS.Timeout | undefined;
    let settled = false;
    let gaveUp = false;
    let called: RedisClientLike | undefined;
    try {
      const client = await this.#connection.client();
      called = client;
      connecting = false;
      // A new client (the last one was given up): the subscriber made from the old one goes with it. So
      // does one that closed itself (a caller's client whose reconnect strategy gave up, connected again
      // here as the same object: its subscriber, sharing that strategy, stays closed for good).
      if (this.#live && (this.#live.parent !== client || (this.#live.subscriber as { isOpen?: boolean }).isOpen === false)) {
        this.#dropSubscriber(this.#live.parent);
      }
      // A command still unanswered after stallTimeoutMs means a connection gone silent, or a node that
      // hangs. Our single server's client is given up (its pending commands fail), and the next call
      // connects anew. A Cluster's or Sentinel's client is left open: it holds the other nodes'
      // connections, and a hung node sets off none of its discovery, so node-redis would wait on that
      // node's socket as long as the kernel does; only this call is given up. A caller's client is left
      // as it is. Looked at once more after one turn of the event loop: a process that was busy for that
      // long may hold the answer unread.
      let cut: (error: Error) => void = () => undefined;
      const deadline = new Promise<never>((_, reject) => (cut = reject));
      stall = setTimeout(
        () =>
          setImmediate(() => {
            if (settled) return;
            gaveUp = true;
            if (!this.#endsStalled) {
              cut(new Error(`no answer within ${this.#stallTimeoutMs} ms`));
              return;
            }
            this.#connection.stalled(client);
            this.#dropSubscriber(client);
          }),
        this.#stallTimeoutMs,
      );
      stall.unref?.();
      const result = await Promise.race([fn(client), deadline]);
      if (this.#retryWhenAnswered) {
        this.#retryWhenAnswered = false;
        this.#subscribeWatched(true);
      }
      return result;
    } catch (error) {
      if (gaveUp) {
        const outcome = this.#endsStalled
          ? 'the connection was given up as silent, and the next call connects anew'
          : 'the call was given up and the client left open (a node that hangs, or a connection gone silent: the client answers again once the node does, or once its discovery moves on)';
        throw new CacheError(`RedisCache ${op} got no answer from ${this.#where} within ${this.#stallTimeoutMs} ms: ${outcome}`, { cause: error, reason: 'timeout' });
      }
      // Waiting behind another call that got no answer, on the connection given up for it (node-redis
      // fails its pending commands with an error that names no reason): no answer in time either.
      if (!this.#closed && this.#connection.endedAsSilent(called)) {
        throw new CacheError(
          `RedisCache ${op} got no answer from ${this.#where}: the connection was given up as silent (another call had no answer within ${this.#stallTimeoutMs} ms), and the next call connects anew`,
          { cause: error, reason: 'timeout' },
        );
      }
      // close() ended the client under the call (node-redis rejects its pending commands with an error of
      // its own, which names no reason).
      if (this.#closed) throw new CacheError(`RedisCache ${op} was cut short by close() (${this.#where})`, { cause: error, reason: 'closed' });
      const reason = reasonOf(error);
      throw new CacheError(failureMessage(op, this.#where, reason, connecting), { cause: error, ...(reason ? { reason } : {}) });
    } finally {
      settled = true;
      clearTimeout(stall);
    }
  }
}

/**
 * Ends a subscriber, one already closed included: node-redis's destroy() throws at once (not a rejected
 * promise) on a client that closed itself, as one does when its reconnect strategy gives up.
 */
async function endQuietly(subscriber: Subscriber): Promise<void> {
  try {
    await subscriber.destroy();
  } catch {
    // Closed already: nothing left to end.
  }
}

/**
 * Calls `wake` each time `subscriber` has subscribed anew: node-redis's 'ready', which a client emits
 * once it has connected again and sent its subscriptions. A Cluster's subscriptions live on one node
 * client of its own (its pubSubNode), whose 'ready' the cluster does not pass on: that client's is heard,
 * and a client that replaces it (a rediscovery, a slot moved) is heard once it holds the subscriptions.
 */
function onResubscribed(subscriber: Subscriber, wake: () => void): void {
  if (!('pubSubNode' in subscriber)) {
    subscriber.on('ready', wake);
    return;
  }
  type PubSubNode = { client: Subscriber; connectPromise?: Promise<unknown> };
  const cluster = subscriber as unknown as { pubSubNode?: PubSubNode } & Pick<EventEmitter, 'on'>;
  let heard: Subscriber | undefined;
  const follow = () => {
    const node = cluster.pubSubNode;
    if (!node || node.client === heard) return;
    const replaced = heard !== undefined;
    heard = node.client;
    node.client.on('ready', wake);
    // A new node client says 'node-ready' before it has subscribed: its connect promise settles after.
    if (replaced) void Promise.resolve(node.connectPromise).then(wake, () => undefined);
  };
  follow();
  cluster.on('node-ready', follow);
}

/** The primary `sentinel` names, once a command has reached it (a failover under way is waited for). */
async function primaryOf(sentinel: RedisClientLike): Promise<{ host: string; port: number }> {
  const client = sentinel as unknown as { ping(): Promise<unknown>; getMasterNode(): { host: string; port: number } | undefined };
  await client.ping();
  const node = client.getMasterNode();
  if (!node) throw new Error('the Sentinel client names no primary');
  return node;
}

/**
 * A client that subscribes on a connection of its own and has no duplicate(): a caller's node-redis
 * Sentinel client, whose pub/sub goes through a connection to the primary that it keeps beside its
 * commands' one (and which tells of no reconnect).
 * Ending it is the client's business (close() ends the client); here it only leaves its channels.
 */
function ownPubSub(client: RedisClientLike): Subscriber {
  const pubSub = client as unknown as Partial<Pick<Subscriber, 'subscribe' | 'unsubscribe'>>;
  if (typeof pubSub.subscribe !== 'function' || typeof pubSub.unsubscribe !== 'function') {
    throw new Error('this client cannot make a subscriber connection');
  }
  const { subscribe, unsubscribe } = pubSub as Pick<Subscriber, 'subscribe' | 'unsubscribe'>;
  const channels = new Set<string>();
  return {
    connect: async () => undefined,
    subscribe: async (channel, listener) => {
      channels.add(channel);
      await subscribe.call(client, channel, listener);
    },
    unsubscribe: async (channel, listener) => {
      channels.delete(channel);
      await unsubscribe.call(client, channel, listener);
    },
    destroy: () => Promise.all([...channels].map((channel) => unsubscribe.call(client, channel).catch(() => undefined))),
    // The client's own 'error' listener (the Connection's) hears its failures.
    on: () => undefined,
  };
}

// RESP_TYPES.BLOB_STRING of node-redis (`$`), which @keyv/redis does not re-export.
const BLOB_STRING = 36;

/** The client, answering bulk strings as Buffers. */
function asBytes(client: RedisClientLike): RedisClientLike {
  return (client as unknown as { withTypeMapping(mapping: Record<number, unknown>): RedisClientLike }).withTypeMapping({ [BLOB_STRING]: Buffer });
}

/**
 * The bytes of a value: TokenCache values are binary strings, one character per byte (see TokenCache).
 * node-redis would send a string as UTF-8, turning each byte 0x80–0xff into two.
 */
function binary(value: string): Buffer {
  if (/[^\x00-\xff]/.test(value)) {
    throw new RangeError('RedisCache values are binary strings (char codes 0–255, one per byte); encode text as UTF-8 first');
  }
  return Buffer.from(value, 'latin1');
}

/**
 * `__keyspace@<db>__:` when a standalone server sends keyspace notifications for string writes and
 * deletes (`K` with `A`, or with `$` and `g`); undefined otherwise, or when CONFIG is not allowed.
 */
async function keyspacePrefix(client: RedisClientLike, timeoutMs: number): Promise<string | undefined> {
  // A cluster's keyspace notifications stay on the node that owns the key: the channel alone serves it.
  if (!('unref' in client)) return undefined;
  try {
    // Within the connect timeout: close() waits for the subscriber this opens, and a caller's client
    // whose connection went silent would otherwise hold that wait until the caller ends the client.
    const answer = (client as unknown as { configGet(name: string): Promise<Record<string, string>> }).configGet('notify-keyspace-events');
    const config = (await within(answer, timeoutMs, 'CONFIG GET timed out')) ?? {};
    const flags = config['notify-keyspace-events'] ?? '';
    if (!flags.includes('K') || !(flags.includes('A') || (flags.includes('$') && flags.includes('g')))) return undefined;
    const database = (client as unknown as { options?: { database?: number } }).options?.database ?? 0;
    return `__keyspace@${database}__:`;
  } catch {
    return undefined;
  }
}

/**
 * `work`, or a rejection with `timedOut` once `ms` have passed (the timer cleared once either settles,
 * and never keeping the process alive); a late rejection of `work` is handled.
 */
async function within<T>(work: Promise<T>, ms: number, timedOut: string): Promise<T> {
  work.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(timedOut)), ms);
        timer.unref?.();
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** EVALSHA, and EVAL when the server does not hold the script yet (first use, a restart, another cluster node). */
async function evalScript(client: RedisClientLike, lua: Script, key: string, args: (string | Buffer)[]): Promise<unknown> {
  const options = { keys: [key], arguments: args };
  try {
    return await client.evalSha(lua.sha, options);
  } catch (error) {
    if (!String((error as Error).message).startsWith('NOSCRIPT')) throw error;
    return await client.eval(lua.source, options);
  }
}

/** Runs one of the writing scripts: whether it wrote, in which case it also published the key's digest. */
async function evalWrite(client: RedisClientLike, lua: Script, key: string, args: (string | Buffer)[]): Promise<boolean> {
  return (await evalScript(client, lua, key, [...args, WRITTEN_CHANNEL, writtenMessage(key)])) === 1;
}

interface Script {
  source: string;
  sha: string;
}

function script(source: string): Script {
  return { source, sha: createHash('sha1').update(source).digest('hex') };
}

function ttlMs(ttlSeconds: number): number {
  return storeTtlMs('RedisCache', ttlSeconds);
}
