import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { MemoryCache, OfficialAccount } from '../src/index.js';

// A store that sends an `add` again after a timeout of its own (a client library's retry) may write the
// first and answer the second: `false`, for a lock that holds this process's own owner. The process must
// not wait its whole lease for itself.

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(() => mock.close());

/** A MemoryCache whose first `add` of a lock writes it and answers `false`, as a retried add would. */
class AddAnsweredTwice extends MemoryCache {
  lockAdds = 0;
  override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    if (!key.endsWith(':lock')) return super.add(key, value, ttlSeconds);
    this.lockAdds += 1;
    const taken = await super.add(key, value, ttlSeconds);
    return this.lockAdds === 1 ? false : taken;
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
});
