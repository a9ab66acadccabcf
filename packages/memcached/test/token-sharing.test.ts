import { afterAll, beforeAll } from 'vitest';
import { startMemcached, type StoreServer } from '@wxkit/testing';
import { describeStoreOutage, describeTokenSharing } from '@wxkit/testing/suite';

// The foundation's multi-process scenarios on a real memcached, each worker with its own client.
let memcached: StoreServer;
beforeAll(async () => {
  memcached = await startMemcached();
});
afterAll(async () => {
  await memcached?.stop();
});

const spec = () => ({ module: new URL('../dist/index.js', import.meta.url).href, export: 'MemcachedCache', args: [memcached.url] });

describeTokenSharing('MemcachedCache', { store: spec });
describeStoreOutage('MemcachedCache', { store: spec, server: () => memcached });
