import type { CacheErrorReason } from '@wxkit/core';
import { nodeRedisReason, socketReason } from '@wxkit/core/internal';

/** The message of a call on a caller's client that the caller ended (reason `closed`). */
export const CALLER_CLOSED = 'the given client was closed by its owner';

/** What a reason means to the person running wxkit, and what to check. */
const HINTS: Record<CacheErrorReason, string> = {
  auth: 'authentication failed: check the user and password in the URL (the server answered NOAUTH or WRONGPASS)',
  refused: 'connection refused: nothing listens at that host and port; check that Redis runs there',
  unreachable: 'the host cannot be reached: check its name and the network',
  timeout: 'no answer in time: check that Redis runs there and that no firewall drops the connection',
  tls: 'the TLS handshake failed: check the certificate (clientOptions.socket.ca) and that the server speaks TLS (rediss://) or not (redis://)',
  database: 'no such database: the server has fewer databases than the number in the URL (its `databases` setting)',
  readonly: 'the server refuses writes (a read-only replica, too few replicas for min-replicas-to-write, a failed save, or its memory full: maxmemory with noeviction): point wxkit at the primary, or give Redis memory',
  permission: 'the user may not run this command on this key: its ACL needs the read and write commands on the token keys',
  disconnected: 'the connection dropped; node-redis reconnects on its own',
  closed: 'the client was closed: a client passed in (options.client) that its owner closed is not opened again; connect it again to go on',
  value: 'the value is no binary string: encode text as UTF-8 first',
  type: 'the key holds another kind of value (a hash, list or set where a string belongs): another program uses that key; wxkit leaves it as it is',
  protocol: 'check the host and port: they lead to another kind of server',
};

const TLS_CODES = /^(ERR_SSL_|ERR_TLS_|CERT_|UNABLE_TO_|DEPTH_ZERO_SELF_SIGNED_CERT$|SELF_SIGNED_CERT_IN_CHAIN$|HOSTNAME_MISMATCH$)/;

/**
 * Why a node-redis call failed, from the server's error reply (its first word) or the socket's error
 * code; undefined when neither says.
 */
export function reasonOf(error: unknown): CacheErrorReason | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const { code, message, originalError } = error as { code?: unknown; message?: unknown; originalError?: unknown };
  // node-redis wraps the socket's error when its reconnect strategy gives up.
  if (originalError !== undefined) return reasonOf(originalError);
  const text = typeof message === 'string' ? message : '';
  const fromSocket = socketReason(code);
  if (fromSocket) return fromSocket;
  if (typeof code === 'string' && TLS_CODES.test(code)) return 'tls';
  const word = /^[A-Z]+/.exec(text)?.[0];
  if (word === 'NOAUTH' || word === 'WRONGPASS' || /^ERR (AUTH|invalid password)/.test(text)) return 'auth';
  if (word === 'READONLY' || word === 'NOREPLICAS' || word === 'MISCONF' || word === 'OOM') return 'readonly';
  if (word === 'NOPERM') return 'permission';
  if (word === 'WRONGTYPE') return 'type';
  if (/^ERR (DB index is out of range|invalid DB index)/.test(text)) return 'database';
  // node-redis's own errors, by their messages: their classes set no name. Its parser meets a first byte
  // that starts no RESP reply: the server answered in another protocol (`H` of an HTTP server's
  // `HTTP/1.1 400 Bad Request`).
  if (/^Unknown RESP type/.test(text)) return 'protocol';
  if (/^no connection within/.test(text)) return 'timeout';
  if (text === CALLER_CLOSED) return 'closed';
  return nodeRedisReason(error);
}

// The TLS codes of a certificate check that failed: the server's certificate is not one this client
// trusts (or not for this host name). The other TLS errors (ERR_SSL_*, ERR_TLS_* of the protocol) stay
// out: a handshake cut short by a server restarting looks like some of them.
// CERT_NOT_YET_VALID stays out: a certificate just rotated, seen by a client whose clock is a little
// behind, is valid a few seconds later.
const CERTIFICATE_CODES = /^(CERT_(?!NOT_YET_VALID$)|UNABLE_TO_|DEPTH_ZERO_SELF_SIGNED_CERT$|SELF_SIGNED_CERT_IN_CHAIN$|HOSTNAME_MISMATCH$|ERR_TLS_CERT_ALTNAME_INVALID$)/;

/**
 * Whether a failure while connecting is the server saying no to what the options ask, which a retry of
 * the same handshake a moment later cannot mend: a wrong user or password (`auth`), a database the
 * server does not have (`database`), a certificate this client does not trust (`tls`, certificate checks
 * only), a server that speaks another protocol (`protocol`: an HTTP server on that port). The server's
 * answer changes only when its configuration does (a password set, a certificate replaced, Redis put on
 * that port), and the next call, which connects anew, will see that.
 */
export function lasting(error: unknown): boolean {
  const reason = reasonOf(error);
  if (reason === 'auth' || reason === 'database' || reason === 'protocol') return true;
  if (reason !== 'tls') return false;
  const { code, originalError } = error as { code?: unknown; originalError?: unknown };
  if (originalError !== undefined) return lasting(originalError);
  return typeof code === 'string' && CERTIFICATE_CODES.test(code);
}

/** The message of a call that failed: what failed, where, and what to check when the reason tells. */
export function failureMessage(op: string, where: string, reason: CacheErrorReason | undefined, connecting: boolean): string {
  // Said of the server, not of the call: it answered, in a protocol RedisCache does not speak.
  if (reason === 'protocol') return `RedisCache ${op} failed: the server at ${where} does not speak the Redis protocol (an HTTP server?); ${HINTS.protocol}`;
  // A plain server asked for TLS reads the ClientHello as a command and waits for its end: no error, no answer.
  const plain = reason === 'timeout' && connecting && /^rediss:/i.test(where) ? ', and that it speaks TLS: a server without TLS asked with rediss:// never answers' : '';
  return `RedisCache ${op} failed on ${where}${hintOf(reason, connecting)}${plain}`;
}

/** `: authentication failed: …`, or nothing when the reason is unknown. */
function hintOf(reason: CacheErrorReason | undefined, connecting: boolean): string {
  if (reason === 'disconnected' && connecting) {
    return ': the server closed the connection while wxkit connected (a TLS-only server asked with redis:// instead of rediss:// does this)';
  }
  return reason === undefined ? '' : `: ${HINTS[reason]}`;
}
