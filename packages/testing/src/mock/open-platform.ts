import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { WeChatError, liveUntil, type AppState, type Call, type Handler, type WeChatModel } from './model.js';

/** An open-platform component (third-party platform) the mock knows. */
export interface MockComponent {
  appId: string;
  secret: string;
  /** The callback Token set on WeChat's console, used in push signatures. */
  token: string;
  /** The 43-character EncodingAESKey pushes are encrypted with. */
  encodingAESKey: string;
}

/** Options of `authorize()`: an account's admin approving the component, as on WeChat's authorization page. */
export interface MockAuthorizeOptions {
  /** A pre_auth_code from api_create_preauthcode; when given it must be live. @default none (the authorization is made directly) */
  preAuthCode?: string;
  /** The authorizing account's app id. @default a new random `wx…` id */
  authorizerAppId?: string;
  /** Permission sets granted (funcscope_category ids). An empty list makes every business call answer 61007. @default [1, 2, 3, 4] */
  funcInfo?: number[];
}

/** An authorization made with `authorize()`: what WeChat redirects the admin back with. */
export interface MockAuthorization {
  authorizerAppId: string;
  /** The `auth_code` for api_query_auth: single use, 1 hour. */
  authorizationCode: string;
}

/** An account authorized in bulk (`authorizeMany`): its app id and the refresh token api_query_auth would have handed over. */
export interface MockAuthorizedAccount {
  authorizerAppId: string;
  refreshToken: string;
}

/** How a push was answered by the test's callback. */
export interface MockPushResult {
  /** HTTP status, or 0 when the callback could not be reached. */
  status: number;
  body: string;
  /** The ticket pushed. */
  ticket: string;
}

/** WeChat pushes a component_verify_ticket every 10 minutes; each is valid for 12 hours. */
const PUSH_INTERVAL_MS = 600_000;
const TICKET_LIFE_MS = 12 * 3_600_000;
const PRE_AUTH_CODE_LIFE_MS = 1_800_000;
const AUTH_CODE_LIFE_MS = 3_600_000;

/** WeChat's push encryption, written here independently of @wxkit/core so the two check each other. */
function encryptForPush(encodingAESKey: string, appId: string, xml: string): string {
  const key = Buffer.from(`${encodingAESKey}=`, 'base64');
  const body = Buffer.from(xml, 'utf8');
  const length = Buffer.alloc(4);
  length.writeUInt32BE(body.length);
  const plain = Buffer.concat([randomBytes(16), length, body, Buffer.from(appId)]);
  const pad = 32 - (plain.length % 32);
  const cipher = createCipheriv('aes-256-cbc', key, key.subarray(0, 16)).setAutoPadding(false);
  return Buffer.concat([cipher.update(Buffer.concat([plain, Buffer.alloc(pad, pad)])), cipher.final()]).toString('base64');
}

const sha1 = (parts: string[]) => createHash('sha1').update([...parts].sort().join('')).digest('hex');

/**
 * WeChat's open platform as the mock models it: components, their verify tickets and encrypted
 * pushes, component tokens, pre-auth and authorization codes, authorizers and their refresh tokens.
 * Component and authorizer tokens are ordinary tokens of the model (grace window included), so the
 * business endpoints accept authorizer tokens like any other and answer 40001 once one is superseded.
 */
export class OpenPlatform {
  private readonly pushes = new Set<Promise<unknown>>();

  constructor(
    private readonly model: WeChatModel,
    /** When true, every api_authorizer_token answer carries a new refresh token and the old one stops working at once. */
    private readonly rotateRefreshTokens: boolean,
  ) {}

  createComponent(overrides: Partial<MockComponent> = {}): MockComponent {
    const component: MockComponent = {
      appId: `wx${randomBytes(8).toString('hex')}`,
      secret: randomBytes(16).toString('hex'),
      token: randomBytes(8).toString('hex'),
      encodingAESKey: randomBytes(32).toString('base64').replace(/[^A-Za-z0-9]/g, 'A').slice(0, 43),
      ...overrides,
    };
    this.model.addApp({ appId: component.appId, secret: component.secret });
    this.model.stateOf(component.appId).component = {
      token: component.token,
      encodingAESKey: component.encodingAESKey,
      tickets: new Map(),
      preAuthCodes: new Map(),
      authCodes: new Map(),
    };
    return component;
  }

  private componentOf(appId: string): { state: AppState; component: NonNullable<AppState['component']> } {
    const state = this.model.stateOf(appId);
    if (!state.component) throw new Error(`the mock app ${appId} is not a component`);
    return { state, component: state.component };
  }

