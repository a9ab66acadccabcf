export { RedisCache, WRITTEN_CHANNEL, type RedisCacheOptions, type RedisCacheSentinelOptions, type RedisClientLike } from './redis-cache.js';
