export { MemcachedCache, type MemcachedCacheOptions } from './memcached-cache.js';