  /** Where the pushes go. The next scheduled push is 10 minutes (mock time) away. */
  setCallback(appId: string, url: string | undefined): void {
    const { component } = this.componentOf(appId);
    component.callbackUrl = url;
    component.nextPushAt = url === undefined ? undefined : this.model.now() + PUSH_INTERVAL_MS;
  }

  /** A new verify ticket, valid for 12 h, without a push (as if the push arrived and was read). */
  issueVerifyTicket(appId: string): string {
    const { component } = this.componentOf(appId);
    const ticket = `ticket@@@${randomBytes(64).toString('base64url')}`;
    component.tickets.set(ticket, this.model.now());
    return ticket;
  }

  /** Pushes a new verify ticket to the callback now, encrypted and signed as WeChat does. */
  pushVerifyTicket(appId: string): Promise<MockPushResult> {
    const { state, component } = this.componentOf(appId);
    const url = component.callbackUrl;
    if (!url) throw new Error(`the mock component ${appId} has no callback URL (setCallback)`);
    const ticket = this.issueVerifyTicket(appId);
    component.nextPushAt = this.model.now() + PUSH_INTERVAL_MS;
    this.model.count(state, 'verifyTicketPushes');
    return this.send(appId, url, `<InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[${ticket}]]></ComponentVerifyTicket>`).then(
      (answer) => ({ ...answer, ticket }),
    );
  }

  /**
   * Pushes the `authorized` event of an authorization made with `authorize()` to the callback now, as
   * WeChat does when the admin approves: the same AuthorizationCode the redirect carries as `auth_code`.
   */
  pushAuthorized(appId: string, authorization: MockAuthorization): Promise<{ status: number; body: string }> {
    const { component } = this.componentOf(appId);
    const url = component.callbackUrl;
    if (!url) throw new Error(`the mock component ${appId} has no callback URL (setCallback)`);
    const expiresAt = Math.floor((this.model.now() + AUTH_CODE_LIFE_MS) / 1000);
    return this.send(
      appId,
      url,
      `<InfoType><![CDATA[authorized]]></InfoType><AuthorizerAppid><![CDATA[${authorization.authorizerAppId}]]></AuthorizerAppid>` +
        `<AuthorizationCode><![CDATA[${authorization.authorizationCode}]]></AuthorizationCode><AuthorizationCodeExpiredTime>${expiresAt}</AuthorizationCodeExpiredTime>`,
    );
  }

  /** Sends `fields` to the callback, encrypted and signed as WeChat does; resolves with its answer. */
  private send(appId: string, url: string, fields: string): Promise<{ status: number; body: string }> {
    const { component } = this.componentOf(appId);
    const createTime = Math.floor(this.model.now() / 1000);
    const xml = `<xml><AppId><![CDATA[${appId}]]></AppId><CreateTime>${createTime}</CreateTime>${fields}</xml>`;
    const encrypt = encryptForPush(component.encodingAESKey, appId, xml);
    const timestamp = String(createTime);
    const nonce = String(Math.floor(Math.random() * 1e10));
    const query = new URLSearchParams({
      signature: sha1([component.token, timestamp, nonce]),
      timestamp,
      nonce,
      encrypt_type: 'aes',
      msg_signature: sha1([component.token, timestamp, nonce, encrypt]),
    });
    const target = `${url}${url.includes('?') ? '&' : '?'}${query}`;
    const body = `<xml><AppId><![CDATA[${appId}]]></AppId><Encrypt><![CDATA[${encrypt}]]></Encrypt></xml>`;
    const push = fetch(target, { method: 'POST', body, headers: { 'content-type': 'text/xml' } }).then(
      async (res) => ({ status: res.status, body: await res.text() }),
      () => ({ status: 0, body: '' }),
    );
    this.pushes.add(push);
    void push.finally(() => this.pushes.delete(push));
    return push;
  }

  /** Sends the pushes whose time has come on the mock's clock (one per component, however far the clock moved). */
  pushDue(): void {
    const t = this.model.now();
    for (const [appId, state] of this.model.apps) {
      const at = state.component?.nextPushAt;
      if (at !== undefined && t >= at) void this.pushVerifyTicket(appId);
    }
  }

  /** Resolves once every push sent so far has been answered. */
  async settled(): Promise<void> {
    while (this.pushes.size > 0) await Promise.all([...this.pushes]);
  }

