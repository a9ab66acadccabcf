import { encodedToBinary } from '../bytes.js';
import type { Log } from '../logger.js';
import type { GuardedStore } from '../store.js';
import { nativeSchema, type EntryField, type KeySchema, type StoredEntry } from './entry.js';
import type { Fetched } from './upstream.js';
import { isPlausibleToken } from './plausible.js';
import { inLife, lifetimeOf } from './lifetime.js';
import { shortDigest } from '../digest.js';

/**
 * A read: a usable entry, or a miss. `foreign` marks a value in an encoding the schema recognises as
 * another program's and must not overwrite (a PHP cache serialised with igbinary, say).
 */
export type EntryRead = { kind: 'hit'; entry: StoredEntry; raw: string } | { kind: 'miss'; foreign?: boolean; absent?: boolean };

/** A value encoded for the store, with the TTL and the entry it stands for. */
export interface EncodedEntry {
  raw: string;
  ttlSeconds: number;
  entry: StoredEntry;
}

export interface EntryStoreInit {
  key: string;
  field: EntryField;
  schema: KeySchema;
  /** `access_token`, `jsapi_ticket`…, for log lines. */
  label: string;
  appId: string;
  /** The key as logs may show it. */
  logKey: string;
  log: Log;
  now: () => number;
}

// An expiry a peer records beside its entry further ahead than this is no expiry (a unit mistaken).
const MAX_RECORDED_LIFE_MS = 86_400_000;
// A freshly fetched value is written with compare-and-set; losing the race this often means the key is
// written continuously by someone else, and the value is kept in memory only.
const WRITE_ROUNDS = 3;
/**
 * A read of a key that holds another kind of value than a string (a Redis hash where the entry belongs):
 * another program's data, as a foreign entry is, and treated as one: never an outage, never replaced.
 */
const OTHER_KIND: unique symbol = Symbol('another kind of value');
const OTHER_KIND_IDENTITY = 'another kind of value';

/** How a write may treat what the store holds. */
export interface WriteOptions {
  /** Values WeChat rejected: replaced whatever their age. */
  rejected?: (value: string) => boolean;
  /**
   * The writer still holds the refresh lock. Without it, an entry whose age cannot be compared (a format
   * without fetched_at) is not replaced: it may be newer.
   * @default true
   */
  leaseHeld?: boolean;
  /**
   * Whether an entry whose age cannot be compared (a format without fetched_at) is replaced, for a writer
   * that holds no lock but may replace an unreadable entry (a token offered back after an outage): it
   * names the undated values it knows older in `rejected`. @default leaseHeld
   */
  replacesUndated?: boolean;
  /**
   * Whether the writer's refresh lock is still its own, asked only when the entry holds another token
   * fetched in the same second as ours: fetched_at cannot order the two, and a writer whose lock went
   * meanwhile (a store restart, an eviction) may be the older fetch. It then keeps theirs. @default none
   */
  holds?: () => Promise<boolean>;
  /** Whether there is time for another round after a lost compare-and-set. @default always */
  mayRetry?: () => boolean;
  /**
   * The key was just read absent (under the refresh lock): the first round tries an atomic `add`
   * without reading it again. A store without `add` still reads first. @default false
   */
  absent?: boolean;
}

/** The native format's reader, for the fleet's token beside another program's value (see EntryStore.#deleteOlderBeside). */
const NATIVE = nativeSchema();

/**
 * Where the fleet shares its token while the key holds another program's value, which is never replaced:
 * `{key}:wxkit`, in the native format (docs/key-schema.md).
 */
export function besideKey(key: string): string {
  return `${key}:wxkit`;
}

/**
 * Where the end of the value last written at `key` is kept past the entry: `{key}:end`
 * (docs/key-schema.md, "The end record"). See EntryStore.recordEnd.
 */
export function endKey(key: string): string {
  return `${key}:end`;
}

/** The end record of `value`, which ends at `expiresAt` (unix s): `{"value_digest":…,"expires_at":…}`. */
export function encodeEndRecord(value: string, expiresAt: number): string {
  return JSON.stringify({ value_digest: shortDigest(value), expires_at: expiresAt });
}

