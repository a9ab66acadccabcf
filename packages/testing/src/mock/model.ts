import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

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
  /**
   * WeCom jsapi tickets (`get_jsapi_ticket` and `ticket/get` together) one agent may fetch an hour;
   * over it WeCom answers 45009 and blocks the agent's tickets for 60 minutes. WeCom's is 100
   * (developer.work.weixin.qq.com/document/path/90454). @default 100
   */
  workTicketPerHour?: number;
  /** WeCom jsapi tickets all the agents of one corp may fetch an hour. WeCom's is 400. @default 400 */
  workCorpTicketPerHour?: number;
  /** WeCom `gettoken` calls of one corp a minute (WeCom's base rate for any API); over it 45011. @default 10000 */
  workTokenPerMinute?: number;
  /** WeCom `gettoken` calls of one corp an hour; over it 45009, and blocked for 60 minutes. @default 150000 */
  workTokenPerHour?: number;
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
  /** `issueClassicToken()` and `issueTicket()` calls: another program's fetches. */
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
  /** Requests to cgi-bin/component/api_component_token, whatever the answer. */
  componentTokenRequests: number;
  /** Requests to cgi-bin/component/api_authorizer_token, whatever the answer (counted for the authorizer named in the body). */
  authorizerTokenRequests: number;
  /** Requests to cgi-bin/component/api_query_auth, whatever the answer. */
  queryAuthRequests: number;
  /** component_verify_ticket pushes sent to the component's callback URL (answered or not). */
  verifyTicketPushes: number;
  /** Every non-zero errcode answered, by code. */
  errcodes: Record<string, number>;
}

export interface IssuedToken {
  value: string;
  kind: 'classic' | 'stable';
  expiresAt: number;
  /** Set when the token was superseded or invalidated before its expiry: from then on it answers 40001. */
  diesAt?: number;
}

/** A JS-SDK ticket as WeChat holds it. */
export interface IssuedTicket {
  value: string;
  type: string;
  expiresAt: number;
  /** Set when another fetch superseded the ticket: from then on wx.config refuses it. */
  diesAt?: number;
}

export interface AppState {
  app: MockApp;
  ipAllowed: boolean;
  tokens: Map<string, IssuedToken>;
  /** Tokens that have not been killed yet, so superseding does not walk every token ever issued. */
  undead: Set<IssuedToken>;
  classicCurrent?: IssuedToken;
  stableCurrent?: IssuedToken;
  lastForceRefreshAt?: number;
  /** The current ticket of each type. */
  tickets: Map<string, IssuedTicket>;
  /** Every ticket handed out, by value, while it may still be alive: what `isTicketValid()` reads. */
  issuedTickets: Map<string, IssuedTicket>;
  /** Quota use by `name:period`. */
  usage: Map<string, number>;
  counters: MockCounters;
  /** Set when the app is an open-platform component (third-party platform). */
  component?: ComponentState;
  /** Set when the app is authorized to a component: its tokens come from api_query_auth / api_authorizer_token. */
  authorizer?: AuthorizerState;
  /** Set for a WeCom agent (its corp): its tokens are WeCom's (qyapi), unknown to the official account APIs and back. */
  corpId?: string;
}

/**
 * Whose APIs a business path belongs to: official accounts and mini programs (api.weixin.qq.com),
 * WeCom (qyapi.weixin.qq.com), or both (paths the two services each have).
 */
export type Service = 'app' | 'work' | 'both';

/** An open-platform component as WeChat holds it. */
export interface ComponentState {
  /** Callback token and key (WeChat's console), for the encrypted pushes. */
  token: string;
  encodingAESKey: string;
  /** Where pushes go; none until a test registers one. */
  callbackUrl?: string;
  /** Tickets pushed, by value: each is accepted for 12 h after its push. */
  tickets: Map<string, number>;
  /** Mock time of the next scheduled push. */
  nextPushAt?: number;
  /** pre_auth_code → its expiry. */
  preAuthCodes: Map<string, number>;
  /** authorization_code → what it grants, until used or expired. */
  authCodes: Map<string, { authorizerAppId: string; expiresAt: number }>;
}