  /**
   * An admin authorizes the component: a new (or known) authorizer with a fresh refresh token, and
   * an authorization code for api_query_auth.
   */
  authorize(componentAppId: string, options: MockAuthorizeOptions = {}): MockAuthorization {
    const { component } = this.componentOf(componentAppId);
    const t = this.model.now();
    if (options.preAuthCode !== undefined) {
      const expiresAt = component.preAuthCodes.get(options.preAuthCode);
      if (expiresAt === undefined || t >= expiresAt) throw new Error('authorize: the pre_auth_code is unknown or expired');
      component.preAuthCodes.delete(options.preAuthCode);
    }
    const authorizerAppId = options.authorizerAppId ?? `wx${randomBytes(8).toString('hex')}`;
    if (!this.model.apps.has(authorizerAppId)) this.model.addApp({ appId: authorizerAppId, secret: randomBytes(16).toString('hex') });
    const state = this.model.stateOf(authorizerAppId);
    if (state.component) throw new Error('authorize: a component cannot authorize a component');
    state.authorizer = {
      componentAppId,
      refreshToken: this.newRefreshToken(),
      funcInfo: options.funcInfo ?? [1, 2, 3, 4],
      authTime: Math.floor(t / 1000),
    };
    const authorizationCode = `queryauthcode@@@${randomBytes(48).toString('base64url')}`;
    component.authCodes.set(authorizationCode, { authorizerAppId, expiresAt: t + AUTH_CODE_LIFE_MS });
    return { authorizerAppId, authorizationCode };
  }

  /**
   * `count` accounts authorize the component with their authorizations already completed: each one's
   * refresh token as api_query_auth would have handed it over, and no access token yet (a platform
   * that moves its accounts in from elsewhere; a benchmark's 10,000 accounts without 10,000 calls).
   */
  authorizeMany(componentAppId: string, count: number): MockAuthorizedAccount[] {
    const { component } = this.componentOf(componentAppId);
    return Array.from({ length: count }, () => {
      const { authorizerAppId, authorizationCode } = this.authorize(componentAppId);
      component.authCodes.delete(authorizationCode);
      return { authorizerAppId, refreshToken: this.refreshTokenOf(authorizerAppId)! };
    });
  }

  /** The account revokes the authorization: its refresh token and tokens stop working. */
  revoke(authorizerAppId: string): void {
    const state = this.model.stateOf(authorizerAppId);
    if (!state.authorizer) throw new Error(`the mock app ${authorizerAppId} is no authorizer`);
    state.authorizer.refreshToken = undefined;
    this.model.invalidateTokens(state);
  }

  /** The refresh token WeChat accepts now for this authorizer. */
  refreshTokenOf(authorizerAppId: string): string | undefined {
    return this.model.stateOf(authorizerAppId).authorizer?.refreshToken;
  }

  private newRefreshToken(): string {
    return `refreshtoken@@@${randomBytes(32).toString('base64url')}`;
  }

  /** The component behind a call's `component_access_token`, checked like any token (40001 once superseded). */
  private caller(call: Call): AppState {
    const state = this.model.ownerOfToken(call.query.get('component_access_token'), call.t);
    if (!state.component) throw new WeChatError(40014);
    // The body's component_appid must be the token's component.
    const named = call.json?.component_appid;
    if (typeof named !== 'string' || named === '') throw new WeChatError(41002);
    if (named !== state.app.appId) throw new WeChatError(61011);
    return state;
  }

  private authorizerFor(component: AppState, authorizerAppId: unknown): AppState {
    if (typeof authorizerAppId !== 'string' || authorizerAppId === '') throw new WeChatError(41002);
    const state = this.model.apps.get(authorizerAppId);
    if (!state?.authorizer || state.authorizer.componentAppId !== component.app.appId || state.authorizer.refreshToken === undefined) {
      throw new WeChatError(61003);
    }
    return state;
  }

  private tokenAnswer(state: AppState, t: number): { value: string; expiresIn: number } {
    const token = this.model.issueClassic(state, t);
    this.model.count(state, 'tokensIssued');
    return { value: token.value, expiresIn: Math.floor((liveUntil(token) - t) / 1000) };
  }

