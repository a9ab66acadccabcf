import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, type MockWeChat } from '@wxkit/testing';
import { Agent } from 'undici';
import { MemoryCache, Work, nativeSchema, signJsapi } from '../src/index.js';
import { onMockClock, rejection } from './helpers.js';

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock.close();
});

describe('Work (WeCom)', () => {
  it('one entry per agent: two agents of one corp never overwrite each other', async () => {
    const first = mock.createWorkApp();
    const second = mock.createWorkApp({ corpId: first.corpId });
    const cache = new MemoryCache();
    const a = new Work({ ...first, baseUrl: mock.url, cache, logger: false });
    const b = new Work({ ...second, agentId: Number(second.agentId), baseUrl: mock.url, cache, logger: false });
    const [tokenA, tokenB] = [await a.accessToken.getToken(), await b.accessToken.getToken()];
    expect(tokenA).not.toBe(tokenB);
    expect(a.accessToken.cacheKey).toBe(`wechat:work:access_token:${first.corpId}:${first.agentId}`);
    expect(b.accessToken.cacheKey).toBe(`wechat:work:access_token:${first.corpId}:${second.agentId}`);
    expect(nativeSchema().decode('access_token', (await cache.get(a.accessToken.cacheKey)) ?? '')?.value).toBe(tokenA);
    expect(nativeSchema().decode('access_token', (await cache.get(b.accessToken.cacheKey)) ?? '')?.value).toBe(tokenB);
  });

  it('gettoken hands back the current token; message.send fills in agentid and recovers from a dead token', async () => {
    const app = mock.createWorkApp();
    const work = new Work({ ...app, baseUrl: mock.url, cache: new MemoryCache(), logger: false });
    const result = await work.message.send({ touser: 'zhangsan', msgtype: 'text', text: { content: 'Deploy finished' } });
    expect(result).toMatchObject({ errcode: 0, errmsg: 'ok' });
    const id = `${app.corpId}:${app.agentId}`;
    mock.invalidateTokens(id);
    expect((await work.message.send({ touser: 'zhangsan', msgtype: 'text', text: { content: 'again' } })).errcode).toBe(0);
    expect(mock.counters(id)).toMatchObject({ messageSends: 2, tokenRequests: 2, rejectedCalls: 1 });
  });

  it('message.send() with agentid given as undefined (an optional field passed on) still sends the client’s agentid', async () => {
    const app = mock.createWorkApp();
    const bodies: string[] = [];
    const dispatcher = new Agent().compose((dispatch) => (options, handler) => {
      if (String(options.path).includes('cgi-bin/message/send')) bodies.push(String(options.body));
      return dispatch(options, handler);
    });
    const work = new Work({ ...app, baseUrl: mock.url, cache: new MemoryCache(), logger: false, dispatcher });
    await work.message.send({ touser: 'zhangsan', msgtype: 'text', text: { content: 'x' }, agentid: undefined });
    await work.message.send({ touser: 'zhangsan', msgtype: 'text', text: { content: 'x' }, agentid: 1000009 });
    expect(bodies.map((body) => JSON.parse(body).agentid)).toEqual([Number(app.agentId), 1000009]);
    await work.close();
  });

  it('a ticket WeCom refused for its hourly limit (45009) is asked for again once the hour has passed, not at the next Beijing midnight', async () => {
    // 12:10 Beijing time: the next midnight is almost twelve hours away, WeCom's block one hour.
    let now = Date.UTC(2026, 10, 25, 4, 10, 0);
    const limited = await startMockWeChat({ now: () => now, quotas: { workTicketPerHour: 1 } });
    try {
      const app = limited.createWorkApp();
      const options = { ...app, baseUrl: limited.url, logger: false as const, now: () => now };
      const first = new Work({ ...options, cache: new MemoryCache() });
      await first.jssdk.getTicket('jsapi');
      const second = new Work({ ...options, cache: new MemoryCache() });
      expect((await rejection(second.jssdk.getTicket('jsapi'))).errcode).toBe(45009);
      // WeCom lifts a block by the hour after 60 minutes (its 访问频率限制 page).
      now += 61 * 60_000;
      await expect(second.jssdk.getTicket('jsapi')).resolves.toEqual(expect.any(String));
      expect(limited.counters(`${app.corpId}:${app.agentId}`).ticketRequests).toBe(3);
    } finally {
      await limited.close();
    }
  });

  it('a wrong secret is WeCom’s 40001 at gettoken, surfaced once, never retried', async () => {
    const app = mock.createWorkApp();
    const work = new Work({ ...app, secret: 'wrong-secret', baseUrl: mock.url, logger: false });
    const error = await rejection(work.accessToken.getToken());
    expect(error).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40001, path: 'cgi-bin/gettoken' });
    expect(String(error.message)).not.toContain('wrong-secret');
  });

  it('a wrong corp id is WeCom’s 40013 at gettoken, said to be the corp id, and held for the fleet a minute', async () => {
    let now = Date.now();
    const app = mock.createWorkApp();
    const before = mock.counters().classicTokenRequests;
    const work = new Work({ ...app, corpId: 'ww0000000000000000', baseUrl: mock.url, cache: new MemoryCache(), logger: false, now: () => now });
    const error = await rejection(work.accessToken.getToken());
    expect(error).toMatchObject({ code: 'ERR_WXKIT_WECHAT_API', errcode: 40013, path: 'cgi-bin/gettoken' });
    expect(error.message).toMatch(/invalid corpid/);
    now += 5_000;
    const shared = await rejection(work.message.send({ touser: 'zhangsan', msgtype: 'text', text: { content: 'x' } }));
    expect(shared).toMatchObject({ errcode: 40013 });
    expect(shared.message).toMatch(/invalid corpid/);
    expect(mock.counters().classicTokenRequests - before).toBe(1);
    await work.close();
  });

  it('signs wx.config with the corp ticket and wx.agentConfig with the agent ticket, each cached', async () => {
    const app = mock.createWorkApp();
    const cache = new MemoryCache();
    const work = new Work({ ...app, baseUrl: mock.url, cache, logger: false });
    const input = { url: 'https://oa.example/page#x', jsApiList: ['selectEnterpriseContact'], nonceStr: 'abc123', timestamp: 1700000000 };
    const config = await work.jssdk.buildConfig(input);
    const agent = await work.jssdk.buildAgentConfig(input);
    const corpTicket = await work.jssdk.getTicket('jsapi');
    const agentTicket = await work.jssdk.getTicket('agent_jsapi');
    expect(corpTicket).not.toBe(agentTicket);
    expect(config).toMatchObject({ appId: app.corpId, signature: signJsapi(corpTicket, 'abc123', 1700000000, 'https://oa.example/page') });
    expect(agent).toEqual({
      corpid: app.corpId,
      agentid: app.agentId,
      timestamp: 1700000000,
      nonceStr: 'abc123',
      signature: signJsapi(agentTicket, 'abc123', 1700000000, 'https://oa.example/page'),
      jsApiList: ['selectEnterpriseContact'],
    });
    expect(mock.counters(`${app.corpId}:${app.agentId}`).ticketRequests).toBe(2);
    expect(await cache.get(`wechat:work:jsapi_ticket:${app.corpId}:${app.agentId}`)).toContain(corpTicket);
    expect(await cache.get(`wechat:work:agent_jsapi_ticket:${app.corpId}:${app.agentId}`)).toContain(agentTicket);
  });

  it('gettoken hands back the current token until it ends, with what is left of it: near its end the fleet asks once more just after it, not in growing steps past it', async () => {
    await onMockClock(async (wecom, clock) => {
      const app = wecom.createWorkApp();
      const work = new Work({ ...app, baseUrl: wecom.url, cache: new MemoryCache(), logger: false, now: clock.now });
      const first = await work.accessToken.getToken();
      // Read every 5 s up to its end: gettoken answers the same token with less and less left, the last
      // time (its final 30 s, when the entry is no longer served) with less than wxkit takes.
      for (let second = 5; second < 7200; second += 5) {
        clock.at(second * 1000);
        await work.accessToken.getToken().catch(() => undefined);
      }
      const asked = wecom.counters(`${app.corpId}:${app.agentId}`).classicTokenRequests;
      // One second after its end: WeCom has a new token, and the fleet asks for it at once.
      clock.at(7201 * 1000);
      const next = await work.accessToken.getToken();
      expect(next).not.toBe(first);
      expect(wecom.counters(`${app.corpId}:${app.agentId}`).classicTokenRequests).toBe(asked + 1);
      await work.close();
    });
  });

  it("a value handed back near its end holds every process of the fleet until just after it ends (the marker's retry_at carries the pause), each serving the value it holds until 5 s before that end", async () => {
    await onMockClock(async (wecom, clock) => {
      const app = wecom.createWorkApp();
      const cache = new MemoryCache();
      const one = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: clock.now });
      const other = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: clock.now });
      const token = await one.accessToken.getToken();
      expect(await other.accessToken.getToken()).toBe(token);
      const fresh = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: clock.now });
      const asked = () => wecom.counters(`${app.corpId}:${app.agentId}`).classicTokenRequests;
      // 25 s before its end the entry is no longer served from the store: gettoken hands the same token
      // back with 25 s left, too little to keep; the process serves the one it holds, which still lives.
      clock.at(7175_000);
      expect(await one.accessToken.getToken()).toBe(token);
      const afterFirst = asked();
      // The other process reads the marker from the store and asks nothing up to the value's end. It serves
      // the token it holds up to 5 s before that end; a process that holds none gets the marker's error.
      for (const [second, served] of [[7178, true], [7190, true], [7196, false], [7199, false], [7200.5, false]] as const) {
        clock.at(second * 1000);
        if (served) expect(await other.accessToken.getToken()).toBe(token);
        else expect((await rejection(other.accessToken.getToken())).code).toBe('ERR_WXKIT_BAD_RESPONSE');
      }
      clock.at(7180_000);
      expect((await rejection(fresh.accessToken.getToken())).code).toBe('ERR_WXKIT_BAD_RESPONSE');
      expect(asked()).toBe(afterFirst);
      clock.at(7201_500);
      expect(await other.accessToken.getToken()).not.toBe(token);
      expect(asked()).toBe(afterFirst + 1);
      await Promise.all([one.close(), other.close(), fresh.close()]);
    });
  });

  it("a value held with a later end than WeChat's (its entry written by a host whose clock is ahead) is served no closer than 5 s to the end WeChat answered", async () => {
    await onMockClock(async (wecom, clock) => {
      const app = wecom.createWorkApp();
      const cache = new MemoryCache();
      // The entry is written by a process whose clock runs 20 s ahead: it records an end 20 s past WeChat's.
      const ahead = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: () => clock.now() + 20_000 });
      const one = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: clock.now });
      const other = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: clock.now });
      const token = await ahead.accessToken.getToken();
      expect(await one.accessToken.getToken()).toBe(token);
      expect(await other.accessToken.getToken()).toBe(token);
      const asked = () => wecom.counters(`${app.corpId}:${app.agentId}`).classicTokenRequests;
      // 9 s before WeChat's end (29 s before the one recorded): gettoken hands it back with 9 s left.
      clock.at(7191_000);
      expect(await one.accessToken.getToken()).toBe(token);
      const afterFirst = asked();
      // 3 s before WeChat's end: the marker says so, and the token is no longer served, whatever the entry said.
      clock.at(7197_000);
      expect((await rejection(other.accessToken.getToken())).code).toBe('ERR_WXKIT_BAD_RESPONSE');
      expect(asked()).toBe(afterFirst);
      await Promise.all([ahead.close(), one.close(), other.close()]);
    });
  });

  it("a value handed back with less than 5 s left is not served, whatever end the entry held for it recorded", async () => {
    await onMockClock(async (wecom, clock) => {
      const app = wecom.createWorkApp();
      const cache = new MemoryCache();
      const ahead = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: () => clock.now() + 20_000 });
      const one = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: clock.now });
      const token = await ahead.accessToken.getToken();
      expect(await one.accessToken.getToken()).toBe(token);
      // 3 s before WeChat's end (23 s before the one the entry recorded), no marker yet: gettoken hands it back with 3 s left.
      clock.at(7197_000);
      expect((await rejection(one.accessToken.getToken())).code).toBe('ERR_WXKIT_BAD_RESPONSE');
      await Promise.all([ahead.close(), one.close()]);
    });
  });

  it('a value handed back near its end that WeCom ends early costs each process that holds it one refused call: its recovery gets the fleet\'s error, asks nothing, and the value is not served again', async () => {
    await onMockClock(async (wecom, clock) => {
      const app = wecom.createWorkApp();
      const id = `${app.corpId}:${app.agentId}`;
      const cache = new MemoryCache();
      const one = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: clock.now });
      const other = new Work({ ...app, baseUrl: wecom.url, cache, logger: false, now: clock.now });
      const token = await one.accessToken.getToken();
      expect(await other.accessToken.getToken()).toBe(token);
      clock.at(7175_000);
      expect(await one.accessToken.getToken()).toBe(token);
      const asked = wecom.counters(id).classicTokenRequests;
      wecom.invalidateTokens(id);
      const send = (work: Work) => work.message.send({ touser: 'zhangsan', msgtype: 'text', text: { content: 'hello' } });
      for (const work of [one, other]) {
        expect((await rejection(send(work))).code).toBe('ERR_WXKIT_BAD_RESPONSE');
        expect((await rejection(work.accessToken.getToken())).code).toBe('ERR_WXKIT_BAD_RESPONSE');
      }
      expect(wecom.counters(id)).toMatchObject({ rejectedCalls: 2, messageSends: 0, classicTokenRequests: asked });
      // Just after the end the marker named, the fleet asks again.
      clock.at(7201_500);
      expect((await send(other)).errcode).toBe(0);
      expect(wecom.counters(id).classicTokenRequests).toBe(asked + 1);
      await Promise.all([one.close(), other.close()]);
    });
  });

  it('checks its options', () => {
    expect(() => new Work({ corpId: 'ww1', agentId: 'abc', secret: 's' })).toThrow(/Work options.agentId must be the agent id/);
    expect(() => new Work({ corpId: 'w w', agentId: 1, secret: 's' })).toThrow(/Work options.corpId/);
    expect(() => new Work({ corpId: 'ww1', agentId: 1 } as never)).toThrow(/Work options.secret must be a non-empty string/);
  });
});
