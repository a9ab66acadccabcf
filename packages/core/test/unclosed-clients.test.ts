import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OfficialAccount, type TokenCache } from '../src/index.js';
import { recordingLogger } from './helpers.js';

// A client made per request and never closed (the way many use an SDK) must cost nothing once the
// program drops it: nothing the store outlives may hold it.

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

/** Collects garbage after the current job, so that WeakRefs made during it may be cleared. */
async function collect(): Promise<void> {
  for (let round = 0; round < 3; round += 1) {
    await new Promise((resolve) => setImmediate(resolve));
    gc();
  }
}

/**
 * Makes `count` clients on `cache`, each used once and never closed. Returns weak references to each
 * client and to its logger, which every part of the client holds (its store handle, its token manager):
 * a part kept by something outside the client keeps its logger too.
 */
async function unclosedClients(cache: TokenCache, count: number, appId: string, secret: string): Promise<WeakRef<object>[]> {
  const refs: WeakRef<object>[] = [];
  for (let i = 0; i < count; i += 1) {
    const logger = recordingLogger();
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger });
    await app.accessToken.getToken();
    refs.push(new WeakRef(app), new WeakRef(logger));
  }
  return refs;
}

describe('clients that are never closed', () => {
  it('are collected once the program drops them, while the store lives on', async () => {
    const { appId, secret } = mock.createApp();
    const cache = new MemoryCache();
    const refs = await unclosedClients(cache, 50, appId, secret);
    await collect();
    expect(refs.filter((ref) => ref.deref() !== undefined)).toHaveLength(0);
    expect(mock.counters(appId).stableTokenRequests + mock.counters(appId).classicTokenRequests).toBe(1);
    // The store still serves the clients made after them.
    const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, logger: false });
    await app.templateMessage.send({ touser: 'o1', template_id: 'T', data: {} });
    expect(mock.counters(appId).templateSends).toBe(1);
    await app.close();
  });
});
