import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { FileCache, OfficialAccount, nativeSchema, type KeySchema, type LogFields } from '../src/index.js';

// Review: TokenCache values became binary strings in this range. A KeySchema (public API) whose encode()
// returns text with a character above U+00FF (it worked before: Redis/File stored it as UTF-8) now makes the
// adapter reject with a RangeError; GuardedStore wraps every rejection as a CacheError and opens the circuit
// breaker, so a programming error in one value is reported as a store outage for every client of the store
// (cache.unavailable, fallback tier, probes), and the token is never shared.
let mock: MockWeChat;
let dir: string;
beforeAll(async () => {
  mock = await startMockWeChat();
  dir = mkdtempSync(join(tmpdir(), 'review-'));
});
afterAll(async () => {
  await mock.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('review: a value that is no binary string', () => {
  it('is reported as a bad value, not as the store being down (FAILS: cache.unavailable)', async () => {
    const base = nativeSchema();
    const schema: KeySchema = { ...base, name: 'custom', encode: (...args) => base.encode(...args).replace('}', ',"team":"订单"}') };
    const lines: LogFields[] = [];
    const logger = { warn: (f: LogFields) => lines.push(f), info: (f: LogFields) => lines.push(f), error: (f: LogFields) => lines.push(f) };
    const { appId, secret } = mock.createApp();
    const cache = new FileCache({ dir });
    const client = new OfficialAccount({ appId, secret, baseUrl: mock.url, cache, schema, logger });
    await client.accessToken.getToken().catch(() => undefined);
    await client.close();
    const events = lines.map((l) => l.event);
    console.log(events);
    expect(events).not.toContain('cache.unavailable');
  });
});