/** When `value` ends as the end record `raw` says (unix s); undefined where it is of another value or unreadable. */
export function decodeEndRecord(raw: string, value: string): number | undefined {
  if (raw.length > 256) return undefined;
  let record: unknown;
  try {
    record = JSON.parse(raw);
  } catch {
    return undefined;
  }
  const { value_digest: digest, expires_at: expiresAt } = (record ?? {}) as { value_digest?: unknown; expires_at?: unknown };
  if (typeof digest !== 'string' || digest !== shortDigest(value)) return undefined;
  return typeof expiresAt === 'number' && Number.isSafeInteger(expiresAt) ? expiresAt : undefined;
}

/**
 * How long the end record outlives the value's end, in s: a value handed back up to a minute past its
 * known end is taken as ending any moment (withKnownEnd), and the record must still say so then.
 */
const END_RECORD_SLACK_S = 120;

/**
 * One entry in the store: reading it (decode, validation of what comes out of the store, expiry), and
 * writing a freshly fetched value so that it never replaces a value fetched later.
 */
export class EntryStore {
  readonly key: string;
  readonly #init: EntryStoreInit;
  /** The corrupt value last reported, so each one is logged once, not on every read. */
  #reportedCorrupt: string | undefined;
  /** Where the fleet shares its token while the key holds another program's value (see #beside). */
  #side: EntryStore | undefined;
  /** Whether the key was seen holding another program's value, so that the fleet's token is beside it. */
  #besideInUse = false;
  /** This store is the one beside another program's value (it keeps nothing beside itself). */
  #isBeside = false;
  /**
   * The last entry of the key this process read or fetched with a known expiry (see knownEnd): the object
   * the memo holds too, so that 10,000 accounts pay a field each, not a copy.
   */
  #known: StoredEntry | undefined;

  constructor(init: EntryStoreInit) {
    this.#init = init;
    this.key = init.key;
  }

  /** The schema the entry is stored in. */
  get schema(): KeySchema {
    return this.#init.schema;
  }

