import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import diagnostics from 'node:diagnostics_channel';
import { getEventListeners } from 'node:events';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Agent, Dispatcher } from 'undici';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { ClientPool, MemoryCache, OfficialAccount, OpenPlatform, Work, easyWeChat4, wechatpy } from '../src/index.js';
import { rejection, storeVerifyTicket } from './helpers.js';

// Issue 14: clients share one connection pool per origin per process; a caller's dispatcher still wins;
// closing one client leaves the pool to the others; a send makes no timer or AbortController of its own.
// ClientPool and OpenPlatform send through the same pools as plain clients, and leave them the same way.

let mock: MockWeChat;
const connected: string[] = [];
const onConnect = (message: unknown) => connected.push((message as { connectParams: { origin?: string; host?: string } }).connectParams.host ?? '');
beforeAll(async () => {
  mock = await startMockWeChat();
  diagnostics.subscribe('undici:client:connected', onConnect);
});
afterAll(async () => {
  diagnostics.unsubscribe('undici:client:connected', onConnect);
  await mock.close();
});

const TEMPLATE = { touser: 'o1', template_id: 'T', data: {} };

/** An Agent of the caller's that counts the requests given to it. */
function countingAgent(): { agent: Agent; dispatched: () => number } {
  const agent = new Agent();
  const dispatch = agent.dispatch.bind(agent);
  let count = 0;
  agent.dispatch = (options, handler) => {
    count += 1;
    return dispatch(options, handler);
  };
  return { agent, dispatched: () => count };
}

function client(options: Record<string, unknown> = {}) {
  const { appId, secret } = mock.createApp();
  return new OfficialAccount({ appId, secret, baseUrl: mock.url, cache: new MemoryCache(), logger: false, ...options });
}

describe('one pool per origin, shared by the clients of a process', () => {
  it('many clients send over the connections of one pool; closing one leaves it to the others; the last one closes it', async () => {
    // A base URL of its own (a path prefix is not part of the origin) so no other test's pool is reused.
    const clients = Array.from({ length: 20 }, () => client({ baseUrl: `${mock.url}/`, timeoutMs: 9_001 }));
    const before = connected.length;
    // One at a time: 40 requests (a token fetch through the origin's token pool and a send through its
    // API pool, per client), each finding an idle connection (at most one more while the last answer's
    // connection is being handed back). A pool per client would have opened 20 or 40.
    for (const each of clients) await each.templateMessage.send(TEMPLATE);
    const opened = connected.length - before;
    expect(opened).toBeGreaterThanOrEqual(2);
    expect(opened).toBeLessThanOrEqual(3);

    await Promise.all(clients.slice(1).map((each) => each.close()));
    // undici hands a connection back to its pool on the loop turn after the answer (setImmediate): a send
    // made before then finds it busy and opens another. One turn, then the connection is idle again.
    await new Promise((resolve) => setImmediate(resolve));
    // The pool stayed open for the one client left: it sends over a connection already there.
    await clients[0]!.templateMessage.send(TEMPLATE);
    expect(connected.length - before).toBe(opened);
    await clients[0]!.close();

    // All gone: the pool was closed with its connections, and a new client opens a new one.
    const later = client({ baseUrl: `${mock.url}/`, timeoutMs: 9_001 });
    await later.templateMessage.send(TEMPLATE);
    expect(connected.length - before).toBeGreaterThan(opened);
    await later.close();
  });

  it('a client made before another closes keeps both pools open: its first token fetch reuses the connection', async () => {
    // A process switching accounts (a platform, the benchmark's cold rounds) makes the next client, then
    // closes the last: neither the API pool nor the token pool may close between them.
    const options = { baseUrl: `${mock.url}/`, timeoutMs: 9_002 };
    const first = client(options);
    const before = connected.length;
    await first.templateMessage.send(TEMPLATE);
    // One connection for the token fetch, one (or two, see above) for the send.
    const opened = connected.length - before;
    expect(opened).toBeGreaterThanOrEqual(2);
    const next = client(options);
    await first.close();
    await new Promise((resolve) => setImmediate(resolve));
    // A cold account: a token fetch and a send, over the connections already open.
    await next.templateMessage.send(TEMPLATE);
    expect(connected.length - before).toBe(opened);
    await next.close();
  });

  it('a client that fails to be made holds no use of the pools: they still close with the last client made', async () => {
    const options = { baseUrl: `${mock.url}/`, timeoutMs: 9_006 };
    const first = client(options);
    const before = connected.length;
    await first.templateMessage.send(TEMPLATE);
    const opened = connected.length - before;
    // EasyWeChat 4's keys are built from the secret: a follower of that profile given none is refused,
    // once its options were read, and the same for a WeCom app. A platform on a profile without
    // open-platform keys is refused too.
    const noSecret = { ...options, refresh: 'never' as const, schema: easyWeChat4(), cache: new MemoryCache(), logger: false as const };
    expect(() => new OfficialAccount({ ...noSecret, appId: mock.createApp().appId })).toThrow(/builds its keys from the secret/);
    expect(() => new Work({ ...noSecret, corpId: 'ww0123456789abcdef', agentId: 1000002 })).toThrow(/builds its keys from the secret/);
    const component = mock.createComponent();
    const { appId, secret, token, encodingAESKey } = component;
    const platformOptions = { ...options, appId, secret, token, encodingAESKey, cache: new MemoryCache(), durableStore: new MemoryCache(), logger: false as const };
    expect(() => new OpenPlatform({ ...platformOptions, schema: wechatpy() })).toThrow(/has none; use nativeSchema/);
    await first.close();
    // The pools closed with the one client made: a new client opens connections of its own.
    const later = client(options);
    await later.templateMessage.send(TEMPLATE);
    expect(connected.length - before).toBeGreaterThan(opened);
    await later.close();
  });

  it("a caller's dispatcher carries the client's requests, and close() leaves it open", async () => {
    const { agent, dispatched } = countingAgent();
    const app = client({ dispatcher: agent });
    await app.templateMessage.send(TEMPLATE);
    // The token fetch and the send.
    expect(dispatched()).toBe(2);
    await app.close();
    expect(agent.closed).toBe(false);
    await agent.close();
  });
});

