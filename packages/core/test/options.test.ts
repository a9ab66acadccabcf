import { describe, expect, it } from 'vitest';
import { ConfigError, MemoryCache, OfficialAccount, Work, nativeSchema } from '../src/index.js';

const base = { appId: 'wx4202f388888ab123', secret: 'a-very-secret-secret', logger: false as const };

/** Builds a client with `options` and returns the ConfigError it throws. */
function configError(options: unknown): ConfigError {
  try {
    new OfficialAccount(options as never);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).code).toBe('ERR_WXKIT_INVALID_OPTION');
    return error as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('OfficialAccount options are checked at construction, before any I/O', () => {
  it.each([
    ['appId', { ...base, appId: undefined }],
    ['appId', { ...base, appId: 'wx 123' }],
    ['appId', { ...base, appId: 'wx:123' }],
    ['secret', { ...base, secret: undefined }],
    ['secret', { ...base, secret: '   ' }],
    ['tokenEndpoint', { ...base, tokenEndpoint: 'fast' }],
    ['baseUrl', { ...base, baseUrl: 'ftp://example.com' }],
    ['baseUrl', { ...base, baseUrl: 'https://api.example.com/?debug=1' }],
    ['timeoutMs', { ...base, timeoutMs: -1 }],
    ['timeoutMs', { ...base, timeoutMs: '10s' }],
    ['memoMs', { ...base, memoMs: Number.NaN }],
    ['lockLeaseMs', { ...base, lockLeaseMs: 15_000 }],
    ['lockWaitMs', { ...base, lockWaitMs: 0 }],
    ['serviceName', { ...base, serviceName: 'has space' }],
    ['cache', { ...base, cache: {} }],
    ['cache', { ...base, cache: 'redis://127.0.0.1:6379' }],
    ['logger', { ...base, logger: 'console' }],
    ['dispatcher', { ...base, dispatcher: {} }],
    ['schema', { ...base, schema: { name: 'x' } }],
    ['now', { ...base, now: 5 }],
  ])('names options.%s', (option, options) => {
    const error = configError(options);
    expect(error.option).toBe(option);
    expect(error.message).toContain(`options.${option}`);
  });

  it('shows the value given to an option with a fixed set of values, to make the typo plain', () => {
    expect(configError({ ...base, tokenEndpoint: 'fast' }).message).toBe(`OfficialAccount options.tokenEndpoint must be 'stable' or 'classic' (got "fast")`);
    expect(configError({ ...base, refresh: 'sometimes' }).message).toBe(`OfficialAccount options.refresh must be 'auto' or 'never' (got "sometimes")`);
    expect(configError({ ...base, tokenEndpoint: 7 }).message).toContain('(got 7)');
  });

  it('never echoes the secret', () => {
    const error = configError({ ...base, tokenEndpoint: 'fast' });
    expect(error.message).not.toContain(base.secret);
    const numeric = configError({ ...base, secret: 12345678 });
    expect(numeric.message).toContain('(got number)');
    expect(numeric.message).not.toContain('12345678');
  });

  it('a secret still in the quotes of an env file (docker --env-file keeps them) is refused at construction, and the message says so without the secret', () => {
    for (const secret of [`"${base.secret}"`, `'${base.secret}'`]) {
      const error = configError({ ...base, secret });
      expect(error.option).toBe('secret');
      expect(error.message).toContain('quotes');
      expect(error.message).not.toContain(base.secret);
    }
  });

  it('an appId with a space or a line break (read from a file) says so, as the id itself is shown nowhere', () => {
    for (const appId of [`${base.appId}\n`, ` ${base.appId}`, `${base.appId}\r\n`]) {
      const error = configError({ ...base, appId });
      expect(error.option).toBe('appId');
      expect(error.message).toContain('space or line break');
    }
  });

  it("a WeCom agentId with a leading zero is refused, naming the id as WeCom shows it: '01000002' and 1000002 would share two tokens under two keys", () => {
    let error: unknown;
    try {
      new Work({ corpId: 'ww0123456789abcdef', agentId: '01000002', secret: base.secret, logger: false });
    } catch (caught) {
      error = caught;
    }
    expect(error).toMatchObject({ code: 'ERR_WXKIT_INVALID_OPTION', option: 'agentId' });
    expect((error as Error).message).toContain('leading zero');
    expect((error as Error).message).toContain('(1000002)');
  });

  it('a baseUrl that ends in the API path (/cgi-bin) is refused: the paths are added to it', () => {
    const error = configError({ ...base, baseUrl: 'https://api.weixin.qq.com/cgi-bin/' });
    expect(error.option).toBe('baseUrl');
    expect(error.message).toContain('without /cgi-bin');
    expect(() => new OfficialAccount({ ...base, baseUrl: 'https://gateway.example.com/wechat/' })).not.toThrow();
  });

  it('rejects an unknown option and suggests the right spelling', () => {
    const error = configError({ ...base, tokenEndPoint: 'classic' });
    expect(error.option).toBe('tokenEndPoint');
    expect(error.message).toContain('did you mean tokenEndpoint?');
    expect(configError({ ...base, app_id: 'x' }).message).toContain('did you mean appId?');
  });

  it('the options must be an object', () => {
    expect(configError(undefined).message).toBe('OfficialAccount options must be an object (got undefined)');
  });

  it('a Keyv instance as cache gets an error that says how to wrap it', () => {
    class Keyv {
      opts = {};
      iterator = undefined;
      get() {}
      set() {}
      delete() {}
    }
    const error = configError({ ...base, cache: new Keyv() });
    expect(error.message).toContain('KeyvCache');
    expect(error.message).toContain('@wxkit/keyv');
  });

  it('setCache() checks its argument the same way', () => {
    const app = new OfficialAccount(base);
    expect(() => app.setCache({} as never)).toThrow(ConfigError);
    expect(() => app.accessToken.setCache(null as never)).toThrow(/cache must be a TokenCache/);
    const cache = new MemoryCache();
    expect(app.setCache(cache)).toBe(app);
    expect(app.cache).toBe(cache);
  });

  it('accepts every documented option', () => {
    const app = new OfficialAccount({
      ...base,
      baseUrl: 'https://proxy.internal/wechat',
      tokenEndpoint: 'classic',
      cache: new MemoryCache(),
      schema: nativeSchema({ prefix: 'shop:', marginSeconds: 600 }),
      timeoutMs: 5000,
      maxResponseBytes: 65536,
      memoMs: 0,
      lockWaitMs: 9000,
      serviceName: 'order-service',
      cacheTimeoutMs: 500,
      logger: console,
      now: Date.now,
    });
    expect(app.accessToken.cacheKey).toBe('shop:access_token:wx4202f388888ab123');
  });

  it('nativeSchema() checks its own options', () => {
    expect(() => nativeSchema({ prefix: 'a b:' })).toThrow(/nativeSchema options.prefix/);
    expect(() => nativeSchema({ marginSeconds: 1.5 })).toThrow(/nativeSchema options.marginSeconds must be an integer/);
  });

  it('MemoryCache checks its options', () => {
    expect(() => new MemoryCache({ now: 1 as never })).toThrow(/MemoryCache options.now must be a function/);
  });
});
