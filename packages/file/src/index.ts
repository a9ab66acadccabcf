export { FileCache, type FileCacheOptions } from '@wxkit/core';
