import type { CacheErrorReason } from '@wxkit/core';
import { socketReason } from '@wxkit/core/internal';

/** What a reason means to the person running wxkit, and what to check. */
const HINTS: Partial<Record<CacheErrorReason, string>> = {
  auth: 'the SASL login was refused: check the username and password (where the URL and options give none, memjs takes MEMCACHIER_USERNAME and MEMCACHIER_PASSWORD, or MEMCACHE_USERNAME and MEMCACHE_PASSWORD, from the environment)',
  refused: 'connection refused: nothing listens at that host and port; check that memcached runs there',
  unreachable: 'the host cannot be reached: check its name and the network',
  timeout: 'no answer in time: check that memcached runs there and is not hung, that no firewall drops the connection, and that it takes the binary protocol (a memcached started with -B ascii, and twemproxy or mcrouter in front of one, never answer it)',
  disconnected: 'the connection dropped; the next call connects anew',
  closed: 'the cache was closed',
};

/** The error a request past its deadline fails with, it and every request waiting on its connection. */
export function timedOut(message: string): Error {
  return Object.assign(new Error(message), { code: 'ETIMEDOUT' });
}

/** The error the requests waiting on a connection memcached closed fail with. */
export function dropped(): Error {
  return Object.assign(new Error('memcached closed the connection'), { code: 'ECONNRESET' });
}

/**
 * Why a memjs request failed, from the socket's error code, memjs's own timeouts and its SASL failure
 * (a bare string); undefined when it says nothing (memcached answered with another status, say).
 */
export function reasonOf(error: unknown): CacheErrorReason | undefined {
  if (error === 'Memcached server authentication failed!') return 'auth';
  if (typeof error !== 'object' || error === null) return undefined;
  const { code, message } = error as { code?: unknown; message?: unknown };
  const fromSocket = socketReason(code);
  if (fromSocket) return fromSocket;
  // memjs's own timers: a connection not made within conntimeout, an idle socket with requests waiting.
  if (typeof message === 'string' && /^socket timed out (connecting to server|waiting on response)/.test(message)) return 'timeout';
  return undefined;
}

/** `: connection refused: …`, or nothing when the reason is unknown. */
export function hintOf(reason: CacheErrorReason | undefined): string {
  const hint = reason === undefined ? undefined : HINTS[reason];
  return hint === undefined ? '' : `: ${hint}`;
}
