// What both programs do at start-up: one OfficialAccount, its token shared through Redis.
// Everything comes from the environment, as it would in production.
import { OfficialAccount } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';

export function wechatFromEnv(): { app: OfficialAccount; cache: RedisCache } {
  const app = new OfficialAccount({
    appId: required('WECHAT_APPID'),
    secret: required('WECHAT_SECRET'),
    // Unset in production: the real https://api.weixin.qq.com.
    ...(process.env.WECHAT_BASE_URL ? { baseUrl: process.env.WECHAT_BASE_URL } : {}),
    // The PHP app next to these programs (EasyWeChat 4) fetches on the classic endpoint; sharing its
    // token means using the same one.
    tokenEndpoint: 'classic',
  });
  const cache = new RedisCache(required('REDIS_URL'));
  app.setCache(cache);
  return { app, cache };
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name} in the environment`);
  return value;
}