/** An authorizer (an official account or mini program that authorized a component). */
export interface AuthorizerState {
  componentAppId: string;
  /** The one refresh token WeChat accepts now; undefined once the account revoked the authorization. */
  refreshToken: string | undefined;
  funcInfo: number[];
  authTime: number;
}

/** WeChat's own errmsg texts (as seen live; see /work/shared/wechat-api.md), without the trailing rid. */
export const ERRMSG: Record<number, string> = {
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
  61003: 'component is not authorized by this account',
  61004: 'access clientip is not registered',
  61005: 'component ticket is expired',
  61006: 'component ticket is invalid',
  61007: 'api is unauthorized to component',
  61009: 'code is invalid',
  61010: 'code is expired',
  61011: 'invalid component',
  61023: 'refresh_token is invalid',
  60020: 'not allow to access from your ip',
};

export const TOKEN_REJECTIONS = new Set([40001, 40014, 42001, 41001]);
const MINUTE_MS = 60_000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
// WeChat's daily quotas reset at midnight Beijing time.
const BEIJING_OFFSET_MS = 8 * 3_600_000;
/** The first template msgid is above 2^53 on purpose: a client that parses it as a JS number loses digits. */
export const FIRST_MSGID = 2_000_000_000_000_000_000n;

export function emptyCounters(): MockCounters {
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
    componentTokenRequests: 0,
    authorizerTokenRequests: 0,
    queryAuthRequests: 0,
    verifyTicketPushes: 0,
    errcodes: {},
  };
}

/** `<2-digit seq>_` and 131 base64url characters: the shape and length of a real access_token. */
export function tokenValue(seq: number): string {
  return `${seq}_${randomBytes(98).toString('base64url')}`;
}

/** Thrown by handlers: the answer is WeChat's error JSON with this errcode. */
export class WeChatError {
  constructor(
    readonly errcode: number,
    readonly errmsg?: string,
  ) {}
}

/** One request as the handlers see it. `t` is read once, so every `expires_in` of one answer agrees with itself. */
export interface Call {
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

export type Answer = { json: string } | { image: Buffer };
export type Handler = (call: Call) => Answer;

export function alive(token: IssuedToken | undefined, t: number): token is IssuedToken {
  return token !== undefined && t < token.expiresAt && (token.diesAt === undefined || t < token.diesAt);
}

export function liveUntil(token: { expiresAt: number; diesAt?: number }): number {
  return Math.min(token.expiresAt, token.diesAt ?? Infinity);
}

/** The caller's address in WeChat's 40164 text: "invalid ip A ipv6 ::ffff:A, not in whitelist". */
export function ipMessage(req: IncomingMessage): string {
  const address = req.socket.remoteAddress ?? '127.0.0.1';
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  const v6 = v4.includes(':') ? v4 : `::ffff:${v4}`;
  return `invalid ip ${v4} ipv6 ${v6}, not in whitelist`;
}

/** The model's settings, in ms, resolved from the mock's options. */
export interface ModelConfig {
  graceMs: number;
  tokenTtlMs: number;
  ticketTtlMs: number;
  quotas: Required<MockQuotas>;
  baseNow: () => number;
}

/**
 * WeChat's state as the mock models it: apps and their tokens (issue, grace, supersede, expiry),
 * tickets, quotas by Beijing day and minute, counters, and the clock they all read. No HTTP here:
 * routes.ts turns requests into calls on this, server.ts serves them.
 */
export class WeChatModel {
  readonly apps = new Map<string, AppState>();
  /** WeCom agents by corp: gettoken finds the agent by its secret. */
  readonly corps = new Map<string, AppState[]>();
  readonly tokenOwners = new Map<string, AppState>();
  readonly usedCodes = new Set<string>();
  /** Quota use of a WeCom corp as a whole (all its agents), by `name:period:slot`. */
  readonly corpUsage = new Map<string, Map<string, number>>();
  readonly global = emptyCounters();
  tokenSeq = 10;
  private msgid = FIRST_MSGID;
  private offsetMs = 0;

  constructor(readonly config: ModelConfig) {}

