export {
  startMockWeChat,
  type MockWeChat,
  type MockWeChatOptions,
  type MockApp,
  type MockWorkApp,
  type MockQuotas,
  type MockFault,
  type MockFaultKind,
  type MockCounters,
  type MockComponent,
  type MockAuthorizeOptions,
  type MockAuthorization,
  type MockAuthorizedAccount,
  type MockPushResult,
} from './mock-wechat.js';
export { mockServerCommand } from './cli.js';
export { seededRandom } from './mock/faults.js';
export { WorkerGroup, createStore, type StoreSpec, type WorkerConfig, type WorkerResult } from './processes.js';
export {
  startRedis,
  startRedisCluster,
  startRedisSentinel,
  startMemcached,
  freePort,
  redisCli,
  memcachedCommand,
  memcachedGet,
  memcachedSet,
  redisGetBytes,
  memcachedGetBytes,
  type StoreServer,
  type RedisClusterServers,
  type RedisSentinelServers,
  type RedisSentinelOptions,
  type RedisServerOptions,
} from './servers.js';
export { startLocklessPeer, type LocklessPeer, type LocklessPeerOptions } from './peers.js';
export { switchableStore, type SwitchableStore } from './switchable-store.js';
