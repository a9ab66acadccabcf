import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { startMockWeChat, type MockComponent, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BadResponseError, FileCache, OpenPlatform, WeChatApiError, nativeSchema, type KeySchema, type OpenPlatformOptions, type TokenCache } from '../src/index.js';
import { authorizationCodeDigest } from '../src/open-platform/records.js';
import { componentOptions, rejection, rewritingDispatcher, storeVerifyTicket } from './helpers.js';

// WeChat hands one authorization code both to the `authorized` push and to the redirect (`auth_code`),
// and the code is single use: api_query_auth answers a second use with 61009. A platform that handles
// both, as docs/open-platform.md shows, must give both callers the account, with one api_query_auth.
// Two OpenPlatforms, each on its own FileCache over one directory, are two processes sharing the store.

let mock: MockWeChat;
const dirs: string[] = [];
const opened: OpenPlatform[] = [];
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await Promise.all(opened.map((open) => open.close()));
  await mock.close();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/**
 * A FileCache with get, set, delete and watch only: a store without an atomic add (no lock can be taken
 * on it). `beforeRecord`: awaited before the record of a spent code is written.
 */
function withoutAdd(inner: FileCache, beforeRecord?: () => Promise<unknown>): TokenCache {
  return {
    get: (key) => inner.get(key),
    set: async (key, value, ttl) => {
      if (key.includes(':authorization_code:')) await beforeRecord?.();
      return inner.set(key, value, ttl);
    },
    delete: (key) => inner.delete(key),
    watch: (key, onChange) => inner.watch(key, onChange),
  } as TokenCache;
}

/** The key of a code's record on the native schema. */
const recordKey = (componentAppId: string, code: string) => `wechat:authorization_code:${componentAppId}:${authorizationCodeDigest(code)}`;

/** A FileCache on `dir` whose `polls` resolves once it reads the lock of the record `key` (its owner waits for the holder). */
function lockLooks(dir: string, key: string): { cache: FileCache; polls: Promise<void> } {
  let polling!: () => void;
  const polls = new Promise<void>((resolve) => (polling = resolve));
  class Watched extends FileCache {
    override async get(k: string): Promise<string | undefined> {
      if (k === `${key}:lock`) polling();
      return super.get(k);
    }
  }
  return { cache: new Watched({ dir }), polls };
}

/** A component on the mock, and a factory of OpenPlatforms ("processes") on one shared cache directory and one durable directory. */
async function fleet(bare = false): Promise<{ component: MockComponent; cacheDir: string; process(cache?: string | TokenCache, beforeRecord?: () => Promise<unknown>, extra?: Partial<OpenPlatformOptions>): OpenPlatform }> {
  const component = mock.createComponent();
  const cacheDir = mkdtempSync(join(tmpdir(), 'wxkit-op-code-cache-'));
  const durableDir = mkdtempSync(join(tmpdir(), 'wxkit-op-code-durable-'));
  dirs.push(cacheDir, durableDir);
  await storeVerifyTicket(mock, component, new FileCache({ dir: durableDir }));
  const process = (cache: string | TokenCache = cacheDir, beforeRecord?: () => Promise<unknown>, extra: Partial<OpenPlatformOptions> = {}) => {
    const open = new OpenPlatform({
      ...componentOptions(mock, component),
      cache: typeof cache !== 'string' ? cache : bare ? withoutAdd(new FileCache({ dir: cache }), beforeRecord) : new FileCache({ dir: cache }),
      durableStore: new FileCache({ dir: durableDir }),
      logger: false,
      ...extra,
    });
    opened.push(open);
    return open;
  };
  return { component, cacheDir, process };
}

