import { createRequire } from 'node:module';
import type { Pool as UndiciPool } from 'undici';

/**
 * undici's Pool, loaded from its own module. undici's index loads all of undici (fetch, WebSocket, the
 * mock agents, caches, interceptors): 180 ms of CPU at the start of every process that imports wxkit, where
 * the Pool and what it needs take 55. wxkit calls only `dispatch()` and `close()`, which the Pool's own
 * module defines (the index adds `request()` and the other helpers to every dispatcher's prototype).
 * The module has sat at lib/dispatcher/pool.js from undici 6 to 8; an undici that closes its files to
 * deep imports (an `exports` map) or moves it gives the index's Pool instead.
 */
export const Pool: typeof UndiciPool = loadPool();

function loadPool(): typeof UndiciPool {
  const require = createRequire(import.meta.url);
  try {
    return require('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
  } catch {
    return (require('undici') as typeof import('undici')).Pool;
  }
}
