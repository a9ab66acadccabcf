import { BadResponseError, HttpError, TokenUnavailableError, WeChatApiError, describeErrcode, isSecretRejection, type WxkitErrorCode } from '../errors.js';
import { binaryToText, textToBinary } from '../bytes.js';
import { withRetryAt } from '../retry-at.js';
import type { GuardedStore } from '../store.js';
import { markShortLived, shortLivedEndsInMs } from './upstream.js';

/**
 * When may WeChat be asked again. A failed fetch leaves a marker beside the entry, `{key}:failed`, that
 * every process reads before it fetches: the whole fleet backs off together, by errcode, and a process
 * that waited on the lock holder returns the holder's error instead of fetching again.
 * docs/key-schema.md documents the marker for other languages. A fetch that never left its process
 * (`HttpError.sent` false) tells nothing about WeChat and writes no marker: see local-backoff.ts.
 */

/** A failed fetch as the marker records it. Times are unix milliseconds. */
export interface FailureMarker extends FailureRecord {
  code: WxkitErrorCode;
}

/**
 * The marker's fields but its code: what `@wxkit/core/internal` hands the CLI, whose declarations then
 * need none of the public entry's error types (tsup would move those to a chunk both entries share).
 */
export interface FailureRecord {
  errcode?: number;
  errmsg?: string;
  status?: number;
  path?: string;
  message?: string;
  failedAt: number;
  retryAt: number;
  /** Failures in a row, fleet-wide: the exponent of the next pause. */
  attempt: number;
  failedBy?: string;
  /**
   * For a value handed back with too little life left (an endpoint that hands back its value until it
   * ends): when that value ends. Until then a process that holds it serves it (see TokenManager).
   */
  endsAt?: number;
  /**
   * For a failure WeChat blamed on the secret: the digests of the secrets WeChat refused while such
   * failures followed each other (credentialDigest()), the latest last. A process whose own secret is
   * none of them is not held back by it.
   */
  secretDigests?: string[];
}

/** The key of an entry's failure marker: `{key}:failed`, in every schema. */
export function failureKey(entryKey: string): string {
  return `${entryKey}:failed`;
}

/** How an error is backed off: the kinds of docs/protocol.md. */
type Policy = 'transient' | 'minute' | 'credential' | 'revoked' | 'quota' | 'hour';

// Credential errors do not heal by retrying, but an IP whitelist or a secret can be fixed while the
// service runs: the fleet tries again once a minute (or at once on forceRefresh()).
// 89501, 89503, 89506 and 89507 are the IP confirmation WeChat asks of the account's administrator for a
// caller outside the whitelist (awaited, required, refused twice in 24 h, refused once in 1 h): a person
// acts, or the refusal runs out in hours, never within a transient pause.
// 61004 (component IP whitelist) and 61023 (refresh token invalid) need a person too, as do WeCom's 60020
// (a caller outside the app's trusted IPs) and 40091 (a secret that is not one); 61003 has a policy of
// its own (REVOKED, below).
const CREDENTIAL_ERRCODES = new Set([40002, 40013, 40125, 40164, 41002, 41004, 40243, 89501, 89503, 89506, 89507, 61004, 61023, 60020, 40091]);
const MINUTE_MS = 60_000;
// An account that revoked the component's authorization (61003) comes back only by authorizing it again,
// and that authorization hands over new tokens (OpenPlatform.handleAuthorization writes them) without
// asking api_authorizer_token: a platform that keeps calling for such an account asks WeChat after 1, 2,
// 4 … minutes, at most once an hour, rather than once a minute for as long as it calls.
const REVOKED = 61003;
const REVOKED_MAX_MS = 60 * MINUTE_MS;
/** After the end of a value handed back with too little life left: its successor is asked for this long after. */
const SHORT_LIFE_SLACK_MS = 1_000;
/** Transient failures (-1, 5xx, timeouts, unreadable answers): 1 s, 2 s, 4 s … at most 60 s, ±20 %. */
const TRANSIENT_BASE_MS = 1_000;
const TRANSIENT_MAX_MS = 60_000;
const JITTER = 0.2;
/** A marker outlives its pause by this much, so the next failure in a row grows the pause further. */
export const REMEMBER_MS = 10 * MINUTE_MS;
/**
 * The longest a marker of a refused secret stays in a store that honours TTLs once written: its pause (a
 * credential error's minute, below) and REMEMBER_MS. Past it no process reads that refusal again.
 */
