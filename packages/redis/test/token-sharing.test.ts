import { afterAll, beforeAll } from 'vitest';
import { startRedis, type StoreServer } from '@wxkit/testing';
import { describeStoreOutage, describeTokenSharing } from '@wxkit/testing/suite';

// The foundation's multi-process scenarios on a real redis-server, each worker with its own client.
let redis: StoreServer;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});

const spec = () => ({ module: new URL('../dist/index.js', import.meta.url).href, export: 'RedisCache', args: [redis.url] });

describeTokenSharing('RedisCache', { store: spec });
describeStoreOutage('RedisCache', { store: spec, server: () => redis });