  /**
   * The entry, or a miss: absent, corrupt (logged once), a value WeChat rejected (`rejected`), past
   * its TTL, or within 30 s of its expiry. Rejects with a CacheError when the store fails.
   */
  async read(store: GuardedStore, rejected: (value: string) => boolean): Promise<EntryRead> {
    const raw = await store.getOrOtherKind(this.key, OTHER_KIND);
    if (raw === undefined) return { kind: 'miss', absent: true };
    if (raw === OTHER_KIND) {
      this.#reportOtherKind();
      return this.#readBeside(store, rejected);
    }
    const { entry, foreign } = this.decode(raw);
    if (!entry) return foreign ? this.#readBeside(store, rejected) : { kind: 'miss' };
    if (rejected(entry.value)) return { kind: 'miss' };
    // A format without an expiry (a bare token, EasyWeChat's array): its remaining life is what the peer
    // records beside it where the schema names such a key (wechatpy's `…_expires_at`: wechatpy writes its
    // tickets with no TTL), else the store's TTL where the store can tell; otherwise the entry counts as
    // valid until it disappears. So does one
    // whose TTL makes no sense (an adapter handing over Redis's -1 for no expiry, or 0, NaN): read as an
    // expiry already past, it would send every call to WeChat. Redis's -2 (no such key) is a miss, as
    // undefined is: the entry went between the read and this question.
    const recorded = entry.expiresAt === undefined ? this.#expiryKey() : undefined;
    if (recorded !== undefined) entry.expiresAt = await this.#recordedExpiry(store, recorded);
    // WeChat's expiry, as the entry or the peer's record beside it says: a life read from the store's TTL
    // is the TTL's end (WxJava's tickets leave 200 s early, silenceper's tokens 300 s or 1500 s), and no
    // end known for the value (see knownEnd).
    const recordsEnd = entry.expiresAt !== undefined;
    if (entry.expiresAt === undefined && store.cache.ttlMs) {
      const left = await store.ttlMs(this.key);
      if (left === undefined || left === -2) return { kind: 'miss' };
      if (typeof left === 'number' && Number.isFinite(left) && left > 0) entry.expiresAt = Math.floor((this.#init.now() + left) / 1000);
    }
    // Where the peer keeps the life beside the value and it has none there nor a TTL, the peer itself
    // takes it for ended (wechatpy reads an absent expires_at as 0): served, it would be served for ever.
    if (recorded !== undefined && entry.expiresAt === undefined) return { kind: 'miss' };
    if (recordsEnd) this.#known = entry;
    // Past the point where the store's TTL would have dropped it, or too close to WeChat's expiry: a
    // miss. The first check is what keeps stores without TTL (and their stale leftovers) honest.
    if (!this.#servable(entry)) return { kind: 'miss' };
    return { kind: 'hit', entry, raw };
  }

  /**
   * The key holds another program's value, which is never replaced: the fleet shares its token beside it,
   * at `{key}:wxkit` in the native format, so that its processes do not each fetch one of their own (on
   * the classic endpoint each such fetch supersedes the token another process serves from memory).
   */
  get #beside(): EntryStore {
    const init = this.#init;
    // Its life is the entry's it stands for: the TTL rule of the key itself (a profile's rule may depend on
    // the key, as silenceper's stable keys or EasyWeChat 4's WeCom keys do), as the TTL it is written with.
    const schema: KeySchema = { ...nativeSchema(), ttlSeconds: (expiresIn, field) => init.schema.ttlSeconds(expiresIn, field, init.key) };
    if (!this.#side) {
      // Written out, not spread: a manager's context, which is its entry store's init, reads most of
      // these from its client's core.
      this.#side = new EntryStore({ key: besideKey(this.key), field: init.field, schema, label: init.label, appId: init.appId, logKey: besideKey(init.logKey), log: init.log, now: init.now });
      this.#side.#isBeside = true;
    }
    return this.#side;
  }

  /**
   * The keys a write of this entry lands on, for a waiter to watch: its key, and `{key}:wxkit` once this
   * process saw the key hold another program's value (the fleet's token is written there then).
   */
  get keys(): readonly string[] {
    return this.#besideInUse ? [this.key, this.#beside.key] : [this.key];
  }

  async #readBeside(store: GuardedStore, rejected: (value: string) => boolean): Promise<EntryRead> {
    this.#besideInUse = true;
    const read = await this.#beside.read(store, rejected);
    return read.kind === 'hit' ? read : { kind: 'miss', foreign: true };
  }

  /** `fresh` as the entry beside another program's value stores it. */
  #besideEncoded(fresh: EncodedEntry): EncodedEntry {
    this.#besideInUse = true;
    const { entry, ttlSeconds } = fresh;
    const fetchedAt = entry.fetchedAt!;
    const encoded = this.#beside.encode({ value: entry.value, expiresIn: entry.expiresAt! - fetchedAt } as Fetched, fetchedAt, entry.fetchedBy ?? '');
    return { ...encoded, ttlSeconds, entry };
  }

