export { RedisCache, type RedisCacheOptions, type RedisClientLike } from './redis-cache.js';
