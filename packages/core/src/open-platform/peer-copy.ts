import type { ClientCore } from '../client-core.js';
import { CacheError } from '../errors.js';
import type { GuardedStore } from '../store.js';
import type { StoredEntry } from '../token/entry.js';
import { isPlausibleToken } from '../token/plausible.js';
import type { Fetched } from '../token/upstream.js';
import type { PlatformContext } from './context.js';
import { decodeStoredRefresh } from './records.js';

// A peer's token with less than this left is not taken: wxkit would keep it only briefly (its entry lives
// 500 s less on that profile), then fetch anyway.
const PEER_TOKEN_MIN_MS = 600_000;
// The life WeChat gives an authorizer token: a peer's token is never taken as living longer.
const PEER_TOKEN_MAX_LIFE_S = 7200;

/**
 * The copies of an authorizer's access token that a profile's peer SDK keeps under keys of its own
 * (EasyWeChat 6: by the md5 of the refresh token), where the key schema has them: written after each
 * token wxkit stores, and read before a refresh, so that a token the peer fetched is taken, not ended.
 */
export class PeerCopies {
  readonly #appId: string;
  readonly #core: ClientCore;
  readonly #durable: GuardedStore;
  readonly #key: PlatformContext['key'];
  /** The refresh tokens under which a fetched token's copies for the peer are written, until they are. */
  readonly #copyUnder = new WeakMap<Fetched, readonly string[]>();

  constructor(ctx: PlatformContext) {
    this.#appId = ctx.appId;
    this.#core = ctx.core;
    this.#durable = ctx.durable;
    this.#key = ctx.key;
  }

  /** Whether the key schema keeps peer copies at all. */
  get kept(): boolean {
    return this.#core.schema.openPlatformTokenCopy !== undefined;
  }

  /** A refresh's token, to be copied under these refresh tokens once the cache holds it ({@link afterWrite}). */
  remember(fetched: Fetched, refreshTokens: readonly string[]): void {
    if (this.kept) this.#copyUnder.set(fetched, refreshTokens);
  }

  /** Writes the copies of a token a refresh fetched, now that the cache holds `stored`. */
  async afterWrite(authorizerAppId: string, fetched: Fetched, stored: StoredEntry): Promise<void> {
    const under = this.#copyUnder.get(fetched);
    if (!under) return;
    this.#copyUnder.delete(fetched);
    await this.write(authorizerAppId, under, stored, fetched.expiresIn);
  }

  /**
   * The peer's own copy of an authorizer's access token (EasyWeChat 6 keys it by the md5 of the refresh
   * token its caller passes in): `entry`, the one this process just put in the cache, written for each
   * refresh token given (the one a refresh used and, if WeChat rotated it, the new one), side by side.
   * Best effort: a copy the store does not take costs the peer a refresh of its own (and wxkit one more
   * fetch or one recovery from 40001), so it is logged, never thrown, and it does not take the store for
   * down. `expiresIn`: the token's life when the entry records no expiry.
   */
  async write(authorizerAppId: string, refreshTokens: readonly string[], entry: StoredEntry, expiresIn: number): Promise<void> {
    const { schema, settings, store } = this.#core;
    const life = entry.expiresAt === undefined ? expiresIn : entry.expiresAt - Math.floor(settings.now() / 1000);
    if (!schema.openPlatformTokenCopy || life <= 0) return;
    const copyUnder = async (refreshToken: string) => {
      try {
        const copy = schema.openPlatformTokenCopy!(this.#appId, authorizerAppId, refreshToken);
        if (copy) await store.setBeside(copy.key, copy.encode(entry.value), copy.ttlSeconds(life));
      } catch (error) {
        this.#copyFailed(authorizerAppId, 'write', error);
      }
    };
    await Promise.all([...new Set(refreshTokens)].map(copyUnder));
  }

  /**
   * The token a peer SDK fetched on its own and keeps in its copy for the refresh token wxkit holds
   * (EasyWeChat 6 refreshed while wxkit did not), unless `rejected` refuses it or less than ten minutes of
   * its copy are left: taken instead of a refresh, which would invalidate the token the peer uses. The
   * copy's TTL runs `marginSeconds` short of the token's life (EasyWeChat's 500 s), so its life is the
   * TTL left plus that, and wxkit's entry (as short) runs out with the copy. Undefined otherwise.
   */
  async read(authorizerAppId: string, rejected: (value: string) => boolean): Promise<Fetched | undefined> {
    const schema = this.#core.schema;
    if (!schema.openPlatformTokenCopy) return undefined;
    try {
      const recordKey = this.#key('authorizer_refresh_token', authorizerAppId);
      const record = decodeStoredRefresh(schema, recordKey, await this.#durable.get(recordKey));
      // A refresh left under way (its holder died) may have had WeChat replace the copy's token already.
      const copy = record && record.pendingSince === undefined ? schema.openPlatformTokenCopy(this.#appId, authorizerAppId, record.token) : undefined;
      if (!copy) return undefined;
      const { raw, ttlMs } = await this.#core.store.readBeside(copy.key);
      const value = raw === undefined ? undefined : copy.decode(raw);
      // A copy without an expiry (ttlMs Infinity), or a TTL no store gives, is not taken either.
      if (value === undefined || !isPlausibleToken(value) || rejected(value)) return undefined;
      if (ttlMs === undefined || !Number.isFinite(ttlMs) || ttlMs < PEER_TOKEN_MIN_MS) return undefined;
      return { value, expiresIn: Math.min(Math.floor(ttlMs / 1000) + copy.marginSeconds, PEER_TOKEN_MAX_LIFE_S) };
    } catch (error) {
      this.#copyFailed(authorizerAppId, 'read', error);
      return undefined;
    }
  }

  #copyFailed(authorizerAppId: string, op: 'read' | 'write', error: unknown): void {
    this.#core.log.warn(
      { event: 'authorizer_access_token.copy_failed', appId: this.#appId, authorizerAppId, op, ...(error instanceof CacheError && error.reason ? { reason: error.reason } : {}) },
      op === 'write'
        ? "The store did not take the copy of the authorizer's access token the peer SDK reads; the peer fetches one of its own"
        : "The store did not answer the read of the peer SDK's copy of the authorizer's access token; a refresh goes on as usual",
    );
  }
}