export const SECRET_MARKER_LIFE_MS = MINUTE_MS + REMEMBER_MS;
// WeChat's daily quotas reset at midnight Beijing time (UTC+8).
const BEIJING_OFFSET_MS = 8 * 3_600_000;
const DAY_MS = 86_400_000;
// WeCom has no daily quota on these: its 45009 is a limit by the hour (a ticket's 100 an hour per app, 400
// per corp; gettoken's 150,000 an hour), and it lifts the block 60 minutes after it refused.
const HOUR_MS = 3_600_000;
const WECOM_TOKEN_PATHS = new Set(['cgi-bin/gettoken', 'cgi-bin/get_jsapi_ticket', 'cgi-bin/ticket/get']);

/** Whether a 45009 from `path` is WeCom's block by the hour, rather than WeChat's daily quota. */
function blocksForAnHour(errcode: number | undefined, path: string | undefined): boolean {
  return errcode === 45009 && path !== undefined && WECOM_TOKEN_PATHS.has(path.replace(/^\/+/, ''));
}

// The errcodes that say the secret itself is wrong (40125 invalid appsecret, 40091 a WeCom secret that is
// not one), beside 40001 from a token endpoint (isSecretRejection()).
const SECRET_ERRCODES = new Set([40125, 40091]);

/** The most secret digests a marker keeps (the latest): a fleet does not hold that many wrong secrets. */
const MAX_SECRET_DIGESTS = 8;

/** Whether `error` is WeChat's word that the secret a fetch used is wrong (40125, 40091; 40001 from a token endpoint). */
export function refusesSecret(error: unknown): boolean {
  return error instanceof WeChatApiError && (SECRET_ERRCODES.has(error.errcode) || isSecretRejection(error.errcode, error.path));
}

/** Whether a marker's failure is WeChat's word that the secret used is wrong. */
function blamesSecret(marker: FailureRecord): boolean {
  return marker.errcode !== undefined && (SECRET_ERRCODES.has(marker.errcode) || isSecretRejection(marker.errcode, marker.path));
}

/** The back-off policy of an error from a fetch, or undefined for errors that are not WeChat's (store, abort). */
export function policyOf(error: unknown): Policy | undefined {
  if (error instanceof WeChatApiError) {
    if (blocksForAnHour(error.errcode, error.path)) return 'hour';
    if (error.errcode === 45009) return 'quota';
    if (error.errcode === 45011) return 'minute';
    if (error.errcode === REVOKED) return 'revoked';
    if (CREDENTIAL_ERRCODES.has(error.errcode) || isSecretRejection(error.errcode, error.path)) return 'credential';
    return 'transient';
  }
  if (error instanceof HttpError || error instanceof BadResponseError) return 'transient';
  return undefined;
}

/** The next midnight in Beijing after `now`, in unix ms: when WeChat's daily quotas start again. */
export function nextQuotaDay(now: number): number {
  return Math.floor((now + BEIJING_OFFSET_MS) / DAY_MS) * DAY_MS + DAY_MS - BEIJING_OFFSET_MS;
}

/** How far ahead of this process's clock a marker's `failed_at` may lie and still count. */
const MARKER_CLOCK_AHEAD_MS = 60_000;
/** How far from this process's clock a marker's `failed_at` may lie for the marker to hold from when it was seen. */
const WITNESS_CLOCK_SKEW_MS = 3_600_000;

/**
 * The `retry_at` a marker is held to: at most the longest pause its failure can call for (the next
 * Beijing midnight for 45009, an hour for WeCom's 45009 and a revoked authorization (61003), a minute
 * for 45011 and the other credential errors, the transient cap with its jitter for the rest), counted
 * from when it failed, or from `now` if its `failed_at` lies ahead (by a minute at most: a marker dated
 * further ahead does not hold). A marker written by a clock far ahead, or by a peer with its own idea
 * of a pause, cannot stop the fleet for longer than a failure of its kind would.
 */
