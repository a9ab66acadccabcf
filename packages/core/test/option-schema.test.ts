import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeOptions, type OptionCases } from '@wxkit/testing/suite';
import { Agent } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import {
  FileCache,
  MemoryCache,
  MessageCrypto,
  MiniProgram,
  OfficialAccount,
  OpenPlatform,
  Work,
  nativeSchema,
  remoteTokenSource,
  type ClientOptions,
  type FileCacheOptions,
  type MemoryCacheOptions,
  type MessageCryptoOptions,
  type MiniProgramOptions,
  type NativeSchemaOptions,
  type OfficialAccountOptions,
  type OpenPlatformOptions,
  type RemoteTokenSourceOptions,
  type WorkOptions,
} from '../src/index.js';

// Every option of every constructor, with values it takes and values it refuses. Each table is typed
// `satisfies Record<keyof XOptions, OptionCases>`, so an option added to a type without cases does not
// compile; describeOptions also compares the table with the interface in the built index.d.ts.

const declarations = (...interfaces: string[]) => ({ file: new URL('../dist/index.d.ts', import.meta.url), interfaces });

/** The longest delay a Node timer keeps; one ms more would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Whole ms from `min` to the longest timer; everything else a duration can be by mistake. */
const ms = (min: number, valid: number): OptionCases => ({
  valid: [min, valid, MAX_TIMER_MS],
  invalid: [min - 1, MAX_TIMER_MS + 1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, '1000', null, true],
});

const dispatcher = new Agent();
afterAll(() => dispatcher.close());

class Keyv {
  opts = {};
  iterator = undefined;
  get() {}
  set() {}
  delete() {}
}
const cacheCases: OptionCases = { valid: [new MemoryCache()], invalid: [{}, 'redis://127.0.0.1:6379', null, new Keyv(), { get() {}, set() {} }] };
const secretCases: OptionCases = {
  valid: ['a-very-secret-secret', '0123456789abcdef0123456789abcdef'],
  // A secret read from a file keeps its line break: WeChat refuses it (40125) and says nothing of why.
  invalid: ['', '   ', 12345678, {}, '0123456789abcdef0123456789abcdef\n', ' 0123456789abcdef', 'a-very secret', 'a-very-secret\u0085'],
};
const idCases: OptionCases = { valid: ['wx4202f388888ab123', 'wx_1.a-b'], invalid: ['', 'wx 123', 'wx:123', 'a'.repeat(65), 42, null] };

const clientCases = {
  baseUrl: {
    valid: ['https://proxy.internal/wechat', 'http://127.0.0.1:3000'],
    invalid: ['ftp://example.com', 'https://api.example.com/?debug=1', 'https://api.example.com/#top', 'https://user:pw@api.example.com', 'api.weixin.qq.com', 42],
  },
  cache: cacheCases,
  schema: { valid: [nativeSchema({ prefix: 'shop:' })], invalid: [{ name: 'x' }, 'native', null] },
  timeoutMs: ms(1, 5000),
  maxResponseBytes: { valid: [1024, 65536, 2 ** 31 - 1], invalid: [1023, 2 ** 31, 4096.5, Number.NaN, Number.POSITIVE_INFINITY, '1mb'] },
  dispatcher: { valid: [dispatcher], invalid: [{}, 'http://proxy:3128', null] },
  memoMs: ms(0, 30_000),
  // 0 would give up on a refreshing holder at once: rejected, with the other impossible waits.
  lockWaitMs: ms(1, 9000),
  fallbackDir: { valid: [false, join(tmpdir(), 'wxkit-options-test')], invalid: [true, '', 42] },
  serviceName: { valid: ['order-service', 'a'.repeat(64)], invalid: ['has space', 'a'.repeat(65), '', 'svc/1', 42] },
  cacheTimeoutMs: ms(1, 500),
  logger: { valid: [false, console], invalid: ['console', {}, true, null] },
  now: { valid: [Date.now], invalid: [5, 'now', null] },
  refresh: { valid: ['auto', 'never'], invalid: ['sometimes', true, ''] },
  tokenSource: { valid: [{ fetch: async () => ({ value: 'token', expiresIn: 7200 }), invalidate: async () => undefined }], invalid: [{}, { fetch() {} }, 'http://tokens', null] },
  refreshAheadSeconds: { valid: [0, 600, Math.floor(MAX_TIMER_MS / 1000)], invalid: [-1, Math.floor(MAX_TIMER_MS / 1000) + 1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '600'] },
  refreshAheadJitterMs: ms(0, 5000),
} satisfies Record<keyof ClientOptions, OptionCases>;

