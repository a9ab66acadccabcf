/**
 * When the failure an error stands for may be asked about again, in unix ms, where wxkit knows it: a
 * token fetch held back by the fleet's failure marker, or an answer that carried `Retry-After`. For the packages that pass the pause on (`wxkit serve` answers it as
 * `Retry-After`, remoteTokenSource waits for it). Kept under a registered symbol, not enumerable: every
 * copy of this module (each entry point is bundled on its own, ESM and CJS) reads what another wrote,
 * and the error's JSON and inspection show nothing new.
 */
const RETRY_AT = Symbol.for('wxkit.retryAt');

/** Records that `error` may be asked about again at `retryAt` (unix ms); returns `error`. */
export function withRetryAt<T>(error: T, retryAt: number): T {
  if (error !== null && typeof error === 'object' && Number.isFinite(retryAt) && Object.isExtensible(error)) {
    Object.defineProperty(error, RETRY_AT, { value: retryAt, configurable: true, writable: true, enumerable: false });
  }
  return error;
}

/** When `error` may be asked about again (unix ms), if known. */
export function retryAtOf(error: unknown): number | undefined {
  if (error === null || typeof error !== 'object') return undefined;
  const at = (error as { [RETRY_AT]?: unknown })[RETRY_AT];
  return typeof at === 'number' && Number.isFinite(at) ? at : undefined;
}
