import { WeChatClient } from './wechat-client.js';
import type { ClientOptions } from '../client-core.js';
import { Jssdk } from '../jssdk.js';
import { TemplateMessage } from '../template-message.js';
import type { KeySubject } from '../token/entry.js';
import type { TokenManager } from '../token/manager.js';
import { APP_SCHEMA, setUp } from './app-token.js';

/** Which WeChat endpoint issues access tokens. */
export type TokenEndpoint = 'stable' | 'classic';

/** Options of {@link OfficialAccount}. */
export interface OfficialAccountOptions extends ClientOptions {
  /** The account's AppID (`wx…`). */
  appId: string;
  /**
   * The account's AppSecret. It is sent to WeChat's token endpoint and nowhere else. Not needed with
   * `tokenSource` or `refresh: 'never'`.
   */
  secret?: string;
  /**
   * `stable`: `POST cgi-bin/stable_token`. WeChat returns the current token while it is valid and never
   * invalidates a token another program holds; tokens are shared only with programs on the same endpoint.
   * `classic`: `GET cgi-bin/token`. Every fetch invalidates the previous token after a grace window;
   * pick it to share a token with a program that uses it (EasyWeChat 4, most older SDKs).
   * @default 'stable', or the endpoint of the schema's peer SDK (easyWeChat4(): 'classic')
   */
  tokenEndpoint?: TokenEndpoint;
}


/**
 * A WeChat official account (公众号) client whose access token and jsapi_ticket are shared through the
 * cache you set, in the style of EasyWeChat.
 *
 * @example
 * ```ts
 * const app = new OfficialAccount({ appId: 'wx1234abcd5678ef90', secret: process.env.WECHAT_SECRET! });
 * app.setCache(new FileCache({ dir: '/var/lib/myapp/wechat' }));
 * await app.templateMessage.send({ touser: openid, template_id: 'TPL', data: { first: { value: 'Hi' } } });
 * ```
 */
export class OfficialAccount extends WeChatClient {
  readonly appId: string;
  readonly templateMessage: TemplateMessage;
  /** Made at first use: most of 10,000 accounts never sign a JS-SDK page. */
  #jssdk: Jssdk | undefined;
  /** What the JS-SDK tickets are made with, kept until then. */
  readonly #token: TokenManager;
  readonly #subject: KeySubject;

  constructor(options: OfficialAccountOptions) {
    const { core, subject, token } = setUp<OfficialAccountOptions>('OfficialAccount', 'official_account', options, APP_SCHEMA);
    super(core, token);
    this.appId = subject.appId;
    this.templateMessage = new TemplateMessage(this.client);
    this.#token = token;
    this.#subject = subject;
  }

  /** JS-SDK tickets and `wx.config` signatures, shared through the cache. */
  get jssdk(): Jssdk {
    return (this.#jssdk ??= new Jssdk(this.core, this.#token, this.#subject));
  }
}
