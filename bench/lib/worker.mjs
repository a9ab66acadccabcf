// A benchmark worker process: one client library (wxkit, a peer, or raw undici) sending to the mock
// WeChat server, driven over IPC by the benchmark runner.
//
//   parent → { op: 'send' | 'getToken', count, concurrency }   → { ok, failed, errors, latencies?, ms }
//   parent → { op: 'rss' }                                      → { rss }
//   parent → { op: 'exit' }
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';

const require = createRequire(import.meta.url);
const config = JSON.parse(process.env.WXKIT_BENCH);
const TEMPLATE = {
  touser: 'oBenchUser',
  template_id: 'TPL_BENCH',
  data: { first: { value: 'Paid' }, keyword1: { value: '#1001' } },
};

/** A store client for wxkit, or a node-redis client for the peers' Redis glue. */
async function wxkitStore(store) {
  switch (store.kind) {
    case 'memory':
      return new (await import('@wxkit/core')).MemoryCache();
    case 'file':
      return new (await import('@wxkit/file')).FileCache({ dir: store.dir });
    case 'redis':
      return new (await import('@wxkit/redis')).RedisCache(store.url);
    case 'memcached':
      return new (await import('@wxkit/memcached')).MemcachedCache(store.url);
    default:
      throw new Error(`unknown store ${store.kind}`);
  }
}

async function redisClient(url) {
  const { createClient } = await import('@keyv/redis');
  const client = createClient({ url });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/** Builds { send, getToken, close } for the configured library. */
async function build() {
  if (config.library === 'wxkit') {
    const { OfficialAccount } = await import('@wxkit/core');
    const cache = await wxkitStore(config.store);
    const app = new OfficialAccount({
      appId: config.appId,
      secret: config.secret,
      baseUrl: config.baseUrl,
      tokenEndpoint: config.endpoint ?? 'classic',
      cache,
      logger: false,
      ...(config.memoMs === undefined ? {} : { memoMs: config.memoMs }),
    });
    return {
      send: () => app.templateMessage.send(TEMPLATE),
      getToken: () => app.accessToken.getToken(),
      close: async () => {
        await app.close();
        await cache.close?.();
      },
    };
  }

  if (config.library === 'node-easywechat') {
    // node-easywechat 3.6.2: the mock's URL through config.http.baseURL, and a Redis cache written
    // against its CacheInterface (get/has/set/delete), as its README suggests for shared caches.
    const { OfficialAccount } = require('node-easywechat');
    const redis = await redisClient(config.store.url);
    const cache = {
      async get(key) {
        const raw = await redis.get(key);
        return raw === null ? null : JSON.parse(raw);
      },
      async has(key) {
        return (await redis.exists(key)) === 1;
      },
      async set(key, data, lifetime) {
        await redis.set(key, JSON.stringify(data), lifetime ? { EX: lifetime } : undefined);
        return true;
      },
      async delete(key) {
        await redis.del(key);
        return true;
      },
    };
    const app = new OfficialAccount({
      app_id: config.appId,
      secret: config.secret,
      token: 'bench',
      aes_key: '',
      use_stable_access_token: config.endpoint === 'stable',
      http: { baseURL: `${config.baseUrl}/` },
    });
    app.setCache(cache);
    const client = app.getClient();
    return {
      send: async () => {
        const response = await client.postJson('cgi-bin/message/template/send', TEMPLATE);
        const body = response.toObject();
        if (body.errcode) throw Object.assign(new Error(body.errmsg), { errcode: body.errcode });
        return body;
      },
      getToken: () => app.getAccessToken().getToken(),
      close: () => redis.close(),
    };
  }

  if (config.library === 'co-wechat-api') {
    // co-wechat-api 3.11: the mock's URL through api.prefix, and the token in Redis through its
    // getToken/saveToken hooks, as its README shows for clusters.
    const API = require('co-wechat-api');
    const redis = await redisClient(config.store.url);
    const key = `co-wechat-api:access_token:${config.appId}`;
    const api = new API(
      config.appId,
      config.secret,
      async () => {
        const raw = await redis.get(key);
        return raw === null ? null : JSON.parse(raw);
      },
      async (token) => {
        if (token) await redis.set(key, JSON.stringify(token));
        else await redis.del(key);
      },
    );
    api.prefix = `${config.baseUrl}/cgi-bin/`;
    return {
      send: () => api.sendTemplate(TEMPLATE.touser, TEMPLATE.template_id, undefined, undefined, TEMPLATE.data),
      getToken: async () => (await api.ensureAccessToken()).accessToken,
      close: () => redis.close(),
    };
  }

  if (config.library === 'raw') {
    // The physical limit: an undici Pool sending the same request with a token known to be valid.
    const { Pool } = await import('undici');
    const pool = new Pool(config.baseUrl, { connections: 128 });
    const body = JSON.stringify(TEMPLATE);
    return {
      send: async () => {
        const res = await pool.request({
          method: 'POST',
          path: `/cgi-bin/message/template/send?access_token=${config.token}`,
          headers: { 'content-type': 'application/json' },
          body,
        });
        const json = JSON.parse(await res.body.text());
        if (json.errcode) throw Object.assign(new Error(json.errmsg), { errcode: json.errcode });
        return json;
      },
      getToken: async () => config.token,
      close: () => pool.close(),
    };
  }
  throw new Error(`unknown library ${config.library}`);
}

const client = await build();

async function run({ op, count, concurrency, latencies: wantLatencies }) {
  const fn = op === 'send' ? client.send : client.getToken;
  const latencies = wantLatencies ? new Float64Array(count) : undefined;
  const errors = {};
  let ok = 0;
  let next = 0;
  const started = performance.now();
  const lane = async () => {
    while (next < count) {
      const i = next++;
      const t = performance.now();
      try {
        await fn();
        ok += 1;
      } catch (error) {
        const label = `${error?.code ?? error?.name ?? 'Error'}${error?.errcode ? ` ${error.errcode}` : ''}`;
        errors[label] = (errors[label] ?? 0) + 1;
      }
      if (latencies) latencies[i] = performance.now() - t;
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency ?? count, count) }, lane));
  return { ok, failed: count - ok, errors, ms: performance.now() - started, latencies: latencies ? [...latencies] : undefined };
}

process.on('message', async (message) => {
  if (message.op === 'exit') {
    await client.close().catch(() => undefined);
    process.exit(0);
  }
  if (message.op === 'rss') {
    globalThis.gc?.();
    const { rss, heapUsed } = process.memoryUsage();
    process.send({ rss, heapUsed });
    return;
  }
  process.send(await run(message));
});
process.send({ ready: true });
