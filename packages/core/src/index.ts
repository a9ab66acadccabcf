export { OfficialAccount, type OfficialAccountOptions, type TokenEndpoint } from './clients/official-account.js';
export {
  MiniProgram,
  type MiniProgramOptions,
  type SubscribeMessageInput,
  type WxaCodeUnlimitedInput,
  type Code2SessionResult,
} from './clients/mini-program.js';
export { Work, WORK_BASE_URL, type WorkOptions, type WorkMessageInput, type WorkMessageResult } from './clients/work.js';
export { WeChatClient } from './clients/wechat-client.js';
export type {
  TokenEvents,
  TokenEventName,
  ClientEvent,
  TokenLabel,
  TokenTier,
  TokenEventBase,
  TokenFetchedEvent,
  TokenFetchFailedEvent,
  TokenInvalidatedEvent,
  TokenInvalidatedExternallyEvent,
  RefreshAheadFailedEvent,
  LockTakenOverEvent,
  LockWaitTimeoutEvent,
  CacheUnavailableEvent,
  CacheWatchRefusedEvent,
  CacheRecoveredEvent,
  CacheCorruptEntryEvent,
  CacheFallbackUnusableEvent,
  ComponentVerifyTicketNotStoredEvent,
  ComponentCallbackExpiredEvent,
  ComponentVerifyTicketReceivedEvent,
  AuthorizerEvent,
  AuthorizerAuthorizedEvent,
  AuthorizerRefreshTokenRecoveredEvent,
  AuthorizerCopyFailedEvent,
} from './events.js';
export {
  ClientPool,
  type ClientPoolOptions,
  type ClientPoolKind,
  type CredentialsResolver,
  type CredentialsOf,
  type ClientOf,
  type AppCredentials,
  type WorkCredentials,
} from './clients/client-pool.js';
export { remoteTokenSource, type TokenSource, type TokenSourceRequest, type RemoteTokenSourceOptions } from './token-source.js';
export type { ClientOptions } from './client-core.js';
export { AccessToken, type TokenCallOptions } from './access-token.js';
export { ApiClient, type WeChatResponse, type RequestOptions } from './api-client.js';
export type { Query, QueryValue, BinaryResponse } from './http.js';
export {
  TemplateMessage,
  type TemplateMessageInput,
  type TemplateMessageResult,
  type TemplateDataItem,
} from './template-message.js';
export {
  Jssdk,
  WorkJssdk,
  signJsapi,
  type JssdkConfig,
  type JssdkConfigInput,
  type TicketType,
  type WorkTicketType,
  type WorkAgentConfig,
} from './jssdk.js';
export { MemoryCache, type MemoryCacheOptions, type TokenCache } from './cache.js';
export { FileCache, type FileCacheOptions } from './file-cache.js';
export {
  nativeSchema,
  type NativeSchemaOptions,
  type KeySchema,
  type KeySubject,
  type EntryField,
  type EncodeExtra,
  type StoredEntry,
  type OpenPlatformEntry,
  type RecordCodec,
  type TokenCopy,
} from './token/entry.js';
export {
  easyWeChat4,
  easyWeChat6,
  nodeEasyWeChat,
  wechatpy,
  silenceper,
  wxJava,
  type EasyWeChat4Options,
  type EasyWeChat6Options,
  type WechatpyOptions,
  type SilenceperOptions,
  type WxJavaOptions,
  type PhpMarshaller,
  type PhpCacheStore,
} from './profiles.js';
export type { Logger, LogFields } from './logger.js';
export {
  WxkitError,
  WeChatApiError,
  HttpError,
  BadResponseError,
  CacheError,
  ConfigError,
  TokenUnavailableError,
  MessageCryptoError,
  CredentialsError,
  type MessageCryptoFailure,
  type CredentialsFailure,
  type WxkitErrorCode,
  type CacheErrorReason,
  type WeChatErrorBody,
} from './errors.js';
// Open platform (third-party platforms): message encryption, component and authorizer tokens.
export { MessageCrypto, type MessageCryptoOptions, type EncryptedMessage } from './open-platform/crypto.js';
export { OpenPlatform, type OpenPlatformOptions } from './open-platform/open-platform.js';
export type { OpenPlatformPush, CallbackRequest } from './open-platform/callback.js';
export type { Authorization } from './open-platform/records.js';
export { VERSION } from './version.js';