  routes(): Record<string, Handler> {
    const post = (call: Call): Record<string, unknown> => {
      if (call.req.method !== 'POST') throw new WeChatError(43002);
      if (!call.json) throw new WeChatError(47001);
      return call.json;
    };
    return {
      'cgi-bin/component/api_component_token': (call) => {
        const input = post(call);
        const { component_appid: appid, component_appsecret: secret, component_verify_ticket: ticket } = input;
        if (typeof appid !== 'string' || appid === '') throw new WeChatError(41002);
        if (typeof secret !== 'string' || secret === '') throw new WeChatError(41004);
        const state = this.model.apps.get(appid);
        if (!state?.component) throw new WeChatError(61011);
        if (state.app.secret !== secret) throw new WeChatError(40125);
        if (!state.ipAllowed) throw new WeChatError(61004, `access clientip is not registered requestIP: ${call.req.socket.remoteAddress?.replace(/^::ffff:/, '')}`);
        const pushedAt = typeof ticket === 'string' ? state.component.tickets.get(ticket) : undefined;
        if (pushedAt === undefined) throw new WeChatError(61006);
        if (call.t >= pushedAt + TICKET_LIFE_MS) throw new WeChatError(61005);
        this.model.spend(state, call.t, [['token', this.model.config.quotas.token, 'day']]);
        const token = this.tokenAnswer(state, call.t);
        return { json: JSON.stringify({ component_access_token: token.value, expires_in: token.expiresIn }) };
      },
      'cgi-bin/component/api_create_preauthcode': (call) => {
        post(call);
        const state = this.caller(call);
        const code = `preauthcode@@@${randomBytes(32).toString('base64url')}`;
        state.component!.preAuthCodes.set(code, call.t + PRE_AUTH_CODE_LIFE_MS);
        return { json: JSON.stringify({ pre_auth_code: code, expires_in: PRE_AUTH_CODE_LIFE_MS / 1000 }) };
      },
      'cgi-bin/component/api_query_auth': (call) => {
        const input = post(call);
        const state = this.caller(call);
        const code = input.authorization_code;
        if (typeof code !== 'string' || code === '') throw new WeChatError(41008);
        const grant = state.component!.authCodes.get(code);
        if (!grant) throw new WeChatError(61009);
        state.component!.authCodes.delete(code);
        if (call.t >= grant.expiresAt) throw new WeChatError(61010);
        const authorizer = this.authorizerFor(state, grant.authorizerAppId);
        const token = this.tokenAnswer(authorizer, call.t);
        return {
          json: JSON.stringify({
            authorization_info: {
              authorizer_appid: grant.authorizerAppId,
              authorizer_access_token: token.value,
              expires_in: token.expiresIn,
              authorizer_refresh_token: authorizer.authorizer!.refreshToken,
              func_info: authorizer.authorizer!.funcInfo.map((id) => ({ funcscope_category: { id } })),
            },
          }),
        };
      },
      'cgi-bin/component/api_authorizer_token': (call) => {
        const input = post(call);
        const state = this.caller(call);
        const authorizer = this.authorizerFor(state, input.authorizer_appid);
        const refresh = input.authorizer_refresh_token;
        if (typeof refresh !== 'string' || refresh !== authorizer.authorizer!.refreshToken) throw new WeChatError(61023);
        const token = this.tokenAnswer(authorizer, call.t);
        // WeChat may hand back a new refresh token; once it has, the old one answers 61023.
        if (this.rotateRefreshTokens) authorizer.authorizer!.refreshToken = this.newRefreshToken();
        return {
          json: JSON.stringify({
            authorizer_access_token: token.value,
            expires_in: token.expiresIn,
            authorizer_refresh_token: authorizer.authorizer!.refreshToken,
          }),
        };
      },
      // An authorized mini program's wx.login() code, exchanged by its third-party platform: the component's
      // token and appid instead of the mini program's secret; codes are single use, as for sns/jscode2session.
      'sns/component/jscode2session': (call) => {
        const { query } = call;
        const state = this.model.ownerOfToken(query.get('component_access_token'), call.t);
        if (!state.component) throw new WeChatError(40014);
        const named = query.get('component_appid');
        if (!named) throw new WeChatError(41002);
        if (named !== state.app.appId) throw new WeChatError(61011);
        const authorizer = this.authorizerFor(state, query.get('appid') ?? '');
        const code = query.get('js_code');
        if (!code) throw new WeChatError(41008);
        if (!code.startsWith('code-')) throw new WeChatError(40029);
        const used = `${authorizer.app.appId}:${code}`;
        if (this.model.usedCodes.has(used)) throw new WeChatError(40163);
        this.model.usedCodes.add(used);
        const openid = `o${createHash('sha256').update(used).digest('base64url').slice(0, 27)}`;
        return { json: JSON.stringify({ openid, session_key: randomBytes(16).toString('base64') }) };
      },
      'cgi-bin/component/api_get_authorizer_info': (call) => {
        const input = post(call);
        const state = this.caller(call);
        const authorizer = this.authorizerFor(state, input.authorizer_appid);
        return {
          json: JSON.stringify({
            authorizer_info: { nick_name: `mock ${authorizer.app.appId}`, service_type_info: { id: 2 }, verify_type_info: { id: 0 } },
            authorization_info: {
              authorizer_appid: authorizer.app.appId,
              authorizer_refresh_token: authorizer.authorizer!.refreshToken,
              func_info: authorizer.authorizer!.funcInfo.map((id) => ({ funcscope_category: { id } })),
            },
          }),
        };
      },
    };
  }
}
