import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BadResponseError, remoteTokenSource } from '../src/index.js';

// What a token service (wxkit serve, or another implementation of its protocol) may answer that the
// client must not take: each answer here is a typed error naming what was wrong.
let server: Server;
let url: string;
let answer: (path: string) => { status: number; body: string } = () => ({ status: 404, body: '' });
beforeAll(async () => {
  server = createServer((req, res) => {
    const { status, body } = answer(req.url ?? '');
    res.writeHead(status, { 'content-type': 'application/json' }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

const request = { kind: 'official_account', id: 'wx0123456789abcdef', field: 'access_token' } as const;
const now = () => Math.floor(Date.now() / 1000);

describe('remoteTokenSource refuses answers no token service gives', () => {
  it('a body over its 64 KiB: a BadResponseError naming no option to raise (it has none)', async () => {
    answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'x'.repeat(70 * 1024), expires_at: now() + 7200 }) });
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    const failure = await source.fetch(request).catch((error: unknown) => error);
    await source.close?.();
    expect(failure).toBeInstanceOf(BadResponseError);
    expect((failure as Error).message).toBe('The token service answered v1/token/official_account/wx0123456789abcdef with a body over 65536 bytes');
  });

  it('an expires_at in milliseconds (a day or more ahead): refused, not kept as a token that never expires', async () => {
    const source = remoteTokenSource({ url, key: 'k'.repeat(32) });
    try {
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: Date.now() + 7_200_000 }) });
      const failure = await source.fetch(request).catch((error: unknown) => error);
      expect(failure).toBeInstanceOf(BadResponseError);
      expect((failure as Error).message).toMatch(/expires_at more than a day ahead/);
      // What a token service answers: seconds, at most about 2 h ahead.
      answer = () => ({ status: 200, body: JSON.stringify({ access_token: 'ACCESS_TOKEN_1', expires_at: now() + 7200 }) });
      await expect(source.fetch(request)).resolves.toMatchObject({ value: 'ACCESS_TOKEN_1' });
    } finally {
      await source.close?.();
    }
  });
});
