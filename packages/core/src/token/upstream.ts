import { shortDigest } from '../digest.js';
import { BadResponseError } from '../errors.js';
import type { StoredEntry } from './entry.js';
import { isPlausibleToken } from './plausible.js';

/** A value fresh from WeChat (or from a token service). */
export interface Fetched {
  value: string;
  /** Seconds of life WeChat gave it. */
  expiresIn: number;
  /** WeChat's whole answer, for formats that store it. */
  response?: Record<string, unknown>;
  /** The endpoint that answered it, where known. */
  path?: string;
}

/**
 * How one kind of token is fetched from WeChat, and what the refresher must know about it to guard the
 * fetch: how long it can take (part of the lock's lease), and what a fetch does to everyone else's token.
 */
export interface Upstream<P = unknown> {
  /** The longest one `fromPeer()`, `fetch()` and `afterWrite()` can take, in ms: the deadline of every call they make. */
  budgetMs: number;
  /**
   * Each fetch invalidates the token every other program holds (the classic endpoint): while the shared
   * store is down such fetches are spaced out, so hosts that cannot see each other's tokens do not take
   * turns killing them.
   */
  invalidatesPrevious?: boolean;
  /**
   * The digest of the secret this upstream fetches with ({@link credentialDigest}), where it has one: a
   * failure WeChat blames on the secret is recorded with it, and a process whose secret differs (the new
   * one, during a rotation) is not held back by it.
   */
  readonly credentialDigest?: string;
  /**
   * A forced fetch is scarce (stable_token's force_refresh: 20 a day, ignored when less than 30 s apart):
   * forced fetches are spaced fleet-wide through the store.
   */
  scarceForce?: boolean;
  /**
   * The endpoint answers a value it hands back again with its full life, not with what is left of it (an
   * official account's getticket: expires_in 7200 until the ticket ends): the end this process knew for
   * the value stands (see withKnownEnd). An endpoint that answers what is left (the stable endpoint,
   * WeCom's gettoken and tickets) is taken at its word: a known end that is early (another host's clock
   * behind) would only refuse a value that still lives.
   */
  answersFullLife?: boolean;
  /**
   * Runs before the refresh lock is taken, so the lock guards only `fetch()`: a ticket gets the access
   * token it is fetched with here.
   */
  prepare?(signal?: AbortSignal): Promise<P>;
  /** Asks WeChat. `force`: a new value even if the current one is valid (only ever on request). */
  fetch(force: boolean, prepared: P, signal?: AbortSignal): Promise<Fetched>;
  /**
   * Whether `error` says the prepared input was rejected (WeChat refused the access token a ticket fetch
   * carried): no failure of this endpoint, so nothing is backed off; the input is dropped, and the refresh
   * starts over once with a fresh one.
   */
  rejectsInput?(error: unknown): boolean;
  /**
   * Reports a rejected input (invalidates the access token) before the refresh starts over: under the
   * lock, so that a refresh waiting for it does not find the rejected input in the store once it takes
   * the lock (see recheckInput).
   */
  dropInput?(prepared: P, error: unknown): Promise<void>;
  /**
   * Asked by the holder of the lock beside its second read of the entry (once per refresh): the input its
   * fetch goes with, as the input's own entry in the store answers now. The prepared one while the store
   * holds it (or where its absence says nothing: see TokenManager.recheck), the one the store holds
   * instead, or undefined where the prepared input is known rejected or the store no longer holds it (a
   * holder before this one found it rejected, and reported it before it let the lock go): the lock is let
   * go, and the refresh starts over with a fresh input rather than send WeChat one it has just refused.
   * One store read, beside the others: the section gains no store call in turn.
   */
  recheckInput?(prepared: P): Promise<P | undefined>;
  /**
   * A value a peer SDK fetched on its own and keeps where wxkit can read it (EasyWeChat 6's copy of an
   * authorizer's token), taken under the lock instead of asking WeChat, unless `rejected` says WeChat
   * refused it; undefined when there is none to take. Never for a forced refresh. Best effort: a failure
   * is the same as none.
   */
  fromPeer?(rejected: (value: string) => boolean): Promise<Fetched | undefined>;
  /**
   * Runs once the shared store took the fetched value (`stored`, its entry), while the lock's lease still
   * holds: writes what peers keep beside the entry (EasyWeChat 6's copy of an authorizer's token). Not
   * called when the store kept another entry, failed, or the lease ran out: the writer of whatever the
   * store holds writes its own. Best effort: its failure is its own business.
   */
  afterWrite?(fetched: Fetched, stored: StoredEntry): Promise<void>;
}

