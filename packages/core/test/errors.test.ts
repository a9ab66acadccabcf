import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import * as esm from '../src/index.js';
import { tookToken } from '../src/errors.js';

describe('errors', () => {
  it('each class has its code and its name', () => {
    const api = new esm.WeChatApiError({ errcode: 40125, errmsg: 'invalid appsecret rid: 6929a1b2-2c3d4e5f-0a1b2c3d' }, 'cgi-bin/token');
    expect(api).toMatchObject({
      name: 'WeChatApiError',
      code: 'ERR_WXKIT_WECHAT_API',
      errcode: 40125,
      rid: '6929a1b2-2c3d4e5f-0a1b2c3d',
      path: 'cgi-bin/token',
    });
    expect(api.message).toBe('WeChat rejected cgi-bin/token: errcode 40125 (invalid appsecret)');
    expect(new esm.CacheError('x')).toMatchObject({ name: 'CacheError', code: 'ERR_WXKIT_CACHE' });
    expect(new esm.BadResponseError('x', { path: 'p' })).toMatchObject({ name: 'BadResponseError', code: 'ERR_WXKIT_BAD_RESPONSE' });
    expect(new esm.HttpError('ERR_WXKIT_TIMEOUT', 'x', { path: 'p' })).toMatchObject({ name: 'HttpError', code: 'ERR_WXKIT_TIMEOUT' });
    expect(new esm.ConfigError('x', 'appId')).toMatchObject({ name: 'ConfigError', code: 'ERR_WXKIT_INVALID_OPTION', option: 'appId' });
  });

  it('instanceof holds across the ESM and the CJS copy of the package', () => {
    const cjs = createRequire(import.meta.url)('../dist/index.cjs') as typeof esm;
    expect(cjs.CacheError).not.toBe(esm.CacheError);
    const fromCjs = new cjs.CacheError('down');
    expect(fromCjs).toBeInstanceOf(esm.CacheError);
    expect(fromCjs).toBeInstanceOf(esm.WxkitError);
    expect(new esm.WeChatApiError({ errcode: 1 }, 'p')).toBeInstanceOf(cjs.WeChatApiError);
    // …and the brand does not make one class pass for another.
    expect(fromCjs).not.toBeInstanceOf(esm.WeChatApiError);
    expect(new Error('plain')).not.toBeInstanceOf(esm.WxkitError);
  });

  it("a user's subclass keeps the ordinary instanceof, and its instances carry wxkit's brands", () => {
    class StoreDown extends esm.CacheError {}
    const cjs = createRequire(import.meta.url)('../dist/index.cjs') as typeof esm;
    expect(new esm.CacheError('down')).not.toBeInstanceOf(StoreDown);
    const down = new StoreDown('down');
    expect(down).toBeInstanceOf(StoreDown);
    expect(down).toBeInstanceOf(cjs.CacheError);
    expect(down).toBeInstanceOf(cjs.WxkitError);
    expect(down).not.toBeInstanceOf(cjs.ConfigError);
    expect(down).toMatchObject({ name: 'StoreDown', code: 'ERR_WXKIT_CACHE' });
  });

  it('an errcode WeChat answers before it reads the token (an IP off the whitelist, WeCom\'s untrusted IP, a quota) says nothing of it; one about the call itself says the token worked', () => {
    const answer = (errcode: number) => new esm.WeChatApiError({ errcode, errmsg: 'refused' }, 'cgi-bin/message/send');
    for (const errcode of [-1, 41001, 40164, 60020, 61004, 45009, 45011, 48001, 40001, 42001]) expect(tookToken(answer(errcode))).toBe(false);
    for (const errcode of [40003, 43101, 60011]) expect(tookToken(answer(errcode))).toBe(true);
  });

  it("an authorization code WeChat refuses (61009 spent or invalid, 61010 expired) is described, as WeChat's errmsg says, without the code", () => {
    const refused = (errcode: number, errmsg: string) => new esm.WeChatApiError({ errcode, errmsg }, 'cgi-bin/component/api_query_auth');
    expect(refused(61009, 'code is invalid rid: 6929a1b2-2c3d4e5f-0a1b2c3d').message).toBe(
      'WeChat rejected cgi-bin/component/api_query_auth: errcode 61009 (authorization code is invalid: used already, or not issued to this component)',
    );
    expect(refused(61010, 'code is expired').message).toBe('WeChat rejected cgi-bin/component/api_query_auth: errcode 61010 (authorization code is expired)');
  });

  it('keeps the cause', () => {
    const cause = new Error('ECONNREFUSED');
    expect(new esm.CacheError('down', { cause }).cause).toBe(cause);
  });
});
