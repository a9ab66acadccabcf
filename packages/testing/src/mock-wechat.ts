import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/** An app (official account or mini program) the mock knows. */
export interface MockApp {
  appId: string;
  secret: string;
  /** A fixed jsapi ticket, for signature vectors: `type=jsapi` always answers it. Default: a random ticket per ticket lifetime. */
  jsapiTicket?: string;
}

/** A WeCom agent the mock knows. */
export interface MockWorkApp {
  corpId: string;
  agentId: string;
  secret: string;
}

/** Call limits per app, as WeChat enforces them. Days start at 00:00 Beijing time (UTC+8) of the mock's clock. */
export interface MockQuotas {
  /** `cgi-bin/token` calls a day. WeChat's is 2000 (200 for test accounts). @default 2000 */
  token?: number;
  /** `cgi-bin/stable_token` calls a day. @default 500000 */
  stableToken?: number;
  /** `cgi-bin/stable_token` calls a minute; over it WeChat answers 45011. @default 10000 */
  stableTokenPerMinute?: number;
  /** `stable_token` calls with `force_refresh: true` a day. @default 20 */
  forceRefresh?: number;
  /** `cgi-bin/ticket/getticket` calls a day. @default 100000 */
  ticket?: number;
}

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
}

/** Ways to answer badly, for fault tests. */
export type MockFaultKind =
  /** That status with a short HTML body, as a gateway in front of WeChat answers. */
  | 'http-500'
  | 'http-502'
  /** 200 with an HTML page (a captive portal, a proxy's login page). */
  | 'html'
  /** 200, correctly framed (Content-Length matches), but the JSON is cut in half. */
  | 'truncated-json'
  /** 200, valid JSON of the wrong types: `{"access_token":123,"expires_in":"7200"}`. */
  | 'wrong-types'
  /** 200, `{"access_token":"","expires_in":7200}` (a ticket endpoint gets an empty ticket). */
  | 'empty-token'
  /** 200, `sizeBytes` of JSON-looking data that never closes. */
  | 'huge'
  /** No answer at all: headers are never sent. `close()` cuts it. */
  | 'hang'
  /** Headers, then one byte every `intervalMs`, forever. `close()` cuts it. */
  | 'slow-body'
  /** Headers and part of the body, then the connection is destroyed. */
  | 'reset'
  /** A WeChat error: `{"errcode": errcode, "errmsg": "… rid: …"}`, HTTP 200. */
  | 'errcode'
  /** A seeded random mix of all of the above and of malformed answers, now and then a valid one. */
  | 'fuzz';

/** A fault queued with `injectFault()`: it answers the next `times` requests whose path matches, before normal handling. */
export interface MockFault {
  kind: MockFaultKind;
  /** e.g. `cgi-bin/token` (leading slash optional). Default: any path. */
  path?: string;
  /** How many matching requests it answers; `Infinity` until `clearFaults()`. @default 1 */
  times?: number;
  /** For `errcode`. @default -1 (system error) */
  errcode?: number;
  /** For `huge`, in bytes. @default 5 MiB */
  sizeBytes?: number;
  /** For `slow-body`: ms between bytes. @default 200 */
  intervalMs?: number;
  /** For `fuzz`: seed of the answers' random sequence, so a failing run can be replayed. @default 1 */
  seed?: number;
}

/** What the mock has seen, for one app or summed over all of them. A snapshot: later calls do not change it. */
export interface MockCounters {
  /** Every request but `/__mock/` control calls, faulted ones included. */
  requests: number;
  /** Every request to cgi-bin/token (and WeCom's cgi-bin/gettoken), successful or not, faulted or not. */
  classicTokenRequests: number;
  /** Every request to cgi-bin/stable_token, successful or not, faulted or not. */
  stableTokenRequests: number;
  /** classic + stable. */
  tokenRequests: number;
  /** Distinct new tokens created by the token endpoints, force refreshes included; not by `issueClassicToken()`. */
  tokensIssued: number;
  /** cgi-bin/stable_token requests with `force_refresh: true`, whatever the answer. */
  forceRefreshes: number;
  /** `issueClassicToken()` calls: another program's fetches. */
  externalFetches: number;
  /** Ticket requests that reached the ticket logic (token accepted). */
  ticketRequests: number;
  /** Successful template sends. */
  templateSends: number;
  /** Successful subscribe-message sends (mini programs) and WeCom message sends. */
  messageSends: number;
  /** Images answered by wxa/getwxacodeunlimit. */
  wxaCodes: number;
  /** Business calls refused for their token: 40001, 40014, 42001, 41001. */
  rejectedCalls: number;
  /** Every non-zero errcode answered, by code. */
  errcodes: Record<string, number>;
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
  /** Stops the server; hanging and trickling answers are cut, so this never hangs. */
  close(): Promise<void>;
}

