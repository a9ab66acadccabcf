import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll } from 'vitest';
import {
  WorkerGroup,
  startMockWeChat,
  startRedis,
  type MockWeChat,
  type MockWeChatOptions,
  type StoreServer,
  type StoreSpec,
  type WorkerConfig,
  type WorkerResult,
} from '@wxkit/testing';

/** The built adapters, as worker processes import them. */
export const built = {
  redis: fileURLToPath(new URL('../../packages/redis/dist/index.js', import.meta.url)),
  memcached: fileURLToPath(new URL('../../packages/memcached/dist/index.js', import.meta.url)),
  file: fileURLToPath(new URL('../../packages/file/dist/index.js', import.meta.url)),
  keyv: fileURLToPath(new URL('../../packages/keyv/dist/index.js', import.meta.url)),
};

export const redisSpec = (url: string): StoreSpec => ({ module: built.redis, export: 'RedisCache', args: [url] });

/** Starts worker processes and stops them when the returned `stop()` runs (call it in afterEach). */
export function workerPool(defaults: () => Pick<WorkerConfig, 'baseUrl'>) {
  let groups: WorkerGroup[] = [];
  return {
    async start(count: number, config: Omit<WorkerConfig, 'baseUrl'>): Promise<WorkerGroup> {
      const group = await WorkerGroup.start(count, { ...defaults(), ...config });
      groups.push(group);
      return group;
    },
    async stop(): Promise<void> {
      await Promise.all(groups.map((group) => group.stop()));
      groups = [];
    },
  };
}

export const errorsOf = (results: WorkerResult[]) => results.flatMap((result) => result.errors);
export const okOf = (results: WorkerResult[]) => results.reduce((sum, result) => sum + result.ok, 0);
export const unhandledOf = (results: WorkerResult[]) => results.reduce((sum, result) => sum + result.unhandled, 0);
export const eventsOf = (results: WorkerResult[], event: string) => results.reduce((sum, result) => sum + (result.events[event] ?? 0), 0);

/** Polls `condition` (a positive check) every 20 ms until it holds, or throws after `timeoutMs`. */
export async function eventually(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const started = Date.now();
  while (!(await condition())) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * A mock WeChat and a redis-server of the file's own, and worker processes stopped after each test;
 * faults and latency set by a test are cleared after it.
 */
export function faultEnvironment(mockOptions: MockWeChatOptions = {}) {
  const env = {} as { mock: MockWeChat; redis: StoreServer; workers: ReturnType<typeof workerPool> };
  env.workers = workerPool(() => ({ baseUrl: env.mock.url }));
  beforeAll(async () => {
    [env.mock, env.redis] = await Promise.all([startMockWeChat(mockOptions), startRedis()]);
  });
  afterEach(async () => {
    env.mock.clearFaults();
    env.mock.setLatency(mockOptions.latencyMs ?? 0);
    await env.workers.stop();
  });
  afterAll(async () => {
    await Promise.all([env.mock?.close(), env.redis?.stop()]);
  });
  return env;
}