/** One loop turn: undici hands an answered request's connection back to its pool on the next one (see above). */
const turn = () => new Promise((resolve) => setImmediate(resolve));

/** A ClientPool of official accounts on the mock, and an account it knows. */
function accountPool(options: Record<string, unknown>) {
  const { appId, secret } = mock.createApp();
  const pool = new ClientPool({ kind: 'officialAccount', credentials: () => ({ secret }), cache: new MemoryCache(), logger: false, ...options });
  return { pool, send: async () => (await pool.get(appId)).templateMessage.send(TEMPLATE) };
}

/** An OpenPlatform of a component on the mock, its verify ticket stored. `authorize()` takes an account through authorization. */
async function platform(options: Record<string, unknown>) {
  const component = mock.createComponent();
  const durableStore = new MemoryCache();
  await storeVerifyTicket(mock, component, durableStore);
  const { appId, secret, token, encodingAESKey } = component;
  const open = new OpenPlatform({ appId, secret, token, encodingAESKey, cache: new MemoryCache(), durableStore, logger: false, ...options });
  return {
    open,
    /** api_component_token (token lane) and api_create_preauthcode, then api_query_auth (API lane). */
    async authorize(): Promise<string> {
      const { preAuthCode } = await open.createPreAuthCode();
      await turn();
      const grant = mock.authorize(appId, { preAuthCode });
      return (await open.handleAuthorization(grant.authorizationCode)).authorizerAppId;
    },
  };
}

describe('ClientPool and OpenPlatform send through the pools of plain clients', () => {
  // Each test has a timeout of its own, and with it pools of its own (the connect timeout is part of a pool's key).

  it('a plain client, a ClientPool and an OpenPlatform of one origin send over the same connections', async () => {
    const options = { baseUrl: `${mock.url}/`, timeoutMs: 9_003 };
    const plain = client(options);
    const before = connected.length;
    // A token fetch through the origin's token pool and a send through its API pool.
    await plain.templateMessage.send(TEMPLATE);
    const opened = connected.length - before;
    expect(opened).toBeGreaterThanOrEqual(2);
    await turn();

    // A connection pool of their own (as each had before) would open at least one connection more for each.
    const accounts = accountPool(options);
    await accounts.send();
    await turn();
    const { open, authorize } = await platform(options);
    const authorizer = await authorize();
    await turn();
    await open.officialAccount(authorizer).templateMessage.send(TEMPLATE);
    expect(connected.length - before).toBe(opened);

    // The plain client and the ClientPool go; the pools stay open for the OpenPlatform.
    await plain.close();
    await accounts.pool.close();
    await turn();
    await open.officialAccount(authorizer).templateMessage.send(TEMPLATE);
    expect(connected.length - before).toBe(opened);

    // The last user closes them: a new client opens new connections.
    await open.close();
    const later = client(options);
    await later.templateMessage.send(TEMPLATE);
    expect(connected.length - before).toBeGreaterThan(opened);
    await later.close();
  });

  it('closing a ClientPool leaves its connections to a plain client, which sends over them without opening one', async () => {
    const options = { baseUrl: `${mock.url}/`, timeoutMs: 9_004 };
    const accounts = accountPool(options);
    const before = connected.length;
    await accounts.send();
    const opened = connected.length - before;
    expect(opened).toBeGreaterThanOrEqual(1);
    // Made while the ClientPool is open, as a process that replaces one with the other.
    const plain = client(options);
    await accounts.pool.close();
    await turn();
    // A cold account: a token fetch and a send, over the connections the ClientPool opened.
    await plain.templateMessage.send(TEMPLATE);
    expect(connected.length - before).toBe(opened);
    await plain.close();
  });

  it('closing an OpenPlatform leaves its connections to a plain client, which sends over them without opening one', async () => {
    const options = { baseUrl: `${mock.url}/`, timeoutMs: 9_005 };
    const { open, authorize } = await platform(options);
    const before = connected.length;
    await authorize();
    const opened = connected.length - before;
    expect(opened).toBeGreaterThanOrEqual(1);
    const plain = client(options);
    await open.close();
    await turn();
    await plain.templateMessage.send(TEMPLATE);
    expect(connected.length - before).toBe(opened);
    await plain.close();
  });

  it("a caller's dispatcher carries a ClientPool's and an OpenPlatform's requests, and close() leaves it open", async () => {
    const { agent, dispatched } = countingAgent();
    const options = { baseUrl: mock.url, dispatcher: agent };
    const accounts = accountPool(options);
    await accounts.send();
    // The token fetch and the send.
    expect(dispatched()).toBe(2);
    const { open, authorize } = await platform(options);
    await authorize();
    // api_component_token, api_create_preauthcode, api_query_auth.
    expect(dispatched()).toBe(5);
    await accounts.pool.close();
    await open.close();
    expect(agent.closed).toBe(false);
    expect(agent.destroyed).toBe(false);
    await agent.close();
  });
});