// What every client shares: unknown names get the closest known one, and the lease option that went away names its replacement.
const clientChecks = {
  misspelt: { timeout: 'timeoutMs', lockWait: 'lockWaitMs', cache_timeout_ms: 'cacheTimeoutMs', memoms: 'memoMs', maxResponseByte: 'maxResponseBytes' },
  retired: { lockLeaseMs: 'timeoutMs and cacheTimeoutMs' },
} as const;

const close = (made: unknown) => (made as { close(): Promise<void> }).close();

describeOptions({
  owner: 'OfficialAccount',
  make: (options) => new OfficialAccount(options as never),
  close,
  base: { appId: 'wx4202f388888ab123', secret: 'a-very-secret-secret', logger: false },
  cases: {
    ...clientCases,
    appId: idCases,
    secret: secretCases,
    tokenEndpoint: { valid: ['stable', 'classic'], invalid: ['fast', 7, ''] },
  } satisfies Record<keyof OfficialAccountOptions, OptionCases>,
  secrets: ['secret'],
  required: ['appId', 'secret'],
  misspelt: { ...clientChecks.misspelt, app_id: 'appId', tokenEndPoint: 'tokenEndpoint', secrets: 'secret' },
  retired: clientChecks.retired,
  declarations: declarations('OfficialAccountOptions'),
});

describeOptions({
  owner: 'MiniProgram',
  make: (options) => new MiniProgram(options as never),
  close,
  base: { appId: 'wx4202f388888ab123', secret: 'a-very-secret-secret', logger: false },
  cases: {
    ...clientCases,
    appId: idCases,
    secret: secretCases,
    tokenEndpoint: { valid: ['stable', 'classic'], invalid: ['fast', 7] },
  } satisfies Record<keyof MiniProgramOptions, OptionCases>,
  secrets: ['secret'],
  required: ['appId', 'secret'],
  misspelt: { ...clientChecks.misspelt, appid: 'appId' },
  retired: clientChecks.retired,
  declarations: declarations('MiniProgramOptions'),
});

describeOptions({
  owner: 'Work',
  make: (options) => new Work(options as never),
  close,
  base: { corpId: 'ww0123456789abcdef', agentId: 1000002, secret: 'a-very-secret-secret', logger: false },
  cases: {
    ...clientCases,
    corpId: idCases,
    agentId: { valid: [1000002, '1000002', 0, '0'], invalid: ['abc', -1, 1.5, '', null, 1e13, Number.NaN] },
    secret: secretCases,
  } satisfies Record<keyof WorkOptions, OptionCases>,
  secrets: ['secret'],
  required: ['corpId', 'agentId', 'secret'],
  misspelt: { ...clientChecks.misspelt, corpid: 'corpId', agentID: 'agentId' },
  retired: clientChecks.retired,
  declarations: declarations('WorkOptions'),
});

const aesKey = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG';

describeOptions({
  owner: 'OpenPlatform',
  make: (options) => new OpenPlatform(options as never),
  close,
  base: { appId: 'wx4202f388888ab123', secret: 'a-very-secret-secret', token: 'callback-token', encodingAESKey: aesKey, durableStore: new MemoryCache(), logger: false },
  cases: {
    ...clientCases,
    appId: idCases,
    secret: secretCases,
    token: { valid: ['callback-token'], invalid: ['', '   ', 42] },
    encodingAESKey: { valid: [aesKey], invalid: ['short', `${aesKey}H`, `${aesKey.slice(0, 42)}=`, 42] },
    durableStore: cacheCases,
    maxClients: { valid: [1, 1000], invalid: [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '1000'] },
    clientIdleMs: ms(1, 600_000),
    // The signed timestamp counts whole seconds: a window under one refuses most fresh pushes.
    pushMaxAgeMs: ms(1000, 300_000),
    // Refused whatever its value, with a sentence of its own (open-platform.test.ts): the platform fetches
    // its tokens itself.
    tokenSource: { valid: [], invalid: [] },
  } satisfies Record<keyof OpenPlatformOptions, OptionCases>,
  secrets: ['secret', 'token', 'encodingAESKey'],
  required: ['appId', 'secret', 'token', 'encodingAESKey', 'durableStore'],
  misspelt: { ...clientChecks.misspelt, maxClient: 'maxClients', encodingAesKey: 'encodingAESKey', durable: 'durableStore' },
  retired: clientChecks.retired,
  declarations: declarations('OpenPlatformOptions'),
});

