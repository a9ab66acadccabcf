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

/**
 * The reason of a failure of node-redis's own, with no reply of the server's, for the adapters that reach
 * node-redis (RedisCache, and KeyvCache over @keyv/redis): by its message, as its classes set no name,
 * and, for its TimeoutError (a command that waited longer than `commandOptions.timeout` to be sent, while
 * the client reconnects), which has no message, by its class, or by its name (a DOMException of
 * `AbortSignal.timeout()`); undefined for anything else.
 */
export function nodeRedisReason(error: object): 'timeout' | 'disconnected' | undefined {
  const { name, message } = error as { name?: unknown; message?: unknown };
  const text = typeof message === 'string' ? message : '';
  if (/^(Connection timeout|Socket timeout|Command timeout)/.test(text) || name === 'TimeoutError' || classNamed(error, 'TimeoutError')) return 'timeout';
  if (/^(Socket closed unexpectedly|The client is offline|The client is closed)/.test(text)) return 'disconnected';
  return undefined;
}

/** Whether `error` is of a class named `name` (below Error), whatever name its instances carry. */
function classNamed(error: object, name: string): boolean {
  for (let proto = Object.getPrototypeOf(error) as object | null; proto !== null && proto !== Error.prototype; proto = Object.getPrototypeOf(proto) as object | null) {
    if (Object.hasOwn(proto, 'constructor') && (proto as { constructor?: { name?: unknown } }).constructor?.name === name) return true;
  }
  return false;
}
