// The documented API as a strict TypeScript project uses it. packaging.test.ts compiles this file twice in
// a scratch project (as .mts against the ESM typings, as .cts against the CJS ones) with skipLibCheck off
// and the newest @types/node; the root type check compiles it against the sources.
import {
  MemoryCache,
  MiniProgram,
  OfficialAccount,
  WeChatApiError,
  Work,
  WxkitError,
  easyWeChat4,
  nativeSchema,
  remoteTokenSource,
  type ClientOptions,
  type TokenCache,
  type TokenEvents,
  type WxkitErrorCode,
} from '@wxkit/core';
import { FileCache } from '@wxkit/file';
import { KeyvCache } from '@wxkit/keyv';
import { MemcachedCache } from '@wxkit/memcached';
import { RedisCache, type RedisCacheOptions } from '@wxkit/redis';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { Keyv } from 'keyv';

/** A store of the user's own: the TokenCache contract is all wxkit asks for. */
class MapCache implements TokenCache {
  readonly #map = new Map<string, string>();
  async get(key: string): Promise<string | undefined> {
    return this.#map.get(key);
  }
  async set(key: string, value: string, _ttlSeconds: number): Promise<void> {
    this.#map.set(key, value);
  }
  async delete(key: string): Promise<void> {
    this.#map.delete(key);
  }
}

export async function useTheApi(openid: string, pageUrl: string): Promise<string[]> {
  const mock: MockWeChat = await startMockWeChat();
  const { appId, secret } = mock.createApp();
  const shared: ClientOptions = { baseUrl: mock.url, timeoutMs: 5_000, logger: false };

  const app = new OfficialAccount({ appId, secret, ...shared, schema: nativeSchema({ prefix: 'wechat:' }) });
  app.setCache(new MemoryCache());
  app.setCache(new FileCache({ dir: '/var/lib/myapp/wechat' }));
  app.setCache(new MapCache());
  app.accessToken.setCache(new MemoryCache());

  const fetchedIn: number[] = [];
  const onFetched = (event: TokenEvents['access_token.fetched']) => fetchedIn.push(event.ms);
  app.on('access_token.fetched', onFetched).once('cache.unavailable', (event) => console.warn(event.op, event.error));
  app.off('access_token.fetched', onFetched);
  const sent = await app.templateMessage.send({ touser: openid, template_id: 'TPL', data: { first: { value: 'Paid' } } });
  const token: string = await app.accessToken.getToken();
  const config = await app.jssdk.buildConfig({ url: pageUrl, jsApiList: ['chooseImage'] });

  const mp = new MiniProgram({ appId: 'wx0123456789abcdef', secret: 'mp-secret', schema: easyWeChat4() });
  const work = new Work({ corpId: 'ww0123456789abcdef', agentId: 1000002, secret: 'work-secret' });
  const follower = new OfficialAccount({ appId, refresh: 'never', lockWaitMs: 1_000 });
  const remote = new OfficialAccount({ appId, tokenSource: remoteTokenSource({ url: 'http://127.0.0.1:1/', key: 'k' }) });

  const redisOptions: RedisCacheOptions = { url: 'redis://127.0.0.1:1/0' };
  const stores: TokenCache[] = [new RedisCache(redisOptions), new MemcachedCache('127.0.0.1:1'), new KeyvCache(new Keyv({ namespace: undefined }))];

  let code: WxkitErrorCode | undefined;
  try {
    await mp.accessToken.getToken();
  } catch (error) {
    if (error instanceof WeChatApiError) code = error.code;
    else if (error instanceof WxkitError) code = error.code;
  }

  await Promise.all([app.close(), mp.close(), work.close(), follower.close(), remote.close(), ...stores.map((store) => store.close?.())]);
  await mock.close();
  return [String(sent.msgid), token, config.signature, String(code), String(fetchedIn.length)];
}
