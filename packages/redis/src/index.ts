export { RedisCache, WRITTEN_CHANNEL, writtenMessage, type RedisCacheOptions, type RedisCacheSentinelOptions, type RedisClientLike } from './redis-cache.js';
