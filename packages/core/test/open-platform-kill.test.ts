import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMockWeChat, type MockComponent, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileCache, OpenPlatform, type ClientEvent, type AuthorizerRefreshTokenRecoveredEvent } from '../src/index.js';
import { componentOptions, storeVerifyTicket } from './helpers.js';

// The holder of an authorizer's refresh lock is SIGKILLed at each step of the refresh: after its
// write-ahead but before WeChat acted; after WeChat rotated the refresh token but before the new one
// was written; after it was written. Each time the next process must send, and the durable store must
// end holding the refresh token WeChat accepts: the refresh token is never lost.

const child = fileURLToPath(new URL('./fixtures/open-platform-child.mjs', import.meta.url));
// Short deadlines keep the dead holder's lease (the short lease a holder renews: 3 store deadlines and a
// second) at about 4 s; a store deadline of a second still holds on a busy 2-core machine, where a file
// call past 100 ms took the durable store for down and refused the survivor's read.
const TIMEOUT_MS = 1_000;
const CACHE_TIMEOUT_MS = 1_000;

let root: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'wxkit-open-kill-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

interface Scenario {
  /** A mock of its own: the scenarios run at once, and each queues its own fault. */
  mock: MockWeChat;
  component: MockComponent;
  appId: string;
  cacheDir: string;
  durableDir: string;
  durable: FileCache;
  platform(timeoutMs?: number): OpenPlatform;
}

async function scenario(name: string): Promise<Scenario> {
  const mock = await startMockWeChat();
  const component = mock.createComponent();
  const cacheDir = join(root, name, 'cache');
  const durableDir = join(root, name, 'durable');
  const durable = new FileCache({ dir: durableDir });
  const platforms: OpenPlatform[] = [];
  const platform = (timeoutMs = TIMEOUT_MS) => {
    const open = new OpenPlatform({
      ...componentOptions(mock, component),
      cache: new FileCache({ dir: cacheDir }),
      durableStore: durable,
      timeoutMs,
      cacheTimeoutMs: CACHE_TIMEOUT_MS,
      fallbackDir: false,
      logger: false,
    });
    platforms.push(open);
    return open;
  };
  await storeVerifyTicket(mock, component, durable);
  const open = platform();
  const { preAuthCode } = await open.createPreAuthCode();
  const { authorizerAppId } = await open.handleAuthorization(mock.authorize(component.appId, { preAuthCode }).authorizationCode);
  // The access token dies and leaves the cache: the next send must refresh with the refresh token.
  mock.invalidateTokens(authorizerAppId);
  await new FileCache({ dir: cacheDir }).delete(`wechat:authorizer_access_token:${component.appId}:${authorizerAppId}`);
  afterAll(async () => {
    await Promise.all(platforms.map((each) => each.close()));
    await mock.close();
  });
  return { mock, component, appId: authorizerAppId, cacheDir, durableDir, durable, platform };
}

function spawnHolder(s: Scenario, more: { timeoutMs?: number; authorizationCode?: string } = {}): ChildProcess {
  const config = {
    component: { appId: s.component.appId, secret: s.component.secret, token: s.component.token, encodingAESKey: s.component.encodingAESKey },
    baseUrl: s.mock.url,
    cacheDir: s.cacheDir,
    durableDir: s.durableDir,
    timeoutMs: TIMEOUT_MS,
    cacheTimeoutMs: CACHE_TIMEOUT_MS,
    authorizerAppId: s.appId,
    ...more,
  };
  return spawn(process.execPath, [child], { env: { ...process.env, WXKIT_CHILD: JSON.stringify(config) }, stdio: ['ignore', 'pipe', 'pipe'] });
}

async function until(condition: () => Promise<boolean> | boolean): Promise<void> {
  while (!(await condition())) await new Promise((resolve) => setTimeout(resolve, 5));
}

async function kill(process: ChildProcess): Promise<number | null> {
  const exited = new Promise<NodeJS.Signals | null>((resolve) => process.once('exit', (_code, signal) => resolve(signal)));
  process.kill('SIGKILL');
  expect(await exited).toBe('SIGKILL');
  return null;
}

async function record(s: Scenario): Promise<Record<string, unknown> | undefined> {
  const raw = await s.durable.get(`wechat:authorizer_refresh_token:${s.component.appId}:${s.appId}`);
  return raw === undefined ? undefined : (JSON.parse(raw) as Record<string, unknown>);
}

