// The worker of the per-request benchmark: a server that makes a client for each request (as many use
// an SDK) on one long-lived RedisCache, sends once with it, and then closes it or drops it. Driven over IPC:
//
//   parent → { op: 'run', appId, secret, baseUrl, redisUrl, requests, concurrency, closeEach, sampleAt }
//          ← { heapAtSampleBytes, heapAtEndBytes, ok, failed, errors }
import { OfficialAccount } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';

const TEMPLATE = { touser: 'oBenchUser', template_id: 'TPL_BENCH', data: { first: { value: 'Paid' } } };

/** Heap after GC, once the current job is over (so that nothing it made is kept alive by it). */
async function heapUsed() {
  for (let round = 0; round < 3; round += 1) {
    await new Promise((resolve) => setImmediate(resolve));
    globalThis.gc();
  }
  return process.memoryUsage().heapUsed;
}

async function run({ appId, secret, baseUrl, redisUrl, requests, concurrency, closeEach, sampleAt }) {
  const cache = new RedisCache(redisUrl);
  let started = 0;
  let ok = 0;
  const errors = {};
  // One request: a client of its own, one send, then close() or nothing.
  const request = async () => {
    const app = new OfficialAccount({ appId, secret, baseUrl, tokenEndpoint: 'classic', cache, logger: false });
    try {
      await app.templateMessage.send(TEMPLATE);
      ok += 1;
    } catch (error) {
      const label = `${error?.code ?? error?.name ?? 'Error'}`;
      errors[label] = (errors[label] ?? 0) + 1;
    }
    if (closeEach) await app.close();
  };
  // `count` more requests, `concurrency` at a time.
  const part = async (count) => {
    const until = started + count;
    const lane = async () => {
      while (started < until) {
        started += 1;
        await request();
      }
    };
    await Promise.all(Array.from({ length: concurrency }, lane));
  };
  await part(sampleAt);
  const heapAtSampleBytes = await heapUsed();
  await part(requests - sampleAt);
  const heapAtEndBytes = await heapUsed();
  await cache.close();
  return { heapAtSampleBytes, heapAtEndBytes, ok, failed: requests - ok, errors };
}

process.on('message', async (message) => {
  if (message.op === 'exit') process.exit(0);
  process.send(await run(message));
});
process.send({ ready: true });
