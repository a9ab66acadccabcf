// A benchmark worker process: one client library (wxkit, a peer, or raw undici) sending to the mock
// WeChat server, driven over IPC by the benchmark runner.
//
//   parent → { op: 'send' | 'getToken', count, concurrency }   → { ok, failed, errors, latencies?, ms, cpuUs }
//            (cpuUs: the process's CPU time, user and system, per call of the run)
//            with `deadlineMs`: calls still unanswered then count as failed ('no answer'), and the run ends
//   parent → { op: 'send', durationMs, intervalMs, concurrency } → the same, for calls started during
//            `durationMs`, each lane starting one every `intervalMs` (a service's steady traffic)
//   parent → { op: 'rss' }                                      → { rss }
//   parent → { op: 'switch', appId, secret }                    → {} a new client for another app, on the
//            same store connection (a cold account in a warm process: connections open, code compiled)
//   parent → { op: 'send', …, awaitToken: true }                 → the raw baseline starts its sends once
//            parent → { op: 'token', token } (no answer) hands it the token one fetch brought back
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
    case 'keyv-redis': {
      // KeyvCache on @keyv/redis: no atomic operation KeyvCache can reach, so no store-wide lock.
      const { KeyvCache } = await import('@wxkit/keyv');
      const KeyvRedis = (await import('@keyv/redis')).default;
      return owning(KeyvCache, new KeyvRedis({ url: store.url, socket: { connectTimeout: 500, reconnectStrategy: false } }, { connectionTimeout: 500 }));
    }
    case 'keyv-postgres': {
      // KeyvCache on @keyv/postgres: add, deleteIfEquals and compareAndSet in SQL, so one lock for all.
      const { KeyvCache } = await import('@wxkit/keyv');
      const KeyvPostgres = (await import('@keyv/postgres')).default;
      return owning(KeyvCache, new KeyvPostgres({ uri: store.uri, table: store.table }));
    }
    default:
      throw new Error(`unknown store ${store.kind}`);
  }
}

/** KeyvCache never disconnects a store it was given; the worker owns this one, so close() ends both. */
function owning(KeyvCache, store) {
  const cache = new KeyvCache(store);
  const close = cache.close.bind(cache);
  cache.close = async () => {
    await close();
    await store.disconnect().catch(() => undefined);
  };
  return cache;
}

// One store connection per worker, kept across `switch`es: a cold account is not a cold process.
let wxkitCache;
let peerRedis;

async function redisClient(url) {
  if (peerRedis) return peerRedis;
  const { createClient } = await import('@keyv/redis');
  const client = createClient({ url });
  client.on('error', () => undefined);
  // node-redis's connect() waits forever for a server that accepts and never answers; pointed at one,
  // the glue connects in the background and its commands wait in node-redis's offline queue.
  if (config.connectInBackground) client.connect().catch(() => undefined);
  else await client.connect();
  peerRedis = client;
  return client;
}

