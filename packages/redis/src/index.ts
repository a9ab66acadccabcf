export { RedisCache, type RedisCacheOptions, type RedisCacheSentinelOptions, type RedisClientLike } from './redis-cache.js';
