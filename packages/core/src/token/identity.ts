import { hostname } from 'node:os';

/**
 * This process as other processes see it in the store: `host:pid`. Lock owners add a random part per
 * attempt; entries record it (with the client's service name) as `fetched_by`, so a token that was
 * invalidated from outside can be traced to the last writer the fleet knows.
 */
export const PROCESS_ID = `${hostname().replace(/[\s:]/g, '_').slice(0, 64)}:${process.pid}`;

/** `host:pid`, or `host:pid:service` when the client names its service. */
export function writerId(serviceName: string | undefined): string {
  return serviceName ? `${PROCESS_ID}:${serviceName}` : PROCESS_ID;
}
