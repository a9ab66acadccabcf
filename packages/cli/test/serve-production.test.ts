import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, redisCli, startMockWeChat, startRedis, type MockApp, type MockWeChat, type StoreServer } from '@wxkit/testing';

// `wxkit serve` as it runs in production: health and readiness, Prometheus metrics, one error shape,
// timeouts for slow and idle clients, and a JSON log line per request; a real redis-server (stopped and
// started again here) and the mock server.
const bin = fileURLToPath(new URL('../bin/wxkit.mjs', import.meta.url));
const KEY = 'production-key-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'wxkit-serve-prod-'));

interface Service {
  child: ChildProcess;
  url: string;
  lines: Record<string, unknown>[];
  /** Resolves with the first log line (already seen or to come) that `match` accepts. */
  waitFor(match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  raw: () => string;
}

let mock: MockWeChat;
let redis: StoreServer;
let good: MockApp;
let seeded: MockApp;
let locked: MockApp;
let blocked: MockApp;
let service: Service;
let failing: Service;
const children: ChildProcess[] = [];

async function startServe(name: string, apps: unknown[], env: Record<string, string>): Promise<Service> {
  const config = join(dir, `${name}.json`);
  writeFileSync(
    config,
    // Probes every 500 ms, each with that deadline: a shorter one reads a busy machine's slow answer as the store down.
    JSON.stringify({ keysEnv: 'TEST_SERVE_KEYS', baseUrl: mock.url, apps, healthCheckMs: 500, headersTimeoutMs: 400, requestTimeoutMs: 800, keepAliveTimeoutMs: 300 }),
  );
  const child = spawn(process.execPath, [bin, 'serve', '--store', redis.url, '--config', config, '--port', String(await freePort())], {
    env: { ...process.env, TEST_SERVE_KEYS: KEY, ...env },
  });
  children.push(child);
  const lines: Record<string, unknown>[] = [];
  let raw = '';
  const waiters = new Set<{ match: (line: Record<string, unknown>) => boolean; resolve: (line: Record<string, unknown>) => void }>();
  child.stderr.on('data', (chunk: Buffer) => (raw += chunk.toString()));
  createInterface({ input: child.stdout }).on('line', (text) => {
    raw += `${text}\n`;
    const line = JSON.parse(text) as Record<string, unknown>;
    lines.push(line);
    for (const waiter of waiters) {
      if (waiter.match(line)) {
        waiters.delete(waiter);
        waiter.resolve(line);
      }
    }
  });
  const waitFor = (match: (line: Record<string, unknown>) => boolean) =>
    new Promise<Record<string, unknown>>((resolve) => {
      const seen = lines.find(match);
      if (seen) resolve(seen);
      else waiters.add({ match, resolve });
    });
  const listening = await Promise.race([
    waitFor((line) => line.event === 'serve.listening'),
    new Promise<never>((_, reject) => child.once('exit', (code) => reject(new Error(`wxkit serve exited with ${code}: ${raw}`)))),
  ]);
  return { child, url: listening.url as string, lines, waitFor, raw: () => raw };
}

const auth = { authorization: `Bearer ${KEY}` };
const get = (url: string, headers: Record<string, string> = auth) => fetch(url, { headers });

/** Polls `url` until it answers `status`: waiting for a state the service reaches on its own. */
async function until(url: string, status: number): Promise<Response> {
  for (let i = 0; i < 800; i += 1) {
    const res = await fetch(url);
    if (res.status === status) return res;
    await res.arrayBuffer();
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`${url} never answered ${status}`);
}

beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat(), startRedis()]);
  [good, seeded, locked, blocked] = [mock.createApp(), mock.createApp(), mock.createApp(), mock.createApp()];
  mock.setIpAllowed(blocked.appId, false);
  // A valid entry another program wrote: the service reads it (a hit) and fetches nothing.
  const now = Math.floor(Date.now() / 1000);
  redisCli(redis.port, 'SET', `wechat:stable_access_token:${seeded.appId}`, `{"access_token":"SEEDED_TOKEN_${seeded.appId}","expires_at":${now + 7000},"fetched_at":${now - 200}}`, 'EX', '6700');
  // A refresh lock another process holds until this test releases it: the service waits (a lock wait).
  const lockKey = `wechat:stable_access_token:${locked.appId}:lock`;
  redisCli(redis.port, 'SET', lockKey, 'other-host:1:abcdef123456', 'PX', '60000');
  [service, failing] = await Promise.all([
    startServe(
      'service',
      [
        { app: `oa:${good.appId}`, secretEnv: 'GOOD_SECRET' },
        { kind: 'mp', appId: seeded.appId, secretEnv: 'SEEDED_SECRET' },
        { kind: 'official_account', appId: locked.appId, secretEnv: 'LOCKED_SECRET' },
      ],
      { GOOD_SECRET: good.secret, SEEDED_SECRET: seeded.secret, LOCKED_SECRET: locked.secret },
    ),
    startServe('failing', [{ app: `oa:${blocked.appId}`, secretEnv: 'BLOCKED_SECRET' }], { BLOCKED_SECRET: blocked.secret }),
  ]);
  // The wait shows in the metrics; then the holder lets go, and the service takes the lock and fetches.
  const waiting = `wxkit_lock_waits_total{app="official_account/${locked.appId}"} 1`;
  for (let i = 0; i < 400 && !(await (await fetch(`${service.url}/metrics`)).text()).includes(waiting); i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  expect(mock.counters(locked.appId).tokenRequests).toBe(0);
  redisCli(redis.port, 'DEL', lockKey);
});
afterAll(async () => {
  await Promise.all(
    children.map(
      (child) =>
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

describe('wxkit serve in production', () => {
  it('/readyz: ready once every app has a token; not ready, naming the app, while one has none', async () => {
    const ready = await until(`${service.url}/readyz`, 200);
    expect(await ready.json()).toEqual({ status: 'ready', apps: 3 });
    const notReady = await fetch(`${failing.url}/readyz`);
    expect(notReady.status).toBe(503);
    expect(await notReady.json()).toEqual({ error: { code: 'not_ready', message: expect.stringContaining(blocked.appId), apps: [`official_account/${blocked.appId}`] } });
  });

  it('app specs as the docs write them: /v1/token/oa/{id}, /v1/token/oa:{id}, /v1/token/official_account/{id}', async () => {
    const tokens = new Set<string>();
    for (const path of [`oa/${good.appId}`, `oa:${good.appId}`, `official_account/${good.appId}`, `oa%3A${good.appId}`]) {
      const res = await get(`${service.url}/v1/token/${path}`);
      expect(res.status, path).toBe(200);
      tokens.add(((await res.json()) as { access_token: string }).access_token);
    }
    expect(tokens.size).toBe(1);
    const seededRes = await get(`${service.url}/v1/token/mp/${seeded.appId}`);
    expect(((await seededRes.json()) as { access_token: string }).access_token).toBe(`SEEDED_TOKEN_${seeded.appId}`);
    expect(mock.counters(good.appId).tokenRequests).toBe(1);
    expect(mock.counters(seeded.appId).tokenRequests).toBe(0);
  });

  it('one JSON error shape: 401 with its reason, 400 for a malformed % escape, 404, 405, 413, 502 with the errcode', async () => {
    const expectError = async (res: Response, status: number, code: string) => {
      expect(res.status, `${res.url} ${code}`).toBe(status);
      expect(res.headers.get('content-type')).toBe('application/json');
      const body = (await res.json()) as { error: Record<string, unknown> };
      expect(body.error).toMatchObject({ code, message: expect.any(String) });
      return body;
    };
    const url = `${service.url}/v1/token/oa/${good.appId}`;
    expect((await expectError(await fetch(url), 401, 'unauthorized')).error.reason).toBe('missing_key');
    expect((await expectError(await get(url, { authorization: `Basic ${KEY}` }), 401, 'unauthorized')).error.reason).toBe('malformed_header');
    const wrong = await get(url, { authorization: 'Bearer not-the-key-at-all-0000' });
    expect(wrong.headers.get('www-authenticate')).toBe('Bearer error="invalid_token"');
    expect((await expectError(wrong, 401, 'unauthorized')).error.reason).toBe('unknown_key');
    for (const bad of ['%E0%A4%A', '%zz', 'oa%', '%C3%28']) await expectError(await get(`${service.url}/v1/token/${bad}`), 400, 'bad_request');
    await expectError(await get(`${service.url}/v1/token/oa/wx0000000000000000`), 404, 'unknown_app');
    await expectError(await get(`${service.url}/v2/things`), 404, 'not_found');
    await expectError(await get(`${service.url}/v1/ticket/mp/${seeded.appId}/jsapi`), 404, 'unknown_ticket_type');
    const post = await fetch(url, { method: 'POST', headers: auth });
    expect(post.headers.get('allow')).toBe('GET');
    await expectError(post, 405, 'method_not_allowed');
    await expectError(await fetch(`${url}/invalidate`, { method: 'POST', headers: auth, body: 'not json' }), 400, 'bad_request');
    await expectError(await fetch(`${url}/invalidate`, { method: 'POST', headers: auth, body: JSON.stringify({ token: 'x'.repeat(20_000) }) }), 413, 'body_too_large');
    const refused = await get(`${failing.url}/v1/token/oa/${blocked.appId}`);
    const body = await expectError(refused, 502, 'wechat_error');
    expect(body.error.errcode).toBe(40164);
    // WeChat's own fields too, so WeChat-speaking clients see WeChat's error.
    expect(body).toMatchObject({ errcode: 40164 });
  });

  it('/metrics: fetches by app and result, cache hits and misses, lock waits, upstream latency, errors by errcode', async () => {
    await until(`${service.url}/readyz`, 200);
    await get(`${service.url}/v1/token/oa/${locked.appId}`);
    const res = await fetch(`${service.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const value = (series: string) => {
      const line = text.split('\n').find((each) => each.startsWith(`${series} `));
      return line === undefined ? undefined : Number(line.slice(series.length + 1));
    };
    const oa = (id: string) => `app="official_account/${id}"`;
    expect(value(`wxkit_token_fetches_total{${oa(good.appId)},token="access_token",result="ok"}`)).toBe(1);
    expect(value(`wxkit_token_fetches_total{${oa(locked.appId)},token="access_token",result="ok"}`)).toBe(1);
    expect(value(`wxkit_cache_reads_total{app="mini_program/${seeded.appId}",result="hit"}`)).toBeGreaterThanOrEqual(1);
    expect(value(`wxkit_cache_reads_total{app="mini_program/${seeded.appId}",result="miss"}`)).toBeUndefined();
    expect(value(`wxkit_cache_reads_total{${oa(good.appId)},result="miss"}`)).toBeGreaterThanOrEqual(1);
    expect(value(`wxkit_lock_waits_total{${oa(locked.appId)}}`)).toBe(1);
    expect(value(`wxkit_lock_waits_total{${oa(good.appId)}}`)).toBeUndefined();
    expect(value(`wxkit_upstream_request_duration_seconds_count{${oa(good.appId)},path="cgi-bin/stable_token",outcome="ok"}`)).toBe(1);
    expect(value(`wxkit_store_up`)).toBe(1);
    expect(value(`wxkit_http_requests_total{route="/v1/token/{app}",status="200"}`)).toBeGreaterThanOrEqual(1);
    expect(text).toContain('process_cpu_user_seconds_total');

    await get(`${failing.url}/v1/token/oa/${blocked.appId}`);
    const failed = await (await fetch(`${failing.url}/metrics`)).text();
    expect(failed).toMatch(new RegExp(`^wxkit_upstream_errors_total\\{${oa(blocked.appId)},errcode="40164"\\} [1-9]`, 'm'));
    expect(failed).toMatch(new RegExp(`^wxkit_token_fetches_total\\{${oa(blocked.appId)},token="access_token",result="error"\\} [1-9]`, 'm'));
  });

  it('slow clients get 408 and are disconnected; idle keep-alive connections are closed', async () => {
    const { port } = new URL(service.url);
    const exchange = (payload: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = connect(Number(port), '127.0.0.1');
        let received = '';
        socket.on('data', (chunk) => (received += chunk.toString()));
        socket.once('error', reject);
        socket.once('close', () => resolve(received));
        socket.write(payload);
      });
    // Headers never finished.
    expect(await exchange('GET /healthz HTTP/1.1\r\nHost: x\r\n')).toMatch(/^HTTP\/1\.1 408/);
    // A body announced and never sent in full.
    expect(await exchange(`POST /v1/token/oa/${good.appId}/invalidate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\nContent-Length: 100\r\n\r\n{"tok`)).toMatch(/^HTTP\/1\.1 408/);
    // A finished request on a keep-alive connection, then silence: the server closes it.
    expect(await exchange('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n')).toMatch(/^HTTP\/1\.1 200/);
  });

  it('logs one JSON line per request with app, route, status and duration, and never a token', async () => {
    const token = ((await (await get(`${service.url}/v1/token/oa/${good.appId}`)).json()) as { access_token: string }).access_token;
    const line = await service.waitFor((each) => each.event === 'serve.request' && each.app === `official_account/${good.appId}` && each.status === 200);
    expect(line).toMatchObject({ level: 'info', route: '/v1/token/{app}', method: 'GET', ms: expect.any(Number), time: expect.any(String) });
    const denied = await service.waitFor((each) => each.event === 'serve.request' && each.status === 401);
    expect(denied.reason).toEqual(expect.any(String));
    for (const secretish of [token, `SEEDED_TOKEN_${seeded.appId}`, good.secret, seeded.secret, locked.secret, KEY]) {
      expect(service.raw()).not.toContain(secretish);
    }
    expect(failing.raw()).not.toContain(blocked.secret);
  });

  it('/healthz follows the store: 503 with the cause while redis-server is stopped, 200 once it is back', async () => {
    expect(await (await fetch(`${service.url}/healthz`)).json()).toMatchObject({ status: 'ok', store: 'up' });
    // Only a line written from now on: on a loaded machine an earlier probe may have timed out (and come
    // back), and its store_down line would end the wait before the store is stopped.
    const from = service.lines.length;
    const down = service.waitFor((line) => line.event === 'serve.store_down' && service.lines.indexOf(line) >= from);
    await redis.stop();
    const stopped = await down;
    expect(stopped).toMatchObject({ level: 'warn', reason: expect.any(String) });
    const unhealthy = await fetch(`${service.url}/healthz`);
    expect(unhealthy.status).toBe(503);
    const body = await unhealthy.text();
    expect(JSON.parse(body)).toMatchObject({ error: { code: 'store_unavailable', reason: expect.stringMatching(/^(refused|disconnected)$/) } });
    // An unauthenticated endpoint: the reason code, not the adapter's message with the store's address.
    expect(body).not.toContain(String(redis.port));
    expect(body).not.toContain('127.0.0.1');
    expect((await (await fetch(`${service.url}/metrics`)).text()).match(/^wxkit_store_up (\d)/m)?.[1]).toBe('0');
    // Still ready: it holds its tokens, and hands them out.
    expect((await fetch(`${service.url}/readyz`)).status).toBe(200);
    expect((await get(`${service.url}/v1/token/oa/${good.appId}`)).status).toBe(200);

    const up = service.waitFor((line) => line.event === 'serve.store_up' && service.lines.indexOf(line) > service.lines.indexOf(stopped));
    await redis.start();
    await up;
    expect((await fetch(`${service.url}/healthz`)).status).toBe(200);
  });

  it('a SIGTERM while start-up waits on a silent store stops the service once started: exit 0, not killed by the signal', async () => {
    // A store that takes connections and never answers: the first probe holds start-up for its timeout.
    let reached!: () => void;
    const probed = new Promise<void>((resolve) => (reached = resolve));
    const silent = createServer((socket) => {
      socket.on('error', () => undefined);
      socket.once('data', () => reached());
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const config = join(dir, 'silent.json');
    writeFileSync(config, JSON.stringify({ keysEnv: 'TEST_SERVE_KEYS', baseUrl: mock.url, apps: [{ app: `oa:${good.appId}`, secretEnv: 'GOOD_SECRET' }] }));
    const { port } = silent.address() as { port: number };
    const child = spawn(process.execPath, [bin, 'serve', '--store', `redis://127.0.0.1:${port}`, '--config', config, '--port', String(await freePort())], {
      env: { ...process.env, TEST_SERVE_KEYS: KEY, GOOD_SECRET: good.secret },
    });
    children.push(child);
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('close', (code, signal) => resolve([code, signal])));
    try {
      await probed;
      // The store has not answered, so start-up has not ended: nothing listens yet.
      expect(out).not.toContain('serve.listening');
      child.kill('SIGTERM');
      expect(await exited).toEqual([0, null]);
      expect(out).toContain('"event":"serve.stopping"');
    } finally {
      silent.close();
    }
  });
});
