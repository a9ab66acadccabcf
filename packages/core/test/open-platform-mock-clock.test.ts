import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, MessageCryptoError, OpenPlatform, type OpenPlatformOptions } from '../src/index.js';
import { componentOptions, startCallback } from './helpers.js';

// The mock's pushes are signed with the mock's time, as WeChat signs with its own: once a test moves the
// mock's clock (advanceClock), a platform that receives them must read that clock too
// (docs/open-platform.md, "Testing against the mock"), or it refuses them as sent too long ago.
let mock: MockWeChat;
let callback: { url: string; close: () => Promise<void> };
let url: string;
let receive: (query: URLSearchParams, body: string) => Promise<number>;
const opened: OpenPlatform[] = [];

beforeAll(async () => {
  mock = await startMockWeChat();
  callback = await startCallback((query, body) => receive(query, body));
  url = callback.url;
});
afterAll(async () => {
  await Promise.all(opened.map((open) => open.close()));
  await callback.close();
  await mock.close();
});

/** A component whose callback hands every push to a platform made with `extra`; what it refused, by reason. */
function receiver(extra: Partial<OpenPlatformOptions>) {
  const component = mock.createComponent();
  const durable = new MemoryCache();
  const open = new OpenPlatform({ ...componentOptions(mock, component), cache: new MemoryCache(), durableStore: durable, logger: false, ...extra });
  opened.push(open);
  const refused: string[] = [];
  receive = async (query, body) => {
    try {
      await open.handleCallback({ query, body });
      return 200;
    } catch (error) {
      refused.push(error instanceof MessageCryptoError ? error.reason : String(error));
      return error instanceof MessageCryptoError ? 403 : 500;
    }
  };
  mock.setComponentCallback(component.appId, url);
  return { component, durable, open, refused, ticketKey: `wechat:component_verify_ticket:${component.appId}` };
}

describe("the mock's scheduled verify-ticket pushes after advanceClock()", () => {
  it('are refused as expired by a platform on its own clock, nothing is stored, and the refusal is logged once a minute', async () => {
    const r = receiver({});
    const logged: { offSeconds?: number }[] = [];
    r.open.on('component_callback.expired', (event) => logged.push(event));
    mock.advanceClock(600);
    await mock.pushesSettled();
    mock.advanceClock(600);
    await mock.pushesSettled();
    mock.setComponentCallback(r.component.appId, undefined);
    expect(mock.counters(r.component.appId).verifyTicketPushes).toBe(2);
    expect(r.refused).toEqual(['expired', 'expired']);
    expect(await r.durable.get(r.ticketKey)).toBeUndefined();
    // The first refusal says how far off the push was (10 minutes ahead of this process's clock); the
    // second, within the minute, is not logged again.
    expect(logged).toHaveLength(1);
    expect(logged[0]!.offSeconds).toBeGreaterThanOrEqual(590);
  });

  it('are stored by a platform on the mock\'s clock (now: () => mock.now()), and its component token is fetched once', async () => {
    const r = receiver({ now: () => mock.now() });
    mock.advanceClock(600);
    await mock.pushesSettled();
    mock.setComponentCallback(r.component.appId, undefined);
    expect(r.refused).toEqual([]);
    expect(await r.durable.get(r.ticketKey)).toBeDefined();
    expect(await r.open.componentAccessToken()).toMatch(/^\d{2}_/);
    expect(mock.counters(r.component.appId)).toMatchObject({ verifyTicketPushes: 1, componentTokenRequests: 1 });
  });
});
