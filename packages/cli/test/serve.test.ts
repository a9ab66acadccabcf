import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OfficialAccount, remoteTokenSource } from '@wxkit/core';
import { WorkerGroup, freePort, startMockWeChat, startRedis, type MockApp, type MockWeChat, type StoreServer } from '@wxkit/testing';

// Two `wxkit serve` processes on one Redis own the refresh; four client processes take their tokens
// from them (no secret), send template messages, and report rejected tokens back.
const bin = fileURLToPath(new URL('../bin/wxkit.mjs', import.meta.url));
const KEY = 'serve-test-key-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'wxkit-serve-'));

let mock: MockWeChat;
let redis: StoreServer;
let app: MockApp;
const services: { child: ChildProcess; url: string; logs: string[] }[] = [];

async function startServe(): Promise<(typeof services)[number]> {
  const config = join(dir, 'serve.json');
  writeFileSync(
    config,
    JSON.stringify({
      keysEnv: 'TEST_SERVE_KEYS',
      refreshAheadSeconds: 600,
      baseUrl: mock.url,
      apps: [{ kind: 'official_account', appId: app.appId, secretEnv: 'TEST_OA_SECRET', tokenEndpoint: 'classic' }],
    }),
  );
  const child = spawn(process.execPath, [bin, 'serve', '--store', redis.url, '--config', config, '--port', String(await freePort()), '--json'], {
    env: { ...process.env, TEST_SERVE_KEYS: `other-key-that-is-long-enough,${KEY}`, TEST_OA_SECRET: app.secret },
  });
  const logs: string[] = [];
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (line) => logs.push(line));
  child.stderr.on('data', (chunk: Buffer) => logs.push(chunk.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    lines.on('line', (line) => {
      const event = JSON.parse(line) as { event?: string; url?: string };
      if (event.event === 'serve.listening') resolve(event.url!);
    });
    child.once('exit', (code) => reject(new Error(`wxkit serve exited with ${code}: ${logs.join('\n')}`)));
  });
  const service = { child, url, logs };
  services.push(service);
  return service;
}

beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat({ latencyMs: 10 }), startRedis()]);
  app = mock.createApp();
  await startServe();
  await startServe();
});
afterAll(async () => {
  await Promise.all(
    services.map(
      ({ child }) =>
        new Promise((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve(undefined);
          child.once('exit', resolve);
          child.kill('SIGTERM');
        }),
    ),
  );
  await Promise.all([mock?.close(), redis?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

describe('wxkit serve', () => {
  // First, while both services hold the token they warmed at start: after another instance refreshes,
  // a service answers from memory for up to its 1 s memo window, by design.
  it('clients of either service get the same token; tickets come from the service too', async () => {
    const [a, b] = services.map(
      ({ url }) => new OfficialAccount({ appId: app.appId, baseUrl: mock.url, tokenSource: remoteTokenSource({ url, key: KEY }), logger: false }),
    );
    expect(await a!.accessToken.getToken()).toBe(await b!.accessToken.getToken());
    const ticket = await a!.jssdk.getTicket();
    expect(await b!.jssdk.getTicket()).toBe(ticket);
    expect(mock.counters(app.appId).ticketRequests).toBe(1);
    await Promise.all([a!.close(), b!.close()]);
  });

  it('2 services + 4 clients: the token is fetched once, and each invalidation costs one fetch and no send', async () => {
    const before = mock.counters(app.appId).tokenRequests;
    // The services warmed the token at start, between them once.
    expect(before).toBe(1);
    const group = await WorkerGroup.start(4, { baseUrl: mock.url, appId: app.appId, tokenSource: { url: services[0]!.url, key: KEY } });
    const group2 = await WorkerGroup.start(0, { baseUrl: mock.url, appId: app.appId, tokenSource: { url: services[1]!.url, key: KEY } });
    try {
      const warm = await group.run('send', 5);
      expect(warm.flatMap((result) => result.errors)).toEqual([]);
      expect(mock.counters(app.appId).tokenRequests).toBe(1);

      for (let round = 1; round <= 3; round += 1) {
        mock.invalidateTokens(app.appId);
        const results = await group.run('send', 20);
        expect(results.flatMap((result) => result.errors)).toEqual([]);
        expect(results.reduce((sum, result) => sum + result.ok, 0)).toBe(80);
        expect(mock.counters(app.appId).tokenRequests).toBe(1 + round);
      }
      expect(mock.counters(app.appId).templateSends).toBe(20 + 3 * 80);
    } finally {
      await Promise.all([group.stop(), group2.stop()]);
    }
  });

  it('no key or a wrong key: 401, and nothing else is said', async () => {
    const url = `${services[0]!.url}/v1/token/official_account/${app.appId}`;
    const none = await fetch(url);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer');
    const wrong = await fetch(url, { headers: { authorization: 'Bearer not-the-key-at-all' } });
    expect(wrong.status).toBe(401);
    expect(await wrong.text()).not.toContain('access_token');
    const right = await fetch(url, { headers: { authorization: `Bearer ${KEY}` } });
    expect(right.status).toBe(200);
    expect(Object.keys((await right.json()) as object)).toEqual(['access_token', 'expires_at', 'fetched_at']);
    expect((await fetch(`${services[0]!.url}/v1/token/official_account/wx0000000000000000`, { headers: { authorization: `Bearer ${KEY}` } })).status).toBe(404);
    // Names every object has are no kind of app.
    for (const path of ['constructor/wx0000000000000000', '__proto__/wx0000000000000000', 'toString:wx0000000000000000']) {
      const odd = await fetch(`${services[0]!.url}/v1/token/${path}`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(odd.status, path).toBe(404);
      expect(await odd.text(), path).toMatch(/name the app as \{kind\}\/\{id\}/);
    }
    expect((await fetch(`${services[0]!.url}/healthz`)).status).toBe(200);

    // Its own MemoryCache: the process-wide default would already hold the token from the test above.
    const client = new OfficialAccount({
      appId: app.appId,
      baseUrl: mock.url,
      cache: new MemoryCache(),
      tokenSource: remoteTokenSource({ url: services[0]!.url, key: 'a-wrong-key-123' }),
      logger: false,
    });
    const refused = await client.accessToken.getToken().catch((error: Error) => error);
    expect(refused).toMatchObject({ code: 'ERR_WXKIT_HTTP', status: 401 });
    // The service's reason, so a wrong key is told from a service that is not ready.
    expect((refused as Error).message).toMatch(/ with HTTP 401 unauthorized \(unknown_key\); the key has fewer than 16 characters, and wxkit serve takes none that short$/);
    await client.close();
  });

  it('a service that is down: a typed error within the timeout, not a hang', async () => {
    const port = await freePort();
    const client = new OfficialAccount({
      appId: app.appId,
      baseUrl: mock.url,
      cache: new MemoryCache(),
      tokenSource: remoteTokenSource({ url: `http://127.0.0.1:${port}`, key: KEY, timeoutMs: 500 }),
      logger: false,
    });
    const failure = await client.templateMessage.send({ touser: 'o', template_id: 'T', data: {} }).catch((error: Error) => error);
    expect(failure).toMatchObject({ code: 'ERR_WXKIT_HTTP' });
    // Named as a sentence names it: "failed before the token service answered".
    expect((failure as Error).message).toMatch(/^The request to v1\/token\/official_account\/\w+ failed before the token service answered/);
    await client.close();
  });

  it('one remoteTokenSource shared by two clients: closing one leaves the other taking tokens', async () => {
    const source = remoteTokenSource({ url: services[0]!.url, key: KEY });
    const make = () => new OfficialAccount({ appId: app.appId, baseUrl: mock.url, cache: new MemoryCache(), tokenSource: source, logger: false });
    const [first, second] = [make(), make()];
    const token = await first.accessToken.getToken();
    await first.close();
    // The second has asked for nothing yet: its token comes from the service, through the shared source.
    expect(await second.accessToken.getToken()).toBe(token);
    await second.close();
  });

  it('logs requests without a token, a secret or a key', async () => {
    const token = ((await (await fetch(`${services[0]!.url}/v1/token/official_account/${app.appId}`, { headers: { authorization: `Bearer ${KEY}` } })).json()) as { access_token: string }).access_token;
    const logs = services.flatMap((service) => service.logs).join('\n');
    expect(logs).toContain('serve.request');
    for (const secretish of [token, app.secret, KEY]) expect(logs).not.toContain(secretish);
  });

  it('refuses to start without a key, or with a config naming an unset variable', async () => {
    const config = join(dir, 'bad.json');
    writeFileSync(config, JSON.stringify({ keysEnv: 'UNSET_KEYS_VARIABLE', apps: [] }));
    const child = spawn(process.execPath, [bin, 'serve', '--store', redis.url, '--config', config]);
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    expect(await new Promise((resolve) => child.once('exit', resolve))).toBe(7);
    expect(stderr).toContain('UNSET_KEYS_VARIABLE');
  });
});
