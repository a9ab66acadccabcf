import type { RequestOptions } from '../api-client.js';
import { WeChatClient } from './wechat-client.js';
import { tokenOf } from './app-token.js';
import { ClientCore, ID_RULE, checkClientOptions, clientSchema, requireSecret, type ClientOptions, type OwnKeys } from '../client-core.js';
import { WorkJssdk } from '../jssdk.js';
import type { KeySubject } from '../token/entry.js';
import type { TokenManager } from '../token/manager.js';
import { credentialDigest, validateFetched } from '../token/upstream.js';
import { required, requireFields, rule, secretString, type OptionSchema } from '../validate.js';

/** Options of {@link Work}. */
export interface WorkOptions extends ClientOptions {
  /** The corp id (`ww…`). */
  corpId: string;
  /** The agent (app) id. One token per agent secret: two agents of one corp never share an entry. */
  agentId: string | number;
  /** The agent's secret. Not needed with `tokenSource` or `refresh: 'never'`. */
  secret?: string;
}

/** A WeCom message (`cgi-bin/message/send`), as WeChat spells it; `agentid` is filled in. */
export interface WorkMessageInput {
  touser?: string;
  toparty?: string;
  totag?: string;
  msgtype: string;
  agentid?: number;
  [field: string]: unknown;
}

/** WeCom's answer to a message send. */
export interface WorkMessageResult {
  errcode: 0;
  errmsg: string;
  invaliduser?: string;
  invalidparty?: string;
  invalidtag?: string;
  msgid?: string;
}

const WORK_SCHEMA = clientSchema<WorkOptions>({
  corpId: required(ID_RULE),
  agentId: required(
    rule('the agent id, a number such as 1000002', (value) => /^(0|[1-9]\d{0,11})$/.test(typeof value === 'number' ? String(value) : typeof value === 'string' ? value : ''), {
      // The id is part of the store key: '01000002' and 1000002 would keep one agent's token under two keys.
      nearMiss: (value) =>
        typeof value === 'string' && /^0\d{1,12}$/.test(value)
          ? `has a leading zero: write it as WeCom shows it (${value.replace(/^0+(?=\d)/, '')}): clients that give it as a number keep the agent's token under another key`
          : undefined,
    }),
  ),
  secret: secretString(),
} satisfies OptionSchema<OwnKeys<WorkOptions>>);

/** WeCom's API host; `baseUrl` overrides it (a mock, a proxy). */
export const WORK_BASE_URL = 'https://qyapi.weixin.qq.com';

/**
 * A WeCom (企业微信) app client. Its token comes from `cgi-bin/gettoken` and is shared under
 * `wechat:work:access_token:{corpid}:{agentid}`, with the same protocol as the other clients.
 *
 * @example
 * ```ts
 * const work = new Work({ corpId: 'ww0123456789abcdef', agentId: 1000002, secret: process.env.WECOM_SECRET! });
 * await work.message.send({ touser: 'zhangsan', msgtype: 'text', text: { content: 'Deploy finished' } });
 * ```
 */
export class Work extends WeChatClient {
  readonly corpId: string;
  readonly agentId: string;
  readonly message: {
    /** Sends an app message; `agentid` defaults to this client's agent. */
    send(message: WorkMessageInput, options?: RequestOptions): Promise<WorkMessageResult>;
  };
  /** Made at first use: most clients never sign a JS-SDK page. */
  #jssdk: WorkJssdk | undefined;
  /** What the JS-SDK tickets are made with, kept until then. */
  readonly #token: TokenManager;
  readonly #subject: Extract<KeySubject, { kind: 'work' }>;

  constructor(options: WorkOptions) {
    const owner = 'Work';
    const checked = checkClientOptions<WorkOptions>(owner, WORK_SCHEMA, options);
    const corpId = checked.corpId;
    const agentId = String(checked.agentId);
    const secret = requireSecret(owner, checked);
    const core = new ClientCore(owner, corpId, checked, WORK_BASE_URL);
    const subject = { kind: 'work', corpId, agentId, ...(secret === undefined ? {} : { secret }) } satisfies KeySubject;
    const token = tokenOf(core, () => core.manager(
      'access_token',
      core.schema.accessTokenKey(subject),
      { kind: 'work', id: `${corpId}:${agentId}`, field: 'access_token' },
      {
        budgetMs: core.http.callBudgetMs,
        get credentialDigest() {
          return credentialDigest(`${corpId}:${agentId}`, secret);
        },
        // gettoken hands back the current token while it is valid, like the stable endpoint.
        async fetch() {
          const path = 'cgi-bin/gettoken';
          const query = { corpid: corpId, corpsecret: core.requireSecret(secret, 'fetching an access token') };
          return validateFetched(await core.http.json({ method: 'GET', path, query, tokenFetch: true }), 'access_token', path);
        },
      },
    ));
    super(core, token);
    this.corpId = corpId;
    this.agentId = agentId;
    const client = this.client;
    this.message = {
      async send(message, requestOptions = {}) {
        requireFields('message.send() message', message, ['msgtype']);
        // An agentid given as undefined (an optional field passed on) is no agentid: the client's is sent.
        return client.postJson('cgi-bin/message/send', { ...message, agentid: message.agentid ?? Number(agentId) }, requestOptions);
      },
    };
    this.#token = token;
    this.#subject = subject;
  }

  /** JS-SDK tickets (the corp's and the agent's) and `wx.config` / `wx.agentConfig` signatures, shared through the cache. */
  get jssdk(): WorkJssdk {
    return (this.#jssdk ??= new WorkJssdk(this.core, this.#token, this.#subject));
  }
}
