import { createHash, randomBytes } from 'node:crypto';
import type { TokenCallOptions } from './access-token.js';
import type { ClientCore } from './client-core.js';
import { ConfigError, isTokenRejection, type WeChatApiError } from './errors.js';
import type { KeySubject } from './token/entry.js';
import type { TokenManager } from './token/manager.js';
import { validateFetched } from './token/upstream.js';
import { listChoices, shownValue, typeName } from './validate.js';

/**
 * Where a JS-SDK helper holds its tickets' managers for a token service (see `ticketEntry` and
 * `invalidateTicket` in `@wxkit/core/internal`): a property of the instance, out of the public type.
 * `Symbol.for`, as the two entry points are bundled apart.
 */
export const kTicketManager = Symbol.for('wxkit.internal.ticketManager');

/** Ticket types of cgi-bin/ticket/getticket. */
export type TicketType = 'jsapi' | 'wx_card';

/** Input of {@link Jssdk.buildConfig}. */
export interface JssdkConfigInput {
  /**
   * The page's URL as its JavaScript reads it (`location.href`, sent to the server as it is): query and
   * non-ASCII characters percent-encoded, as WeChat's client signs them, not decoded as an address bar
   * shows them (a URL with a non-ASCII character, a space or a control character before its `#` is a
   * ConfigError). Anything after `#` is dropped before signing.
   */
  url: string;
  jsApiList: string[];
  /** @default false */
  debug?: boolean;
  /** Open tags such as `wx-open-launch-weapp`. */
  openTagList?: string[];
  /** Fixed nonce, for reproducible signatures in tests. Default: 16 random characters. */
  nonceStr?: string;
  /** Fixed unix time in seconds, for reproducible signatures. Default: now. */
  timestamp?: number;
}

/** What `wx.config()` takes in the browser. */
export interface JssdkConfig {
  debug: boolean;
  appId: string;
  timestamp: number;
  nonceStr: string;
  signature: string;
  jsApiList: string[];
  openTagList?: string[];
}

/**
 * Where a ticket type is fetched, for official accounts and WeCom. `fullLife`: the endpoint answers a
 * ticket it hands back again with expires_in 7200, however little of it is left (see Upstream.answersFullLife);
 * WeCom's answer what is left.
 */
type TicketPath = { path: string; query?: Record<string, string>; fullLife?: boolean };
const TICKET_PATHS: Record<string, TicketPath> = {
  jsapi: { path: 'cgi-bin/ticket/getticket', query: { type: 'jsapi' }, fullLife: true },
  wx_card: { path: 'cgi-bin/ticket/getticket', query: { type: 'wx_card' }, fullLife: true },
};
const WORK_TICKET_PATHS: Record<string, TicketPath> = {
  // The corp ticket signs wx.config; the agent ticket signs wx.agentConfig.
  jsapi: { path: 'cgi-bin/get_jsapi_ticket' },
  agent_jsapi: { path: 'cgi-bin/ticket/get', query: { type: 'agent_config' } },
};

/** Shared by the official account's and WeCom's JS-SDK helpers: tickets cached like the token. */
abstract class TicketKeeper<T extends string> {
  /** @internal */
  protected readonly core: ClientCore;
  readonly #token: TokenManager;
  readonly #subject: KeySubject;
  readonly #paths: Record<string, TicketPath>;
  // Made on the first ticket: most accounts of a platform never sign a JS-SDK page.
  #tickets: Map<string, TokenManager> | undefined;