/** Builds { send, getToken, close } for the configured library. */
async function build() {
  if (config.library === 'wxkit') {
    const { OfficialAccount } = await import('@wxkit/core');
    const cache = (wxkitCache ??= await wxkitStore(config.store));
    const app = new OfficialAccount({
      appId: config.appId,
      secret: config.secret,
      baseUrl: config.baseUrl,
      tokenEndpoint: config.endpoint ?? 'classic',
      cache,
      logger: false,
      ...(config.memoMs === undefined ? {} : { memoMs: config.memoMs }),
      // fallbackDir, timeoutMs, cacheTimeoutMs… as a scenario sets them.
      ...config.clientOptions,
    });
    return {
      send: () => app.templateMessage.send(TEMPLATE),
      getToken: () => app.accessToken.getToken(),
      closeApp: () => app.close(),
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

let client = await build();

/**
 * An error's label in the results: its code (and errcode), or for an error without either the start of
 * its message, cut before anything that may quote WeChat's answer or a URL (whose query holds the secret).
 */
function label(error) {
  const message = String(error?.message ?? '')
    .split(/:|\b(?:GET|POST) |https?\b/)[0]
    .trim()
    .slice(0, 48);
  const code = error?.code ?? (error?.errcode === undefined ? `${error?.name ?? 'Error'}${message ? `: ${message}` : ''}` : error?.name);
  return `${code}${error?.errcode ? ` ${error.errcode}` : ''}`;
}

async function run({ op, count, concurrency, latencies: wantLatencies, deadlineMs, durationMs, intervalMs = 0 }) {
  const fn = op === 'send' ? client.send : client.getToken;
  const timed = durationMs !== undefined;
  const latencies = wantLatencies && !timed ? new Float64Array(count) : undefined;
  const errors = {};
  let ok = 0;
  let started = 0;
  let expired = false;
  const begin = performance.now();
  const cpu0 = process.cpuUsage();
  // A call that never settles (a hung store or endpoint) must not hold the run: past the deadline the
  // run ends, and what is unanswered counts as failed.
  const NO_ANSWER = Symbol('no answer');
  let deadlineTimer;
  const deadline =
    deadlineMs === undefined
      ? undefined
      : new Promise((resolve) => {
          deadlineTimer = setTimeout(() => {
            expired = true;
            resolve(NO_ANSWER);
          }, deadlineMs);
        });
  const more = () => !expired && (timed ? performance.now() - begin < durationMs : started < count);
  const lane = async () => {
    while (more()) {
      const i = started++;
      const t = performance.now();
      const call = fn().then(
        () => undefined,
        (error) => error ?? new Error('rejected'),
      );
      // Without a deadline, no race: a reaction left on a pending promise per call would grow the heap
      // that the memory benchmark measures.
      const outcome = deadline ? await Promise.race([call, deadline]) : await call;
      if (outcome === NO_ANSWER) break;
      if (outcome === undefined) ok += 1;
      else errors[label(outcome)] = (errors[label(outcome)] ?? 0) + 1;
      if (latencies) latencies[i] = performance.now() - t;
      const wait = intervalMs - (performance.now() - t);
      if (timed && wait > 0 && more()) await new Promise((resolve) => setTimeout(resolve, wait));
    }
  };
  await Promise.all(Array.from({ length: timed ? concurrency : Math.min(concurrency ?? count, count) }, lane));
  clearTimeout(deadlineTimer);
  const total = timed ? started : count;
  const answered = ok + Object.values(errors).reduce((sum, n) => sum + n, 0);
  if (answered < total) errors[`no answer within ${deadlineMs} ms`] = total - answered;
  const cpu = process.cpuUsage(cpu0);
  return { cpuUs: (cpu.user + cpu.system) / total, ok, failed: total - ok, sent: total, errors, ms: performance.now() - begin, latencies: latencies ? [...latencies] : undefined };
}

// The raw baseline's cold round: its sends wait for the token the runner fetched.
let tokenArrived;

process.on('message', async (message) => {
  if (message.op === 'token') {
    config.token = message.token;
    tokenArrived?.();
    tokenArrived = undefined;
    return;
  }
  if (message.awaitToken) await new Promise((resolve) => (tokenArrived = resolve));
  if (message.op === 'exit') {
    // A client of a store that never answers may never finish closing: give it a second.
    await Promise.race([client.close().catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 1000))]);
    process.exit(0);
  }
  if (message.op === 'switch') {
    // The old client goes, its store connection stays (the peers' close() would end it: keep it open).
    // The new client is made first: the pool a process shares per origin closes with its last client,
    // and a warm process keeps its connections to WeChat (a platform's other accounts hold them open).
    Object.assign(config, { appId: message.appId, secret: message.secret });
    // The raw baseline keeps its pool: only the token changes, and it comes with the next cold round.
    if (config.library === 'raw') {
      process.send({});
      return;
    }
    const previous = client;
    client = await build();
    await previous.closeApp?.().catch(() => undefined);
    process.send({});
    return;
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