// WeChat documents expires_in as "up to 7200"; accept anything sane and refuse what would poison the store.
const MAX_EXPIRES_IN = 7 * 24 * 3600;
// Below this a token is of no use: it counts as expired 30 s before its end, so every read would fetch
// again (a storm on WeChat). WeChat's shortest is the stable endpoint's remaining life, 300 s or more.
const MIN_EXPIRES_IN = 60;

/**
 * Checks a token or ticket response before anything is stored: a plausible token (1–512 printable
 * ASCII characters, no spaces, quotes, braces or brackets) and an integer lifetime of at least a minute. A response that fails is a BadResponseError, and
 * nothing is cached.
 */
export function validateFetched(body: Record<string, unknown>, field: string, path: string): Fetched {
  const value = body[field];
  const expiresIn = body.expires_in;
  if (!isPlausibleToken(value)) {
    throw new BadResponseError(`WeChat answered ${path} without a usable ${field}`, { path });
  }
  if (typeof expiresIn !== 'number' || !Number.isInteger(expiresIn) || expiresIn <= 0 || expiresIn > MAX_EXPIRES_IN) {
    throw new BadResponseError(`WeChat answered ${path} without a usable expires_in`, { path });
  }
  if (expiresIn < MIN_EXPIRES_IN) {
    const error = new BadResponseError(`WeChat answered ${path} with expires_in ${expiresIn}: under ${MIN_EXPIRES_IN} s, a token of no use`, { path });
    markShortLived(error, expiresIn * 1000);
    throw error;
  }
  return { value, expiresIn, response: body, path };
}

/**
 * `fetched`, its life cut to `knownEnd` (unix s) where that is the end this process knew for the same
 * value: getticket hands back the ticket it issued until that ends, answering expires_in 7200 however
 * little of it is left, and the ticket would be kept up to 2 h past its end (every wx.config refusing
 * it). Where too little is left to serve, the short-life error of validateFetched: the fleet asks again
 * just after that end, when WeChat has the next one. A known end up to a minute past is that end still:
 * it counts from when the first fetch was sent, in whole seconds, and WeChat's from when it answered, so
 * the value may be handed back a moment after it; the fleet asks again in the steps of its attempts. A
 * known end further past, or later than WeChat's answer, says nothing: WeChat's answer stands.
 */
export function withKnownEnd(fetched: Fetched, knownEnd: number | undefined, nowS: number): Fetched {
  if (knownEnd === undefined) return fetched;
  const left = knownEnd - nowS;
  if (left <= -MIN_EXPIRES_IN || left >= fetched.expiresIn) return fetched;
  if (left < MIN_EXPIRES_IN) {
    const path = fetched.path ?? 'the token endpoint';
    const when = left > 0 ? `which ends in ${left} s` : `which was to end ${-left} s ago and ends any moment`;
    const error = new BadResponseError(
      `WeChat answered ${path} with the value it handed out before, ${when} (expires_in ${fetched.expiresIn} counts from its first hand-out): too little to serve; asked again once it ends`,
      { path },
    );
    markShortLived(error, Math.max(0, left) * 1000);
    throw error;
  }
  return { ...fetched, expiresIn: left };
}

/**
 * An endpoint that hands back its current value until it ends (WeCom's gettoken, the ticket endpoints)
 * has nothing newer before that end; near it, what is left (its answer's expires_in, or the end this
 * process knew for the value: see withKnownEnd) is too little to serve. The life left of the value a
 * refused answer carried, in ms, by error.
 */
const ENDS_IN_MS = new WeakMap<object, number>();

/** Marks `error` as the refusal of a value that still lives `endsInMs` (a failure marker's, for the fleet). */
export function markShortLived(error: object, endsInMs: number): void {
  ENDS_IN_MS.set(error, endsInMs);
}

/** For an answer refused for its short expires_in: how long the value it carried still lives, in ms. */
export function shortLivedEndsInMs(error: unknown): number | undefined {
  return typeof error === 'object' && error !== null ? ENDS_IN_MS.get(error) : undefined;
}

/**
 * The first 16 hex digits of SHA-256 of `{id}:{secret}`: which secret a failure marker's fetch used
 * (docs/key-schema.md), without the secret; undefined for a client without one (it fetches nothing).
 */
export function credentialDigest(id: string, secret: string | undefined): string | undefined {
  return secret === undefined ? undefined : shortDigest(`${id}:${secret}`);
}
