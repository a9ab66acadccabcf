import { createHash, randomBytes } from 'node:crypto';
import { WeChatError, alive, liveUntil, type Call, type Handler, type Service, type WeChatModel } from './model.js';

/** Stable_token's normal mode hands out a new token once the current one has less than this left (WeChat rotates 5 min early). */
const STABLE_ROTATE_MS = 300_000;
/** Force refreshes closer together than this return the current token (WeChat's stable_token doc). */
const FORCE_REFRESH_SPACING_MS = 30_000;

/** A 1×1 PNG, what getwxacodeunlimit answers (real codes are larger, the same kind of bytes). */
const TINY_PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==',
  'base64',
);

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function requirePost(call: Call): void {
  if (call.req.method !== 'POST') throw new WeChatError(43002);
}

/** WeChat's API paths (no leading slash) and what each answers, on the model's state. */
export function createRoutes(model: WeChatModel): Record<string, Handler> {
  const { quotas, tokenTtlMs } = model.config;
  // A TTL shorter than twice the rotation window would make normal mode hand out a new token on every
  // call; rotate at half the TTL then, so a short-TTL test still sees "same token while valid".
  const stableRotateMs = Math.min(STABLE_ROTATE_MS, tokenTtlMs / 2);
  const { apps, corps, usedCodes } = model;
  const authorize = (call: Call, service?: Service) => model.authorize(call, service);
  const ticket = model.ticket.bind(model);
  const credentials = model.credentials.bind(model);
  const spend = model.spend.bind(model);
  const count = model.count.bind(model);
  const nextMsgid = model.nextMsgid.bind(model);
  const issueClassic = model.issueClassic.bind(model);
  const issueStable = model.issueStable.bind(model);
  const newToken = model.newToken.bind(model);

  return {
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
      if (!corpId) throw new WeChatError(41002, 'corpid missing');
      if (!secret) throw new WeChatError(41004, 'corpsecret missing');
      const agents = corps.get(corpId);
      if (!agents) throw new WeChatError(40013);
      // WeCom answers an unknown or wrong secret with 40001 ("invalid credential").
      const state = agents.find((agent) => agent.app.secret === secret);
      if (!state) throw new WeChatError(40001);
      if (!state.ipAllowed) throw new WeChatError(60020);
      // WeCom has no daily gettoken quota: its limits are a corp's calls of one API a minute and an hour.
      const corp = model.corpUsageOf(state);
      spend(state, t, [
        ['gettoken', quotas.workTokenPerMinute, 'minute', corp],
        ['gettoken', quotas.workTokenPerHour, 'hour', corp],
      ]);
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
    'cgi-bin/get_jsapi_ticket': (call) => ticket(authorize(call, 'work'), 'jsapi', call.t),
    'cgi-bin/ticket/get': (call) => {
      const state = authorize(call, 'work');
      if (call.query.get('type') !== 'agent_config') throw new WeChatError(40097);
      return ticket(state, 'agent_config', call.t);
    },
    'cgi-bin/message/send': (call) => {
      requirePost(call);
      const state = authorize(call, 'work');
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
      authorize(call, 'both');
      return { json: JSON.stringify({ ip_list: ['101.226.103.0/25', '101.226.233.128/25', '58.247.206.128/25', '223.166.222.0/25'] }) };
    },
    'cgi-bin/getcallbackip': (call) => {
      authorize(call, 'both');
      return { json: JSON.stringify({ ip_list: ['101.226.103.0/25', '101.226.62.77', '101.226.62.78', '101.226.62.79'] }) };
    },
  };
}
