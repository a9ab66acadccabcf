import type { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { dropped } from './failure.js';

/** memjs 1.3's connection to one server (lib/memjs/server.js): the parts reached into here. */
export interface MemjsServer {
  _socket?: Socket;
  /** Whether its connection is up and logged in. */
  connected?: boolean;
  /** Bytes of an answer read so far (memjs never clears it when a connection fails). */
  responseBuffer: Buffer;
  sock(sasl: boolean, go: (socket: Socket) => void): void;
  error(error: unknown): void;
}

/**
 * Makes memjs let go of every socket it opens, so a process that closed its MemcachedCache exits by
 * itself and no request waits for ever. memjs 1.3, left alone:
 * - on a timeout only `end()`s the socket and forgets it; a server that never answers never closes its
 *   side either, so the socket stays open for good;
 * - clears its current socket when any of its sockets closes, an older one too: the newer socket is
 *   then forgotten, and requests queued on it are never written or never time out (their deadline is
 *   a timer on that socket);
 * - on `Client.close()` only `end()`s the current socket: pending requests never settle;
 * - keeps, when a connection fails, the part of an answer read from it: every answer on the next
 *   connections is then read behind those bytes, and every call times out until the process restarts;
 * - registers, for each connection it opens, a one-time `authenticated` listener that sends the
 *   requests queued on it: one whose SASL login failed stays registered, and the next login that
 *   succeeds sends those requests, failed long ago for their callers (a write then lands late, over a
 *   newer value);
 * - leaves `connected` true when it fails a server (only its own 'close' listener, replaced here,
 *   clears it): the request that must connect and log in again would be given one request's time for
 *   all of it, and against a slow login every reconnection would time out in turn, for good.
 *
 * So every socket memjs opens is tracked; when memjs fails a server (`error()`, after a timeout or a
 * socket error) every socket it opened for it is destroyed; only the current socket's close counts,
 * and fails the requests waiting on it. Returns `close(reason)`: destroys every socket, fails every
 * pending request with `reason`, and resolves once every socket is closed.
 */
export function ownSockets(servers: MemjsServer[]): (reason: Error) => Promise<void> {
  const open = new Set<Socket>();
  for (const server of servers) {
    const mine = new Set<Socket>();
    const sock = server.sock.bind(server);
    const fail = server.error.bind(server);
    server.error = (error) => {
      for (const socket of mine) socket.destroy();
      server.connected = false;
      server.responseBuffer = Buffer.alloc(0);
      (server as unknown as EventEmitter).removeAllListeners('authenticated');
      fail(error);
    };
    server.sock = (sasl, go) => {
      const before = server._socket;
      sock(sasl, go);
      const socket = server._socket;
      if (!socket || socket === before) return;
      mine.add(socket);
      open.add(socket);
      // memjs's own 'close' listener is the one that clears a newer socket; Node adds none of its own.
      socket.removeAllListeners('close');
      socket.on('close', () => {
        mine.delete(socket);
        open.delete(socket);
        if (server._socket === socket) server.error(dropped());
      });
    };
  }
  return async (reason) => {
    const closed = [...open].map((socket) => new Promise((resolve) => socket.once('close', resolve)));
    for (const server of servers) server.error(reason);
    await Promise.all(closed);
  };
}