export function clampRetryAt(marker: FailureRecord, now: number): number {
  // A failure dated further ahead than clocks plausibly disagree holds no one back: counted from `now` at
  // every read, it would stop the fleet until that date.
  if (!(marker.failedAt <= now + MARKER_CLOCK_AHEAD_MS)) return now;
  return Math.min(marker.retryAt, latestRetryAt(marker, Math.min(marker.failedAt, now)));
}

/** The latest `retry_at` a failure of the marker's kind can call for, counted from `from`. */
function latestRetryAt(marker: FailureRecord, from: number): number {
  const { errcode } = marker;
  if (blocksForAnHour(errcode, marker.path)) return from + HOUR_MS;
  if (errcode === REVOKED) return from + REVOKED_MAX_MS;
  return errcode === 45009
    ? nextQuotaDay(from)
    : from +
        (errcode === 45011 || (errcode !== undefined && (CREDENTIAL_ERRCODES.has(errcode) || isSecretRejection(errcode, marker.path)))
          ? MINUTE_MS
          : Math.ceil(TRANSIENT_MAX_MS * (1 + JITTER)));
}

/**
 * The `retry_at` of a marker on this process's clock, from when it saw the marker appear rather than
 * from the writer's dates: its pause (`retry_at − failed_at`, a length, which no clock offset changes)
 * counted from `since`. Never later than its failure calls for.
 */
function witnessedRetryAt(marker: FailureRecord, since: number): number {
  return Math.min(since + Math.max(0, marker.retryAt - marker.failedAt), latestRetryAt(marker, since));
}

/** The marker for `error`, the `attempt`-th failure in a row; undefined when the error is not WeChat's. */
export function markerFor(error: unknown, attempt: number, now: number, failedBy: string, random = Math.random): FailureMarker | undefined {
  const policy = policyOf(error);
  if (!policy) return undefined;
  let pauseMs: number;
  let endsInMs: number | undefined;
  if (policy === 'quota') pauseMs = nextQuotaDay(now) - now;
  else if (policy === 'hour') pauseMs = HOUR_MS;
  else if (policy === 'revoked') pauseMs = Math.min(MINUTE_MS * 2 ** Math.min(attempt - 1, 16), REVOKED_MAX_MS);
  else if (policy === 'minute' || policy === 'credential') pauseMs = MINUTE_MS;
  else {
    const base = Math.min(TRANSIENT_BASE_MS * 2 ** Math.min(attempt - 1, 16), TRANSIENT_MAX_MS);
    pauseMs = Math.round(base * (1 - JITTER + 2 * JITTER * random()));
    // A value handed back with too little life left (an endpoint that answers its current value until it
    // ends) has its successor once it ends: asked again just after that, neither before (the same value
    // again) nor in steps past it (the new one waiting unasked for); no sooner than the step of its attempt.
    endsInMs = shortLivedEndsInMs(error);
    if (endsInMs !== undefined) pauseMs = Math.max(pauseMs, endsInMs + SHORT_LIFE_SLACK_MS);
  }
  const marker: FailureMarker = { code: (error as WeChatApiError).code, failedAt: now, retryAt: now + pauseMs, attempt, failedBy };
  if (endsInMs !== undefined) marker.endsAt = now + endsInMs;
  if (error instanceof WeChatApiError) {
    marker.errcode = error.errcode;
    marker.errmsg = error.errmsg;
    marker.path = error.path;
  } else if (error instanceof HttpError || error instanceof BadResponseError) {
    marker.path = error.path;
    marker.message = error.message;
    if (error.status !== undefined) marker.status = error.status;
  }
  return marker;
}

