import type { RequestOptions } from '../api-client.js';
import { WeChatClient } from './wechat-client.js';
import type { ClientCore, ClientOptions } from '../client-core.js';
import { BadResponseError, ConfigError } from '../errors.js';
import { APP_SCHEMA, setUp } from './app-token.js';
import type { TokenEndpoint } from './official-account.js';
import { requireFields, typeName } from '../validate.js';

/** Options of {@link MiniProgram}. */
export interface MiniProgramOptions extends ClientOptions {
  /** The mini program's AppID. */
  appId: string;
  /** The AppSecret: for tokens (unless `tokenSource` or `refresh: 'never'`) and for `auth.code2Session()`. */
  secret?: string;
  /** As for OfficialAccount: mini programs use the same token endpoints. @default 'stable', or the endpoint of the schema's peer SDK */
  tokenEndpoint?: TokenEndpoint;
}

/** The body of cgi-bin/message/subscribe/send, as WeChat spells it. */
export interface SubscribeMessageInput {
  touser: string;
  template_id: string;
  /** The page opened from the message, e.g. `pages/order/index?id=1`. */
  page?: string;
  /** `developer`, `trial` or `formal`. */
  miniprogram_state?: 'developer' | 'trial' | 'formal';
  lang?: string;
  data: Record<string, { value: string }>;
}

/** Options of `wxa/getwxacodeunlimit`, as WeChat spells them. */
export interface WxaCodeUnlimitedInput {
  /** Up to 32 visible characters handed to the page as `scene`. */
  scene: string;
  page?: string;
  check_path?: boolean;
  env_version?: 'release' | 'trial' | 'develop';
  width?: number;
  auto_color?: boolean;
  line_color?: { r: number; g: number; b: number };
  is_hyaline?: boolean;
}

/** What `jscode2session` answers. `session_key` is a secret: never log it, never send it to the client. */
export interface Code2SessionResult {
  openid: string;
  session_key: string;
  unionid?: string;
}


/**
 * A WeChat mini program (小程序) client: the same token protocol and cache hook as OfficialAccount,
 * plus the calls used every day.
 *
 * @example
 * ```ts
 * const mp = new MiniProgram({ appId: 'wx0123456789abcdef', secret: process.env.MP_SECRET! });
 * mp.setCache(new RedisCache(process.env.REDIS_URL!));
 * const png = await mp.wxacode.getUnlimited({ scene: 'order=42', page: 'pages/order/index' });
 * ```
 */
export class MiniProgram extends WeChatClient {
  readonly appId: string;
  readonly subscribeMessage: {
    /** Sends a subscribe message (`cgi-bin/message/subscribe/send`). */
    send(message: SubscribeMessageInput, options?: RequestOptions): Promise<{ errcode: 0; errmsg: string; msgid?: number | string }>;
  };
  readonly wxacode: {
    /** An unlimited mini program code (`wxa/getwxacodeunlimit`), as image bytes. */
    getUnlimited(input: WxaCodeUnlimitedInput, options?: RequestOptions): Promise<Buffer>;
  };
  readonly auth: {
    /** Exchanges a `wx.login()` code for the user's openid and session key (`sns/jscode2session`; no token). */
    code2Session(jsCode: string, options?: RequestOptions): Promise<Code2SessionResult>;
  };

  constructor(options: MiniProgramOptions) {
    const { core, subject, token, secret } = setUp<MiniProgramOptions>('MiniProgram', 'mini_program', options, APP_SCHEMA);
    const exchange = (options as unknown as Record<symbol, unknown>)[kCode2Session] as SessionExchange | undefined;
    super(core, token);
    this.appId = subject.appId;
    const client = this.client;
    this.subscribeMessage = {
      async send(message, requestOptions = {}) {
        requireFields('subscribeMessage.send() message', message, ['touser', 'template_id']);
        return client.postJson('cgi-bin/message/subscribe/send', message, requestOptions);
      },
    };
    this.wxacode = {
      async getUnlimited(input, requestOptions = {}) {
        requireFields('wxacode.getUnlimited() input', input, ['scene']);
        return (await client.postForBuffer('wxa/getwxacodeunlimit', input, requestOptions)).body;
      },
    };
    this.auth = {
      code2Session: async (jsCode, requestOptions = {}) => {
        if (typeof jsCode !== 'string' || jsCode.length === 0) {
          throw new ConfigError(`auth.code2Session() jsCode must be the code from wx.login() (got ${typeName(jsCode)})`, 'jsCode');
        }
        return exchange ? exchange(jsCode, requestOptions, core) : code2Session(core, subject.appId, secret, jsCode, requestOptions);
      },
    };
  }
}

/**
 * Internal option: how a mini program a third-party platform acts for exchanges a `wx.login()` code
 * (`sns/component/jscode2session`, with the component's token: the platform holds no AppSecret of it).
 */
export const kCode2Session = Symbol.for('wxkit.internal.code2Session');
export type SessionExchange = (jsCode: string, options: RequestOptions, client: { readonly closed: boolean }) => Promise<Code2SessionResult>;

async function code2Session(
  core: ClientCore,
  appId: string,
  secret: string | undefined,
  jsCode: string,
  options: RequestOptions,
): Promise<Code2SessionResult> {
  const key = core.requireSecret(secret, 'auth.code2Session()');
  const path = 'sns/jscode2session';
  const body = await core.http.json({
    method: 'GET',
    path,
    query: { appid: appId, secret: key, js_code: jsCode, grant_type: 'authorization_code' },
    signal: options.signal,
    client: core,
  });
  return sessionOf(body, path);
}

/** The session in an answer of `path` (sns/jscode2session, or the component's): openid and session_key, unionid when sent. */
export function sessionOf(body: Record<string, unknown>, path: string): Code2SessionResult {
  if (typeof body.openid !== 'string' || typeof body.session_key !== 'string') {
    throw new BadResponseError(`WeChat answered ${path} without an openid and session_key`, { path });
  }
  const result: Code2SessionResult = { openid: body.openid, session_key: body.session_key };
  if (typeof body.unionid === 'string') result.unionid = body.unionid;
  return result;
}

