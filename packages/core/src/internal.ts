/**
 * `@wxkit/core/internal`: the helpers the wxkit packages share (the store adapters, the CLI), so that each
 * rule lives in one place. For the wxkit packages only: NOT covered by semver, and it may change in any
 * release. The packages that import it are released together with core, at the same version.
 *
 * @packageDocumentation
 */
export { assertTtl, storeTtlMs } from './ttl.js';
export { nodeRedisReason, socketReason } from './socket-reason.js';
export { maskPasswords, maskUrl, withoutPasswords } from './redact.js';
export { retryAtOf } from './retry-at.js';
export { inLife } from './token/lifetime.js';
export { besideKey } from './token/entry-store.js';
export { isPlausibleToken } from './token/plausible.js';
export { partitionOf } from './partition.js';
export { localityOf, markLocality, type Locality } from './locality.js';
export { clampRetryAt, failureKey, type FailureRecord } from './token/failure.js';
export { decodePause, heldPause, refetchPauseKey, type SpacingSlot } from './token/spacing.js';
export {
  ID_RULE,
  MAX_TIMER_MS,
  NOT_IN_BEARER_KEY,
  NOT_IN_SECRET,
  QUOTED,
  checkOptions,
  closestName,
  durationMs,
  fn,
  hasMethods,
  integer,
  matching,
  nonEmptyString,
  oneOf,
  required,
  rule,
  typeName,
  type OptionRule,
  type OptionSchema,
  type RetiredOptions,
} from './validate.js';

import { decodeMarker as decodeFailureMarker, type FailureRecord } from './token/failure.js';
import { kInvalidateUnproven } from './access-token.js';
import { kTicketManager } from './jssdk.js';
import type { TokenManager } from './token/manager.js';

/**
 * `accessToken.invalidate(token, errcode)` (`accessToken` an AccessToken) for a token no call went
 * through with, as a token service reports it for a client that says so. The fetches that follow such
 * rejections are spaced fleet-wide (`{key}:refetch`: at once, then 1 s, 2 s … 60 s apart while they go
 * on), as the clients' own recoveries space them, rather than one per report.
 */
export function invalidateUnproven(accessToken: object, token: string, errcode?: number): Promise<void> {
  return (accessToken as unknown as Record<symbol, (token: string, errcode?: number) => Promise<void>>)[kInvalidateUnproven]!(token, errcode);
}

function ticketManager(jssdk: object, type: string): TokenManager {
  return (jssdk as unknown as Record<symbol, (type: string) => TokenManager>)[kTicketManager]!(type);
}

/**
 * `jssdk.getTicket(type)` (`jssdk` a client's Jssdk or WorkJssdk), with the expiry and fetch time (unix
 * seconds) that came with the ticket, as `accessToken.getEntry()` gives the token's (a StoredEntry,
 * written out here: a type shared with the main entry point would split the declaration files). A
 * ticket type the helper has not is a ConfigError.
 */
export async function ticketEntry(jssdk: object, type: string, signal?: AbortSignal): Promise<{ value: string; expiresAt?: number; fetchedAt?: number; fetchedBy?: string }> {
  return ticketManager(jssdk, type).getEntry(signal);
}

/**
 * `wx.config` refused `ticket` (as a token service's client reports it): forgotten here, and the store's
 * entry deleted only if it still holds that ticket, as `accessToken.invalidate()` does a token's; the
 * next `ticketEntry()` or `getTicket()` fetches the next one, one process of the fleet at a time.
 */
export async function invalidateTicket(jssdk: object, type: string, ticket: string): Promise<void> {
  return ticketManager(jssdk, type).invalidate(ticket);
}

/**
 * Forgets `ticket` if the client holds it, without taking it for refused: the next `ticketEntry()` reads
 * the store (waiting for a fetch under way under the lock), and takes `ticket` again if the store holds
 * it again. For a token service that deleted the store's entry itself, or found another instance had.
 */
export function forgetTicket(jssdk: object, type: string, ticket: string): void {
  ticketManager(jssdk, type).forget(ticket);
}

/** The failure marker `{key}:failed` a failed fetch left, decoded as every process reads it; undefined if unreadable. */
export const decodeMarker: (raw: string | undefined) => (FailureRecord & { code: string }) | undefined = decodeFailureMarker;
