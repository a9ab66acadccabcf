import type { ApiClient, RequestOptions } from './api-client.js';
import { ConfigError } from './errors.js';
import { typeName } from './validate.js';

/** One field of a template message. */
export interface TemplateDataItem {
  value: string;
  /** Hex colour; ignored by WeChat for most templates since 2023. */
  color?: string;
}

/** The body of cgi-bin/message/template/send, as WeChat spells it. */
export interface TemplateMessageInput {
  /** The recipient's openid. */
  touser: string;
  template_id: string;
  /** Opened when the user taps the message. */
  url?: string;
  /** Opens a mini program instead of `url` when the client supports it. */
  miniprogram?: { appid: string; pagepath?: string };
  /** Makes retries idempotent: WeChat drops a second message with the same id. */
  client_msg_id?: string;
  data: Record<string, TemplateDataItem>;
}

/** WeChat's answer to a successful send. */
export interface TemplateMessageResult {
  errcode: 0;
  errmsg: string;
  /** WeChat's 64-bit message id; a string when it is beyond Number.MAX_SAFE_INTEGER. */
  msgid: number | string;
}

/**
 * Template messages of an official account (`app.templateMessage`).
 *
 * @example
 * ```ts
 * await app.templateMessage.send({ touser: openid, template_id: 'TPL', data: { first: { value: 'Hi' } } });
 * ```
 */
export class TemplateMessage {
  readonly #client: ApiClient;

  /** @internal Created by the client. */
  constructor(client: ApiClient) {
    this.#client = client;
  }

  /**
   * Sends one template message. The token is injected and, if WeChat rejects it, refreshed once.
   * @throws {WeChatApiError} e.g. 40003 (openid), 40037 (template_id), 43004 (not subscribed).
   */
  send(message: TemplateMessageInput, options: RequestOptions = {}): Promise<TemplateMessageResult> {
    // Not an async method: handing on postJson's promise from one would cost every send two more turns
    // of the microtask queue. A message that is no message, or a call on something other than a
    // TemplateMessage (the method taken off its object), rejects: the method never throws.
    try {
      validateMessage(message);
      return this.#client.postJson<TemplateMessageResult>('cgi-bin/message/template/send', message, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }
}

function validateMessage(message: TemplateMessageInput): void {
  const fail = (name: string, rule: string, value: unknown) =>
    new ConfigError(`templateMessage.send() message.${name} must be ${rule} (got ${typeName(value)})`, name);
  if (message === null || typeof message !== 'object') throw fail('', 'an object', message);
  if (typeof message.touser !== 'string' || message.touser.length === 0) throw fail('touser', 'an openid string', message.touser);
  if (typeof message.template_id !== 'string' || message.template_id.length === 0) {
    throw fail('template_id', 'a non-empty string', message.template_id);
  }
  if (message.data === null || typeof message.data !== 'object' || Array.isArray(message.data)) {
    throw fail('data', 'an object of { value } items', message.data);
  }
}