interface IssuedToken {
  value: string;
  kind: 'classic' | 'stable';
  expiresAt: number;
  /** Set when the token was superseded or invalidated before its expiry: from then on it answers 40001. */
  diesAt?: number;
}

interface AppState {
  app: MockApp;
  ipAllowed: boolean;
  tokens: Map<string, IssuedToken>;
  /** Tokens that have not been killed yet, so superseding does not walk every token ever issued. */
  undead: Set<IssuedToken>;
  classicCurrent?: IssuedToken;
  stableCurrent?: IssuedToken;
  lastForceRefreshAt?: number;
  tickets: Map<string, { value: string; expiresAt: number }>;
  /** Quota use by `name:period`. */
  usage: Map<string, number>;
  counters: MockCounters;
}

/** WeChat's own errmsg texts (as seen live; see /work/shared/wechat-api.md), without the trailing rid. */
const ERRMSG: Record<number, string> = {
  [-1]: 'system error',
  40001: 'invalid credential, access_token is invalid or not latest',
  40002: 'invalid grant_type',
  40003: 'invalid openid',
  40013: 'invalid appid',
  40014: 'invalid access_token',
  40029: 'invalid code',
  40037: 'invalid template_id',
  40097: 'invalid args',
  40125: 'invalid appsecret',
  40163: 'code been used',
  40169: 'invalid length for scene, or the data is not json string',
  41001: 'access_token missing',
  41002: 'appid missing',
  41004: 'appsecret missing',
  41008: 'missing code',
  42001: 'access_token expired',
  43002: 'require POST method',
  45009: 'reach max api daily quota limit',
  45011: 'api minute-quota reach limit  mustslower  retry next minute',
  47001: 'data format error',
  60020: 'not allow to access from your ip',
};

const TOKEN_REJECTIONS = new Set([40001, 40014, 42001, 41001]);
const TOKEN_PATHS = new Set(['cgi-bin/token', 'cgi-bin/stable_token', 'cgi-bin/gettoken']);
const FAULT_KINDS = new Set<MockFaultKind>([
  'http-500',
  'http-502',
  'html',
  'truncated-json',
  'wrong-types',
  'empty-token',
  'huge',
  'hang',
  'slow-body',
  'reset',
  'errcode',
  'fuzz',
]);
const MINUTE_MS = 60_000;
const DAY_MS = 86_400_000;
// WeChat's daily quotas reset at midnight Beijing time.
const BEIJING_OFFSET_MS = 8 * 3_600_000;
/** stable_token's normal mode hands out a new token once the current one has less than this left (WeChat rotates 5 min early). */
const STABLE_ROTATE_MS = 300_000;
/** Force refreshes closer together than this return the current token (WeChat's stable_token doc). */
const FORCE_REFRESH_SPACING_MS = 30_000;
const DEFAULTS = Object.freeze({
  host: '127.0.0.1',
  port: 0,
  graceSeconds: 300,
  tokenTtlSeconds: 7200,
  ticketTtlSeconds: 7200,
  latencyMs: 0,
  quotas: Object.freeze({ token: 2000, stableToken: 500_000, stableTokenPerMinute: 10_000, forceRefresh: 20, ticket: 100_000 }),
});
/** The first template msgid is above 2^53 on purpose: a client that parses it as a JS number loses digits. */
const FIRST_MSGID = 2_000_000_000_000_000_000n;

function emptyCounters(): MockCounters {
  return {
    requests: 0,
    classicTokenRequests: 0,
    stableTokenRequests: 0,
    tokenRequests: 0,
    tokensIssued: 0,
    forceRefreshes: 0,
    externalFetches: 0,
    ticketRequests: 0,
    templateSends: 0,
    messageSends: 0,
    wxaCodes: 0,
    rejectedCalls: 0,
    errcodes: {},
  };
}