/** The stored form: compact JSON with WeChat's own field names, times in unix milliseconds. */
export function encodeMarker(marker: FailureMarker): string {
  // UTF-8 bytes, as the entry's JSON: an errmsg or a failed_by may hold non-ASCII text.
  return textToBinary(JSON.stringify({
    code: marker.code,
    ...(marker.errcode === undefined ? {} : { errcode: marker.errcode, errmsg: marker.errmsg ?? '' }),
    ...(marker.status === undefined ? {} : { status: marker.status }),
    ...(marker.path === undefined ? {} : { path: marker.path }),
    ...(marker.message === undefined ? {} : { message: marker.message }),
    failed_at: marker.failedAt,
    retry_at: marker.retryAt,
    attempt: marker.attempt,
    ...(marker.failedBy === undefined ? {} : { failed_by: marker.failedBy }),
    ...(marker.endsAt === undefined ? {} : { ends_at: marker.endsAt }),
    ...(marker.secretDigests === undefined ? {} : { secret_digests: marker.secretDigests }),
  }));
}

export function decodeMarker(raw: string | undefined): FailureMarker | undefined {
  if (raw === undefined) return undefined;
  let record: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(binaryToText(raw));
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return undefined;
    record = parsed as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const { failed_at: failedAt, retry_at: retryAt, attempt } = record;
  if (typeof failedAt !== 'number' || !Number.isFinite(failedAt) || typeof retryAt !== 'number' || !Number.isFinite(retryAt)) return undefined;
  const marker: FailureMarker = {
    // Another language may write a marker with an errcode only: it is WeChat's refusal all the same.
    code: typeof record.code === 'string' ? (record.code as WxkitErrorCode) : 'ERR_WXKIT_WECHAT_API',
    failedAt,
    retryAt,
    attempt: typeof attempt === 'number' && attempt >= 1 ? Math.floor(attempt) : 1,
  };
  if (typeof record.errcode === 'number') marker.errcode = record.errcode;
  if (typeof record.errmsg === 'string') marker.errmsg = record.errmsg.slice(0, 512);
  if (typeof record.status === 'number') marker.status = record.status;
  if (typeof record.path === 'string') marker.path = record.path.slice(0, 256);
  if (typeof record.message === 'string') marker.message = record.message.slice(0, 512);
  if (typeof record.failed_by === 'string') marker.failedBy = record.failed_by.slice(0, 256);
  if (typeof record.ends_at === 'number' && Number.isFinite(record.ends_at)) marker.endsAt = record.ends_at;
  const digests = record.secret_digests;
  if (Array.isArray(digests) && digests.length > 0 && digests.every((digest) => typeof digest === 'string')) {
    marker.secretDigests = (digests as string[]).slice(-MAX_SECRET_DIGESTS).map((digest) => digest.slice(0, 64));
  }
  return marker;
}

/**
 * The error a marker stands for, as the process that failed threw it: callers that did not fetch get the
 * same class, code and errcode, and a message saying the failure is shared and when WeChat is asked again.
 */
export function markerError(marker: FailureMarker, label: string, now: number): Error {
  const error = withRetryAt(errorOfMarker(marker, label), marker.retryAt);
  MARKER_FAILED_AT.set(error, marker.failedAt);
  // The value the failed fetch was handed back still lives until then: a process holding it serves it.
  if (marker.endsAt !== undefined && marker.endsAt > now) markShortLived(error, marker.endsAt - now);
  return error;
}

/** The `failed_at` of the marker each error of {@link markerError} stands for: which failure of the fleet it is. */
const MARKER_FAILED_AT = new WeakMap<object, number>();

/** Which failure of the fleet `error` stands for (its marker's `failed_at`), if it came from a marker. */
export function markerFailedAt(error: unknown): number | undefined {
  return typeof error === 'object' && error !== null ? MARKER_FAILED_AT.get(error) : undefined;
}

function errorOfMarker(marker: FailureMarker, label: string): Error {
  const path = marker.path ?? 'the token endpoint';
  const shared = `a fetch of the ${label} failed ${marker.failedBy ? `in ${marker.failedBy} ` : ''}at ${iso(marker.failedAt)}; the fleet asks WeChat again after ${iso(marker.retryAt)}`;
  if (marker.errcode !== undefined) {
    const hint = describeErrcode(marker.errcode, marker.path);
    return new WeChatApiError({ errcode: marker.errcode, errmsg: marker.errmsg ?? '' }, path, {
      message: `WeChat rejected ${path}: errcode ${marker.errcode}${hint ? ` (${hint})` : ''}; ${shared}`,
    });
  }
  if (marker.code === 'ERR_WXKIT_HTTP' || marker.code === 'ERR_WXKIT_TIMEOUT') {
    return new HttpError(marker.code, `${marker.message ?? `The request to ${path} failed`}; ${shared}`, { path, ...(marker.status === undefined ? {} : { status: marker.status }) });
  }
  if (marker.code === 'ERR_WXKIT_BAD_RESPONSE') {
    return new BadResponseError(`${marker.message ?? `WeChat answered ${path} badly`}; ${shared}`, { path });
  }
  return new TokenUnavailableError(`No ${label} could be had: ${shared}`);
}

