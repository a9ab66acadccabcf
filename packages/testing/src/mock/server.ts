import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { FaultQueue, WECHAT_JSON, faultFromJson, send, withField, type MockFault } from './faults.js';
import {
  WeChatError,
  WeChatModel,
  alive,
  errorBody,
  type AppState,
  type Call,
  type MockApp,
  type MockCounters,
  type MockQuotas,
  type MockWorkApp,
} from './model.js';
import { OpenPlatform, type MockAuthorization, type MockAuthorizeOptions, type MockAuthorizedAccount, type MockComponent, type MockPushResult } from './open-platform.js';
import { createRoutes } from './routes.js';

/** Options of {@link startMockWeChat}. */
export interface MockWeChatOptions {
  /** Address to listen on. @default '127.0.0.1' */
  host?: string;
  /** @default 0, a free port (read it from `port` or `url`) */
  port?: number;
  /** Apps known from the start; add more with `createApp()`. @default none */
  apps?: MockApp[];
  /**
   * How long the previous token keeps working after a new one is issued, in seconds. WeChat's is 5
   * minutes; a smaller one makes grace-window tests short without `advanceClock`. @default 300
   */
  graceSeconds?: number;
  /** Life of a new access token, in seconds. @default 7200 */
  tokenTtlSeconds?: number;
  /** Life of a new jsapi / wx_card ticket, in seconds. @default 7200 */
  ticketTtlSeconds?: number;
  /** Delay before every answer, in ms; `/__mock/` control calls answer at once. @default 0 */
  latencyMs?: number;
  /** Per-app call limits; WeChat's by default. */
  quotas?: MockQuotas;
  /**
   * Base clock in ms. The mock's time is this plus whatever `advanceClock()` added; a fixed function
   * (`() => T0`) makes every `expires_in` exact in tests. @default Date.now
   */
  now?: () => number;
  /**
   * Whether api_authorizer_token hands out a new authorizer_refresh_token on every call, the old one
   * answering 61023 from then on. WeChat may rotate it (its docs say to store what comes back); the
   * strict reading is the default so tests see the hard case. @default true
   */
  rotateRefreshTokens?: boolean;
}