/** A JSON object body, or undefined for anything else (a form body, an array, nothing). */
function jsonObject(body: string): Record<string, unknown> | undefined {
  try {
    const parsed = JSON.parse(body) as unknown;
    return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** `<2-digit seq>_` and 131 base64url characters: the shape and length of a real access_token. */
function tokenValue(seq: number): string {
  return `${seq}_${randomBytes(98).toString('base64url')}`;
}

/** A 1×1 PNG, what getwxacodeunlimit answers (real codes are larger, the same kind of bytes). */
const TINY_PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==',
  'base64',
);

/** mulberry32: a small seeded PRNG, so fuzz runs replay exactly. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What a fuzz answer does: a JSON or text body with a status, or one of the transport faults. */
type FuzzAnswer = { status: number; body: string; type?: string } | { fault: 'hang' | 'slow-body' | 'reset' | 'huge' };

/**
 * Random answers in the shapes that break clients: valid JSON with wrong types or missing fields,
 * empty and odd tokens, non-object JSON, errcodes of every kind, HTML, truncation, odd statuses,
 * huge bodies, a trickle, a reset, no answer at all; and now and then a valid one.
 */
function fuzzAnswer(random: () => number, tokenPath: boolean): FuzzAnswer {
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)]!;
  const token = () => `${Math.floor(random() * 90 + 10)}_${randomBytes(40).toString('base64url')}`;
  const oddValues = [null, true, 0, -1, 1.5, 1e21, '', ' ', '7200', [], {}, ['x'], { access_token: 'x' }, 'a b', 'a\u0000b', '令牌', 'x'.repeat(5000)];
  const kind = Math.floor(random() * 14);
  switch (kind) {
    case 0:
      return tokenPath
        ? { status: 200, body: JSON.stringify({ access_token: token(), expires_in: 7200 }) }
        : { status: 200, body: `{"errcode":0,"errmsg":"ok","msgid":${Math.floor(random() * 1e9)}}` };
    case 1:
      return { status: 200, body: JSON.stringify({ access_token: pick(oddValues), expires_in: 7200 }) };
    case 2:
      return { status: 200, body: JSON.stringify({ access_token: token(), expires_in: pick(oddValues) }) };
    case 3:
      return { status: 200, body: JSON.stringify(pick([{}, { expires_in: 7200 }, { access_token: token() }, { errmsg: 'ok' }, { errcode: 0 }])) };
    case 4:
      return { status: 200, body: JSON.stringify(pick([[], 'access_token', 123, null, true, [{ access_token: token(), expires_in: 7200 }]])) };
    case 5:
      return { status: 200, body: JSON.stringify({ errcode: pick([-1, 40001, 40013, 40125, 45009, 99999, 1.5, '40001', null]), errmsg: pick(['err rid: 1-2-3', '', 7]) }) };
    case 6:
      return { status: 200, body: '<html><head><title>502</title></head><body>gateway</body></html>', type: 'text/html' };
    case 7: {
      const full = JSON.stringify({ access_token: token(), expires_in: 7200 });
      return { status: 200, body: full.slice(0, Math.floor(random() * (full.length - 1))) };
    }
    case 8:
      return { status: pick([301, 302, 400, 403, 404, 429, 500, 502, 503, 504]), body: pick(['', 'error', '{"errcode":-1,"errmsg":"busy"}', '<h1>error</h1>']) };
    case 9:
      return { status: 200, body: pick(['', ' ', '\u0000\u0001', '{"access_token":"x",,}', 'null', '{"a":' + '['.repeat(2000)]) };
    case 10:
      return { fault: 'huge' };
    case 11:
      return { fault: 'slow-body' };
    case 12:
      return { fault: 'reset' };
    default:
      return { fault: 'hang' };
  }
}

/** Thrown by handlers: the answer is WeChat's error JSON with this errcode. */
class WeChatError {
  constructor(
    readonly errcode: number,
    readonly errmsg?: string,
  ) {}
}

/** One request as the handlers see it. `t` is read once, so every `expires_in` of one answer agrees with itself. */
interface Call {
  req: IncomingMessage;
  path: string;
  query: URLSearchParams;
  body: string;
  /** The body as a JSON object, or undefined when it is not one. */
  json: Record<string, unknown> | undefined;
  t: number;
  /** The app the request is attributed to in the counters, if it names one. */
  owner: AppState | undefined;
}

