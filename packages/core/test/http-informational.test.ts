import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OfficialAccount } from '../src/index.js';
import { rejection } from './helpers.js';

// An upstream that answers `102 Processing` and nothing else, every 300 ms: undici restarts its headers
// timer on each informational answer, so only the exchange's own deadline can end the fetch. A fetch
// that never ended held the token's single flight, and every later getToken() of the account with it.

let server: Server;
let base = '';
let healthy = false;
/** The request targets the server received, in order. */
const received: string[] = [];
const sockets = new Set<Socket>();

beforeAll(async () => {
  server = createServer((socket) => {
    sockets.add(socket);
    let buffered = '';
    let ticker: NodeJS.Timeout | undefined;
    socket.on('error', () => {});
    socket.on('close', () => {
      sockets.delete(socket);
      clearInterval(ticker);
    });
    socket.on('data', (data) => {
      buffered += data.toString('latin1');
      for (let end = buffered.indexOf('\r\n\r\n'); end !== -1; end = buffered.indexOf('\r\n\r\n')) {
        received.push(buffered.slice(0, end).split(' ')[1] ?? '');
        buffered = buffered.slice(end + 4);
        if (healthy) {
          const body = JSON.stringify({ access_token: 'good-token', expires_in: 7200 });
          socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
        } else {
          const processing = () => socket.write('HTTP/1.1 102 Processing\r\n\r\n');
          processing();
          ticker = setInterval(processing, 300);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => server.close(resolve));
});

describe('informational (1xx) answers', () => {
  it('an upstream answering 102 Processing for ever: getToken() fails with ERR_WXKIT_TIMEOUT, and the next one fetches once the upstream heals', async () => {
    let now = Date.now();
    const app = new OfficialAccount({
      appId: 'wx0123456789abcdef',
      secret: 'secret',
      baseUrl: base,
      cache: new MemoryCache(),
      logger: false,
      tokenEndpoint: 'classic',
      timeoutMs: 1000,
      now: () => now,
    });
    try {
      // Two callers share the one fetch, and both get its end.
      const errors = await Promise.all([rejection(app.accessToken.getToken()), rejection(app.accessToken.getToken())]);
      expect(errors.map((error) => [error.code, error.path])).toEqual([
        ['ERR_WXKIT_TIMEOUT', 'cgi-bin/token'],
        ['ERR_WXKIT_TIMEOUT', 'cgi-bin/token'],
      ]);
      // It names where the request went.
      expect(errors[0]!.message).toContain(`WeChat did not answer cgi-bin/token within 1000 ms (at ${base})`);
      expect(received.length).toBe(1);
      healthy = true;
      // Past the first back-off step the failure left (about 1 s, on the client's clock).
      now += 2_000;
      expect(await app.accessToken.getToken()).toBe('good-token');
      expect(received.length).toBe(2);
      expect(received.every((target) => target.startsWith('/cgi-bin/token?'))).toBe(true);
    } finally {
      await app.close();
    }
  });
});