  now(): number {
    return this.config.baseNow() + this.offsetMs;
  }

  /** Only forward: WeChat's clock never runs back, and expiry checks assume it does not. */
  advanceClock(seconds: number): void {
    if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 0) {
      throw new TypeError(`advanceClock(seconds) must be given a number >= 0 (got ${typeof seconds})`);
    }
    this.offsetMs += seconds * 1000;
  }

  addApp(app: MockApp): void {
    if (!app || typeof app.appId !== 'string' || app.appId === '' || typeof app.secret !== 'string' || app.secret === '') {
      throw new TypeError('a mock app needs a non-empty appId and secret');
    }
    if (this.apps.has(app.appId)) throw new Error(`the mock already knows app ${app.appId}`);
    this.apps.set(app.appId, {
      app: { ...app },
      ipAllowed: true,
      tokens: new Map(),
      undead: new Set(),
      tickets: new Map(),
      issuedTickets: new Map(),
      usage: new Map(),
      counters: emptyCounters(),
    });
  }

  stateOf(appId: string): AppState {
    const state = this.apps.get(appId);
    if (!state) throw new Error(`the mock knows no app ${appId}`);
    return state;
  }

  count(state: AppState | undefined, field: Exclude<keyof MockCounters, 'errcodes'>, by = 1): void {
    this.global[field] += by;
    if (state) state.counters[field] += by;
  }

  countErrcode(state: AppState | undefined, errcode: number): void {
    if (errcode === 0) return;
    this.global.errcodes[errcode] = (this.global.errcodes[errcode] ?? 0) + 1;
    if (state) state.counters.errcodes[errcode] = (state.counters.errcodes[errcode] ?? 0) + 1;
    if (TOKEN_REJECTIONS.has(errcode)) this.count(state, 'rejectedCalls');
  }

  resetCounters(): void {
    Object.assign(this.global, emptyCounters());
    for (const state of this.apps.values()) state.counters = emptyCounters();
  }

  /**
   * Spends one unit of every listed quota, or none: a call refused for one limit does not eat into
   * the others. Days are Beijing days, hours and minutes wall-clock ones, all of the mock's clock. A
   * limit counts in the app's own usage unless it names another (a WeCom corp's, shared by its agents).
   * WeCom blocks a limit it refused for a whole period from the refusal, not until the next clock hour
   * (its rate-limit page: an hourly block lasts 60 minutes, a minute's 60 seconds).
   */
  spend(state: AppState, t: number, limits: [name: string, limit: number, period: 'day' | 'hour' | 'minute', usage?: Map<string, number>][]): void {
    const work = state.corpId !== undefined;
    const spent = limits.map(([name, limit, period, usage = state.usage]) => {
      const length = period === 'day' ? DAY_MS : period === 'hour' ? HOUR_MS : MINUTE_MS;
      const slot = Math.floor((t + (period === 'day' ? BEIJING_OFFSET_MS : 0)) / length);
      const key = `${name}:${period}:${slot}`;
      const blockKey = `${name}:${period}:blocked-until`;
      if ((usage.get(key) ?? 0) >= limit || (work && t < (usage.get(blockKey) ?? 0))) {
        if (work && t >= (usage.get(blockKey) ?? 0)) usage.set(blockKey, t + length);
        // WeCom words its 45009 as a frequency limit, not a daily quota.
        throw period === 'minute' ? new WeChatError(45011) : new WeChatError(45009, work ? 'api freq out of limit' : undefined);
      }
      return [usage, key] as const;
    });
    for (const [usage, key] of spent) usage.set(key, (usage.get(key) ?? 0) + 1);
  }

  /** The quota use of the corp a WeCom agent belongs to. */
  corpUsageOf(state: AppState): Map<string, number> {
    const corpId = state.corpId ?? '';
    let usage = this.corpUsage.get(corpId);
    if (!usage) this.corpUsage.set(corpId, (usage = new Map()));
    return usage;
  }