/** A running mock WeChat API server. */
export interface MockWeChat {
  /** e.g. `http://127.0.0.1:40123`, no trailing slash. */
  readonly url: string;
  readonly port: number;
  /** Registers a new app with a random appId (`wx` + 16 hex) and secret. Give each test its own. */
  createApp(overrides?: Partial<MockApp>): MockApp;
  /**
   * Registers a WeCom agent: `cgi-bin/gettoken?corpid&corpsecret` answers for it. Its id for
   * counters(), invalidateTokens() and the like is `{corpId}:{agentId}`.
   */
  createWorkApp(overrides?: Partial<MockWorkApp>): MockWorkApp;
  /** Registers an app with known credentials. Throws if the appId is already known. */
  addApp(app: MockApp): void;
  /** A snapshot, for one app or summed over all when `appId` is omitted. Throws for an unknown app. */
  counters(appId?: string): MockCounters;
  resetCounters(): void;
  /** Every access token of the app, classic and stable, dies now (40001 after), as when another system refreshed and the grace window ended. */
  invalidateTokens(appId: string): void;
  /**
   * What another program calling cgi-bin/token does: a new classic token; the previous one enters its
   * grace window. Counted as `externalFetches`, not as a token request.
   */
  issueClassicToken(appId: string): string;
  /** Whether a business call with this token would be accepted now. */
  isTokenValid(appId: string, token: string): boolean;
  /**
   * What another program does whose ticket fetch WeChat answers with a new ticket: a new ticket of
   * `type` (getticket's `jsapi` or `wx_card`, WeCom's `jsapi` or `agent_config`), which getticket answers
   * from then on; the previous one enters its grace window (`graceSeconds`), as a superseded token does.
   * Counted as `externalFetches`. Throws for an app with a fixed `jsapiTicket` and type `jsapi`.
   */
  issueTicket(appId: string, type?: string): string;
  /** Whether `wx.config` (or `wx.agentConfig`) would take a signature made with this ticket now. */
  isTicketValid(appId: string, ticket: string): boolean;
  setLatency(ms: number): void;
  /** Queues a fault; it applies to the next `times` requests whose path matches. */
  injectFault(fault: MockFault): void;
  clearFaults(): void;
  /** When false, the token endpoints answer 40164 (caller IP not in the whitelist). */
  setIpAllowed(appId: string, allowed: boolean): void;
  /** Moves the mock's clock forward: token and ticket expiry, grace windows, quota days, the 30 s force-refresh rule. */
  advanceClock(seconds: number): void;
  /** The mock's time, in ms. */
  now(): number;
  /**
   * Registers an open-platform component (third-party platform): `cgi-bin/component/*` answers for it.
   * It has no verify ticket until one is pushed (`pushVerifyTicket`) or issued (`issueVerifyTicket`).
   */
  createComponent(overrides?: Partial<MockComponent>): MockComponent;
  /**
   * Sets the component's callback URL ("授权事件接收 URL"). From then on, every 10 minutes of mock
   * time (`advanceClock`) WeChat pushes a new component_verify_ticket there, encrypted and signed.
   * Pushes are signed with the mock's time: an OpenPlatform receiving them after `advanceClock` needs
   * `now: () => mock.now()`, or it refuses them as sent too long ago (`reason: 'expired'`).
   */
  setComponentCallback(componentAppId: string, url: string | undefined): void;
  /** Pushes a new component_verify_ticket to the callback now; resolves with the callback's answer. */
  pushVerifyTicket(componentAppId: string): Promise<MockPushResult>;
  /**
   * Pushes the `authorized` event of `authorization` (from `authorize()`) to the callback now: the same
   * AuthorizationCode the redirect carries. Resolves with the callback's answer.
   */
  pushAuthorized(componentAppId: string, authorization: MockAuthorization): Promise<{ status: number; body: string }>;
  /** A new verify ticket (valid 12 h) without a push, for tests that set it in the store themselves. */
  issueVerifyTicket(componentAppId: string): string;
  /** Resolves once every push sent so far has been answered. */
  pushesSettled(): Promise<void>;
  /** An account's admin authorizes the component; returns the authorization code for api_query_auth. */
  authorize(componentAppId: string, options?: MockAuthorizeOptions): MockAuthorization;
  /**
   * `count` new accounts authorize at once, their authorizations completed: each one's refresh token
   * as api_query_auth would have handed it over, no access token yet. For seeding a durable store.
   */
  authorizeMany(componentAppId: string, count: number): MockAuthorizedAccount[];
  /** The account revokes the authorization: its refresh token answers 61003 and its tokens die. */
  revokeAuthorization(authorizerAppId: string): void;
  /** The authorizer_refresh_token WeChat accepts now (undefined once revoked). */
  authorizerRefreshToken(authorizerAppId: string): string | undefined;
  /** Stops the server; hanging and trickling answers are cut, so this never hangs. */
  close(): Promise<void>;
}

const DEFAULTS = Object.freeze({
  host: '127.0.0.1',
  port: 0,
  graceSeconds: 300,
  tokenTtlSeconds: 7200,
  ticketTtlSeconds: 7200,
  latencyMs: 0,
  quotas: Object.freeze({
    token: 2000,
    stableToken: 500_000,
    stableTokenPerMinute: 10_000,
    forceRefresh: 20,
    ticket: 100_000,
    workTicketPerHour: 100,
    workCorpTicketPerHour: 400,
    workTokenPerMinute: 10_000,
    workTokenPerHour: 150_000,
  }),
});