  /** The key where the schema's peer keeps this entry's expiry, if it names one. */
  #expiryKey(): string | undefined {
    return this.#init.schema.expiryKey?.(this.key, this.#init.field);
  }

  /**
   * The expiry a peer keeps under `key` (unix seconds, as a JSON number: a fraction is dropped, a negative
   * is long past); undefined where the key holds none, or something else: milliseconds, or a time more
   * than a day ahead, which no token or ticket lives to.
   */
  async #recordedExpiry(store: GuardedStore, key: string): Promise<number | undefined> {
    const raw = await store.getOrOtherKind(key, OTHER_KIND);
    if (typeof raw !== 'string' || !/^-?\d{1,11}(\.\d+)?$/.test(raw)) return undefined;
    const seconds = Math.floor(Number(raw));
    return seconds * 1000 - this.#init.now() > MAX_RECORDED_LIFE_MS ? undefined : seconds;
  }

  /** Whether `entry` is still in its life: before its TTL would have ended it, and not within 30 s of WeChat's expiry. */
  #servable(entry: StoredEntry): boolean {
    return inLife(entry, (expiresIn) => this.#ttlRule(expiresIn), this.#init.now());
  }

  /**
   * The entry inside a stored value, or none when wxkit cannot use it: not of the schema, in an encoding
   * the schema cannot read, or holding something that is no plausible WeChat token (a 1 MB or
   * control-character "token" would make every request fail). Each is a miss, logged once, never an
   * error. Such an entry is replaced under the lock only where the schema says every writer of the key
   * takes that lock (`replacesUndecodable`); otherwise it is `foreign`, another program's, and left as it is.
   */
  decode(raw: string): { entry?: StoredEntry; foreign?: boolean } {
    const { schema, label, appId, logKey, log } = this.#init;
    const { entry, foreign, why } = this.#decode(raw);
    if (entry) return { entry };
    const identity = `${raw.length}:${raw.slice(0, 64)}`;
    if (this.#reportedCorrupt !== identity) {
      this.#reportedCorrupt = identity;
      const next = foreign
        ? 'It is left as it is, and this process keeps the token it fetches in memory'
        : 'treating it as a miss and replacing it';
      const fields = { appId, key: logKey, schema: schema.name, bytes: raw.length, foreign };
      const message = `The stored ${label} ${why}; ${next}`;
      if (foreign) log.warn({ event: 'cache.foreign_entry', ...fields }, message);
      else log.warn({ event: 'cache.corrupt_entry', ...fields }, message);
    }
    return { foreign };
  }

  /** WeChat's expiry, and when the schema's TTL rule ends the entry (known when it records fetched_at). */
  lifetime(entry: StoredEntry): { expiresAtMs: number | undefined; staleAtMs: number | undefined } {
    return lifetimeOf(entry, (expiresIn) => this.#ttlRule(expiresIn));
  }

  /** The schema's TTL of an entry of this key, from its `expires_in`. */
  #ttlRule(expiresIn: number): number {
    return this.#init.schema.ttlSeconds(expiresIn, this.#init.field, this.key);
  }

  /**
   * When `value` ends (WeChat's expiry, unix s), as this process last fetched it or read it from an entry
   * that records its expiry (beside another program's value too): never the end of a store's TTL, which
   * a profile sets shorter. Undefined where it knows no end for that value. See withKnownEnd.
   */
  knownEnd(value: string): number | undefined {
    const side = this.#side;
    for (const known of [this.#known, side === undefined ? undefined : side.#known]) if (known?.value === value) return known.expiresAt;
    return undefined;
  }

  /**
   * Keeps when `entry`'s value ends (WeChat's expiry) at `{key}:end`, the value itself only as its
   * digest, for `END_RECORD_SLACK_S` past that end: the entry leaves the store up to five minutes before
   * it (its TTL), and an endpoint that hands its value back until that end with a full `expires_in`
   * (getticket) would have a process that never read the entry keep the value up to 2 h past it. See
   * recordedEnd. Resolves whether the record was written; a store failure writes none. Written beside the
   * token protocol, as recordedEnd reads it: its failure is its own (a Redis Cluster may keep the key on
   * another shard than the entry's), and does not take the store for down for every client of the process,
   * nor send the ticket just fetched to this host's fallback instead of the fleet.
   */
  async recordEnd(store: GuardedStore, entry: StoredEntry): Promise<boolean> {
    const expiresAt = entry.expiresAt;
    if (expiresAt === undefined) return false;
    const ttlSeconds = expiresAt + END_RECORD_SLACK_S - Math.floor(this.#init.now() / 1000);
    if (ttlSeconds <= 0) return false;
    return store.setBeside(endKey(this.key), encodeEndRecord(entry.value, expiresAt), ttlSeconds).then(
      () => true,
      () => false,
    );
  }

  /**
   * When `value` ends as the end record of the key says (see recordEnd): undefined where the record is
   * absent, of another value, unreadable, or more than a day ahead; `unread` where the store failed to
   * answer (read beside the token protocol, as recordEnd writes it), so that a record it may hold, and
   * the next fetch may need, is not replaced by an end nobody checked.
   */
  async recordedEnd(store: GuardedStore, value: string): Promise<{ end?: number; unread?: true }> {
    let raw: string | undefined;
    try {
      raw = await store.getBeside(endKey(this.key));
    } catch {
      return { unread: true };
    }
    const expiresAt = raw === undefined ? undefined : decodeEndRecord(raw, value);
    return expiresAt === undefined || expiresAt * 1000 - this.#init.now() > MAX_RECORDED_LIFE_MS ? {} : { end: expiresAt };
  }

  /** The stored form of a fresh value asked for at `fetchedAt` (unix seconds) by `fetchedBy`. */
  encode(fetched: Fetched, fetchedAt: number, fetchedBy: string): EncodedEntry {
    const { schema, field } = this.#init;
    const entry: StoredEntry = { value: fetched.value, expiresAt: fetchedAt + fetched.expiresIn, fetchedAt, fetchedBy };
    this.#known = entry;
    return {
      // Stores take binary strings; a custom schema that returned text has it stored as its UTF-8 bytes.
      raw: encodedToBinary(schema.encode(field, fetched.value, fetched.expiresIn, fetchedAt, { response: fetched.response, fetchedBy, key: this.key })),
      ttlSeconds: schema.ttlSeconds(fetched.expiresIn, field, this.key),
      entry,
    };
  }

  /**
   * Writes a fresh value, unless the store holds a value fetched later (its `fetched_at` is greater):
   * that one is the token WeChat considers latest, and it is kept. The compare is atomic where the store
   * can compare-and-set; elsewhere the refresh lock makes it safe. Resolves the entry the store holds
   * afterwards, and whether it is ours. Rejects with a CacheError when the store fails.
   */
  async write(store: GuardedStore, fresh: EncodedEntry, options: WriteOptions = {}): Promise<{ entry: StoredEntry; stored: boolean }> {
    const { raw, ttlSeconds, entry } = fresh;
    const { rejected = () => false, leaseHeld = true, mayRetry = () => true, absent = false, holds } = options;
    const replacesUndated = options.replacesUndated ?? leaseHeld;
    let stored = false;
    let added = false;
    for (let round = 0; round < WRITE_ROUNDS && !stored && (round === 0 || mayRetry()); round += 1) {
      const current = round === 0 && absent && store.atomicAdd ? undefined : await store.getOrOtherKind(this.key, OTHER_KIND);
      if (current === OTHER_KIND) return this.#beside.write(store, this.#besideEncoded(fresh), { ...options, absent: false });
      if (current === undefined) {
        const adding = store.add(this.key, raw, ttlSeconds);
        if (adding === undefined) await store.set(this.key, raw, ttlSeconds);
        stored = added = adding === undefined || (await adding);
        continue;
      }
      // Ours already (a peer wrote the same value, WeChat's ticket being the same while it lives): the
      // companions still go out below, where one lost since would send every reader to WeChat.
      if (current === raw) {
        stored = true;
        break;
      }
      const { entry: theirs, foreign } = this.#quietDecode(current);
      // Another program's value that this schema cannot read: never replaced. One it may replace (all
      // writers take the same lock) only by the lock's holder.
      if (foreign) return this.#beside.write(store, this.#besideEncoded(fresh), { ...options, absent: false });
      if (!theirs && !leaseHeld) return { entry, stored: false };
      // Theirs is kept only while it is still good: an entry past its life (a peer's clock ahead, an
      // expires_at that is really an expires_in, a ticket whose peer's record says it has ended) never
      // wins over the token just fetched.
      const recorded = theirs && theirs.expiresAt === undefined && theirs.value !== entry.value ? this.#expiryKey() : undefined;
      if (recorded !== undefined) theirs!.expiresAt = (await this.#recordedExpiry(store, recorded)) ?? 0;
      if (theirs && theirs.value !== entry.value && !rejected(theirs.value) && this.#servable(theirs)) {
        const dated = theirs.fetchedAt !== undefined && entry.fetchedAt !== undefined;
        if (dated ? theirs.fetchedAt! > entry.fetchedAt! : !replacesUndated) return { entry: theirs, stored: false };
        if (dated && theirs.fetchedAt === entry.fetchedAt && holds !== undefined && !(await holds())) return { entry: theirs, stored: false };
      }
      stored = await store.compareAndSet(this.key, current, raw, ttlSeconds);
    }
    if (!stored) return { entry, stored: false };
    const { schema, field } = this.#init;
    const fetchedAt = entry.fetchedAt!;
    for (const companion of schema.companions?.(this.key, field, entry.value, entry.expiresAt! - fetchedAt, fetchedAt) ?? []) {
      await store.set(companion.key, encodedToBinary(companion.value), companion.ttlSeconds);
    }
    // Written where the key was empty: another program's value there may have gone (its TTL), and the
    // token the fleet kept beside it is older than this one (on the classic endpoint, ended by its
    // fetch). It goes, so that it is not served when that program writes its value again.
    if (added && !this.#isBeside) await this.#deleteOlderBeside(store, fetchedAt).catch(() => undefined);
    return { entry, stored: true };
  }

  /**
   * Deletes the token the fleet shared beside another program's value (`{key}:wxkit`) if it was fetched
   * before `fetchedAt`, compared against the exact bytes read: the other program's value may have come
   * back since the write at the key, and a process of the fleet may have shared a newer token there
   * meanwhile; that one stays. Read without the beside store (#beside), which a process whose key never
   * held another program's value need not make: 10,000 accounts would each keep one, about 2 KB.
   */
  async #deleteOlderBeside(store: GuardedStore, fetchedAt: number): Promise<void> {
    const key = besideKey(this.key);
    const raw = await store.get(key);
    if (raw === undefined) return;
    let entry: StoredEntry | undefined;
    try {
      entry = NATIVE.decode(this.#init.field, raw, key);
    } catch {
      entry = undefined;
    }
    if (entry !== undefined && isPlausibleToken(entry.value) && entry.fetchedAt !== undefined && entry.fetchedAt >= fetchedAt) return;
    await store.deleteIfEquals(key, raw);
  }

  /**
   * Deletes the entry if it still holds `value` (compare-and-delete against the exact bytes read), so a
   * newer token written by another process survives. Resolves whether it deleted, and the entry it found.
   */
  async deleteIfHolds(store: GuardedStore, value: string): Promise<{ deleted: boolean; entry: StoredEntry | undefined }> {
    const raw = await store.getOrOtherKind(this.key, OTHER_KIND);
    if (raw === OTHER_KIND || (raw !== undefined && this.#quietDecode(raw).foreign)) return this.#beside.deleteIfHolds(store, value);
    const entry = raw === undefined ? undefined : this.#quietDecode(raw).entry;
    if (raw === undefined || entry?.value !== value) return { deleted: false, entry };
    return { deleted: await store.deleteIfEquals(this.key, raw), entry };
  }

  /** Logs, once, that the key holds another kind of value (as {@link decode} logs a foreign entry). */
  #reportOtherKind(): void {
    if (this.#reportedCorrupt === OTHER_KIND_IDENTITY) return;
    this.#reportedCorrupt = OTHER_KIND_IDENTITY;
    const { schema, label, appId, logKey, log } = this.#init;
    log.warn(
      { event: 'cache.foreign_entry', appId, key: logKey, schema: schema.name, bytes: 0, foreign: true },
      `The store holds another kind of value than a string at the ${label}'s key (a Redis hash, list or set: another program's data); it is left as it is, and this process keeps the token it fetches in memory`,
    );
  }

  #quietDecode(raw: string): { entry?: StoredEntry; foreign?: boolean } {
    const { entry, foreign } = this.#decode(raw);
    return entry ? { entry } : { foreign };
  }

  /** The schema's decode, whatever it throws: a value wxkit cannot read is a miss, never an outage. */
  #decode(raw: string): { entry?: StoredEntry; foreign: boolean; why: string } {
    const { schema, field } = this.#init;
    const foreign = schema.replacesUndecodable !== true;
    let entry: StoredEntry | undefined;
    try {
      entry = schema.decode(field, raw, this.key);
    } catch (error) {
      const detail = error instanceof Error ? error.message : String(error);
      return { foreign, why: `cannot be read (${detail})` };
    }
    if (!entry) return { foreign, why: `is not a valid ${schema.name} entry` };
    if (!isPlausibleToken(entry.value)) return { foreign, why: 'holds no plausible WeChat token (1–512 printable characters, no spaces, quotes, braces or brackets)' };
    return { entry, foreign: false, why: '' };
  }
}