  newToken(state: AppState, kind: IssuedToken['kind'], t: number): IssuedToken {
    // Real tokens start with a two-digit number that changes over time; cycle it so prefixes vary too.
    this.tokenSeq = this.tokenSeq >= 99 ? 10 : this.tokenSeq + 1;
    const token: IssuedToken = { value: tokenValue(this.tokenSeq), kind, expiresAt: t + this.config.tokenTtlMs };
    state.tokens.set(token.value, token);
    state.undead.add(token);
    this.tokenOwners.set(token.value, state);
    return token;
  }

  /** Sets a token's death time (never later than one already set), and forgets it once it is dead for good. */
  kill(state: AppState, token: IssuedToken, at: number, t: number): void {
    token.diesAt = Math.min(token.diesAt ?? Infinity, at);
    if (Math.min(token.diesAt, token.expiresAt) <= t) state.undead.delete(token);
  }

  /** Every access token of the app dies now; a token already past its expiry keeps answering 42001. */
  invalidateTokens(state: AppState): void {
    const t = this.now();
    for (const token of [...state.undead]) {
      if (t < token.expiresAt) this.kill(state, token, t, t);
      else state.undead.delete(token);
    }
  }

  /**
   * A classic fetch: the immediately previous classic token lives min(its expiry, now + grace);
   * any older classic token dies now. Stable tokens are untouched (the endpoints are isolated).
   */
  issueClassic(state: AppState, t: number): IssuedToken {
    const previous = state.classicCurrent;
    const token = this.newToken(state, 'classic', t);
    for (const old of [...state.undead]) {
      if (old.kind !== 'classic' || old === token) continue;
      this.kill(state, old, old === previous ? Math.min(old.expiresAt, t + this.config.graceMs) : t, t);
    }
    state.classicCurrent = token;
    return token;
  }

  /**
   * A stable token. A normal rotation leaves the old token its own remaining life (old and new
   * overlap, as WeChat rotates 5 minutes early); a forced refresh ends the earlier stable tokens at once:
   * WeChat's docs promise the overlap to normal mode only, and say a forced refresh "makes the token
   * fetched before invalid" (it is meant for a leaked token).
   */
  issueStable(state: AppState, force: boolean, t: number): IssuedToken {
    const token = this.newToken(state, 'stable', t);
    if (force) {
      for (const old of [...state.undead]) {
        if (old.kind === 'stable' && old !== token) this.kill(state, old, t, t);
      }
    }
    state.stableCurrent = token;
    return token;
  }

  /** The credential checks of both token endpoints, in WeChat's order. */
  credentials(call: Call, appid: unknown, secret: unknown, grantType: unknown): AppState {
    if (grantType !== 'client_credential') throw new WeChatError(40002);
    if (typeof appid !== 'string' || appid === '') throw new WeChatError(41002);
    if (typeof secret !== 'string' || secret === '') throw new WeChatError(41004);
    const state = this.apps.get(appid);
    if (!state) throw new WeChatError(40013);
    if (state.app.secret !== secret) throw new WeChatError(40125);
    if (!state.ipAllowed) throw new WeChatError(40164, ipMessage(call.req));
    return state;
  }

  /** The app that owns a token, or the errcode WeChat answers for it at time `t`. */
  ownerOfToken(value: string | null, t: number): AppState {
    if (!value) throw new WeChatError(41001);
    const state = this.tokenOwners.get(value);
    const token = state?.tokens.get(value);
    if (!state || !token) throw new WeChatError(40014);
    // Killed before its expiry: superseded or invalidated (40001). Past its expiry: 42001, even if it
    // was also superseded later on, since its natural end came first. WeCom has no "not latest": a
    // token it ended early is an invalid one there (40014).
    if (token.diesAt !== undefined && t >= token.diesAt && token.diesAt < token.expiresAt) throw new WeChatError(state.corpId !== undefined ? 40014 : 40001);
    if (t >= token.expiresAt) throw new WeChatError(42001);
    return state;
  }

