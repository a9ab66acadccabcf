import type { ClientCore } from '../client-core.js';
import type { GuardedStore } from '../store.js';
import type { OpenPlatformEntry } from '../token/entry.js';

/**
 * What the parts of an {@link OpenPlatform} share: its core (HTTP client, cache, key schema, log, clock),
 * its durable store, the keys of its entries, and the signal its close() aborts.
 */
export interface PlatformContext {
  /** The component's AppID. */
  readonly appId: string;
  readonly core: ClientCore;
  /** Where the refresh tokens and the verify ticket live, behind the same guard as the cache. */
  readonly durable: GuardedStore;
  /** Aborted by close(): callers waiting for another's work stop waiting, and nothing new is started. */
  readonly ended: AbortSignal;
  /** The key of one of the platform's entries, from the key schema. */
  key(entry: OpenPlatformEntry, authorizerAppId?: string): string;
}
