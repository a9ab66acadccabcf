export { MemcachedCache, phpMemcachedFlags, type MemcachedCacheOptions } from './memcached-cache.js';