  /**
   * The app that owns a business call's access_token, or the errcode WeChat answers. A token works only
   * on its own service's APIs: a WeCom token on api.weixin.qq.com, an official account's on qyapi, or a
   * component_access_token sent as an access_token is a token that API never issued (40014).
   */
  authorize(call: Call, service: Service = 'app'): AppState {
    const value = call.query.get('access_token');
    const owner = value ? this.tokenOwners.get(value) : undefined;
    const work = owner?.corpId !== undefined;
    if (owner && (owner.component || (service === 'app' && work) || (service === 'work' && !work))) {
      throw new WeChatError(40014);
    }
    const state = this.ownerOfToken(value, call.t);
    // An authorizer that granted the component no permission set: WeChat refuses the component's calls for it.
    if (state.authorizer && state.authorizer.funcInfo.length === 0) throw new WeChatError(61007);
    return state;
  }

  /**
   * A ticket of `type`: the same while it lives, a new one after; an app's fixed jsapi ticket always.
   * An official account's answer says `expires_in` 7200 (the ticket TTL) every time, as WeChat's does;
   * WeCom's says what is left. WeCom counts its tickets by the hour, for the agent and for the whole corp.
   */
  ticket(state: AppState, type: string, t: number): Answer {
    this.count(state, 'ticketRequests');
    const { quotas } = this.config;
    this.spend(
      state,
      t,
      state.corpId === undefined
        ? [['ticket', quotas.ticket, 'day']]
        : [
            ['ticket', quotas.workTicketPerHour, 'hour'],
            ['ticket', quotas.workCorpTicketPerHour, 'hour', this.corpUsageOf(state)],
          ],
    );
    let current = state.tickets.get(type);
    const fixed = type === 'jsapi' ? state.app.jsapiTicket : undefined;
    if (!current || t >= liveUntil(current) || (fixed !== undefined && current.value !== fixed)) current = this.newTicket(state, type, t);
    // getticket answers the full ticket life whenever it is asked, also for a ticket it handed out before
    // and that ends sooner (developers.weixin.qq.com community: "有效期内重新获取到的ticket值不变，返回结果的
    // expires_in字段，始终是7200"). A client that stores the answer's expires_in holds a ticket past its end.
    const expiresIn = state.corpId === undefined ? this.config.ticketTtlMs / 1000 : Math.floor((current.expiresAt - t) / 1000);
    return { json: JSON.stringify({ errcode: 0, errmsg: 'ok', ticket: current.value, expires_in: expiresIn }) };
  }

  /**
   * A new ticket of `type`, current from now: the one it replaces lives min(its expiry, now + grace) more,
   * as a superseded access token does; any older one dies now. What a fetch WeChat answers with a new
   * ticket does, another program's (`issueTicket()`) or the first after the current one expired.
   */
  newTicket(state: AppState, type: string, t: number): IssuedTicket {
    const fixed = type === 'jsapi' ? state.app.jsapiTicket : undefined;
    const previous = state.tickets.get(type);
    for (const [value, old] of state.issuedTickets) {
      if (old.type !== type) continue;
      old.diesAt = Math.min(old.diesAt ?? Infinity, old === previous ? t + this.config.graceMs : t);
      if (liveUntil(old) <= t) state.issuedTickets.delete(value);
    }
    const ticket: IssuedTicket = { value: fixed ?? randomBytes(64).toString('base64url'), type, expiresAt: t + this.config.ticketTtlMs };
    state.tickets.set(type, ticket);
    state.issuedTickets.set(ticket.value, ticket);
    return ticket;
  }

  /** Whether `wx.config` would take `value` now: a ticket of the app's, not expired nor superseded past its grace. */
  ticketAlive(state: AppState, value: string, t: number): boolean {
    const ticket = state.issuedTickets.get(value);
    return ticket !== undefined && t < liveUntil(ticket);
  }

  /** msgid is a 64-bit integer: written by hand, since JSON.stringify cannot write a BigInt exactly. */
  nextMsgid(): string {
    this.msgid += 1n;
    return this.msgid.toString();
  }
}

/** WeChat's error shape: HTTP 200, errmsg ending in " rid: 8hex-8hex-8hex". */
export function errorBody(errcode: number, errmsg = ERRMSG[errcode] ?? 'unknown error'): string {
  const rid = [0, 1, 2].map(() => randomBytes(4).toString('hex')).join('-');
  return JSON.stringify({ errcode, errmsg: `${errmsg} rid: ${rid}` });
}
