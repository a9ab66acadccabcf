export { KeyvCache, type KeyvOrStore } from './keyv-cache.js';