describe('a send without a signal makes no timer of its own', () => {
  it('32 sends in flight add no timer per send, and still end with a typed error', async () => {
    const local = await startMockWeChat();
    const { appId, secret } = local.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache: new MemoryCache(), logger: false });
    await app.accessToken.getToken();
    local.injectFault({ kind: 'hang', path: 'cgi-bin/message/template/send', times: 32 });
    const timers = () => process.getActiveResourcesInfo().filter((what) => what === 'Timeout').length;
    const idle = timers();
    const sends = Array.from({ length: 32 }, () => rejection(app.templateMessage.send(TEMPLATE)));
    await vi.waitFor(() => expect(local.counters().requests).toBe(1 + 32));
    // undici's own timeouts share one timer for every request; the mock adds none for a hung answer.
    expect(timers() - idle).toBeLessThanOrEqual(2);
    // The server goes away: each send fails with a typed transport error, none hangs.
    await local.close();
    const errors = await Promise.all(sends);
    expect(new Set(errors.map((error) => error.code))).toEqual(new Set(['ERR_WXKIT_HTTP']));
    await app.close();
  });

  it("a caller's signal still stops a send, with the signal's reason", async () => {
    const local = await startMockWeChat();
    const { appId, secret } = local.createApp();
    const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache: new MemoryCache(), logger: false });
    await app.accessToken.getToken();
    local.injectFault({ kind: 'hang', path: 'cgi-bin/message/template/send', times: 1 });
    const controller = new AbortController();
    const sent = rejection(app.client.postJson('cgi-bin/message/template/send', TEMPLATE, { signal: controller.signal }));
    await vi.waitFor(() => expect(local.counters().requests).toBe(2));
    const reason = new Error('the caller gave up');
    controller.abort(reason);
    expect(await sent).toBe(reason);
    await app.close();
    await local.close();
  });

  it("one signal handed to 32 sends and 12 accounts' token waits at once holds one listener of wxkit's, and Node warns of no leak; aborting it stops them all", async () => {
    const local = await startMockWeChat();
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on('warning', onWarning);
    try {
      const { appId, secret } = local.createApp();
      const app = new OfficialAccount({ appId, secret, baseUrl: local.url, cache: new MemoryCache(), logger: false });
      await app.accessToken.getToken();
      local.injectFault({ kind: 'hang', path: 'cgi-bin/message/template/send', times: 32 });
      local.injectFault({ kind: 'hang', path: 'cgi-bin/stable_token', times: 12 });
      const controller = new AbortController();
      const { signal } = controller;
      const sends = Array.from({ length: 32 }, () => rejection(app.client.postJson('cgi-bin/message/template/send', TEMPLATE, { signal })));
      const cold = Array.from({ length: 12 }, () => {
        const other = local.createApp();
        return new OfficialAccount({ appId: other.appId, secret: other.secret, baseUrl: local.url, cache: new MemoryCache(), logger: false });
      });
      const waits = cold.map((each) => rejection(each.accessToken.getToken({ signal })));
      await vi.waitFor(() => expect(local.counters().requests).toBe(1 + 32 + 12));
      expect(getEventListeners(signal, 'abort')).toHaveLength(1);
      const reason = new Error('the caller gave up');
      controller.abort(reason);
      expect(new Set([...(await Promise.all(sends)), ...(await Promise.all(waits))])).toEqual(new Set([reason]));
      // A warning is emitted on a later turn of the loop than the listener that caused it.
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings.filter((warning) => warning.name === 'MaxListenersExceededWarning')).toEqual([]);
      // The mock first: the token fetches it holds end, and the clients' close() waits for nothing more.
      await local.close();
      await Promise.all([app.close(), ...cold.map((each) => each.close())]);
    } finally {
      process.off('warning', onWarning);
      await local.close();
    }
  });

  it("a signal's abort reaches every call on it when a caller's dispatcher throws from its abort", async () => {
    // Takes each request, never answers, and throws when asked to abort one.
    class Stubborn extends Dispatcher {
      taken = 0;
      override dispatch(_options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
        this.taken += 1;
        (handler as { onConnect(abort: () => void): void }).onConnect(() => {
          throw new Error('this dispatcher cannot abort');
        });
        return true;
      }
    }
    const dispatcher = new Stubborn();
    const app = new OfficialAccount({ appId: 'wx0000000000000002', baseUrl: mock.url, tokenSource: { fetch: async () => ({ value: 'TOKEN_OF_A_SOURCE', expiresIn: 7200 }), invalidate: async () => undefined }, dispatcher, logger: false });
    const controller = new AbortController();
    const sends = [1, 2, 3].map(() => rejection(app.client.postJson('cgi-bin/message/template/send', TEMPLATE, { signal: controller.signal })));
    await vi.waitFor(() => expect(dispatcher.taken).toBe(3));
    const reason = new Error('the caller gave up');
    controller.abort(reason);
    expect(await Promise.all(sends)).toEqual([reason, reason, reason]);
    await app.close();
  });
});

