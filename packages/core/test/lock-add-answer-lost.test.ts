import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { CacheError, MemoryCache, OfficialAccount, TokenUnavailableError } from '../src/index.js';
import { recordingLogger } from './helpers.js';

// A store that sends an `add` again after a timeout of its own (a client library's retry) may write the
// first and answer the second: `false`, for a lock that holds this process's own owner. The process must
// not wait its whole lease for itself.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

/**
 * A MemoryCache whose first `add` of a lock writes it and answers `false` a reconnect later (100 ms), as
 * a client that resends its queue after a reconnect would; `deletes` counts the deletes of the lock.
 */
class AddAnsweredTwice extends MemoryCache {
  lockAdds = 0;
  lockDeletes = 0;
  override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    if (!key.endsWith(':lock')) return super.add(key, value, ttlSeconds);
    this.lockAdds += 1;
    const taken = await super.add(key, value, ttlSeconds);
    if (this.lockAdds > 1) return taken;
    await new Promise((resolve) => setTimeout(resolve, 100));
    return false;
  }

  override deleteIfEquals(key: string, expected: string): Promise<boolean> {
    if (key.endsWith(':lock')) this.lockDeletes += 1;
    return super.deleteIfEquals(key, expected);
  }
}

describe('a lock whose add answered false after writing it', () => {
  it("is this process's own: it is taken back at the next attempt, and the refresh fetches once, within a lock wait far shorter than the lease", async () => {
    const { appId, secret } = mock.createApp();
    const cache = new AddAnsweredTwice();
    // The lease's short part is 7 s: a wait of 1 s ends in a TokenUnavailableError if the process waits for itself.
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, fallbackDir: false, lockWaitMs: 1_000 });
    expect(await app.accessToken.getToken()).toEqual(expect.any(String));
    expect(mock.counters(appId).tokenRequests).toBe(1);
    expect(cache.lockAdds).toBeGreaterThanOrEqual(2);
    await app.close();
  });

  it('a prompt refusal (another process holds the lock) costs no store call more: nothing is deleted', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new AddAnsweredTwice();
    cache.lockAdds = 1;
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false, fallbackDir: false, lockWaitMs: 300 });
    // Another process holds the lock and never writes.
    await cache.set(`${app.accessToken.cacheKey}:lock`, 'vm:1:another', 60);
    await expect(app.accessToken.getToken()).rejects.toThrow(TokenUnavailableError);
    expect(cache.lockAdds).toBeGreaterThanOrEqual(3);
    expect(cache.lockDeletes).toBe(0);
    expect(mock.counters(appId).tokenRequests).toBe(0);
    await app.close();
  });
});

/** A MemoryCache whose lock key holds another program's hash: every `add` of it is refused with reason `type`. */
class LockKeyOfAnotherKind extends MemoryCache {
  lockAdds = 0;
  override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    if (!key.endsWith(':lock')) return super.add(key, value, ttlSeconds);
    this.lockAdds += 1;
    throw new CacheError('RedisCache add failed: WRONGTYPE Operation against a key holding the wrong kind of value', { reason: 'type' });
  }
}

describe("a lock key that holds another kind of value (another program's hash)", () => {
  it('holds no lock: each refresh fetches without it, the store stays up, and it is logged once as a foreign entry', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new LockKeyOfAnotherKind();
    const logger = recordingLogger();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger, fallbackDir: false, memoMs: 0, lockWaitMs: 300 });
    const token = await app.accessToken.getToken();
    expect(await app.accessToken.getToken()).toBe(token);
    expect(await app.accessToken.forceRefresh()).not.toBe(token);
    expect(mock.counters(appId).tokenRequests).toBe(2);
    expect(cache.lockAdds).toBe(2);
    const events = logger.lines.map((line) => (line.fields as { event?: string }).event);
    expect(logger.lines.filter((line) => (line.fields as { event?: string }).event === 'cache.foreign_entry').map((line) => line.fields)).toEqual([
      expect.objectContaining({ appId, key: `${app.accessToken.cacheKey}:lock`, bytes: 0, foreign: true, schema: expect.any(String) }),
    ]);
    expect(events).not.toContain('cache.unavailable');
    await app.close();
  });
});