type Answer = { json: string } | { image: Buffer };
type Handler = (call: Call) => Answer;
type QueuedFault = MockFault & { path: string | undefined; left: number; random?: () => number };

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
  const graceMs = (options.graceSeconds ?? DEFAULTS.graceSeconds) * 1000;
  const tokenTtlMs = (options.tokenTtlSeconds ?? DEFAULTS.tokenTtlSeconds) * 1000;
  const ticketTtlMs = (options.ticketTtlSeconds ?? DEFAULTS.ticketTtlSeconds) * 1000;
  // A TTL shorter than twice the rotation window would make normal mode hand out a new token on every
  // call; rotate at half the TTL then, so a short-TTL test still sees "same token while valid".
  const stableRotateMs = Math.min(STABLE_ROTATE_MS, tokenTtlMs / 2);
  const quotas = { ...DEFAULTS.quotas, ...options.quotas };
  const baseNow = options.now ?? Date.now;
  const initialLatencyMs = options.latencyMs ?? DEFAULTS.latencyMs;
  let offsetMs = 0;
  let latencyMs = initialLatencyMs;
  let faults: QueuedFault[] = [];
  const apps = new Map<string, AppState>();
  /** WeCom agents by corp: gettoken finds the agent by its secret. */
  const corps = new Map<string, AppState[]>();
  const usedCodes = new Set<string>();
  const tokenOwners = new Map<string, AppState>();
  const global = emptyCounters();
  let tokenSeq = 10;
  let msgid = FIRST_MSGID;
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();

  const now = () => baseNow() + offsetMs;

  function addApp(app: MockApp): void {
    if (!app || typeof app.appId !== 'string' || app.appId === '' || typeof app.secret !== 'string' || app.secret === '') {
      throw new TypeError('a mock app needs a non-empty appId and secret');
    }
    if (apps.has(app.appId)) throw new Error(`the mock already knows app ${app.appId}`);
    apps.set(app.appId, {
      app: { ...app },
      ipAllowed: true,
      tokens: new Map(),
      undead: new Set(),
      tickets: new Map(),
      usage: new Map(),
      counters: emptyCounters(),
    });
  }
  for (const app of options.apps ?? []) addApp(app);

  function stateOf(appId: string): AppState {
    const state = apps.get(appId);
    if (!state) throw new Error(`the mock knows no app ${appId}`);
    return state;
  }

  function count(state: AppState | undefined, field: Exclude<keyof MockCounters, 'errcodes'>, by = 1): void {
    global[field] += by;
    if (state) state.counters[field] += by;
  }

  function countErrcode(state: AppState | undefined, errcode: number): void {
    if (errcode === 0) return;
    global.errcodes[errcode] = (global.errcodes[errcode] ?? 0) + 1;
    if (state) state.counters.errcodes[errcode] = (state.counters.errcodes[errcode] ?? 0) + 1;
    if (TOKEN_REJECTIONS.has(errcode)) count(state, 'rejectedCalls');
  }

  /**
   * Spends one unit of every listed quota, or none: a call refused for one limit does not eat into
   * the others. Days are Beijing days, minutes are wall-clock minutes, both of the mock's clock.
   */
  function spend(state: AppState, t: number, limits: [name: string, limit: number, period: 'day' | 'minute'][]): void {
    const keys = limits.map(([name, limit, period]) => {
      const slot = period === 'day' ? Math.floor((t + BEIJING_OFFSET_MS) / DAY_MS) : Math.floor(t / MINUTE_MS);
      const key = `${name}:${period}:${slot}`;
      if ((state.usage.get(key) ?? 0) >= limit) throw new WeChatError(period === 'minute' ? 45011 : 45009);
      return key;
    });
    for (const key of keys) state.usage.set(key, (state.usage.get(key) ?? 0) + 1);
  }

  function newToken(state: AppState, kind: IssuedToken['kind'], t: number): IssuedToken {
    // Real tokens start with a two-digit number that changes over time; cycle it so prefixes vary too.
    tokenSeq = tokenSeq >= 99 ? 10 : tokenSeq + 1;
    const token: IssuedToken = { value: tokenValue(tokenSeq), kind, expiresAt: t + tokenTtlMs };
    state.tokens.set(token.value, token);
    state.undead.add(token);
    tokenOwners.set(token.value, state);
    return token;
  }

  /** Sets a token's death time (never later than one already set), and forgets it once it is dead for good. */
  function kill(state: AppState, token: IssuedToken, at: number, t: number): void {
    token.diesAt = Math.min(token.diesAt ?? Infinity, at);
    if (Math.min(token.diesAt, token.expiresAt) <= t) state.undead.delete(token);
  }

  function alive(token: IssuedToken | undefined, t: number): token is IssuedToken {
    return token !== undefined && t < token.expiresAt && (token.diesAt === undefined || t < token.diesAt);
  }

  function liveUntil(token: IssuedToken): number {
    return Math.min(token.expiresAt, token.diesAt ?? Infinity);
  }

  /**
   * A classic fetch: the immediately previous classic token lives min(its expiry, now + grace);
   * any older classic token dies now. Stable tokens are untouched (the endpoints are isolated).
   */
  function issueClassic(state: AppState, t: number): IssuedToken {
    const previous = state.classicCurrent;
    const token = newToken(state, 'classic', t);
    for (const old of [...state.undead]) {
      if (old.kind !== 'classic' || old === token) continue;
      kill(state, old, old === previous ? Math.min(old.expiresAt, t + graceMs) : t, t);
    }
    state.classicCurrent = token;
    return token;
  }

  /**
   * A stable token. A normal rotation leaves the old token its own remaining life (old and new
   * overlap, as WeChat rotates 5 minutes early); a forced refresh ends the earlier stable tokens after
   * the grace window at most.
   */
  function issueStable(state: AppState, force: boolean, t: number): IssuedToken {
    const token = newToken(state, 'stable', t);
    if (force) {
      for (const old of [...state.undead]) {
        if (old.kind === 'stable' && old !== token) kill(state, old, Math.min(old.expiresAt, t + graceMs), t);
      }
    }
    state.stableCurrent = token;
    return token;
  }

  /** The caller's address in WeChat's 40164 text: "invalid ip A ipv6 ::ffff:A, not in whitelist". */
  function ipMessage(req: IncomingMessage): string {
    const address = req.socket.remoteAddress ?? '127.0.0.1';
    const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
    const v6 = v4.includes(':') ? v4 : `::ffff:${v4}`;
    return `invalid ip ${v4} ipv6 ${v6}, not in whitelist`;
  }

  /** The credential checks of both token endpoints, in WeChat's order. */
  function credentials(call: Call, appid: unknown, secret: unknown, grantType: unknown): AppState {
    if (grantType !== 'client_credential') throw new WeChatError(40002);
    if (typeof appid !== 'string' || appid === '') throw new WeChatError(41002);
    if (typeof secret !== 'string' || secret === '') throw new WeChatError(41004);
    const state = apps.get(appid);
    if (!state) throw new WeChatError(40013);
    if (state.app.secret !== secret) throw new WeChatError(40125);
    if (!state.ipAllowed) throw new WeChatError(40164, ipMessage(call.req));
    return state;
  }

  /** The app that owns a business call's access_token, or the errcode WeChat answers. */
  function authorize(call: Call): AppState {
    const value = call.query.get('access_token');
    if (!value) throw new WeChatError(41001);
    const state = tokenOwners.get(value);
    const token = state?.tokens.get(value);
    if (!state || !token) throw new WeChatError(40014);
    // Killed before its expiry: superseded or invalidated (40001). Past its expiry: 42001, even if it
    // was also superseded later on, since its natural end came first.
    if (token.diesAt !== undefined && call.t >= token.diesAt && token.diesAt < token.expiresAt) throw new WeChatError(40001);
    if (call.t >= token.expiresAt) throw new WeChatError(42001);
    return state;
  }

  function requirePost(call: Call): void {
    if (call.req.method !== 'POST') throw new WeChatError(43002);
  }

  /** A ticket of `type`: the same while it lives, a new one after; an app's fixed jsapi ticket always. */
  function ticket(state: AppState, type: string, t: number): Answer {
    count(state, 'ticketRequests');
    spend(state, t, [['ticket', quotas.ticket, 'day']]);
    let current = state.tickets.get(type);
    const fixed = type === 'jsapi' ? state.app.jsapiTicket : undefined;
    if (!current || t >= current.expiresAt || (fixed !== undefined && current.value !== fixed)) {
      current = { value: fixed ?? randomBytes(64).toString('base64url'), expiresAt: t + ticketTtlMs };
      state.tickets.set(type, current);
    }
    const expiresIn = Math.floor((current.expiresAt - t) / 1000);
    return { json: JSON.stringify({ errcode: 0, errmsg: 'ok', ticket: current.value, expires_in: expiresIn }) };
  }

  /** msgid is a 64-bit integer: written by hand, since JSON.stringify cannot write a BigInt exactly. */
  function nextMsgid(): string {
    msgid += 1n;
    return msgid.toString();
  }

  const routes: Record<string, Handler> = {
    'cgi-bin/token': (call) => {
      const { query, t } = call;
      const state = credentials(call, query.get('appid'), query.get('secret'), query.get('grant_type'));
      spend(state, t, [['token', quotas.token, 'day']]);
      const token = issueClassic(state, t);
      count(state, 'tokensIssued');
      return { json: JSON.stringify({ access_token: token.value, expires_in: tokenTtlMs / 1000 }) };
    },
    'cgi-bin/stable_token': (call) => {
      requirePost(call);
      const { json: input, t } = call;
      // A form or non-JSON body carries nothing WeChat reads: it answers "appid missing".
      if (!input) throw new WeChatError(41002);
      const state = credentials(call, input.appid, input.secret, input.grant_type);
      const force = input.force_refresh === true;
      spend(state, t, [
        ['stable', quotas.stableTokenPerMinute, 'minute'],
        ['stable', quotas.stableToken, 'day'],
        ...(force ? [['force', quotas.forceRefresh, 'day'] as [string, number, 'day']] : []),
      ]);
      let token = state.stableCurrent;
      if (force) {
        const recent = state.lastForceRefreshAt !== undefined && t - state.lastForceRefreshAt < FORCE_REFRESH_SPACING_MS;
        if (!recent || !alive(token, t)) {
          token = issueStable(state, true, t);
          count(state, 'tokensIssued');
          state.lastForceRefreshAt = t;
        }
      } else if (!alive(token, t) || liveUntil(token) - t < stableRotateMs) {
        token = issueStable(state, false, t);
        count(state, 'tokensIssued');
      }
      const expiresIn = Math.floor((liveUntil(token!) - t) / 1000);
      return { json: JSON.stringify({ access_token: token!.value, expires_in: expiresIn }) };
    },
    'cgi-bin/ticket/getticket': (call) => {
      const state = authorize(call);
      const type = call.query.get('type') ?? '';
      if (type !== 'jsapi' && type !== 'wx_card') throw new WeChatError(40097);
      return ticket(state, type, call.t);
    },
    'cgi-bin/message/template/send': (call) => {
      requirePost(call);
      const state = authorize(call);
      const message = call.json;
      if (!message) throw new WeChatError(47001);
      if (typeof message.touser !== 'string' || message.touser === '') throw new WeChatError(40003);
      if (typeof message.template_id !== 'string' || message.template_id === '') throw new WeChatError(40037);
      if (!isPlainObject(message.data)) throw new WeChatError(47001);
      count(state, 'templateSends');
      return { json: `{"errcode":0,"errmsg":"ok","msgid":${nextMsgid()}}` };
    },
    'cgi-bin/gettoken': (call) => {
      const { query, t } = call;
      const corpId = query.get('corpid');
      const secret = query.get('corpsecret');
      if (!corpId) throw new WeChatError(40013);
      const agents = corps.get(corpId);
      if (!agents) throw new WeChatError(40013);
      // WeCom answers an unknown or wrong secret with 40001 ("invalid credential").
      const state = agents.find((agent) => agent.app.secret === secret);
      if (!secret || !state) throw new WeChatError(40001);
      if (!state.ipAllowed) throw new WeChatError(60020);
      spend(state, t, [['token', quotas.token, 'day']]);
      // gettoken hands back the current token while it is valid; a new one once it expired or died.
      let token = state.classicCurrent;
      if (!alive(token, t)) {
        token = newToken(state, 'classic', t);
        state.classicCurrent = token;
        count(state, 'tokensIssued');
      }
      const expiresIn = Math.floor((liveUntil(token) - t) / 1000);
      return { json: JSON.stringify({ errcode: 0, errmsg: 'ok', access_token: token.value, expires_in: expiresIn }) };
    },
    'cgi-bin/get_jsapi_ticket': (call) => ticket(authorize(call), 'jsapi', call.t),
    'cgi-bin/ticket/get': (call) => {
      const state = authorize(call);
      if (call.query.get('type') !== 'agent_config') throw new WeChatError(40097);
      return ticket(state, 'agent_config', call.t);
    },
    'cgi-bin/message/send': (call) => {
      requirePost(call);
      const state = authorize(call);
      const message = call.json ?? {};
      if (typeof message.msgtype !== 'string') throw new WeChatError(47001);
      if (!message.touser && !message.toparty && !message.totag) throw new WeChatError(40003);
      count(state, 'messageSends');
      return { json: JSON.stringify({ errcode: 0, errmsg: 'ok', invaliduser: '', msgid: `msg${nextMsgid()}` }) };
    },
    'cgi-bin/message/subscribe/send': (call) => {
      requirePost(call);
      const state = authorize(call);
      const message = call.json ?? {};
      if (typeof message.touser !== 'string' || message.touser === '') throw new WeChatError(40003);
      if (typeof message.template_id !== 'string' || message.template_id === '') throw new WeChatError(40037);
      if (!isPlainObject(message.data)) throw new WeChatError(47001);
      count(state, 'messageSends');
      return { json: `{"errcode":0,"errmsg":"ok","msgid":${nextMsgid()}}` };
    },
    'wxa/getwxacodeunlimit': (call) => {
      requirePost(call);
      const state = authorize(call);
      const scene = call.json?.scene;
      if (typeof scene !== 'string' || scene.length === 0 || scene.length > 32) throw new WeChatError(40169);
      count(state, 'wxaCodes');
      return { image: TINY_PNG };
    },
    'sns/jscode2session': (call) => {
      const { query } = call;
      const state = apps.get(query.get('appid') ?? '');
      if (!state) throw new WeChatError(40013);
      if (state.app.secret !== query.get('secret')) throw new WeChatError(40125);
      const code = query.get('js_code');
      if (!code) throw new WeChatError(41008);
      if (!code.startsWith('code-')) throw new WeChatError(40029);
      const used = `${state.app.appId}:${code}`;
      if (usedCodes.has(used)) throw new WeChatError(40163);
      usedCodes.add(used);
      const openid = `o${createHash('sha256').update(used).digest('base64url').slice(0, 27)}`;
      return { json: JSON.stringify({ openid, session_key: randomBytes(16).toString('base64') }) };
    },
    'cgi-bin/get_api_domain_ip': (call) => {
      authorize(call);
      return { json: JSON.stringify({ ip_list: ['101.226.103.0/25', '101.226.233.128/25', '58.247.206.128/25', '223.166.222.0/25'] }) };
    },
    'cgi-bin/getcallbackip': (call) => {
      authorize(call);
      return { json: JSON.stringify({ ip_list: ['101.226.103.0/25', '101.226.62.77', '101.226.62.78', '101.226.62.79'] }) };
    },
  };

  /** The app a request names (its token's owner, appid in the query or body, a WeCom corp + secret), for the counters. */
  function ownerOf(path: string, query: URLSearchParams, json: Record<string, unknown> | undefined): AppState | undefined {
    const token = query.get('access_token');
    if (token) return tokenOwners.get(token);
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
    }
  }

  function takeFault(path: string): QueuedFault | undefined {
    const index = faults.findIndex((fault) => fault.path === undefined || fault.path === path);
    if (index < 0) return undefined;
    const fault = faults[index]!;
    fault.left -= 1;
    if (fault.left <= 0) faults.splice(index, 1);
    return fault;
  }

  function later(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms);
    timers.add(timer);
  }

  function send(res: ServerResponse, status: number, body: string | Buffer, type = 'application/json; charset=utf-8'): void {
    res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  /** WeChat's error shape: HTTP 200, errmsg ending in " rid: 8hex-8hex-8hex". */
  function errorBody(errcode: number, errmsg = ERRMSG[errcode] ?? 'unknown error'): string {
    const rid = [0, 1, 2].map(() => randomBytes(4).toString('hex')).join('-');
    return JSON.stringify({ errcode, errmsg: `${errmsg} rid: ${rid}` });
  }

  function answerFault(fault: MockFault & { random?: () => number }, path: string, owner: AppState | undefined, res: ServerResponse): void {
    const isToken = TOKEN_PATHS.has(path);
    switch (fault.kind) {
      case 'http-500':
        send(res, 500, '<html><body><h1>500 Internal Server Error</h1></body></html>', 'text/html');
        return;
      case 'http-502':
        send(res, 502, '<html><body><h1>502 Bad Gateway</h1></body></html>', 'text/html');
        return;
      case 'html':
        send(res, 200, '<!DOCTYPE html><html><head><title>Portal</title></head><body>Please log in</body></html>', 'text/html');
        return;
      case 'truncated-json': {
        const full = isToken
          ? JSON.stringify({ access_token: tokenValue(tokenSeq), expires_in: tokenTtlMs / 1000 })
          : `{"errcode":0,"errmsg":"ok","msgid":${FIRST_MSGID}}`;
        send(res, 200, full.slice(0, Math.floor(full.length / 2)));
        return;
      }
      case 'wrong-types':
        send(res, 200, isToken ? '{"access_token":123,"expires_in":"7200"}' : '{"errcode":"0","errmsg":0,"msgid":[],"ticket":123,"expires_in":"7200"}');
        return;
      case 'empty-token':
        send(res, 200, isToken ? '{"access_token":"","expires_in":7200}' : '{"errcode":0,"errmsg":"ok","ticket":"","expires_in":7200}');
        return;
      case 'huge': {
        const size = fault.sizeBytes ?? 5 * 1024 * 1024;
        const head = Buffer.from('{"access_token":"').subarray(0, size);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': size });
        res.write(head);
        const chunk = Buffer.alloc(64 * 1024, 'a');
        let written = head.length;
        const pump = () => {
          while (written < size) {
            const piece = chunk.subarray(0, Math.min(chunk.length, size - written));
            written += piece.length;
            if (!res.write(piece)) return void res.once('drain', pump);
          }
          res.end();
        };
        pump();
        return;
      }
      case 'hang':
        return; // never answered; close() cuts the socket
      case 'slow-body': {
        res.writeHead(200, { 'content-type': 'application/json' });
        const interval = fault.intervalMs ?? 200;
        const drip = () => {
          if (res.destroyed) return;
          res.write(' ');
          later(interval, drip);
        };
        res.write('{');
        later(interval, drip);
        return;
      }
      case 'reset':
        // Content-Length promises more than is sent, so the client sees a body cut short, not an end.
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': 200 });
        res.write('{"access_token":"86_', () => later(5, () => res.socket?.destroy()));
        return;
      case 'errcode': {
        const errcode = fault.errcode ?? -1;
        countErrcode(owner, errcode);
        send(res, 200, errorBody(errcode));
        return;
      }
      case 'fuzz': {
        const answer = fuzzAnswer(fault.random ?? prng(fault.seed ?? 1), isToken);
        if ('fault' in answer) return answerFault({ kind: answer.fault, sizeBytes: 2 * 1024 * 1024, intervalMs: 50 }, path, owner, res);
        send(res, answer.status, answer.body, answer.type);
        return;
      }
    }
  }

  /** `times` over HTTP: JSON has no Infinity, so null, "Infinity" and -1 mean "until cleared". */
  function faultFromJson(input: Record<string, unknown>): MockFault {
    const times = input.times;
    const unlimited = times === null || times === 'Infinity' || times === -1;
    return { ...(input as unknown as MockFault), ...(unlimited ? { times: Infinity } : {}) };
  }

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
      'POST apps': () => mock.createApp(parse() as Partial<MockApp>),
      'POST invalidate': () => (mock.invalidateTokens(need()), { ok: true }),
      'POST issue-classic-token': () => ({ access_token: mock.issueClassicToken(need()) }),
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
    const fault = takeFault(path);
    const respond = () => {
      if (res.destroyed) return;
      if (fault) return answerFault(fault, path, owner, res);
      const route = routes[path];
      if (!route) return send(res, 404, `404 Not Found: no API /${path}\n`, 'text/plain; charset=utf-8');
      const call: Call = { req, path, query: url.searchParams, body, json, t: now(), owner };
      try {
        const answer = route(call);
        if ('image' in answer) send(res, 200, answer.image, 'image/png');
        else send(res, 200, answer.json);
      } catch (error) {
        if (!(error instanceof WeChatError)) throw error;
        countErrcode(owner, error.errcode);
        send(res, 200, errorBody(error.errcode, error.errmsg));
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
      corps.set(app.corpId, [...(corps.get(app.corpId) ?? []), stateOf(id)]);
      return app;
    },
    addApp,
    counters(appId) {
      const source = appId === undefined ? global : stateOf(appId).counters;
      return { ...source, errcodes: { ...source.errcodes } };
    },
    resetCounters() {
      Object.assign(global, emptyCounters());
      for (const state of apps.values()) state.counters = emptyCounters();
    },
    invalidateTokens(appId) {
      const state = stateOf(appId);
      const t = now();
      // A token already past its expiry keeps answering 42001: its natural end came first.
      for (const token of [...state.undead]) {
        if (t < token.expiresAt) kill(state, token, t, t);
        else state.undead.delete(token);
      }
    },
    issueClassicToken(appId) {
      const state = stateOf(appId);
      count(state, 'externalFetches');
      return issueClassic(state, now()).value;
    },
    isTokenValid(appId, token) {
      return alive(apps.get(appId)?.tokens.get(token), now());
    },
    setLatency(ms) {
      if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) throw new TypeError(`setLatency(ms) must be given a number >= 0 (got ${typeof ms})`);
      latencyMs = ms;
    },
    injectFault(fault) {
      if (!fault || !FAULT_KINDS.has(fault.kind)) throw new TypeError(`injectFault: unknown fault kind ${JSON.stringify(fault?.kind)}`);
      const times = fault.times ?? 1;
      if (typeof times !== 'number' || Number.isNaN(times) || times < 1) throw new TypeError('injectFault: times must be a number >= 1 or Infinity');
      if (fault.path !== undefined && typeof fault.path !== 'string') throw new TypeError('injectFault: path must be a string');
      const path = fault.path?.replace(/^\/+/, '');
      faults.push({ ...fault, path, left: times, random: fault.kind === 'fuzz' ? prng(fault.seed ?? 1) : undefined });
    },
    clearFaults() {
      faults = [];
    },
    setIpAllowed(appId, allowed) {
      stateOf(appId).ipAllowed = allowed;
    },
    advanceClock(seconds) {
      // Only forward: WeChat's clock never runs back, and expiry checks assume it does not.
      if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 0) {
        throw new TypeError(`advanceClock(seconds) must be given a number >= 0 (got ${typeof seconds})`);
      }
      offsetMs += seconds * 1000;
    },
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