/** A JSON object body, or undefined for anything else (a form body, an array, nothing). */
function jsonObject(body: string): Record<string, unknown> | undefined {
  try {
    const parsed = JSON.parse(body) as unknown;
    return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function checkNumber(name: string, value: unknown, min: number, allowInfinity = false): void {
  if (value === undefined) return;
  const ok = typeof value === 'number' && !Number.isNaN(value) && value >= min && (allowInfinity || Number.isFinite(value));
  if (!ok) throw new TypeError(`startMockWeChat options.${name} must be a number >= ${min} (got ${value === null ? 'null' : typeof value})`);
}

/** Fails before any I/O, naming the option (never echoing a secret). */
function validateOptions(options: MockWeChatOptions): void {
  if (options.host !== undefined && (typeof options.host !== 'string' || options.host === '')) {
    throw new TypeError(`startMockWeChat options.host must be a non-empty string (got ${typeof options.host})`);
  }
  if (options.port !== undefined && (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535)) {
    throw new TypeError(`startMockWeChat options.port must be an integer from 0 to 65535 (got ${typeof options.port})`);
  }
  checkNumber('graceSeconds', options.graceSeconds, 0);
  checkNumber('tokenTtlSeconds', options.tokenTtlSeconds, 1);
  checkNumber('ticketTtlSeconds', options.ticketTtlSeconds, 1);
  checkNumber('latencyMs', options.latencyMs, 0);
  if (options.rotateRefreshTokens !== undefined && typeof options.rotateRefreshTokens !== 'boolean') {
    throw new TypeError(`startMockWeChat options.rotateRefreshTokens must be a boolean (got ${typeof options.rotateRefreshTokens})`);
  }
  for (const [name, value] of Object.entries(options.quotas ?? {})) checkNumber(`quotas.${name}`, value, 0, true);
  if (options.now !== undefined && typeof options.now !== 'function') {
    throw new TypeError(`startMockWeChat options.now must be a function (got ${typeof options.now})`);
  }
  if (options.apps !== undefined && !Array.isArray(options.apps)) {
    throw new TypeError(`startMockWeChat options.apps must be an array (got ${typeof options.apps})`);
  }
}

/**
 * Starts a mock of WeChat's API over plain HTTP, with WeChat's token semantics: a classic fetch
 * supersedes the previous token after a grace window; the stable endpoint returns the current token
 * and its remaining life; tokens die with 40001 (superseded), 42001 (expired) or 40014 (never issued);
 * quotas end in 45009. Every behaviour follows the notes in the repository's WeChat API reference.
 *
 * @example
 * ```ts
 * const mock = await startMockWeChat();
 * const { appId, secret } = mock.createApp();
 * const app = new OfficialAccount({ appId, secret, baseUrl: mock.url });
 * await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
 * expect(mock.counters(appId).tokenRequests).toBe(1);
 * await mock.close();
 * ```
 */
export async function startMockWeChat(options: MockWeChatOptions = {}): Promise<MockWeChat> {
  validateOptions(options);
  const model = new WeChatModel({
    graceMs: (options.graceSeconds ?? DEFAULTS.graceSeconds) * 1000,
    tokenTtlMs: (options.tokenTtlSeconds ?? DEFAULTS.tokenTtlSeconds) * 1000,
    ticketTtlMs: (options.ticketTtlSeconds ?? DEFAULTS.ticketTtlSeconds) * 1000,
    quotas: { ...DEFAULTS.quotas, ...options.quotas },
    baseNow: options.now ?? Date.now,
  });
  const initialLatencyMs = options.latencyMs ?? DEFAULTS.latencyMs;
  let latencyMs = initialLatencyMs;
  const { apps, corps, tokenOwners } = model;
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const now = () => model.now();
  const addApp = (app: MockApp) => model.addApp(app);
  const stateOf = (appId: string) => model.stateOf(appId);
  const count = model.count.bind(model);
  const countErrcode = model.countErrcode.bind(model);
  for (const app of options.apps ?? []) addApp(app);
  const openPlatform = new OpenPlatform(model, options.rotateRefreshTokens ?? true);
  const routes = { ...createRoutes(model), ...openPlatform.routes() };
  const faults = new FaultQueue(model, later);

  /** The app a request names (its token's owner, appid in the query or body, a WeCom corp + secret), for the counters. */
  function ownerOf(path: string, query: URLSearchParams, json: Record<string, unknown> | undefined): AppState | undefined {
    const token = query.get('access_token');
    if (token) return tokenOwners.get(token);
    // An authorizer's refresh counts against the authorizer; other component calls against the component.
    if (path === 'cgi-bin/component/api_authorizer_token' && typeof json?.authorizer_appid === 'string') return apps.get(json.authorizer_appid);
    const componentToken = query.get('component_access_token');
    if (componentToken) return tokenOwners.get(componentToken);
    if (typeof json?.component_appid === 'string') return apps.get(json.component_appid);
    if (path === 'cgi-bin/gettoken') {
      return corps.get(query.get('corpid') ?? '')?.find((agent) => agent.app.secret === query.get('corpsecret'));
    }
    const appid = query.get('appid') ?? json?.appid;
    return typeof appid === 'string' ? apps.get(appid) : undefined;
  }

  /**
   * Counts a request against its app when it arrives, before latency and faults: an attempt is an
   * attempt, whatever the answer, and a test waiting for "the fetch has started" sees it at once.
   */
  function countArrival(path: string, owner: AppState | undefined, json: Record<string, unknown> | undefined): void {
    count(owner, 'requests');
    if (path === 'cgi-bin/token' || path === 'cgi-bin/gettoken') {
      count(owner, 'classicTokenRequests');
      count(owner, 'tokenRequests');
    } else if (path === 'cgi-bin/stable_token') {
      count(owner, 'stableTokenRequests');
      count(owner, 'tokenRequests');
      if (json?.force_refresh === true) count(owner, 'forceRefreshes');
    } else if (path === 'cgi-bin/component/api_component_token') {
      count(owner, 'componentTokenRequests');
    } else if (path === 'cgi-bin/component/api_authorizer_token') {
      count(owner, 'authorizerTokenRequests');
    } else if (path === 'cgi-bin/component/api_query_auth') {
      count(owner, 'queryAuthRequests');
    }
  }


  function later(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms);
    timers.add(timer);
  }


  const APP_FIELDS = ['appId', 'secret', 'jsapiTicket'];

  function control(url: URL, body: string, res: ServerResponse): void {
    const appid = url.searchParams.get('appid') ?? '';
    const need = () => (stateOf(appid), appid);
    const parse = (): Record<string, unknown> => {
      if (!body.trim()) return {};
      const parsed = jsonObject(body);
      if (!parsed) throw new Error('the body must be a JSON object');
      return parsed;
    };
    const numberParam = (name: string, min: number) => {
      const raw = url.searchParams.get(name);
      const value = Number(raw);
      if (raw === null || raw.trim() === '' || !Number.isFinite(value) || value < min) throw new Error(`${name} must be a number >= ${min}`);
      return value;
    };
    const routesControl: Record<string, () => unknown> = {
      'GET counters': () => mock.counters(appid || undefined),
      'POST apps': () => {
        const fields = parse();
        // A misspelt field (`appid`, a WeCom agent's `corpId`) would be echoed back beside an app of a random id.
        const unknown = Object.keys(fields).filter((name) => !APP_FIELDS.includes(name));
        if (unknown.length > 0) throw new Error(`${unknown.join(', ')} is not a field of a mock app (${APP_FIELDS.join(', ')}); WeCom agents are made in-process with createWorkApp()`);
        return mock.createApp(fields as Partial<MockApp>);
      },
      'POST invalidate': () => (mock.invalidateTokens(need()), { ok: true }),
      'POST issue-classic-token': () => ({ access_token: mock.issueClassicToken(need()) }),
      'POST issue-ticket': () => ({ ticket: mock.issueTicket(need(), url.searchParams.get('type') ?? 'jsapi') }),
      'POST clock': () => (mock.advanceClock(numberParam('advance', 0)), { now: now() }),
      'POST latency': () => (mock.setLatency(numberParam('ms', 0)), { ok: true }),
      'POST fault': () => (mock.injectFault(faultFromJson(parse())), { ok: true }),
      // Back to a clean slate for the next scenario: counters, queued faults, the starting latency.
      'POST reset': () => (mock.resetCounters(), mock.clearFaults(), mock.setLatency(initialLatencyMs), { ok: true }),
    };
    const handler = routesControl[`${res.req.method} ${url.pathname.slice('/__mock/'.length)}`];
    if (!handler) return send(res, 404, JSON.stringify({ error: `no control endpoint ${res.req.method} ${url.pathname}` }));
    try {
      send(res, 200, JSON.stringify(handler()));
    } catch (error) {
      send(res, 400, JSON.stringify({ error: (error as Error).message }));
    }
  }

  function handle(req: IncomingMessage, res: ServerResponse, body: string): void {
    const url = new URL(req.url ?? '/', 'http://mock');
    if (url.pathname.startsWith('/__mock/')) return control(url, body, res);
    const path = url.pathname.replace(/^\/+/, '');
    const json = jsonObject(body);
    const owner = ownerOf(path, url.searchParams, json);
    countArrival(path, owner, json);
    // The fault belongs to the request that arrived, even if its client is gone before the latency
    // has passed: otherwise the next caller would inherit a hang meant for the one a test killed.
    const fault = faults.take(path);
    const respond = () => {
      if (res.destroyed) return;
      if (fault && fault.kind !== 'lost-answer' && fault.kind !== 'field') return faults.answer(fault, path, owner, res);
      const route = routes[path];
      if (!route) return send(res, 404, `404 Not Found: no API /${path}\n`, 'text/plain; charset=utf-8');
      const call: Call = { req, path, query: url.searchParams, body, json, t: now(), owner };
      if (fault?.kind === 'lost-answer') {
        // WeChat acts on the request; its answer is lost on the way back.
        try {
          route(call);
        } catch (error) {
          if (!(error instanceof WeChatError)) throw error;
          countErrcode(owner, error.errcode);
        }
        return;
      }
      try {
        const answer = route(call);
        if ('image' in answer) send(res, 200, answer.image, 'image/png');
        // A field fault alters what WeChat answered, not WeChat's refusal.
        else send(res, 200, fault ? withField(answer.json, fault) : answer.json, WECHAT_JSON);
      } catch (error) {
        if (!(error instanceof WeChatError)) throw error;
        countErrcode(owner, error.errcode);
        send(res, 200, errorBody(error.errcode, error.errmsg), WECHAT_JSON);
      }
    };
    if (latencyMs > 0) later(latencyMs, respond);
    else respond();
  }

  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      try {
        handle(req, res, Buffer.concat(chunks).toString('utf8'));
      } catch (error) {
        // A bug in the mock must show as a bug, not as a WeChat answer a client might accept.
        if (!res.headersSent) send(res, 500, `mock error: ${(error as Error).stack ?? String(error)}\n`, 'text/plain; charset=utf-8');
        else res.destroy();
      }
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.keepAliveTimeout = 30_000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? DEFAULTS.port, options.host ?? DEFAULTS.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('the mock server has no TCP address');
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  const mock: MockWeChat = {
    url: `http://${host}:${address.port}`,
    port: address.port,
    createApp(overrides = {}) {
      const app: MockApp = {
        appId: `wx${randomBytes(8).toString('hex')}`,
        secret: randomBytes(16).toString('hex'),
        ...overrides,
      };
      addApp(app);
      return app;
    },
    createWorkApp(overrides = {}) {
      const app: MockWorkApp = {
        corpId: `ww${randomBytes(8).toString('hex')}`,
        agentId: String(1_000_000 + Math.floor(Math.random() * 999_999)),
        secret: randomBytes(20).toString('base64url'),
        ...overrides,
      };
      const id = `${app.corpId}:${app.agentId}`;
      addApp({ appId: id, secret: app.secret });
      stateOf(id).corpId = app.corpId;
      corps.set(app.corpId, [...(corps.get(app.corpId) ?? []), stateOf(id)]);
      return app;
    },
    addApp,
    counters(appId) {
      const source = appId === undefined ? model.global : stateOf(appId).counters;
      return { ...source, errcodes: { ...source.errcodes } };
    },
    resetCounters() {
      model.resetCounters();
    },
    invalidateTokens(appId) {
      model.invalidateTokens(stateOf(appId));
    },
    issueClassicToken(appId) {
      const state = stateOf(appId);
      count(state, 'externalFetches');
      return model.issueClassic(state, now()).value;
    },
    isTokenValid(appId, token) {
      return alive(apps.get(appId)?.tokens.get(token), now());
    },
    issueTicket(appId, type = 'jsapi') {
      const state = stateOf(appId);
      // The types getticket hands out for the app's kind: another name would make a ticket no route answers.
      const types = state.corpId === undefined ? ['jsapi', 'wx_card'] : ['jsapi', 'agent_config'];
      if (typeof type !== 'string' || !types.includes(type)) {
        throw new TypeError(`issueTicket(appId, type): the type must be one the mock's getticket hands out for this app, ${types.map((name) => `'${name}'`).join(' or ')} (got ${typeof type === 'string' ? `'${type}'` : typeof type})`);
      }
      if (type === 'jsapi' && state.app.jsapiTicket !== undefined) throw new Error(`the mock app ${appId} has a fixed jsapiTicket: it has no other jsapi ticket to issue`);
      count(state, 'externalFetches');
      return model.newTicket(state, type, now()).value;
    },
    isTicketValid(appId, ticket) {
      const state = apps.get(appId);
      return state !== undefined && model.ticketAlive(state, ticket, now());
    },
    setLatency(ms) {
      if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) throw new TypeError(`setLatency(ms) must be given a number >= 0 (got ${typeof ms})`);
      latencyMs = ms;
    },
    injectFault(fault) {
      faults.inject(fault);
    },
    clearFaults() {
      faults.clear();
    },
    setIpAllowed(appId, allowed) {
      stateOf(appId).ipAllowed = allowed;
    },
    advanceClock(seconds) {
      model.advanceClock(seconds);
      openPlatform.pushDue();
    },
    createComponent: (overrides) => openPlatform.createComponent(overrides),
    setComponentCallback: (appId, url) => openPlatform.setCallback(appId, url),
    pushVerifyTicket: (appId) => openPlatform.pushVerifyTicket(appId),
    pushAuthorized: (appId, authorization) => openPlatform.pushAuthorized(appId, authorization),
    issueVerifyTicket: (appId) => openPlatform.issueVerifyTicket(appId),
    pushesSettled: () => openPlatform.settled(),
    authorize: (appId, authorizeOptions) => openPlatform.authorize(appId, authorizeOptions),
    authorizeMany: (appId, count) => openPlatform.authorizeMany(appId, count),
    revokeAuthorization: (appId) => openPlatform.revoke(appId),
    authorizerRefreshToken: (appId) => openPlatform.refreshTokenOf(appId),
    now,
    async close() {
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // server.close() waits for open connections; hanging and trickling answers would keep it forever.
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
  return mock;
}
