// A benchmark worker holding many accounts in one process: an OpenPlatform's authorizers, a ClientPool's
// plain accounts, or plain OfficialAccount clients each with a connection pool of its own. Driven by one
// IPC message, it answers with one report and exits:
//
//   parent → { subject, accounts, component?, baseUrl, redisUrl, sends, concurrency, maxClients? }
//   ← { cold, warm, heapBefore, heapAfter, rssBefore, rssAfter, sockets, closeMs }
//
// Run with --expose-gc: heap and RSS are read after a forced GC, before the accounts are touched and
// after the last send.
import { readdirSync, readlinkSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Agent } from 'undici';
import { ClientPool, OfficialAccount, OpenPlatform } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';

const TEMPLATE = { touser: 'oBenchUser', template_id: 'TPL_BENCH', data: { first: { value: 'Paid' } } };

/**
 * Open sockets of this process, idle ones included (undici unrefs idle sockets, so the active-resource
 * list leaves them out): the descriptors that are sockets, where /proc tells.
 */
function sockets() {
  try {
    return readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:');
      } catch {
        return false;
      }
    }).length;
  } catch {
    return process.getActiveResourcesInfo().filter((name) => name === 'TCPSocketWrap').length;
  }
}

function memory() {
  globalThis.gc();
  globalThis.gc();
  const { heapUsed, rss } = process.memoryUsage();
  return { heapUsed, rss };
}

function label(error) {
  return `${error?.code ?? error?.name ?? 'Error'}${error?.errcode ? ` ${error.errcode}` : ''}`;
}

/** `count` sends at `concurrency`, the i-th to account `pick(i)`; lost sends counted by error label. */
async function drive(count, concurrency, pick, send) {
  const errors = {};
  let ok = 0;
  let next = 0;
  const started = performance.now();
  const lane = async () => {
    while (next < count) {
      const id = pick(next++);
      try {
        await send(id);
        ok += 1;
      } catch (error) {
        errors[label(error)] = (errors[label(error)] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
  return { ok, failed: count - ok, errors, ms: performance.now() - started };
}

/** Writes `values` ([key, value] pairs) to the store, 200 at a time. */
async function seed(store, values) {
  for (let i = 0; i < values.length; i += 200) {
    await Promise.all(values.slice(i, i + 200).map(([key, value]) => store.set(key, value, 86_400)));
  }
}

/** The subject: { send(id), close() }, made after the "before" reading so everything it holds is counted. */
function build(config, cache) {
  const common = { baseUrl: config.baseUrl, cache, logger: false, fallbackDir: false };
  if (config.subject === 'open-platform') {
    const { component } = config;
    const open = new OpenPlatform({
      appId: component.appId,
      secret: component.secret,
      token: component.token,
      encodingAESKey: component.encodingAESKey,
      durableStore: cache,
      maxClients: config.maxClients,
      ...common,
    });
    return { send: (id) => open.officialAccount(id).templateMessage.send(TEMPLATE), close: () => open.close() };
  }
  if (config.subject === 'client-pool') {
    const secrets = config.secrets;
    const pool = new ClientPool({ kind: 'officialAccount', credentials: (appId) => ({ secret: secrets.get(appId) }), maxClients: config.maxClients, ...common });
    return { send: async (id) => (await pool.get(id)).templateMessage.send(TEMPLATE), close: () => pool.close() };
  }
  if (config.subject === 'plain') {
    // What a new user writes for many accounts: a client per account, made up front, each with a
    // connection pool of its own (an explicit Agent, so the figure does not move with the default).
    const clients = new Map();
    const agents = [];
    for (const { appId, secret } of config.accounts) {
      const dispatcher = new Agent({ keepAliveTimeout: 10_000 });
      agents.push(dispatcher);
      clients.set(appId, new OfficialAccount({ appId, secret, dispatcher, ...common }));
    }
    return {
      send: (id) => clients.get(id).templateMessage.send(TEMPLATE),
      close: async () => {
        await Promise.all([...clients.values()].map((client) => client.close()));
        await Promise.all(agents.map((agent) => agent.close()));
      },
    };
  }
  throw new Error(`unknown subject ${config.subject}`);
}

process.once('message', async (config) => {
  const cache = new RedisCache(config.redisUrl);
  const ids = config.accounts.map((account) => account.appId ?? account.authorizerAppId);
  if (config.subject === 'open-platform') {
    // The durable store as an authorization flow (or a migration) leaves it: each refresh token under
    // the key schema, and the last verify ticket. No access token yet: every first send refreshes.
    const { component } = config;
    const now = Math.floor(Date.now() / 1000);
    await seed(cache, [
      [`wechat:component_verify_ticket:${component.appId}`, JSON.stringify({ component_verify_ticket: config.ticket, create_time: now, received_at: now })],
      ...config.accounts.map(({ authorizerAppId, refreshToken }) => [
        `wechat:authorizer_refresh_token:${component.appId}:${authorizerAppId}`,
        JSON.stringify({ authorizer_refresh_token: refreshToken, updated_at: now, updated_by: 'bench' }),
      ]),
    ]);
  }
  // The accounts' own data (the SaaS's database, as it were) is loaded before the first reading.
  if (config.subject === 'client-pool') config.secrets = new Map(config.accounts.map((account) => [account.appId, account.secret]));
  if (config.subject !== 'plain') config.accounts = [];
  const baseSockets = sockets();
  const before = memory();
  const subject = build(config, cache);
  // Each account sends once from cold, then `sends` more go to accounts picked at random.
  const cold = await drive(ids.length, config.concurrency, (i) => ids[i], subject.send);
  const warm = await drive(config.sends, config.concurrency, () => ids[Math.floor(Math.random() * ids.length)], subject.send);
  const openSockets = sockets() - baseSockets;
  const after = memory();
  const started = performance.now();
  await subject.close();
  const closeMs = performance.now() - started;
  await cache.close();
  process.send({
    cold,
    warm,
    heapBefore: before.heapUsed,
    heapAfter: after.heapUsed,
    rssBefore: before.rss,
    rssAfter: after.rss,
    sockets: openSockets,
    closeMs,
  });
  process.disconnect();
});
process.send({ ready: true });