/** `ms` as an ISO date; a time no Date can hold (a peer's garbage) as the number. */
function iso(ms: number): string {
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? String(ms) : date.toISOString();
}

/**
 * The back-off of one entry. It reads and writes the marker in whichever store the entry lives in now
 * (the shared one, or this host's or process's fallback while it is down). A marker whose write failed
 * is kept in this process instead, for as long as a stored one would have lived, so the failure still
 * holds this process back; the store's own marker is the truth whenever there is one to write.
 */
export class FailureGate {
  readonly #entryKey: string;
  readonly #label: string;
  /** Where this process's secret's digest comes from (an upstream that fetches with one). */
  readonly #credential: { readonly credentialDigest?: string } | undefined;
  /** A marker this process could not write to the store. */
  #unwritten: FailureMarker | undefined;
  /** The last marker this process wrote, while a stored one would still exist (see {@link #lossy}). */
  #own: FailureMarker | undefined;
  /** A read found the store without {@link #own} (its pause not over): deleted (`wxkit token clear`), or lost. */
  #ownVanished = false;
  /**
   * The store lost this process's marker, and the fetch that followed failed too: a store that
   * acknowledges a write and drops it (an eviction, a read from a lagging replica). This process's own
   * marker then holds it back where the store shows none, or each of its calls would ask WeChat again.
   * The first loss is taken for a deletion (`wxkit token clear` lets the fleet ask at once).
   */
  #lossy = false;
  /**
   * The attempt of the last 61003 this process recorded, while failures of other kinds followed it
   * without a gap (no success, no deleted marker): a transient failure between two 61003s does not
   * start the revoked account's back-off over at a minute.
   */
  #revokedAttempt: number | undefined;
  /**
   * What this process last read at the marker's key, in which store, when it last read it (`at`), and,
   * on this process's clock, since when at the latest the marker has been there (`since`), where it can
   * tell: see #read.
   */
  #seen: { store: GuardedStore; raw: string | undefined; at: number; since: number | undefined } | undefined;

  constructor(entryKey: string, label: string, credential?: { readonly credentialDigest?: string }) {
    this.#entryKey = entryKey;
    this.#label = label;
    this.#credential = credential;
  }

