import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { OfficialAccount, type TokenEvents, type TokenFetchedEvent } from '../src/index.js';
import { newApp } from './helpers.js';

const src = fileURLToPath(new URL('../src', import.meta.url));
const sources = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sources(join(dir, entry.name)) : entry.name.endsWith('.ts') ? [join(dir, entry.name)] : [],
  );

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

describe('TokenEvents', () => {
  it('names every event the sources log, and only those', () => {
    const map = readFileSync(join(src, 'events.ts'), 'utf8');
    const fixed = new Set([...map.matchAll(/^\s+'([a-z_]+\.[a-z_]+)': /gm)].map((m) => m[1]!));
    const perLabel = new Set([...map.matchAll(/PerLabel<'([a-z_]+)'/g)].map((m) => m[1]!));
    const loggedFixed = new Set<string>();
    const loggedPerLabel = new Set<string>();
    for (const file of sources(src)) {
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/event: '([a-z_]+\.[a-z_]+)'/g)) loggedFixed.add(m[1]!);
      for (const m of text.matchAll(/event: `\$\{ctx\.label\}\.([a-z_]+)`/g)) loggedPerLabel.add(m[1]!);
      // A log line's fields are an object literal; any other shape of event name would escape this check.
      expect(text.match(/[{,]\s*event: (?!string;|'[a-z_]+\.[a-z_]+'|`\$\{ctx\.label\}\.[a-z_]+`)\S/g) ?? [], file).toEqual([]);
    }
    expect([...loggedFixed].sort()).toEqual([...fixed].sort());
    expect([...loggedPerLabel].sort()).toEqual([...perLabel].sort());
  });

  it('types each listener with its payload, and rejects names that are no event', () => {
    const app = new OfficialAccount({ appId: 'wx1234abcd5678ef90', secret: 's', baseUrl: mock.url, logger: false });
    expectTypeOf<TokenEvents['access_token.fetched']>().toEqualTypeOf<TokenFetchedEvent>();
    expectTypeOf<TokenEvents['jsapi_ticket.fetched']['ms']>().toEqualTypeOf<number>();
    expectTypeOf<TokenEvents['cache.unavailable']['error']>().toEqualTypeOf<string>();
    expectTypeOf<TokenEvents['cache.corrupt_entry']['foreign']>().toEqualTypeOf<boolean>();
    // @ts-expect-error: a misspelt event name is a compile error, not a listener that never fires.
    app.on('access_token.fetchd', () => undefined);
    // @ts-expect-error: the payload of cache.recovered has no `ms`.
    app.on('cache.recovered', (event) => event.ms.toFixed());
    return app.close();
  });

  it('once() delivers the next event only, with the fields its type promises', async () => {
    const { app, appId } = newApp(mock);
    const fetched: TokenFetchedEvent[] = [];
    const tickets: Array<TokenEvents['jsapi_ticket.fetched']> = [];
    app.once('access_token.fetched', (event) => fetched.push(event));
    app.on('jsapi_ticket.fetched', (event) => tickets.push(event));
    await app.accessToken.getToken();
    await app.accessToken.forceRefresh();
    await app.jssdk.getTicket();
    expect(mock.counters(appId).tokenRequests).toBe(2);
    expect(fetched).toHaveLength(1);
    expect(fetched[0]).toMatchObject({ event: 'access_token.fetched', appId, level: 'info', forced: false, expiresIn: 7200, ms: expect.any(Number) });
    expect(tickets).toHaveLength(1);
    expect(tickets[0]).toMatchObject({ event: 'jsapi_ticket.fetched', appId, expiresIn: 7200, ms: expect.any(Number) });
    await app.close();
  });
});
