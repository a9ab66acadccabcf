import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, OpenPlatform } from '../src/index.js';
import { componentOptions, rejection, startCallback } from './helpers.js';

// A verify ticket lasts 12 hours from its push, and is stored for what is left of them. A durable store
// that keeps it longer (one that ignores TTLs) must not make the fleet send WeChat a ticket it no longer
// takes: once its 12 hours are over, the ticket is as good as none.
let mock: MockWeChat;
let callback: { url: string; close: () => Promise<void> };
let url: string;
let receive: (query: URLSearchParams, body: string) => Promise<unknown>;
const opened: OpenPlatform[] = [];

beforeAll(async () => {
  mock = await startMockWeChat();
  callback = await startCallback((query, body) => receive(query, body).then(() => 200, () => 500));
  url = callback.url;
});
afterAll(async () => {
  await Promise.all(opened.map((open) => open.close()));
  await callback.close();
  await mock.close();
});

/** A durable store that keeps every value for ten years, whatever TTL it is given. */
class KeepsForever extends MemoryCache {
  static readonly TTL = 10 * 365 * 86_400;
  override set(key: string, value: string): Promise<void> {
    return super.set(key, value, KeepsForever.TTL);
  }
  override add(key: string, value: string): Promise<boolean> {
    return super.add(key, value, KeepsForever.TTL);
  }
  override compareAndSet(key: string, expected: string, value: string): Promise<boolean> {
    return super.compareAndSet(key, expected, value, KeepsForever.TTL);
  }
}

describe('a verify ticket the durable store kept past its 12 hours', () => {
  it('is not sent to WeChat: no process of the fleet asks for a component token with it, and the next push serves at once', async () => {
    const component = mock.createComponent();
    const [cache, durable] = [new MemoryCache(), new KeepsForever()];
    const make = () => {
      const open = new OpenPlatform({ ...componentOptions(mock, component), cache, durableStore: durable, logger: false, now: () => mock.now() });
      opened.push(open);
      return open;
    };
    const fleet = [make(), make(), make()];
    receive = (query, body) => fleet[0]!.handleCallback({ query, body });
    mock.setComponentCallback(component.appId, url);
    expect((await mock.pushVerifyTicket(component.appId)).status).toBe(200);
    // The callback stops receiving pushes; half a day later the store still holds the last ticket.
    mock.setComponentCallback(component.appId, undefined);
    mock.advanceClock(12 * 3600 + 60);
    expect(await durable.get(`wechat:component_verify_ticket:${component.appId}`)).toBeDefined();
    // Every process, in every round of the back-off a WeChat error would start, is refused unasked.
    for (let round = 0; round < 4; round += 1) {
      for (const open of fleet) {
        const error = await rejection(open.componentAccessToken());
        expect(error).toMatchObject({ code: 'ERR_WXKIT_NO_TOKEN' });
        expect(error.message).toMatch(/more than 12 hours ago/);
      }
      mock.advanceClock(61);
    }
    expect(mock.counters(component.appId)).toMatchObject({ componentTokenRequests: 0, errcodes: {} });
    // The callback receives pushes again: the first one serves every process, with one fetch.
    mock.setComponentCallback(component.appId, url);
    expect((await mock.pushVerifyTicket(component.appId)).status).toBe(200);
    mock.setComponentCallback(component.appId, undefined);
    const tokens = await Promise.all(fleet.map((open) => open.componentAccessToken()));
    expect(new Set(tokens).size).toBe(1);
    expect(mock.counters(component.appId)).toMatchObject({ componentTokenRequests: 1, errcodes: {} });
  });
});