describe("undici's Pool, loaded alone", () => {
  // undici's index loads all of undici (fetch, WebSocket, the mock agents, caches): most of the CPU a
  // process spends importing wxkit. Both builds load the Pool's module and not the index.
  const undiciFiles = (format: 'esm' | 'cjs') => {
    const built = fileURLToPath(new URL(`../dist/index.${format === 'esm' ? 'js' : 'cjs'}`, import.meta.url));
    const load = format === 'esm' ? `await import(${JSON.stringify(pathToFileURL(built).href)})` : `require(${JSON.stringify(built)})`;
    const script = `(async () => {
        ${load};
        const files = Object.keys(require.cache).filter((file) => file.includes('/undici/'));
        process.stdout.write(JSON.stringify(files.map((file) => file.slice(file.lastIndexOf('/undici/') + 1))));
      })();`;
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    expect(run.stderr).toBe('');
    return JSON.parse(run.stdout) as string[];
  };

  it.each(['esm', 'cjs'] as const)('%s build: the Pool module, not the index', (format) => {
    const files = undiciFiles(format);
    expect(files).toContain('undici/lib/dispatcher/pool.js');
    expect(files).not.toContain('undici/index.js');
    expect(files).not.toContain('undici/lib/web/fetch/index.js');
  });

  it('is taken into a bundle by a bundler (esbuild), which then runs where no node_modules is', async () => {
    // A deploy or serverless bundle: undici must be found at build time (a require() at run time would not be).
    const esbuild = createRequire(createRequire(import.meta.url).resolve('tsup'))('esbuild') as { build(options: object): Promise<unknown> };
    const out = mkdtempSync(join(tmpdir(), 'wxkit-bundle-'));
    try {
      const app = join(out, 'app.cjs');
      await esbuild.build({
        stdin: {
          contents: `const { OfficialAccount, MemoryCache } = require(${JSON.stringify(fileURLToPath(new URL('../dist/index.cjs', import.meta.url)))});
            const app = new OfficialAccount({ appId: 'wx0000000000000000', secret: 's', cache: new MemoryCache() });
            app.close().then(() => console.log('loaded'));`,
          resolveDir: out,
        },
        bundle: true,
        platform: 'node',
        format: 'cjs',
        outfile: app,
        logLevel: 'silent',
      });
      // Without NODE_PATH, which a package manager's launcher sets to its own store of modules.
      const run = spawnSync(process.execPath, [app], { cwd: out, encoding: 'utf8', env: { ...process.env, NODE_PATH: '' } });
      expect(run.stderr).toBe('');
      expect(run.stdout.trim()).toBe('loaded');
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('is the Pool undici exports, with the dispatch() and close() wxkit calls', async () => {
    const { Pool } = await import('../src/undici-pool.js');
    expect(Pool).toBe((await import('undici')).Pool);
    expect(typeof Pool.prototype.dispatch).toBe('function');
    expect(typeof Pool.prototype.close).toBe('function');
  });
});
