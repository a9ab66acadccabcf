/**
 * A worker process for multi-process tests: one OfficialAccount with its own client of the shared store,
 * driven over IPC by {@link describeTokenSharing} (or any test that forks it).
 *
 * Parent → worker: `{ type: 'run', id, op: 'getToken' | 'send', count }` runs `count` calls at once;
 * `{ type: 'configure', id, config }` closes the app and builds another (the store's client is kept);
 * `{ type: 'release', id }` closes the app; `{ type: 'exit' }` closes everything and exits.
 * Worker → parent: `{ type: 'ready' }` once built (with the `id` of a configure), then
 * `{ type: 'result', id, values, ok, errors }` for each run.
 */
import * as core from '@wxkit/core';
import { MemoryCache, OfficialAccount, remoteTokenSource, type KeySchema, type TokenCache } from '@wxkit/core';
import { createStore, settleWithin, type WorkerConfig, type WorkerResult, type WorkerRun } from './processes.js';

async function main(): Promise<void> {
  const first = JSON.parse(process.env.WXKIT_WORKER ?? 'null') as WorkerConfig | null;
  if (!first || !process.send) throw new Error('worker.js is started by describeTokenSharing through fork()');
  let unhandled = 0;
  // Counted, not fatal: a test asserts there were none.
  process.on('unhandledRejection', () => (unhandled += 1));
  let events: Record<string, number> = {};
  const record = (fields: { event: string }) => {
    events[fields.event] = (events[fields.event] ?? 0) + 1;
  };
  let offset = 0;
  // The store clients this process made, by spec: a worker configured again for another app keeps its
  // connection (a process's store client outlives its apps, as in a program).
  const stores = new Map<string, TokenCache>();
  let current: { app: OfficialAccount; own?: TokenCache } | undefined;

  /** Closes the current app; a store of its own (no spec: memory) with it. */
  const release = async () => {
    const was = current;
    current = undefined;
    await was?.app.close();
    await was?.own?.close?.();
  };

  /** Builds the app a config describes, after closing the one before: events, rejections and clock start afresh. */
  const configure = async (config: WorkerConfig) => {
    await release();
    let created: TokenCache;
    if (config.store) {
      const spec = JSON.stringify(config.store);
      created = stores.get(spec) ?? (await createStore(config.store));
      if (!stores.has(spec)) {
        stores.set(spec, created);
        // One read before the worker says it is ready, so that a test's first store call, bounded by a
        // short cacheTimeoutMs, does not also pay for the connection (a cluster's slot discovery, a cold
        // process). A store that is down or hangs on purpose is the test's business: two seconds at most.
        await settleWithin(created.get('wxkit:worker:connect').catch(() => undefined), 2000, undefined);
      }
    } else {
      created = new MemoryCache();
    }
    const cache = config.storeDelayMs ? delayed(created, config.storeDelayMs) : created;
    offset = 0;
    const started = config.clockBase ?? Date.now();
    const makeSchema = config.schema ? (core as unknown as Record<string, (options?: object) => KeySchema>)[config.schema.name] : undefined;
    if (config.schema && typeof makeSchema !== 'function') throw new Error(`@wxkit/core has no schema ${config.schema.name}`);
    const app = new OfficialAccount({
      appId: config.appId,
      ...(config.tokenSource ? { tokenSource: remoteTokenSource(config.tokenSource) } : { secret: config.secret }),
      baseUrl: config.baseUrl,
      tokenEndpoint: config.tokenEndpoint ?? 'stable',
      cache,
      logger: { debug: record, info: record, warn: record, error: record },
      // JSON has no `false` among clientOptions' plain values: 'false' stands for it.
      ...Object.fromEntries(Object.entries(config.clientOptions ?? {}).map(([name, value]) => [name, value === 'false' ? false : value])),
      ...(config.clockControl === 'frozen' ? { now: () => started + offset } : config.clockControl ? { now: () => Date.now() + offset } : {}),
      ...(makeSchema ? { schema: makeSchema(config.schema!.options) } : {}),
    });
    current = { app, ...(config.store ? {} : { own: created }) };
    events = {};
    unhandled = 0;
  };

  let sent = 0;
  const one = async (op: WorkerRun['op']): Promise<string> => {
    const app = current?.app;
    if (!app) throw new Error('the worker has no app: configure it first');
    if (op === 'getToken') return app.accessToken.getToken();
    if (op === 'ticket') return app.jssdk.getTicket();
    const result = await app.templateMessage.send({
      touser: `o${process.pid}x${sent++}`,
      template_id: 'TPL_SHARING_TEST',
      data: { first: { value: 'hello' } },
    });
    return String(result.msgid);
  };
  type Message =
    | WorkerRun
    | { type: 'exit' }
    | { type: 'advance'; id: number; ms: number }
    | { type: 'configure'; id: number; config: WorkerConfig }
    | { type: 'release'; id: number };
  process.on('message', async (message: Message) => {
    if (message.type === 'advance') {
      offset += message.ms;
      process.send!({ type: 'advanced', id: message.id });
      return;
    }
    if (message.type === 'configure' || message.type === 'release') {
      // A config the worker cannot build (an unknown schema, options the client refuses, a store that
      // cannot be made) is the caller's error, answered: the group's configure() rejects with it.
      try {
        if (message.type === 'configure') await configure(message.config);
        else await release();
        process.send!({ type: message.type === 'configure' ? 'ready' : 'released', id: message.id });
      } catch (error) {
        process.send!({ type: 'failed', id: message.id, error: error instanceof Error ? error.message : String(error) });
      }
      return;
    }
    if (message.type === 'exit') {
      await release();
      for (const store of stores.values()) await store.close?.();
      process.exit(0);
    }
    if (message.type !== 'run') return;
    const settled: PromiseSettledResult<string>[] = [];
    let next = 0;
    const lane = async () => {
      while (next < message.count) {
        next += 1;
        const [outcome] = await Promise.allSettled([one(message.op)]);
        settled.push(outcome!);
      }
    };
    await Promise.all(Array.from({ length: Math.min(message.concurrency ?? message.count, message.count) }, lane));
    // Events since the previous result: a background probe's may fall between two runs.
    const result: WorkerResult = { type: 'result', id: message.id, values: [], ok: 0, errors: [], events, unhandled };
    events = {};
    for (const outcome of settled) {
      if (outcome.status === 'fulfilled') {
        result.ok += 1;
        result.values.push(outcome.value);
      } else {
        const error = outcome.reason as { code?: string; errcode?: number; message?: string };
        result.errors.push(`${error.code ?? 'UNKNOWN'}:${error.errcode ?? error.message ?? ''}`);
      }
    }
    process.send!(result);
  });
  await configure(first);
  process.send({ type: 'ready' });
}

/** The same store, each call started `ms` late. */
function delayed(cache: TokenCache, ms: number): TokenCache {
  const later =
    <A extends unknown[], R>(fn: ((...args: A) => Promise<R>) | undefined) =>
    fn && (async (...args: A): Promise<R> => {
      await new Promise((resolve) => setTimeout(resolve, ms));
      return fn.apply(cache, args);
    });
  return {
    get: later(cache.get)!,
    set: later(cache.set)!,
    delete: later(cache.delete)!,
    ...(cache.add ? { add: later(cache.add) } : {}),
    ...(cache.deleteIfEquals ? { deleteIfEquals: later(cache.deleteIfEquals) } : {}),
    ...(cache.compareAndSet ? { compareAndSet: later(cache.compareAndSet) } : {}),
    close: async () => cache.close?.(),
  };
}

main().catch((error: unknown) => {
  process.stderr.write(`worker failed to start: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
