/**
 * `@wxkit/core/internal`: the helpers the wxkit packages share (the store adapters, the CLI), so that each
 * rule lives in one place. For the wxkit packages only: NOT covered by semver, and it may change in any
 * release. The packages that import it are released together with core, at the same version.
 *
 * @packageDocumentation
 */
export { assertTtl, storeTtlMs } from './ttl.js';
export { socketReason } from './socket-reason.js';
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

/** The failure marker `{key}:failed` a failed fetch left, decoded as every process reads it; undefined if unreadable. */
export const decodeMarker: (raw: string | undefined) => (FailureRecord & { code: string }) | undefined = decodeFailureMarker;
