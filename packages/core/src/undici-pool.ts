import type { Pool as UndiciPool } from 'undici';
import PoolModule from 'undici/lib/dispatcher/pool.js';

/**
 * undici's Pool, loaded from its own module. undici's index loads all of undici (fetch, WebSocket, the
 * mock agents, caches, interceptors): 180 ms of CPU at the start of every process that imports wxkit, where
 * the Pool and what it needs take 55. wxkit calls only `dispatch()` and `close()`, which the Pool's own
 * module defines (the index adds `request()` and the other helpers to every dispatcher's prototype).
 */
export const Pool: typeof UndiciPool = PoolModule;
