/**
 * The reason a socket's error code gives (Node's `code` on a connection's error), for the store
 * adapters: a CacheErrorReason, or undefined for any other code.
 */
export function socketReason(code: unknown): 'refused' | 'unreachable' | 'timeout' | 'disconnected' | undefined {
  if (code === 'ECONNREFUSED') return 'refused';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return 'unreachable';
  if (code === 'ETIMEDOUT') return 'timeout';
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'disconnected';
  return undefined;
}
