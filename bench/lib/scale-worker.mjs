// The worker of the scale benchmark: many accounts in one process, one client each, against the mock
// WeChat server and one Redis. Driven over IPC:
//
//   parent → { op: 'run', apps, tokens?, subject, baseUrl, redisUrl, sends, concurrency }
//          ← { accounts, heapPerAccountBytes, rssPerAccountBytes, sockets, ok, failed, errors, closeMs, … }
//
// subject 'wxkit': one OfficialAccount per app on one RedisCache, clients as a new user would write them.
// subject 'wxkit-agent-each': the same, each client given an undici Agent of its own (what every client
// opened for itself before clients shared one dispatcher per origin).
// subject 'raw': one undici Pool and a token known to be valid per app: the memory and sockets the work
// itself needs.
import diagnostics from 'node:diagnostics_channel';
import { performance } from 'node:perf_hooks';

const TEMPLATE = {
  touser: 'oBenchUser',
  template_id: 'TPL_BENCH',
  data: { first: { value: 'Paid' }, keyword1: { value: '#1001' } },
};

function label(error) {
  return `${error?.code ?? error?.name ?? 'Error'}${error?.errcode ? ` ${error.errcode}` : ''}`;
}

// HTTP connections to WeChat, counted as undici opens and closes them (idle ones are unref'd, so the
// process's active handles do not show them): open now, and the most open at once.
let openSockets = 0;
let peakSockets = 0;
let opened = 0;
diagnostics.subscribe('undici:client:connected', ({ socket }) => {
  opened += 1;
  openSockets += 1;
  peakSockets = Math.max(peakSockets, openSockets);
  socket.once('close', () => (openSockets -= 1));
});

function memory() {
  globalThis.gc();
  globalThis.gc();
  const { heapUsed, rss } = process.memoryUsage();
  return { heapUsed, rss };
}

/** Runs `count` calls of `fn(i)`, `concurrency` at a time; counts what succeeded and what failed, by error. */
async function drive(count, concurrency, fn) {
  let next = 0;
  let ok = 0;
  const errors = {};
  const lane = async () => {
    while (next < count) {
      const i = next++;
      try {
        await fn(i);
        ok += 1;
      } catch (error) {
        errors[label(error)] = (errors[label(error)] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
  return { ok, failed: count - ok, errors };
}

async function run({ apps, tokens, subject, baseUrl, redisUrl, sends, concurrency }) {
  const accounts = apps.length;
  const before = memory();
  let send;
  let close;
  if (subject === 'raw') {
    const { Pool } = await import('undici');
    const pool = new Pool(baseUrl, { connections: concurrency });
    const body = JSON.stringify(TEMPLATE);
    send = async (i) => {
      const res = await pool.request({
        method: 'POST',
        path: `/cgi-bin/message/template/send?access_token=${tokens[i]}`,
        headers: { 'content-type': 'application/json' },
        body,
      });
      const json = await res.body.json();
      if (json.errcode) throw Object.assign(new Error(json.errmsg), { errcode: json.errcode });
    };
    close = () => pool.close();
  } else {
    const { OfficialAccount } = await import('@wxkit/core');
    const { RedisCache } = await import('@wxkit/redis');
    const { Agent } = await import('undici');
    const cache = new RedisCache(redisUrl);
    const agents = [];
    const clients = apps.map(({ appId, secret }) => {
      const dispatcher = subject === 'wxkit-agent-each' ? new Agent({ keepAliveTimeout: 10_000 }) : undefined;
      if (dispatcher) agents.push(dispatcher);
      return new OfficialAccount({ appId, secret, baseUrl, tokenEndpoint: 'classic', cache, logger: false, ...(dispatcher ? { dispatcher } : {}) });
    });
    send = (i) => clients[i].templateMessage.send(TEMPLATE);
    close = async () => {
      await Promise.all(clients.map((client) => client.close()));
      await Promise.all(agents.map((agent) => agent.close()));
      await cache.close();
    };
  }
  // Each account sends once from a cold store, then the sends spread over all of them, round robin.
  const cold = await drive(accounts, concurrency, (i) => send(i));
  const started = performance.now();
  const spread = await drive(sends, concurrency, (i) => send(i % accounts));
  const spreadMs = performance.now() - started;
  const socketsEnd = openSockets;
  const after = memory();
  const closing = performance.now();
  await close();
  const closeMs = performance.now() - closing;
  const errors = { ...cold.errors };
  for (const [k, n] of Object.entries(spread.errors)) errors[k] = (errors[k] ?? 0) + n;
  return {
    accounts,
    heapPerAccountBytes: (after.heapUsed - before.heapUsed) / accounts,
    rssPerAccountBytes: (after.rss - before.rss) / accounts,
    heapMb: after.heapUsed / 1024 / 1024,
    rssMb: after.rss / 1024 / 1024,
    peakSockets,
    socketsEnd,
    socketsOpened: opened,
    sends: accounts + sends,
    failed: cold.failed + spread.failed,
    errors,
    sendsPerSecond: spread.ok / (spreadMs / 1000),
    closeMs,
    // What still holds the event loop once everything is closed (the IPC channel aside).
    handlesAfterClose: process.getActiveResourcesInfo().filter((what) => what !== 'PipeWrap' && what !== 'Timeout').length,
  };
}

process.on('message', async (message) => {
  if (message.op === 'exit') process.exit(0);
  process.send(await run(message));
});
process.send({ ready: true });