describeOptions({
  owner: 'MessageCrypto',
  make: (options) => new MessageCrypto(options as never),
  base: { token: 'callback-token', encodingAESKey: aesKey, appId: 'wx4202f388888ab123' },
  cases: {
    token: { valid: ['t'], invalid: ['', 42] },
    encodingAESKey: { valid: [aesKey], invalid: ['short', 42] },
    appId: { valid: ['wx4202f388888ab123'], invalid: ['', 42] },
  } satisfies Record<keyof MessageCryptoOptions, OptionCases>,
  secrets: ['token', 'encodingAESKey'],
  required: ['token', 'encodingAESKey', 'appId'],
  misspelt: { aesKey: 'encodingAESKey' },
  declarations: declarations('MessageCryptoOptions'),
});

describeOptions({
  owner: 'remoteTokenSource',
  make: (options) => remoteTokenSource(options as never),
  close: (made) => (made as { close(): Promise<void> }).close(),
  base: { url: 'http://tokens.internal:7400', key: 'a-long-service-key' },
  cases: {
    url: { valid: ['https://tokens.internal/wxkit'], invalid: ['tokens.internal', 'ftp://tokens', 42] },
    // A key read from a file with its line break, or written with a space: no header could carry it.
    key: { valid: ['12345678', 'pässwort-key'], invalid: ['short', '', 12345678, 'a-long-service-key\n', 'a long service key', '\ta-long-service-key', 'a-long-service-key-€€'] },
    timeoutMs: ms(1, 5000),
    dispatcher: { valid: [dispatcher], invalid: [{}, null] },
  } satisfies Record<keyof RemoteTokenSourceOptions, OptionCases>,
  secrets: ['key'],
  required: ['url', 'key'],
  misspelt: { timeout: 'timeoutMs', uri: 'url' },
  declarations: declarations('RemoteTokenSourceOptions'),
});

describeOptions({
  owner: 'nativeSchema',
  make: (options) => nativeSchema(options),
  base: {},
  cases: {
    prefix: { valid: ['shop:wechat:', ''], invalid: ['a b:', 'tab\t', 42] },
    marginSeconds: { valid: [0, 300, 86_400], invalid: [-1, 86_401, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '300'] },
  } satisfies Record<keyof NativeSchemaOptions, OptionCases>,
  misspelt: { margin: 'marginSeconds', keyPrefix: 'prefix' },
  declarations: declarations('NativeSchemaOptions'),
});

describeOptions({
  owner: 'MemoryCache',
  make: (options) => new MemoryCache(options as MemoryCacheOptions),
  close,
  base: {},
  cases: { now: { valid: [Date.now], invalid: [1, 'now'] } } satisfies Record<keyof MemoryCacheOptions, OptionCases>,
  misspelt: { nowMs: 'now' },
  declarations: declarations('MemoryCacheOptions'),
});

const dir = mkdtempSync(join(tmpdir(), 'wxkit-options-'));

describeOptions({
  owner: 'FileCache',
  make: (options) => new FileCache(options as FileCacheOptions),
  close,
  base: { dir },
  cases: {
    dir: { valid: [dir], invalid: ['', 42, null] },
    guardStaleMs: ms(1, 10_000),
    guardTimeoutMs: ms(1, 12_000),
    now: { valid: [Date.now], invalid: [1] },
  } satisfies Record<keyof FileCacheOptions, OptionCases>,
  misspelt: { directory: 'dir', guardStale: 'guardStaleMs' },
  declarations: declarations('FileCacheOptions'),
});

describe('combinations no single rule can see', () => {
  it('a client with a token source has no follower mode', () => {
    const tokenSource = remoteTokenSource({ url: 'http://127.0.0.1:9', key: 'a-long-service-key' });
    expect(() => new OfficialAccount({ appId: 'wx4202f388888ab123', tokenSource, refresh: 'never' })).toThrow(
      expect.objectContaining({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'refresh' }),
    );
  });

  it('the secret may be left out only by a client that fetches no token itself', async () => {
    const follower = new OfficialAccount({ appId: 'wx4202f388888ab123', refresh: 'never', logger: false });
    await follower.close();
    expect(() => new Work({ corpId: 'ww1', agentId: 1 } as never)).toThrow(expect.objectContaining({ option: 'secret' }));
  });

  it('a duration one ms past the longest timer says where the limit is', () => {
    expect(() => new OfficialAccount({ appId: 'wx4202f388888ab123', secret: 's', timeoutMs: 2 ** 31 })).toThrow(
      'OfficialAccount options.timeoutMs must be an integer from 1 to 2147483647 (ms) (got 2147483648)',
    );
  });
});