  /** @internal */
  protected constructor(core: ClientCore, token: TokenManager, subject: KeySubject, paths: Record<string, TicketPath>) {
    this.core = core;
    this.#token = token;
    this.#subject = subject;
    this.#paths = paths;
    Object.defineProperty(this, kTicketManager, { value: (type: string) => this.#ticket(type) });
  }

  /** A valid ticket of `type`, shared through the cache. */
  async getTicket(type: T, options: TokenCallOptions = {}): Promise<string> {
    return this.#ticket(type).get(options.signal);
  }

  /**
   * Fetches a new ticket of `type` now and stores it. With a `tokenSource` that takes ticket reports
   * (`remoteTokenSource`), the ticket this client holds is reported to it instead (wx.config refused it):
   * `wxkit serve` replaces the ticket if it still holds it, and answers the current one.
   */
  async refreshTicket(type: T, options: TokenCallOptions = {}): Promise<string> {
    return this.#ticket(type).forceRefresh(options.signal);
  }

  /** @internal The `wx.config()` object for `input`, signed with a ticket of `type`; `appId` is the client's id. */
  protected async jsConfig(what: string, input: JssdkConfigInput, type: T, options: TokenCallOptions): Promise<JssdkConfig> {
    const signed = await this.sign(what, input, type, options);
    const config: JssdkConfig = {
      debug: input.debug ?? false,
      appId: this.core.appId,
      timestamp: signed.timestamp,
      nonceStr: signed.nonceStr,
      signature: signed.signature,
      jsApiList: input.jsApiList,
    };
    if (input.openTagList) config.openTagList = input.openTagList;
    return config;
  }

  /** @internal Signs `url` with a ticket of `type`, validating the input first. */
  protected async sign(what: string, input: JssdkConfigInput, type: T, options: TokenCallOptions) {
    const fail = (name: string, rule: string, value: unknown) =>
      new ConfigError(`${what} input.${name} must be ${rule} (got ${typeName(value)})`, name);
    if (input === null || typeof input !== 'object') throw fail('', 'an object', input);
    if (typeof input.url !== 'string' || !/^https?:\/\//i.test(input.url)) throw fail('url', 'an http(s) URL', input.url);
    // location.href is ASCII (non-ASCII, spaces and control characters percent-encoded, a host in
    // punycode): a page URL with any other character is not what the browser signs, and its signature
    // would fail in wx.config() ("invalid signature") rather than here.
    if (/[^\x21-\x7e]/.test(input.url.split('#', 1)[0]!)) {
      throw fail('url', 'the page URL as location.href reads it, with non-ASCII characters and spaces percent-encoded', input.url);
    }
    if (!Array.isArray(input.jsApiList) || input.jsApiList.some((name) => typeof name !== 'string')) {
      throw fail('jsApiList', 'an array of strings', input.jsApiList);
    }
    if (input.nonceStr !== undefined && (typeof input.nonceStr !== 'string' || !/^[A-Za-z0-9]{1,32}$/.test(input.nonceStr))) {
      throw fail('nonceStr', 'up to 32 letters and digits', input.nonceStr);
    }
    if (input.timestamp !== undefined && (!Number.isInteger(input.timestamp) || input.timestamp <= 0)) {
      throw fail('timestamp', 'a positive integer (unix seconds)', input.timestamp);
    }
    const ticket = await this.getTicket(type, options);
    const nonceStr = input.nonceStr ?? randomNonce();
    const timestamp = input.timestamp ?? Math.floor(this.core.settings.now() / 1000);
    return { nonceStr, timestamp, signature: signJsapi(ticket, nonceStr, timestamp, input.url) };
  }

  #ticket(type: string): TokenManager {
    // Its own names only: `constructor` or `toString` is no ticket type.
    const where = Object.hasOwn(this.#paths, type) ? this.#paths[type] : undefined;
    if (!where) {
      throw new ConfigError(`jssdk ticket type must be ${listChoices(Object.keys(this.#paths))} (got ${shownValue(type)})`, 'type');
    }
    let manager = this.#tickets?.get(type);
    if (!manager) {
      const subject = this.#subject;
      const id = subject.kind === 'work' ? `${subject.corpId}:${subject.agentId}` : subject.appId;
      manager = this.core.manager(
        `${type}_ticket`,
        this.core.schema.ticketKey(subject, type),
        { kind: subject.kind, id, field: 'ticket', ticketType: type },
        {
          budgetMs: this.core.http.callBudgetMs,
          answersFullLife: where.fullLife === true,
          // The access token is had before the ticket's lock is taken, so the lock guards one call.
          prepare: (signal) => this.#token.get(signal),
          // Whether WeChat took the access token is told to its manager, as an API call's answer is: a
          // token rejected after it worked was replaced, and its replacement is fetched at once; one
          // rejected before any call went through with it (a ticket endpoint that refuses every token)
          // spaces the fetches that follow, so that a getTicket() a second does not fetch tokens in a loop.
          fetch: (_force, token) => {
            const query = { ...where.query, access_token: token as string };
            return this.#token.carrying(token as string, async () =>
              validateFetched(await this.core.http.json({ method: 'GET', path: where.path, query, tokenFetch: true }), 'ticket', where.path),
            );
          },
          rejectsInput: isTokenRejection,
          dropInput: (token, error) => this.#token.rejectedOnCall(token as string, (error as WeChatApiError).errcode),
          recheckInput: (token) => this.#token.recheck(token as string),
        },
      );
      (this.#tickets ??= new Map()).set(type, manager);
    }
    return manager;
  }
}

/**
 * JS-SDK helpers of an official account (`app.jssdk`). The jsapi_ticket is cached and shared exactly
 * like the access token, under its own key, lock and memo.
 *
 * @example
 * ```ts
 * const config = await app.jssdk.buildConfig({ url: 'https://shop.example/cart', jsApiList: ['chooseImage'] });
 * ```
 */
export class Jssdk extends TicketKeeper<TicketType> {
  /** @internal Created by the client. */
  constructor(core: ClientCore, token: TokenManager, subject: KeySubject) {
    super(core, token, subject, TICKET_PATHS);
  }

  /** A valid ticket of `type` (default `jsapi`), shared through the cache. */
  override getTicket(type: TicketType = 'jsapi', options: TokenCallOptions = {}): Promise<string> {
    return super.getTicket(type, options);
  }

  /**
   * Fetches a new ticket of `type` (default `jsapi`) now and stores it: when `wx.config` refuses the
   * signature of a page whose URL is right ("invalid signature"), as when another program got WeChat to
   * hand out a new ticket. With a `tokenSource` that takes ticket reports (`remoteTokenSource`), the
   * ticket this client holds is reported to it instead: `wxkit serve` replaces the ticket if it still
   * holds it (not one it fetched less than a minute ago: 429), and answers the current one.
   */
  override refreshTicket(type: TicketType = 'jsapi', options: TokenCallOptions = {}): Promise<string> {
    return super.refreshTicket(type, options);
  }

  /** The signed configuration for `wx.config()` on the page at `input.url`. */
  buildConfig(input: JssdkConfigInput, options: TokenCallOptions = {}): Promise<JssdkConfig> {
    return this.jsConfig('jssdk.buildConfig()', input, 'jsapi', options);
  }
}

/** Ticket types of WeCom: the corp's (`wx.config`) and the agent's (`wx.agentConfig`). */
export type WorkTicketType = 'jsapi' | 'agent_jsapi';

/** What `wx.agentConfig()` takes in the browser. */
export interface WorkAgentConfig {
  corpid: string;
  agentid: string;
  timestamp: number;
  nonceStr: string;
  signature: string;
  jsApiList: string[];
}

/**
 * JS-SDK helpers of a WeCom app (`work.jssdk`): the corp ticket for `wx.config` and the agent ticket
 * for `wx.agentConfig`, each cached and shared like the token.
 */
export class WorkJssdk extends TicketKeeper<WorkTicketType> {
  readonly #agentId: string;

  /** @internal Created by the client. */
  constructor(core: ClientCore, token: TokenManager, subject: KeySubject & { kind: 'work' }) {
    super(core, token, subject, WORK_TICKET_PATHS);
    this.#agentId = subject.agentId;
  }

  /** The signed configuration for `wx.config()` (the corp's ticket; `appId` is the corp id). */
  buildConfig(input: JssdkConfigInput, options: TokenCallOptions = {}): Promise<JssdkConfig> {
    return this.jsConfig('jssdk.buildConfig()', input, 'jsapi', options);
  }

  /** The signed configuration for `wx.agentConfig()` (the agent's ticket). */
  async buildAgentConfig(input: JssdkConfigInput, options: TokenCallOptions = {}): Promise<WorkAgentConfig> {
    const signed = await this.sign('jssdk.buildAgentConfig()', input, 'agent_jsapi', options);
    return {
      corpid: this.core.appId,
      agentid: this.#agentId,
      timestamp: signed.timestamp,
      nonceStr: signed.nonceStr,
      signature: signed.signature,
      jsApiList: input.jsApiList,
    };
  }
}

/**
 * WeChat's JS-SDK signature: sha1 of `jsapi_ticket=…&noncestr=…&timestamp=…&url=…` with the URL's
 * fragment removed (JS-SDK documentation, appendix 1).
 */
export function signJsapi(ticket: string, nonceStr: string, timestamp: number, url: string): string {
  const page = url.split('#', 1)[0];
  return createHash('sha1').update(`jsapi_ticket=${ticket}&noncestr=${nonceStr}&timestamp=${timestamp}&url=${page}`).digest('hex');
}

function randomNonce(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  return Array.from(randomBytes(16), (byte) => alphabet[byte % alphabet.length]).join('');
}