/** After the kill: another process sends, and the store holds the refresh token WeChat accepts. */
async function survivorSends(s: Scenario): Promise<AuthorizerRefreshTokenRecoveredEvent[]> {
  const open = s.platform();
  const events: AuthorizerRefreshTokenRecoveredEvent[] = [];
  open.on('authorizer_refresh_token.recovered', (event) => events.push(event));
  await open.officialAccount(s.appId).templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
  expect(s.mock.counters(s.appId).templateSends).toBe(1);
  const stored = await record(s);
  expect(stored?.authorizer_refresh_token).toBe(s.mock.authorizerRefreshToken(s.appId));
  expect(stored?.pending_since).toBeUndefined();
  return events;
}

describe.concurrent('a refresh-lock holder SIGKILLed during an authorizer refresh never loses the refresh token', () => {
  it('killed after the write-ahead, before WeChat acted: the next process refreshes with the same token', async () => {
    const s = await scenario('before-call');
    const before = s.mock.authorizerRefreshToken(s.appId);
    s.mock.injectFault({ kind: 'hang', path: 'cgi-bin/component/api_authorizer_token' });
    const holder = spawnHolder(s);
    await until(async () => s.mock.counters(s.appId).authorizerTokenRequests === 1 && (await record(s))?.pending_since !== undefined);
    await kill(holder);
    expect(s.mock.authorizerRefreshToken(s.appId)).toBe(before);
    const events = await survivorSends(s);
    expect(events).toEqual([]);
    expect(s.mock.counters(s.appId).authorizerTokenRequests).toBe(2);
  });

  it('killed after WeChat rotated the token, before the new one was written: recovered from WeChat', async () => {
    const s = await scenario('after-call');
    const before = s.mock.authorizerRefreshToken(s.appId);
    s.mock.injectFault({ kind: 'lost-answer', path: 'cgi-bin/component/api_authorizer_token' });
    const holder = spawnHolder(s);
    await until(() => s.mock.authorizerRefreshToken(s.appId) !== before);
    await kill(holder);
    // The store still holds the token WeChat no longer takes, marked as a refresh under way.
    expect(await record(s)).toMatchObject({ authorizer_refresh_token: before, pending_since: expect.any(Number) });
    const events = await survivorSends(s);
    expect(events.map((event) => event.reason)).toEqual(['interrupted']);
    // The stale token was tried once (61023), then the current one.
    expect(s.mock.counters(s.appId)).toMatchObject({ authorizerTokenRequests: 3, errcodes: { '61023': 1 } });
  });

  it('killed after the new token was written: the next process uses it', async () => {
    const s = await scenario('after-write');
    const before = s.mock.authorizerRefreshToken(s.appId);
    const holder = spawnHolder(s);
    await until(async () => {
      const stored = await record(s);
      return stored?.authorizer_refresh_token !== before && stored?.pending_since === undefined && stored !== undefined;
    });
    await kill(holder);
    expect((await record(s))?.authorizer_refresh_token).toBe(s.mock.authorizerRefreshToken(s.appId));
    // The holder may have sent before it died; the survivor's send is counted on top.
    const sentByHolder = s.mock.counters(s.appId).templateSends;
    const open = s.platform();
    await open.officialAccount(s.appId).templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(s.mock.counters(s.appId).templateSends).toBe(sentByHolder + 1);
    expect((await record(s))?.authorizer_refresh_token).toBe(s.mock.authorizerRefreshToken(s.appId));
    expect(s.mock.counters(s.appId).errcodes['61023']).toBeUndefined();
  });
});

describe('a holder of an authorization code SIGKILLed before WeChat answered', () => {
  it('holds the code up for its short lease only: the next caller takes the code and gets the account', async () => {
    const s = await scenario('authorization-code');
    // Long deadlines make the code's whole lease minutes long; its short lease is 3 × 1 s + 1 s. Only a
    // lock that ends soon after its holder died lets the next caller in before the test's own deadline.
    const LONG_MS = 60_000;
    const grant = s.mock.authorize(s.component.appId, { funcInfo: [1] });
    const asked = s.mock.counters(s.component.appId).queryAuthRequests;
    s.mock.injectFault({ kind: 'hang', path: 'cgi-bin/component/api_query_auth' });
    const holder = spawnHolder(s, { timeoutMs: LONG_MS, authorizationCode: grant.authorizationCode });
    await until(() => s.mock.counters(s.component.appId).queryAuthRequests === asked + 1);
    await kill(holder);
    const next = s.platform(LONG_MS);
    expect(await next.handleAuthorization(grant.authorizationCode)).toEqual({ authorizerAppId: grant.authorizerAppId, funcInfo: [1] });
    expect(s.mock.counters(s.component.appId).queryAuthRequests).toBe(asked + 2);
  }, 20_000);
});