describe('one authorization code handed to two processes (the push and the redirect)', () => {
  it('concurrently: one api_query_auth, the same account and permissions for both', async () => {
    const { component, process } = await fleet();
    const [push, redirect] = [process(), process()];
    // The component token first, so that both callers race on api_query_auth alone.
    await push.componentAccessToken();
    const grant = mock.authorize(component.appId, { funcInfo: [1, 15] });
    const [a, b] = await Promise.all([push.handleAuthorization(grant.authorizationCode), redirect.handleAuthorization(grant.authorizationCode)]);
    expect(a).toEqual({ authorizerAppId: grant.authorizerAppId, funcInfo: [1, 15] });
    expect(b).toEqual(a);
    expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
    // The account works from either process.
    await expect(redirect.officialAccount(grant.authorizerAppId).accessToken.getToken()).resolves.toEqual(expect.any(String));
  });

  it('one after the other: the second caller gets the first one\'s answer, without asking WeChat', async () => {
    const { component, process } = await fleet();
    const [push, redirect] = [process(), process()];
    const grant = mock.authorize(component.appId);
    const first = await push.handleAuthorization(grant.authorizationCode);
    const second = await redirect.handleAuthorization(grant.authorizationCode);
    expect(first.authorizerAppId).toBe(grant.authorizerAppId);
    expect(second).toEqual(first);
    expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
  });

  it("an answer without the refresh token still names the account, to the caller and, by the code's record, to the other one", async () => {
    const { component, process } = await fleet();
    // WeChat spent the code, and its answer reaches the first caller with the refresh token's field renamed.
    const dispatcher = rewritingDispatcher('cgi-bin/component/api_query_auth', '"authorizer_refresh_token"', '"authorizer_refresh_tokeX"');
    const [push, redirect] = [process(undefined, undefined, { dispatcher }), process()];
    const grant = mock.authorize(component.appId);
    const error = await push.handleAuthorization(grant.authorizationCode).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(BadResponseError);
    expect(error).toMatchObject({ authorizerAppId: grant.authorizerAppId, message: expect.stringContaining(`the account ${grant.authorizerAppId} is authorized`) });
    expect(await redirect.handleAuthorization(grant.authorizationCode)).toMatchObject({ authorizerAppId: grant.authorizerAppId });
    expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
    await dispatcher.close();
  });

  it('on a store without an atomic add, concurrently: the caller WeChat answers 61009 gets the other\'s account', async () => {
    const { component, process } = await fleet(true);
    // The push handler's record waits until the redirect handler has asked too, whichever of them
    // WeChat answered first: the redirect handler does not find the record before it asks.
    const bothAsked = () => vi.waitFor(() => expect(mock.counters(component.appId).queryAuthRequests).toBe(2), { timeout: 10_000 });
    const [push, redirect] = [process(undefined, bothAsked), process()];
    await push.componentAccessToken();
    const grant = mock.authorize(component.appId, { funcInfo: [7] });
    const [a, b] = await Promise.all([push.handleAuthorization(grant.authorizationCode), redirect.handleAuthorization(grant.authorizationCode)]);
    expect(a).toEqual({ authorizerAppId: grant.authorizerAppId, funcInfo: [7] });
    expect(b).toEqual(a);
    // No lock to share the ask: both asked, and WeChat answered one of them 61009.
    expect(mock.counters(component.appId).queryAuthRequests).toBe(2);
  });

  it('a holder that outlived its lock lease: the caller that took the lock after it waits for its record on 61009', async () => {
    const { component, cacheDir, process } = await fleet();
    const grant = mock.authorize(component.appId);
    const key = recordKey(component.appId, grant.authorizationCode);
    const { cache: watched, polls: redirectPolls } = lockLooks(cacheDir, key);
    const redirect = process(watched);
    let second: Promise<unknown> | undefined;
    /**
     * The push handler's cache: once WeChat has answered it, and the redirect handler waits for it, its
     * lock lapses (deleted here, as its lease would) before it writes the record; the redirect handler
     * then takes the lock and asks (61009) before the record lands.
     */
    class LateRecord extends FileCache {
      override async set(k: string, value: string, ttl: number): Promise<void> {
        if (k === key && !second) {
          second = redirect.handleAuthorization(grant.authorizationCode);
          await redirectPolls;
          await this.delete(`${key}:lock`);
          await vi.waitFor(() => expect(mock.counters(component.appId).queryAuthRequests).toBe(2), { timeout: 10_000 });
        }
        return super.set(k, value, ttl);
      }
    }
    const push = process(new LateRecord({ dir: cacheDir }));
    const first = await push.handleAuthorization(grant.authorizationCode);
    expect(first.authorizerAppId).toBe(grant.authorizerAppId);
    await expect(second).resolves.toEqual(first);
    expect(mock.counters(component.appId).queryAuthRequests).toBe(2);
  });

  it('close() ends a caller waiting for another process\'s answer, which asks WeChat nothing', async () => {
    const { component, cacheDir, process } = await fleet();
    const grant = mock.authorize(component.appId);
    const key = recordKey(component.appId, grant.authorizationCode);
    const { cache: watched, polls: redirectPolls } = lockLooks(cacheDir, key);
    let reached!: () => void;
    const pushWrites = new Promise<void>((resolve) => (reached = resolve));
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    /** The push handler's cache: its record waits for the test. */
    class HeldRecord extends FileCache {
      override async set(k: string, value: string, ttl: number): Promise<void> {
        if (k === key) {
          reached();
          await released;
        }
        return super.set(k, value, ttl);
      }
    }
    // The push handler's record write is held longer than a store call may take by default.
    const push = process(new HeldRecord({ dir: cacheDir }), undefined, { cacheTimeoutMs: 600_000 });
    const redirect = process(watched);
    const first = push.handleAuthorization(grant.authorizationCode);
    await pushWrites;
    const second = rejection(redirect.handleAuthorization(grant.authorizationCode));
    await redirectPolls;
    await redirect.close();
    expect((await second).message).toContain('closed');
    release();
    expect((await first).authorizerAppId).toBe(grant.authorizerAppId);
    expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
  });

  it("close() during the wait that follows WeChat's 61009 (a store without an atomic add) ends it as closed, not as a spent code", async () => {
    const { component, cacheDir, process } = await fleet(true);
    const grant = mock.authorize(component.appId);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    // The push handler asked first; its record waits for the test.
    const push = process(undefined, () => released, { cacheTimeoutMs: 600_000 });
    const first = push.handleAuthorization(grant.authorizationCode);
    await vi.waitFor(() => expect(mock.counters(component.appId).queryAuthRequests).toBe(1), { timeout: 10_000 });
    let polling!: () => void;
    const redirectPolls = new Promise<void>((resolve) => (polling = resolve));
    /** The redirect handler's cache: says when it looks for the record after WeChat answered it 61009. */
    const inner = withoutAdd(new FileCache({ dir: cacheDir }));
    const watched: TokenCache = {
      ...inner,
      get: async (k) => {
        if (k.includes(':authorization_code:') && mock.counters(component.appId).queryAuthRequests === 2) polling();
        return inner.get(k);
      },
    };
    const redirect = process(watched);
    const second = rejection(redirect.handleAuthorization(grant.authorizationCode));
    await redirectPolls;
    await redirect.close();
    const error = await second;
    expect(error).not.toBeInstanceOf(WeChatApiError);
    expect(error.message).toContain('closed');
    release();
    expect((await first).authorizerAppId).toBe(grant.authorizerAppId);
  });

  it('the record of a spent code lives five minutes, not the code\'s hour: a replay of the redirect is answered 61009 after that', async () => {
    const { component, cacheDir, process } = await fleet();
    const grant = mock.authorize(component.appId);
    const ttls: number[] = [];
    class Recording extends FileCache {
      override async set(k: string, value: string, ttl: number): Promise<void> {
        if (k.includes(':authorization_code:') && !k.endsWith(':lock')) ttls.push(ttl);
        return super.set(k, value, ttl);
      }
    }
    await process(new Recording({ dir: cacheDir })).handleAuthorization(grant.authorizationCode);
    expect(ttls).toEqual([300]);
  });

  it("a key schema of one's own that drops the code's digest from the key is refused before WeChat is asked: every code would share one record", async () => {
    const { component, process } = await fleet();
    const native = nativeSchema();
    const schema: KeySchema = {
      ...native,
      openPlatformKey: (entry, componentAppId, id) => (entry === 'authorization_code' ? `wechat:authorization_code:${componentAppId}` : native.openPlatformKey!(entry, componentAppId, id)),
    };
    const open = process(undefined, undefined, { schema });
    const grant = mock.authorize(component.appId);
    const error = await rejection(open.handleAuthorization(grant.authorizationCode));
    expect(error).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'schema' });
    expect(mock.counters(component.appId).queryAuthRequests).toBe(0);
  });

  it.each([['', false], [' on a store without an atomic add', true]])('twice in one process, concurrently%s: one api_query_auth', async (_, bare) => {
    const { component, process } = await fleet(bare);
    const open = process();
    const grant = mock.authorize(component.appId);
    const [a, b] = await Promise.all([open.handleAuthorization(grant.authorizationCode), open.handleAuthorization(grant.authorizationCode)]);
    expect(b).toEqual(a);
    expect(a.authorizerAppId).toBe(grant.authorizerAppId);
    expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
  });

  it('a code spent where no record was left (a process on another cache) still fails with 61009', async () => {
    const { component, process } = await fleet();
    const grant = mock.authorize(component.appId);
    const otherCache = mkdtempSync(join(tmpdir(), 'wxkit-op-code-other-'));
    dirs.push(otherCache);
    await process(otherCache).handleAuthorization(grant.authorizationCode);
    expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
    const error = await rejection(process().handleAuthorization(grant.authorizationCode));
    expect(error).toBeInstanceOf(WeChatApiError);
    expect(error.errcode).toBe(61009);
    expect(error.message).toBe('WeChat rejected cgi-bin/component/api_query_auth: errcode 61009 (authorization code is invalid: used already, or not issued to this component)');
    expect(error.message).not.toContain(grant.authorizationCode);
    expect(mock.counters(component.appId).queryAuthRequests).toBe(2);
  });

  it('the record is keyed by the code\'s digest and holds no token and not the code', async () => {
    const { component, cacheDir, process } = await fleet();
    const grant = mock.authorize(component.appId, { funcInfo: [1] });
    await process().handleAuthorization(grant.authorizationCode);
    const cache = new FileCache({ dir: cacheDir });
    const raw = await cache.get(`wechat:authorization_code:${component.appId}:${authorizationCodeDigest(grant.authorizationCode)}`);
    expect(raw).toBeDefined();
    const record = JSON.parse(Buffer.from(raw!, 'latin1').toString('utf8')) as Record<string, unknown>;
    expect(Object.keys(record)).toEqual(['authorizer_appid', 'func_info', 'authorized_at', 'authorized_by']);
    expect(record).toMatchObject({ authorizer_appid: grant.authorizerAppId, func_info: [1] });
    expect(raw).not.toContain(grant.authorizationCode);
    expect(raw).not.toContain(mock.authorizerRefreshToken(grant.authorizerAppId)!);
  });

  it("the docs' snippet: the authorized push and the redirect, in two processes, both succeed with one api_query_auth", async () => {
    const { component, process } = await fleet();
    const [callbackProcess, redirectProcess] = [process(), process()];
    let pushed: Promise<string> | undefined;
    // The callback URL, as docs/open-platform.md writes it: handleCallback, then handleAuthorization
    // for an authorized push; "success" once both resolve, an error otherwise (WeChat pushes again).
    const callback = createServer((req, res) => {
      let body = '';
      req.on('data', (chunk) => (body += chunk));
      req.on('end', () => {
        pushed = (async () => {
          const push = await callbackProcess.handleCallback({ query: new URL(req.url ?? '/', 'http://x').searchParams, body });
          if ((push.infoType === 'authorized' || push.infoType === 'updateauthorized') && push.fields.AuthorizationCode) {
            return (await callbackProcess.handleAuthorization(push.fields.AuthorizationCode)).authorizerAppId;
          }
          return '';
        })();
        pushed.then(
          () => res.end('success'),
          () => ((res.statusCode = 500), res.end('error')),
        );
      });
    });
    await new Promise<void>((resolve) => callback.listen(0, '127.0.0.1', resolve));
    try {
      const address = callback.address();
      mock.setComponentCallback(component.appId, `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/open`);
      await callbackProcess.componentAccessToken();
      const grant = mock.authorize(component.appId);
      // WeChat pushes the code and redirects the admin with it at about the same moment.
      const [answer, redirected] = await Promise.all([mock.pushAuthorized(component.appId, grant), redirectProcess.handleAuthorization(grant.authorizationCode)]);
      expect(answer).toEqual({ status: 200, body: 'success' });
      expect(await pushed).toBe(grant.authorizerAppId);
      expect(redirected.authorizerAppId).toBe(grant.authorizerAppId);
      expect(mock.counters(component.appId).queryAuthRequests).toBe(1);
    } finally {
      mock.setComponentCallback(component.appId, undefined);
      await new Promise((resolve) => callback.close(resolve));
    }
  });
});