  /**
   * Whether `marker` records a secret WeChat refused that is not this process's: after a rotation, the
   * processes that hold the new secret are not held back by the failures of those still on the old one
   * (each of which keeps its own back-off, as its markers carry its digest).
   */
  #othersSecret(marker: FailureMarker): boolean {
    if (marker.secretDigests === undefined || !blamesSecret(marker)) return false;
    // A full list: more secrets were refused than it keeps, and one not listed may be among them. It
    // holds every process, as a marker without digests does, rather than let each of them ask in turn.
    if (marker.secretDigests.length >= MAX_SECRET_DIGESTS) return false;
    const own = this.#credential?.credentialDigest;
    return own !== undefined && !marker.secretDigests.includes(own);
  }
  /** `{key}:failed`, made when used: an idle account keeps no copy of it. */
  get key(): string {
    return failureKey(this.#entryKey);
  }


  /** The marker in force at `now`, if any. */
  async active(store: GuardedStore, now: number): Promise<FailureMarker | undefined> {
    return (await this.look(store, now)).active;
  }

  /**
   * The marker in force at `now`, if any, and whether the store holds one at all (one past its
   * `retry_at` is kept a while, so the next failure counts as the next attempt).
   */
  async look(store: GuardedStore, now: number): Promise<{ active: FailureMarker | undefined; stored: boolean }> {
    const { raw, active } = await this.#read(store, now);
    return { active, stored: raw !== undefined };
  }

  /**
   * The stored marker as read, and the marker in force at `now`: its `retry_at` held to the longest
   * pause of its errcode, so a marker from a clock far ahead holds no one back for days.
   */
  async #read(store: GuardedStore, now: number): Promise<{ raw: string | undefined; active: FailureMarker | undefined }> {
    const raw = await store.getOrOtherKind(this.key, OTHER_KIND);
    const stored = decodeMarker(raw);
    const since = this.#witness(store, raw, stored, now);
    const own = this.#ownPending(now);
    if (own !== undefined) {
      if (stored !== undefined && stored.failedAt >= own.failedAt) this.#lossy = false;
      else if (raw === undefined && own.retryAt > now) this.#ownVanished = true;
    }
    const marker = latest(stored, latest(this.#pending(now), this.#lossy ? own : undefined));
    if (!marker || this.#othersSecret(marker)) return { raw, active: undefined };
    let retryAt = clampRetryAt(marker, now);
    // The marker's dates are its writer's clock: a host whose clock is behind writes a pause that reads as
    // long over on the others, one ahead a marker dated too far ahead to hold. Where this process saw the
    // marker appear, its pause holds from then on this process's clock, whatever the writer's said.
    if (marker === stored && since !== undefined) retryAt = Math.max(retryAt, witnessedRetryAt(marker, since));
    return { raw, active: retryAt > now ? { ...marker, retryAt } : undefined };
  }

  /**
   * Since when, on this process's clock, the stored marker has been there at the latest: the previous
   * read of another value (it was written after that read), or, for a marker dated further ahead than
   * clocks plausibly disagree (its writer's clock is ahead), the first read of it. Undefined where this
   * process cannot tell (a marker it finds on its first look): its dates are all there is.
   */
  #witness(store: GuardedStore, raw: string | undefined, stored: FailureMarker | undefined, now: number): number | undefined {
    const seen = this.#seen?.store === store ? this.#seen : undefined;
    let since: number | undefined;
    if (seen !== undefined && seen.raw === raw) since = seen.since;
    // A marker dated further from this clock than hosts' clocks plausibly disagree (a value no wxkit
    // wrote, a clock a day off) holds no one back by its dates, nor by when it was seen.
    else if (stored !== undefined && Math.abs(stored.failedAt - now) <= WITNESS_CLOCK_SKEW_MS) {
      since = seen !== undefined ? seen.at : stored.failedAt > now + MARKER_CLOCK_AHEAD_MS ? now : undefined;
    }
    this.#seen = { store, raw, at: now, since };
    return since;
  }

  /**
   * Throws the shared error when a marker is in force. `force` (an explicit forceRefresh()) passes a
   * credential or transient marker, since the caller may just have fixed what failed; never a quota.
   * Resolves the stored marker as read, to compare with later: a waiter's view before it waits
   * (see {@link failedSince}), so that it need not read the marker again.
   */
  async check(store: GuardedStore, now: number, force: boolean): Promise<string | undefined> {
    const { raw, active: marker } = await this.#read(store, now);
    if (!marker) return raw;
    if (force && marker.errcode !== 45009 && marker.errcode !== 45011) return raw;
    throw markerError(marker, this.#label, now);
  }

  /**
   * The holder's failure, if a marker other than `before` (the one there when the waiter started) has
   * been written since. Compared by content, not by clock: hosts' clocks may disagree. Its retry time
   * is held to what its failure calls for (see {@link clampRetryAt}), as a marker read before a fetch is.
   */
  async failedSince(store: GuardedStore, before: string | undefined, now: number): Promise<Error | undefined> {
    const raw = await store.getOrOtherKind(this.key, OTHER_KIND);
    const marker = raw === before ? undefined : decodeMarker(raw);
    return marker && !this.#othersSecret(marker) ? markerError({ ...marker, retryAt: clampRetryAt(marker, now) }, this.#label, now) : undefined;
  }

  /** Records a failed fetch; returns the marker when the error was WeChat's (and so backed off). */
  async record(store: GuardedStore, error: unknown, now: number, failedBy: string): Promise<FailureMarker | undefined> {
    // A second failure after the store lost this process's marker: the store loses them (see #lossy).
    // The first loss still reads as a deletion: this failure is counted from the start, as after one.
    const firstLoss = this.#ownVanished && !this.#lossy;
    if (this.#ownVanished) this.#lossy = true;
    this.#ownVanished = false;
    const own = this.#lossy && !firstLoss ? this.#ownPending(now) : undefined;
    let previous: FailureMarker | undefined;
    try {
      previous = latest(decodeMarker(await store.get(this.key)), latest(this.#pending(now), own));
    } catch {
      previous = latest(this.#pending(now), own);
    }
    // A failure of another secret (one this process does not hold to) is no failure of this one in a row.
    const counted = previous !== undefined && !this.#othersSecret(previous) ? previous : undefined;
    // A revoked authorization's pauses grow with the 61003s in a row, not with the transient failures
    // before it: its first pause is a minute, whatever came before.
    // A row broken (no marker: a success, a deletion) forgets the 61003s before it.
    if (counted === undefined) this.#revokedAttempt = undefined;
    let attempt = counted !== undefined ? counted.attempt + 1 : 1;
    if (policyOf(error) === 'revoked' && counted !== undefined && counted.errcode !== REVOKED) attempt = (this.#revokedAttempt ?? 0) + 1;
    const marker = markerFor(error, attempt, now, failedBy);
    if (!marker) return undefined;
    if (marker.errcode === REVOKED) this.#revokedAttempt = marker.attempt;
    const digest = blamesSecret(marker) ? this.#credential?.credentialDigest : undefined;
    if (digest !== undefined) {
      // The secrets refused before stay refused: each wrong secret of a fleet asks WeChat once per pause,
      // not once each time another wrong one has written the marker.
      const earlier = previous !== undefined && blamesSecret(previous) ? (previous.secretDigests ?? []).filter((known) => known !== digest) : [];
      marker.secretDigests = [...earlier, digest].slice(-MAX_SECRET_DIGESTS);
    }
    const ttlSeconds = (marker.retryAt - now + REMEMBER_MS) / 1000;
    this.#own = marker;
    try {
      await store.set(this.key, encodeMarker(marker), ttlSeconds);
      this.#unwritten = undefined;
      // Read back where the store was taken for one that loses markers: one that shows it held it (the
      // marker before was deleted: wxkit token clear) is trusted again, so that the next deletion still
      // lets this process fetch at once, even before any read of its own found this marker.
      if (this.#lossy && decodeMarker(await store.get(this.key).catch(() => undefined))?.failedAt === marker.failedAt) this.#lossy = false;
    } catch {
      this.#unwritten = marker;
    }
    return marker;
  }

  /**
   * A fetch succeeded: the fleet may fetch at will again. `stored: false` when the lock's holder saw no
   * marker under its lock and holds it still: there is none to delete (only a holder writes one), so no
   * store call is made.
   */
  async clear(store: GuardedStore, stored = true): Promise<void> {
    this.#unwritten = undefined;
    this.#own = undefined;
    this.#ownVanished = false;
    this.#lossy = false;
    this.#revokedAttempt = undefined;
    if (stored) await store.delete(this.key).catch(() => undefined);
  }

  /** This process's last marker, while a stored one would still exist. */
  #ownPending(now: number): FailureMarker | undefined {
    if (this.#own && this.#own.retryAt + REMEMBER_MS <= now) this.#own = undefined;
    return this.#own;
  }

  /** The unwritten marker, while a stored one would still exist. */
  #pending(now: number): FailureMarker | undefined {
    const marker = this.#unwritten;
    if (marker && marker.retryAt + REMEMBER_MS <= now) this.#unwritten = undefined;
    return this.#unwritten;
  }
}

// What a marker key holding another kind of value than a string (a Redis hash: garbage at a key only
// wxkit's lock holders write) reads as: no marker (it decodes to none), yet a key that is there, so the
// next success deletes it and the next failure's marker replaces it.
const OTHER_KIND = '\u0000another kind of value';

function latest(a: FailureMarker | undefined, b: FailureMarker | undefined): FailureMarker | undefined {
  if (!a) return b;
  if (!b) return a;
  return a.failedAt >= b.failedAt ? a : b;
}
