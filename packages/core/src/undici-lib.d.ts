// undici publishes declarations for its index only; this is the module of the class its index exports.
declare module 'undici/lib/dispatcher/pool.js' {
  import type { Pool } from 'undici';
  const PoolModule: typeof Pool;
  export default PoolModule;
}
