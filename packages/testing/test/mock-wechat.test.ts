import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { mockServerCommand, startMockWeChat, type MockApp, type MockFaultKind, type MockWeChat, type MockWeChatOptions } from '../src/index.js';

// The shared mock runs on a frozen base clock, so only advanceClock() moves time: every expires_in is
// exact and no test waits for real time to pass. 2026-11-25 12:00 Beijing time, mid-day, so quota
// days only roll over when a test moves the clock a whole day.
const T0 = Date.UTC(2026, 10, 25, 4, 0, 0);
const RID = / rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$/;
const TOKEN = /^\d{2}_[A-Za-z0-9_-]{120,140}$/;

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat({ now: () => T0 });
});
afterEach(() => {
  mock.clearFaults();
  mock.setLatency(0);
});
afterAll(async () => {
  await mock.close();
});

type Json = Record<string, unknown>;
interface Reply {
  status: number;
  type: string | null;
  text: string;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: Json;
}

async function request(path: string, init: RequestInit = {}, base = mock.url): Promise<Reply> {
  const res = await fetch(`${base}/${path}`, init);
  const text = await res.text();
  let json: Json;
  try {
    json = JSON.parse(text) as Json;
  } catch {
    json = undefined as unknown as Json;
  }
  return { status: res.status, type: res.headers.get('content-type'), text, json };
}
const get = async (path: string, base = mock.url) => (await request(path, {}, base)).json;
const post = async (path: string, body: unknown, base = mock.url) =>
  (await request(path, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body) }, base)).json;

const classic = (app: MockApp, base = mock.url) =>
  get(`cgi-bin/token?grant_type=client_credential&appid=${app.appId}&secret=${app.secret}`, base);
const stable = (app: MockApp, extra: Json = {}, base = mock.url) =>
  post('cgi-bin/stable_token', { grant_type: 'client_credential', appid: app.appId, secret: app.secret, ...extra }, base);
/** A business call that only checks the token: its errcode (0 when accepted). */
const businessErrcode = async (token: string, base = mock.url) => {
  const body = await get(`cgi-bin/get_api_domain_ip?access_token=${encodeURIComponent(token)}`, base);
  return Array.isArray(body.ip_list) ? 0 : body.errcode;
};
const tokenOf = (body: Json): string => {
  expect(body.access_token).toMatch(TOKEN);
  return body.access_token as string;
};

async function withMock<T>(options: MockWeChatOptions, run: (local: MockWeChat) => Promise<T>): Promise<T> {
  const local = await startMockWeChat(options);
  try {
    return await run(local);
  } finally {
    await local.close();
  }
}

/** Polls without sleeping longer than a macrotask: for "the mock has received it" before acting. */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 2));
}

describe('GET cgi-bin/token (classic)', () => {
  it('answers a real-looking token and 7200 s, no errcode, and a new token on every call', async () => {
    const app = mock.createApp();
    const first = await classic(app);
    expect(first).toEqual({ access_token: expect.stringMatching(TOKEN), expires_in: 7200 });
    const second = await classic(app);
    expect(second.access_token).not.toBe(first.access_token);
    expect(mock.counters(app.appId)).toMatchObject({ classicTokenRequests: 2, tokenRequests: 2, tokensIssued: 2, requests: 2, errcodes: {} });
  });

  it('the previous token lives for the grace window (300 s), then answers 40001; the new one works', async () => {
    const app = mock.createApp();
    const first = tokenOf(await classic(app));
    const second = tokenOf(await classic(app));
    mock.advanceClock(299);
    expect(await businessErrcode(first)).toBe(0);
    expect(mock.isTokenValid(app.appId, first)).toBe(true);
    mock.advanceClock(1);
    expect(mock.isTokenValid(app.appId, first)).toBe(false);
    expect(await businessErrcode(first)).toBe(40001);
    expect(await businessErrcode(second)).toBe(0);
  });

  it('a third fetch kills the first token at once; only the immediately previous one gets a grace window', async () => {
    const app = mock.createApp();
    const a = tokenOf(await classic(app));
    const b = tokenOf(await classic(app));
    const c = tokenOf(await classic(app));
    expect(await businessErrcode(a)).toBe(40001);
    expect(await businessErrcode(b)).toBe(0);
    expect(await businessErrcode(c)).toBe(0);
  });

  it('the grace window never outlives the token: superseded 100 s before its expiry, it ends with 42001 then', async () => {
    const app = mock.createApp();
    const old = tokenOf(await classic(app));
    mock.advanceClock(7100);
    await classic(app);
    mock.advanceClock(99);
    expect(await businessErrcode(old)).toBe(0);
    mock.advanceClock(1);
    expect(await businessErrcode(old)).toBe(42001);
  });

  it.each([
    ['grant_type wrong', 'grant_type=password&appid={appid}&secret={secret}', 40002, 'invalid grant_type'],
    ['grant_type missing', 'appid={appid}&secret={secret}', 40002, 'invalid grant_type'],
    ['appid missing', 'grant_type=client_credential&secret={secret}', 41002, 'appid missing'],
    ['secret missing', 'grant_type=client_credential&appid={appid}', 41004, 'appsecret missing'],
    ['unknown appid', 'grant_type=client_credential&appid=wx0000000000000000&secret={secret}', 40013, 'invalid appid'],
    ['wrong secret', 'grant_type=client_credential&appid={appid}&secret=wrong', 40125, 'invalid appsecret'],
  ] as const)('%s → %i with WeChat’s errmsg and a rid, HTTP 200', async (_label, query, errcode, errmsg) => {
    const app = mock.createApp();
    const reply = await request(`cgi-bin/token?${query.replace('{appid}', app.appId).replace('{secret}', app.secret)}`);
    expect(reply.status).toBe(200);
    expect(reply.json.errcode).toBe(errcode);
    expect(reply.json.errmsg).toMatch(RID);
    expect((reply.json.errmsg as string).replace(RID, '')).toBe(errmsg);
    expect(reply.json.access_token).toBeUndefined();
    expect(mock.counters(app.appId).tokensIssued).toBe(0);
  });

  it('rids differ between answers', async () => {
    const app = mock.createApp();
    const [a, b] = [await classic({ ...app, secret: 'x' }), await classic({ ...app, secret: 'x' })];
    expect(a.errmsg).not.toBe(b.errmsg);
    expect(mock.counters(app.appId)).toMatchObject({ classicTokenRequests: 2, errcodes: { '40125': 2 } });
  });

  it('an IP off the whitelist → 40164 naming the caller’s IP; the secret is checked first', async () => {
    const app = mock.createApp();
    mock.setIpAllowed(app.appId, false);
    const refused = await classic(app);
    expect(refused.errcode).toBe(40164);
    expect(refused.errmsg).toMatch(/^invalid ip 127\.0\.0\.1 ipv6 ::ffff:127\.0\.0\.1, not in whitelist rid: /);
    expect((await classic({ ...app, secret: 'wrong' })).errcode).toBe(40125);
    mock.setIpAllowed(app.appId, true);
    tokenOf(await classic(app));
  });

  it('the daily quota ends in 45009, refusals do not spend it, and it comes back at midnight Beijing time', async () => {
    // 23:59:00 Beijing (15:59 UTC): the quota day ends 60 s later, though the UTC day does not.
    const base = Date.UTC(2026, 10, 25, 15, 59, 0);
    await withMock({ quotas: { token: 2 }, now: () => base }, async (local) => {
      const app = local.createApp();
      expect((await classic({ ...app, secret: 'wrong' }, local.url)).errcode).toBe(40125);
      tokenOf(await classic(app, local.url));
      tokenOf(await classic(app, local.url));
      const over = await classic(app, local.url);
      expect(over.errcode).toBe(45009);
      expect((over.errmsg as string).replace(RID, '')).toBe('reach max api daily quota limit');
      local.advanceClock(59);
      expect((await classic(app, local.url)).errcode).toBe(45009);
      local.advanceClock(1);
      tokenOf(await classic(app, local.url));
      expect(local.counters(app.appId)).toMatchObject({ classicTokenRequests: 6, tokensIssued: 3, errcodes: { '40125': 1, '45009': 2 } });
    });
  });

  it('graceSeconds and tokenTtlSeconds are options', async () => {
    await withMock({ graceSeconds: 5, tokenTtlSeconds: 600, now: () => T0 }, async (local) => {
      const app = local.createApp();
      const first = await classic(app, local.url);
      expect(first.expires_in).toBe(600);
      await classic(app, local.url);
      local.advanceClock(4);
      expect(await businessErrcode(first.access_token as string, local.url)).toBe(0);
      local.advanceClock(1);
      expect(await businessErrcode(first.access_token as string, local.url)).toBe(40001);
    });
  });
});

describe('POST cgi-bin/stable_token', () => {
  it('normal mode answers the current token with its remaining life in whole seconds', async () => {
    const app = mock.createApp();
    const first = await stable(app);
    expect(first).toEqual({ access_token: expect.stringMatching(TOKEN), expires_in: 7200 });
    mock.advanceClock(1000.5);
    // 6199.5 s are left: WeChat never rounds a token's life up.
    expect(await stable(app)).toEqual({ access_token: first.access_token, expires_in: 6199 });
    expect(mock.counters(app.appId)).toMatchObject({ stableTokenRequests: 2, tokenRequests: 2, tokensIssued: 1, forceRefreshes: 0 });
  });

  it('rotates once less than 300 s are left; the old token keeps its own remaining life (overlap)', async () => {
    const app = mock.createApp();
    const first = tokenOf(await stable(app));
    mock.advanceClock(6900);
    expect(await stable(app)).toEqual({ access_token: first, expires_in: 300 });
    mock.advanceClock(1);
    const second = await stable(app);
    expect(second.access_token).not.toBe(first);
    expect(second.expires_in).toBe(7200);
    expect(await businessErrcode(first)).toBe(0);
    mock.advanceClock(298);
    expect(await businessErrcode(first)).toBe(0);
    mock.advanceClock(1);
    // It reached its natural end: expired, not superseded.
    expect(await businessErrcode(first)).toBe(42001);
    expect(await businessErrcode(second.access_token as string)).toBe(0);
    expect(mock.counters(app.appId).tokensIssued).toBe(2);
  });

  it('force_refresh issues a new token, not twice within 30 s, and ends the previous one at once (no grace window: only normal mode overlaps)', async () => {
    const app = mock.createApp();
    const normal = tokenOf(await stable(app));
    const forced = await stable(app, { force_refresh: true });
    expect(forced.access_token).not.toBe(normal);
    expect(forced.expires_in).toBe(7200);
    // WeChat: "强制刷新模式，会导致上次获取的 access_token 失效" (a leaked token is what it is for).
    expect(await businessErrcode(normal)).toBe(40001);
    expect(await stable(app, { force_refresh: true })).toEqual(forced);
    mock.advanceClock(29);
    expect((await stable(app, { force_refresh: true })).access_token).toBe(forced.access_token);
    expect(await businessErrcode(forced.access_token as string)).toBe(0);
    mock.advanceClock(1);
    const again = tokenOf(await stable(app, { force_refresh: true }));
    expect(again).not.toBe(forced.access_token);
    expect(mock.counters(app.appId)).toMatchObject({ forceRefreshes: 4, tokensIssued: 3, stableTokenRequests: 5 });
    // Normal mode hands out the forced token.
    expect(await stable(app)).toEqual({ access_token: again, expires_in: 7200 });
    expect([await businessErrcode(normal), await businessErrcode(forced.access_token as string), await businessErrcode(again)]).toEqual([40001, 40001, 0]);
  });

  it('force_refresh is limited to 20 a day (45009), counted per Beijing day', async () => {
    const app = mock.createApp();
    for (let i = 0; i < 20; i += 1) {
      tokenOf(await stable(app, { force_refresh: true }));
      mock.advanceClock(30);
    }
    const over = await stable(app, { force_refresh: true });
    expect(over.errcode).toBe(45009);
    // Normal mode is not part of that limit.
    tokenOf(await stable(app));
    mock.advanceClock(86_400);
    tokenOf(await stable(app, { force_refresh: true }));
    expect(mock.counters(app.appId)).toMatchObject({ forceRefreshes: 22, tokensIssued: 21, errcodes: { '45009': 1 } });
  });

  it('GET → 43002 require POST method; a form or non-JSON body → 41002', async () => {
    const app = mock.createApp();
    const viaGet = await get(`cgi-bin/stable_token?grant_type=client_credential&appid=${app.appId}&secret=${app.secret}`);
    expect(viaGet.errcode).toBe(43002);
    expect((viaGet.errmsg as string).replace(RID, '')).toBe('require POST method');
    const form = await request('cgi-bin/stable_token', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `grant_type=client_credential&appid=${app.appId}&secret=${app.secret}`,
    });
    expect(form.json.errcode).toBe(41002);
    expect((await post('cgi-bin/stable_token', 'not json')).errcode).toBe(41002);
    expect((await post('cgi-bin/stable_token', '[1,2]')).errcode).toBe(41002);
    // Only the GET named the app (in its query); the bodies WeChat cannot read name none.
    expect(mock.counters(app.appId)).toMatchObject({ stableTokenRequests: 1, tokensIssued: 0, errcodes: { '43002': 1 } });
  });

  it.each([
    ['grant_type missing', { grant_type: undefined }, 40002],
    ['appid missing', { appid: undefined }, 41002],
    ['secret missing', { secret: '' }, 41004],
    ['unknown appid', { appid: 'wx0000000000000000' }, 40013],
    ['wrong secret', { secret: 'wrong' }, 40125],
  ] as const)('%s → %i', async (_label, override, errcode) => {
    const app = mock.createApp();
    const body = await post('cgi-bin/stable_token', { grant_type: 'client_credential', appid: app.appId, secret: app.secret, ...override });
    expect(body.errcode).toBe(errcode);
    expect(body.errmsg).toMatch(RID);
  });

  it('an IP off the whitelist → 40164', async () => {
    const app = mock.createApp();
    mock.setIpAllowed(app.appId, false);
    expect((await stable(app)).errcode).toBe(40164);
    expect(mock.counters(app.appId)).toMatchObject({ stableTokenRequests: 1, tokensIssued: 0, errcodes: { '40164': 1 } });
  });

  it('per-minute quota → 45011 until the next minute; the daily quota → 45009 until the next day', async () => {
    await withMock({ quotas: { stableTokenPerMinute: 2, stableToken: 3 }, now: () => T0 }, async (local) => {
      const app = local.createApp();
      tokenOf(await stable(app, {}, local.url));
      tokenOf(await stable(app, {}, local.url));
      const minute = await stable(app, {}, local.url);
      expect(minute.errcode).toBe(45011);
      expect((minute.errmsg as string).replace(RID, '')).toBe('api minute-quota reach limit  mustslower  retry next minute');
      local.advanceClock(60);
      tokenOf(await stable(app, {}, local.url));
      expect((await stable(app, {}, local.url)).errcode).toBe(45009);
      local.advanceClock(86_400);
      tokenOf(await stable(app, {}, local.url));
    });
  });

  it('quotas.forceRefresh is an option', async () => {
    await withMock({ quotas: { forceRefresh: 1 }, now: () => T0 }, async (local) => {
      const app = local.createApp();
      tokenOf(await stable(app, { force_refresh: true }, local.url));
      local.advanceClock(31);
      expect((await stable(app, { force_refresh: true }, local.url)).errcode).toBe(45009);
    });
  });

  it('is isolated from cgi-bin/token: neither invalidates the other', async () => {
    const app = mock.createApp();
    const s = tokenOf(await stable(app));
    const c1 = tokenOf(await classic(app));
    const c2 = tokenOf(await classic(app));
    const c3 = tokenOf(await classic(app));
    expect(await businessErrcode(c1)).toBe(40001);
    expect(await stable(app)).toEqual({ access_token: s, expires_in: 7200 });
    const forced = tokenOf(await stable(app, { force_refresh: true }));
    mock.advanceClock(300);
    expect(await businessErrcode(s)).toBe(40001);
    expect(await businessErrcode(c2)).toBe(40001);
    expect([await businessErrcode(c3), await businessErrcode(forced)]).toEqual([0, 0]);
    // A classic fetch after the forced refresh leaves the stable token alone too.
    tokenOf(await classic(app));
    mock.advanceClock(300);
    expect(await businessErrcode(forced)).toBe(0);
  });
});

describe('business APIs: the token checks', () => {
  it('41001 without a token, 40014 for one never issued, counted as rejected calls', async () => {
    const before = mock.counters();
    const missing = await get('cgi-bin/get_api_domain_ip');
    expect(missing.errcode).toBe(41001);
    expect((missing.errmsg as string).replace(RID, '')).toBe('access_token missing');
    const invented = await get(`cgi-bin/get_api_domain_ip?access_token=86_${'A'.repeat(130)}`);
    expect(invented.errcode).toBe(40014);
    expect((invented.errmsg as string).replace(RID, '')).toBe('invalid access_token');
    const after = mock.counters();
    expect(after.rejectedCalls - before.rejectedCalls).toBe(2);
    expect((after.errcodes['41001'] ?? 0) - (before.errcodes['41001'] ?? 0)).toBe(1);
  });

  it('invalidateTokens kills classic and stable tokens at once (40001); new fetches get new ones', async () => {
    const app = mock.createApp();
    const c = tokenOf(await classic(app));
    const s = tokenOf(await stable(app));
    mock.invalidateTokens(app.appId);
    expect(mock.isTokenValid(app.appId, c)).toBe(false);
    const rejected = await get(`cgi-bin/get_api_domain_ip?access_token=${s}`);
    expect(rejected.errcode).toBe(40001);
    expect((rejected.errmsg as string).replace(RID, '')).toBe('invalid credential, access_token is invalid or not latest');
    expect(await businessErrcode(c)).toBe(40001);
    const fresh = tokenOf(await stable(app));
    expect(fresh).not.toBe(s);
    expect(await businessErrcode(fresh)).toBe(0);
    expect(mock.counters(app.appId)).toMatchObject({ rejectedCalls: 2, errcodes: { '40001': 2 } });
  });

  it('a token past its natural expiry → 42001, and invalidating it afterwards does not change that', async () => {
    const app = mock.createApp();
    const token = tokenOf(await classic(app));
    mock.advanceClock(7199);
    expect(await businessErrcode(token)).toBe(0);
    mock.advanceClock(1);
    const expired = await get(`cgi-bin/get_api_domain_ip?access_token=${token}`);
    expect(expired.errcode).toBe(42001);
    expect((expired.errmsg as string).replace(RID, '')).toBe('access_token expired');
    mock.invalidateTokens(app.appId);
    expect(await businessErrcode(token)).toBe(42001);
    expect(mock.counters(app.appId).rejectedCalls).toBe(2);
  });

  it('get_api_domain_ip and getcallbackip answer an IP list', async () => {
    const token = tokenOf(await stable(mock.createApp()));
    for (const path of ['cgi-bin/get_api_domain_ip', 'cgi-bin/getcallbackip']) {
      const body = await get(`${path}?access_token=${token}`);
      expect(body.ip_list).toEqual(expect.arrayContaining(['101.226.103.0/25']));
      expect(body.errcode).toBeUndefined();
    }
  });

  it('an unknown path → HTTP 404 with a short text body', async () => {
    const reply = await request('cgi-bin/nope?access_token=x');
    expect(reply.status).toBe(404);
    expect(reply.type).toMatch(/^text\/plain/);
    expect(reply.text).toContain('/cgi-bin/nope');
    expect(reply.json).toBeUndefined();
  });
});

describe('GET cgi-bin/ticket/getticket', () => {
  it('answers the same ticket while it lives, always with expires_in 7200 as WeChat does, and a new one after', async () => {
    const app = mock.createApp();
    const token = tokenOf(await stable(app));
    const first = await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`);
    expect(first).toEqual({ errcode: 0, errmsg: 'ok', ticket: expect.stringMatching(/^[A-Za-z0-9_-]{80,}$/), expires_in: 7200 });
    mock.advanceClock(100);
    expect(await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`)).toEqual(first);
    const card = await get(`cgi-bin/ticket/getticket?access_token=${token}&type=wx_card`);
    expect(card.ticket).not.toBe(first.ticket);
    // 10 s before its end the same ticket comes back, still said to last 7200 s; it ends 10 s later all the same.
    mock.advanceClock(7090);
    expect(await get(`cgi-bin/ticket/getticket?access_token=${tokenOf(await stable(app))}&type=jsapi`)).toEqual(first);
    expect(mock.isTicketValid(app.appId, first.ticket as string)).toBe(true);
    mock.advanceClock(10);
    expect(mock.isTicketValid(app.appId, first.ticket as string)).toBe(false);
    const fresh = tokenOf(await stable(app));
    const next = await get(`cgi-bin/ticket/getticket?access_token=${fresh}&type=jsapi`);
    expect(next.ticket).not.toBe(first.ticket);
    expect(next.expires_in).toBe(7200);
    expect(mock.counters(app.appId).ticketRequests).toBe(5);
  });

  it('a fixed jsapiTicket is always the jsapi ticket, expired or not', async () => {
    const fixed = 'sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg';
    const app = mock.createApp({ jsapiTicket: fixed });
    const token = tokenOf(await stable(app));
    expect((await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`)).ticket).toBe(fixed);
    mock.advanceClock(7200);
    const fresh = tokenOf(await stable(app));
    expect((await get(`cgi-bin/ticket/getticket?access_token=${fresh}&type=jsapi`)).ticket).toBe(fixed);
    expect((await get(`cgi-bin/ticket/getticket?access_token=${fresh}&type=wx_card`)).ticket).not.toBe(fixed);
  });

  it('a bad type → 40097 invalid args; a dead token → 40001', async () => {
    const app = mock.createApp();
    const token = tokenOf(await stable(app));
    const bad = await get(`cgi-bin/ticket/getticket?access_token=${token}&type=other`);
    expect(bad.errcode).toBe(40097);
    expect((bad.errmsg as string).replace(RID, '')).toBe('invalid args');
    mock.invalidateTokens(app.appId);
    expect((await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`)).errcode).toBe(40001);
    expect(mock.counters(app.appId)).toMatchObject({ ticketRequests: 0, rejectedCalls: 1, errcodes: { '40097': 1, '40001': 1 } });
  });

  it('issueTicket acts as another program whose fetch WeChat answered with a new ticket: getticket answers it, and ours lives out its grace window', async () => {
    const app = mock.createApp();
    const token = tokenOf(await stable(app));
    const ours = (await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`)).ticket as string;
    const card = (await get(`cgi-bin/ticket/getticket?access_token=${token}&type=wx_card`)).ticket as string;
    expect(mock.isTicketValid(app.appId, ours)).toBe(true);
    const theirs = mock.issueTicket(app.appId);
    expect(theirs).toMatch(/^[A-Za-z0-9_-]{80,}$/);
    expect(theirs).not.toBe(ours);
    expect((await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`)).ticket).toBe(theirs);
    expect(mock.counters(app.appId)).toMatchObject({ ticketRequests: 3, externalFetches: 1 });
    mock.advanceClock(299);
    expect(mock.isTicketValid(app.appId, ours)).toBe(true);
    mock.advanceClock(1);
    expect(mock.isTicketValid(app.appId, ours)).toBe(false);
    expect(mock.isTicketValid(app.appId, theirs)).toBe(true);
    // Each type its own: the card ticket was not replaced.
    expect(mock.isTicketValid(app.appId, card)).toBe(true);
    // A second replacement ends the first one's grace at once, as a third token ends the first.
    const third = mock.issueTicket(app.appId);
    const fourth = mock.issueTicket(app.appId);
    expect([mock.isTicketValid(app.appId, theirs), mock.isTicketValid(app.appId, third), mock.isTicketValid(app.appId, fourth)]).toEqual([false, true, true]);
    expect(mock.isTicketValid(app.appId, 'no-such-ticket')).toBe(false);
    expect(() => mock.issueTicket(mock.createApp({ jsapiTicket: 'fixed-ticket' }).appId)).toThrow(/fixed jsapiTicket/);
    // Only a type getticket hands out for the app's kind: another would make a ticket no route answers.
    expect(() => mock.issueTicket(app.appId, 'agent_config')).toThrow(/'jsapi' or 'wx_card' \(got 'agent_config'\)/);
    const work = mock.createWorkApp();
    expect(() => mock.issueTicket(`${work.corpId}:${work.agentId}`, 'agent_jsapi')).toThrow(/'jsapi' or 'agent_config' \(got 'agent_jsapi'\)/);
    expect(mock.isTicketValid(`${work.corpId}:${work.agentId}`, mock.issueTicket(`${work.corpId}:${work.agentId}`, 'agent_config'))).toBe(true);
    expect(mock.counters(app.appId).externalFetches).toBe(3);
  });

  it('quotas.ticket → 45009', async () => {
    await withMock({ quotas: { ticket: 1 }, now: () => T0 }, async (local) => {
      const token = tokenOf(await stable(local.createApp(), {}, local.url));
      expect((await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`, local.url)).errcode).toBe(0);
      expect((await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`, local.url)).errcode).toBe(45009);
    });
  });
});

describe('POST cgi-bin/message/template/send', () => {
  const message = { touser: 'oABC', template_id: 'T1', data: { first: { value: 'hello' } } };
  const send = (token: string, body: unknown) =>
    request(`cgi-bin/message/template/send?access_token=${token}`, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body) });

  it('answers msgid as a 64-bit integer above 2^53, digit for digit, increasing', async () => {
    const app = mock.createApp();
    const token = tokenOf(await stable(app));
    const first = (await send(token, message)).text;
    const second = (await send(token, message)).text;
    const msgid = (text: string) => BigInt(/^\{"errcode":0,"errmsg":"ok","msgid":(\d+)\}$/.exec(text)![1]!);
    expect(msgid(first)).toBeGreaterThanOrEqual(2_000_000_000_000_000_000n);
    expect(msgid(second)).toBe(msgid(first) + 1n);
    // What a client that reads msgid as a JS number would get wrong.
    expect(BigInt(Number(msgid(first)))).not.toBe(msgid(first));
    expect(mock.counters(app.appId).templateSends).toBe(2);
  });

  it.each([
    ['touser missing', { ...message, touser: undefined }, 40003, 'invalid openid'],
    ['touser empty', { ...message, touser: '' }, 40003, 'invalid openid'],
    ['template_id missing', { ...message, template_id: undefined }, 40037, 'invalid template_id'],
    ['data not an object', { ...message, data: 'x' }, 47001, 'data format error'],
    ['data an array', { ...message, data: [] }, 47001, 'data format error'],
    ['body not JSON', 'touser=oABC', 47001, 'data format error'],
  ])('%s → %i', async (_label, body, errcode, errmsg) => {
    const app = mock.createApp();
    const token = tokenOf(await stable(app));
    const reply = await send(token, body);
    expect(reply.json.errcode).toBe(errcode);
    expect((reply.json.errmsg as string).replace(RID, '')).toBe(errmsg);
    expect(mock.counters(app.appId)).toMatchObject({ templateSends: 0, rejectedCalls: 0, errcodes: { [String(errcode)]: 1 } });
  });

  it('a superseded token is refused with 40001 and nothing is sent', async () => {
    const app = mock.createApp();
    const token = tokenOf(await classic(app));
    await classic(app);
    await classic(app);
    expect((await send(token, message)).json.errcode).toBe(40001);
    expect(mock.counters(app.appId)).toMatchObject({ templateSends: 0, rejectedCalls: 1 });
  });

  it('GET → 43002', async () => {
    const token = tokenOf(await stable(mock.createApp()));
    expect((await get(`cgi-bin/message/template/send?access_token=${token}`)).errcode).toBe(43002);
  });
});

describe('faults', () => {
  it('a fault answers the next `times` matching requests (leading slash optional), then normal answers resume', async () => {
    const app = mock.createApp();
    mock.injectFault({ kind: 'http-502', path: '/cgi-bin/stable_token', times: 2 });
    const statusOf = async () =>
      (await request('cgi-bin/stable_token', { method: 'POST', body: JSON.stringify({ grant_type: 'client_credential', appid: app.appId, secret: app.secret }) })).status;
    // Another path is not affected and does not use up the fault.
    expect((await request(`cgi-bin/token?grant_type=client_credential&appid=${app.appId}&secret=${app.secret}`)).status).toBe(200);
    expect([await statusOf(), await statusOf(), await statusOf()]).toEqual([502, 502, 200]);
    // Faulted requests are requests and token requests all the same.
    expect(mock.counters(app.appId)).toMatchObject({ requests: 4, stableTokenRequests: 3, classicTokenRequests: 1, tokensIssued: 2 });
  });

  it('faults without a path match any path, in the order they were queued', async () => {
    mock.injectFault({ kind: 'http-500' });
    mock.injectFault({ kind: 'html' });
    expect((await request('cgi-bin/getcallbackip')).status).toBe(500);
    expect((await request('anything/at/all')).text).toMatch(/^<!DOCTYPE html>/);
    expect((await request('anything/at/all')).status).toBe(404);
  });

  it('times: Infinity lasts until clearFaults()', async () => {
    mock.injectFault({ kind: 'http-500', path: 'cgi-bin/token', times: Infinity });
    for (let i = 0; i < 5; i += 1) expect((await request('cgi-bin/token')).status).toBe(500);
    mock.clearFaults();
    expect((await request('cgi-bin/token')).json.errcode).toBe(40002);
  });

  it.each<[MockFaultKind, (reply: Reply) => void]>([
    ['http-500', (r) => expect([r.status, r.type, r.json]).toEqual([500, 'text/html', undefined])],
    ['http-502', (r) => expect([r.status, r.type, r.json]).toEqual([502, 'text/html', undefined])],
    ['html', (r) => expect([r.status, r.type, r.text.startsWith('<!DOCTYPE html>')]).toEqual([200, 'text/html', true])],
    ['truncated-json', (r) => {
      expect(r.status).toBe(200);
      expect(r.json).toBeUndefined();
      expect(r.text).toMatch(/^\{"access_token":"\d{2}_[A-Za-z0-9_-]+$/);
    }],
    ['wrong-types', (r) => expect(r.json).toEqual({ access_token: 123, expires_in: '7200' })],
    ['empty-token', (r) => expect(r.json).toEqual({ access_token: '', expires_in: 7200 })],
  ])('%s', async (kind, check) => {
    mock.injectFault({ kind, path: 'cgi-bin/token' });
    check(await request('cgi-bin/token'));
  });

  it('errcode answers WeChat’s error shape with that code, counted against the app', async () => {
    const app = mock.createApp();
    const token = tokenOf(await stable(app));
    mock.injectFault({ kind: 'errcode', errcode: 40001, path: 'cgi-bin/get_api_domain_ip' });
    const reply = await request(`cgi-bin/get_api_domain_ip?access_token=${token}`);
    expect(reply.status).toBe(200);
    expect(reply.json.errcode).toBe(40001);
    expect(reply.json.errmsg).toMatch(RID);
    expect(mock.counters(app.appId)).toMatchObject({ rejectedCalls: 1, errcodes: { '40001': 1 } });
    // The token itself is fine: the fault was a one-off.
    expect(await businessErrcode(token)).toBe(0);
    mock.injectFault({ kind: 'errcode', path: 'cgi-bin/token' });
    expect((await get('cgi-bin/token')).errcode).toBe(-1);
  });

  it('huge sends exactly sizeBytes (5 MiB by default) of JSON-looking bytes', async () => {
    mock.injectFault({ kind: 'huge', sizeBytes: 100_000 });
    const small = await request('cgi-bin/token');
    expect(small.text.length).toBe(100_000);
    expect(small.text.startsWith('{"access_token":"')).toBe(true);
    mock.injectFault({ kind: 'huge' });
    const res = await fetch(`${mock.url}/cgi-bin/token`);
    expect(res.headers.get('content-length')).toBe(String(5 * 1024 * 1024));
    expect((await res.arrayBuffer()).byteLength).toBe(5 * 1024 * 1024);
  });

  it('hang never answers: a client timeout fires, and close() still resolves and cuts the waiting request', async () => {
    const local = await startMockWeChat();
    local.injectFault({ kind: 'hang', times: 2 });
    await expect(fetch(`${local.url}/cgi-bin/token`, { signal: AbortSignal.timeout(200) })).rejects.toMatchObject({ name: 'TimeoutError' });
    const waiting = fetch(`${local.url}/cgi-bin/token`);
    await until(() => local.counters().requests === 2);
    await local.close();
    await expect(waiting).rejects.toThrow();
  });

  it('slow-body sends headers, then a byte at a time forever; close() still resolves', async () => {
    const local = await startMockWeChat();
    local.injectFault({ kind: 'slow-body', intervalMs: 10, times: 2 });
    const res = await fetch(`${local.url}/cgi-bin/token`, { signal: AbortSignal.timeout(300) });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const firstBytes = await reader.read();
    expect(new TextDecoder().decode(firstBytes.value)).toMatch(/^\{ *$/);
    const rest = (async () => {
      for (;;) if ((await reader.read()).done) return 'ended';
    })();
    await expect(rest).rejects.toMatchObject({ name: 'TimeoutError' });
    const trickling = await fetch(`${local.url}/cgi-bin/token`);
    await local.close();
    await expect(trickling.text()).rejects.toThrow();
  });

  it('reset cuts the connection mid-body; the next request is answered normally', async () => {
    mock.injectFault({ kind: 'reset', path: 'cgi-bin/token' });
    await expect(fetch(`${mock.url}/cgi-bin/token`).then((res) => res.text())).rejects.toThrow();
    expect((await get('cgi-bin/token')).errcode).toBe(40002);
  });

  it('refuses a fault it cannot play', () => {
    expect(() => mock.injectFault({ kind: 'teapot' as MockFaultKind })).toThrow(/unknown fault kind "teapot"/);
    expect(() => mock.injectFault({ kind: 'hang', times: 0 })).toThrow(/times/);
  });

  it('latency holds every answer back until it is lifted; control endpoints answer at once', async () => {
    const app = mock.createApp();
    mock.setLatency(60_000);
    await expect(fetch(`${mock.url}/cgi-bin/token`, { signal: AbortSignal.timeout(200) })).rejects.toMatchObject({ name: 'TimeoutError' });
    const counters = await fetch(`${mock.url}/__mock/counters?appid=${app.appId}`, { signal: AbortSignal.timeout(5000) });
    expect(counters.status).toBe(200);
    mock.setLatency(0);
    tokenOf(await stable(app));
  });
});

describe('counters and direct controls', () => {
  it('counts per app and sums over all apps; snapshots do not change; resetCounters zeroes them', async () => {
    await withMock({ now: () => T0 }, async (local) => {
      const [a, b] = [local.createApp(), local.createApp()];
      const token = tokenOf(await stable(a, {}, local.url));
      await classic(a, local.url);
      await stable({ ...b, secret: 'bad' }, {}, local.url);
      await post(`cgi-bin/message/template/send?access_token=${token}`, { touser: 'o', template_id: 'T', data: {} }, local.url);
      await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`, local.url);
      await get('cgi-bin/get_api_domain_ip', local.url);
      const snapshot = local.counters(a.appId);
      expect(snapshot).toEqual({
        requests: 4,
        classicTokenRequests: 1,
        stableTokenRequests: 1,
        tokenRequests: 2,
        tokensIssued: 2,
        forceRefreshes: 0,
        externalFetches: 0,
        ticketRequests: 1,
        templateSends: 1,
        messageSends: 0,
        wxaCodes: 0,
        rejectedCalls: 0,
        componentTokenRequests: 0,
        authorizerTokenRequests: 0,
        queryAuthRequests: 0,
        verifyTicketPushes: 0,
        errcodes: {},
      });
      expect(local.counters(b.appId)).toMatchObject({ requests: 1, stableTokenRequests: 1, tokensIssued: 0, errcodes: { '40125': 1 } });
      // The call without a token belongs to no app, but to the sum.
      expect(local.counters()).toMatchObject({ requests: 6, tokenRequests: 3, rejectedCalls: 1, errcodes: { '40125': 1, '41001': 1 } });
      snapshot.errcodes['1'] = 1;
      await classic(a, local.url);
      expect(snapshot.classicTokenRequests).toBe(1);
      expect(local.counters(a.appId).errcodes).toEqual({});
      local.resetCounters();
      expect(local.counters()).toMatchObject({ requests: 0, tokenRequests: 0, errcodes: {} });
      expect(local.counters(a.appId).tokensIssued).toBe(0);
      expect(() => local.counters('wx-unknown')).toThrow(/wx-unknown/);
    });
  });

  it('issueClassicToken acts as another program: counted apart, and it starts our token’s grace window', async () => {
    const app = mock.createApp();
    const ours = tokenOf(await classic(app));
    const theirs = mock.issueClassicToken(app.appId);
    expect(theirs).toMatch(TOKEN);
    expect(theirs).not.toBe(ours);
    expect(mock.counters(app.appId)).toMatchObject({ classicTokenRequests: 1, tokenRequests: 1, externalFetches: 1, tokensIssued: 1 });
    mock.advanceClock(300);
    expect(await businessErrcode(ours)).toBe(40001);
    expect(await businessErrcode(theirs)).toBe(0);
  });

  it('createApp makes wx + 16 hex ids and random secrets; addApp refuses a known id; now() follows advanceClock', async () => {
    const [a, b] = [mock.createApp(), mock.createApp({ secret: 'chosen' })];
    expect(a.appId).toMatch(/^wx[0-9a-f]{16}$/);
    expect(a.secret).toMatch(/^[0-9a-f]{32}$/);
    expect(a.appId).not.toBe(b.appId);
    expect(b.secret).toBe('chosen');
    tokenOf(await classic(b));
    expect(() => mock.addApp(a)).toThrow(/already knows/);
    mock.addApp({ appId: 'wxaddedbyhand0001', secret: 's' });
    tokenOf(await classic({ appId: 'wxaddedbyhand0001', secret: 's' }));
    const before = mock.now();
    mock.advanceClock(1.5);
    expect(mock.now() - before).toBe(1500);
    expect(() => mock.advanceClock(-1)).toThrow(/advanceClock/);
  });

  it('options are validated before listening, naming the option', async () => {
    await expect(startMockWeChat({ graceSeconds: -1 })).rejects.toThrow('startMockWeChat options.graceSeconds must be a number >= 0 (got number)');
    await expect(startMockWeChat({ port: 70_000 })).rejects.toThrow(/options\.port/);
    await expect(startMockWeChat({ quotas: { token: '5' as unknown as number } })).rejects.toThrow(/options\.quotas\.token .*\(got string\)/);
  });

  it('apps given as options are known from the start', async () => {
    await withMock({ apps: [{ appId: 'wxfromoptions0001', secret: 's' }] }, async (local) => {
      tokenOf(await classic({ appId: 'wxfromoptions0001', secret: 's' }, local.url));
      expect(local.url).toBe(`http://127.0.0.1:${local.port}`);
    });
  });
});

describe('control endpoints under /__mock/', () => {
  it('apps, counters, invalidate, issue-classic-token, issue-ticket and clock drive the mock over HTTP', async () => {
    const app = (await post('__mock/apps', { jsapiTicket: 'fixed-ticket' })) as unknown as MockApp;
    expect(app).toEqual({ appId: expect.stringMatching(/^wx[0-9a-f]{16}$/), secret: expect.any(String), jsapiTicket: 'fixed-ticket' });
    const token = tokenOf(await classic(app));
    expect((await get(`cgi-bin/ticket/getticket?access_token=${token}&type=jsapi`)).ticket).toBe('fixed-ticket');

    expect(await post(`__mock/invalidate?appid=${app.appId}`, '')).toEqual({ ok: true });
    expect(await businessErrcode(token)).toBe(40001);

    const theirs = (await post(`__mock/issue-classic-token?appid=${app.appId}`, '')).access_token as string;
    expect(mock.isTokenValid(app.appId, theirs)).toBe(true);
    const card = (await post(`__mock/issue-ticket?appid=${app.appId}&type=wx_card`, '')).ticket as string;
    expect(mock.isTicketValid(app.appId, card)).toBe(true);

    expect(await get(`__mock/counters?appid=${app.appId}`)).toMatchObject({ classicTokenRequests: 1, externalFetches: 2, rejectedCalls: 1, ticketRequests: 1 });
    expect((await get('__mock/counters')).requests).toBe(mock.counters().requests);

    const before = mock.now();
    expect(await post('__mock/clock?advance=7200', '')).toEqual({ now: before + 7_200_000 });
    expect(await businessErrcode(theirs)).toBe(42001);
  });

  it('latency, fault and reset', async () => {
    const app = mock.createApp();
    expect(await post('__mock/fault', { kind: 'http-500', path: 'cgi-bin/token', times: 'Infinity' })).toEqual({ ok: true });
    expect((await request('cgi-bin/token')).status).toBe(500);
    expect((await request('cgi-bin/token')).status).toBe(500);
    expect(await post('__mock/latency?ms=60000', '')).toEqual({ ok: true });
    await expect(fetch(`${mock.url}/cgi-bin/getcallbackip`, { signal: AbortSignal.timeout(200) })).rejects.toMatchObject({ name: 'TimeoutError' });
    // reset: counters to zero, faults gone, latency back to the starting value.
    expect(await post('__mock/reset', '')).toEqual({ ok: true });
    expect(mock.counters().requests).toBe(0);
    tokenOf(await classic(app));
  });

  it('refuses bad calls with HTTP 400 or 404 and a JSON error', async () => {
    const bad = async (path: string, init: RequestInit = { method: 'POST' }) => {
      const reply = await request(path, init);
      return [reply.status, typeof reply.json?.error];
    };
    expect(await bad('__mock/invalidate?appid=wx-nope')).toEqual([400, 'string']);
    expect(await bad('__mock/clock?advance=soon')).toEqual([400, 'string']);
    expect(await bad('__mock/latency')).toEqual([400, 'string']);
    expect(await bad('__mock/fault', { method: 'POST', body: '{not json' })).toEqual([400, 'string']);
    expect(await bad('__mock/fault', { method: 'POST', body: '{"kind":"teapot"}' })).toEqual([400, 'string']);
    // A misspelt `path` or `times` would put a fault on every path, once: refused, and no fault queued.
    expect(await bad('__mock/fault', { method: 'POST', body: '{"kind":"http-500","paht":"cgi-bin/token","time":3}' })).toEqual([400, 'string']);
    expect((await request('cgi-bin/getcallbackip')).status).toBe(200);
    expect(await bad('__mock/counters?appid=wx-nope', {})).toEqual([400, 'string']);
    expect(await bad('__mock/nothing')).toEqual([404, 'string']);
    // A misspelt field would make an app of another id than the caller named: refused, and no app made.
    const misspelt = await request('__mock/apps', { method: 'POST', body: JSON.stringify({ appid: 'wx0123456789abcdef', secret: 's' }) });
    expect([misspelt.status, misspelt.json?.error]).toEqual([400, expect.stringContaining('appid')]);
    expect(await bad('__mock/apps', { method: 'POST', body: JSON.stringify({ corpId: 'ww0123456789abcdef', agentId: '1000002', secret: 's' }) })).toEqual([400, 'string']);
    expect((await classic({ appId: 'wx0123456789abcdef', secret: 's' })).errcode).toBe(40013);
    expect(await bad('__mock/reset', {})).toEqual([404, 'string']);
  });
});

describe('the wxkit-mock-wechat command', () => {
  const bin = fileURLToPath(new URL('../bin/wxkit-mock-wechat.mjs', import.meta.url));
  const run = (args: string[]) => {
    const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    // 'close': the output is read to its end (at 'exit' the last lines may still be in the pipe).
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    return { child, exited, output: () => ({ stdout, stderr }) };
  };
  const firstLine = (child: ReturnType<typeof run>['child']) =>
    new Promise<string>((resolve) => createInterface({ input: child.stdout! }).once('line', resolve));

  it('--json prints one line with its URL and a created app, serves it, and exits 0 on SIGTERM', async () => {
    const cli = run(['--json', '--port', '0']);
    const { url, apps } = JSON.parse(await firstLine(cli.child)) as { url: string; apps: MockApp[] };
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(apps).toEqual([{ appId: expect.stringMatching(/^wx[0-9a-f]{16}$/), secret: expect.any(String) }]);
    const token = tokenOf(await classic(apps[0]!, url));
    expect(await businessErrcode(token, url)).toBe(0);
    expect(await get(`__mock/counters?appid=${apps[0]!.appId}`, url)).toMatchObject({ classicTokenRequests: 1 });
    cli.child.kill('SIGTERM');
    expect(await cli.exited).toBe(0);
  });

  it('prints text with the given apps and their secrets, applies --grace, and exits 0 on SIGINT', async () => {
    const cli = run(['--app', 'wx1234567890abcdef:s3:cret', '--app', 'wxfedcba0987654321:other', '--grace', '5']);
    const line = await firstLine(cli.child);
    const url = /^mock WeChat API at (http:\/\/\S+)$/.exec(line)![1]!;
    await until(() => cli.output().stdout.includes('Ctrl-C'));
    expect(cli.output().stdout).toContain('app wx1234567890abcdef  secret s3:cret');
    expect(cli.output().stdout).toContain('app wxfedcba0987654321  secret other');
    const app = { appId: 'wx1234567890abcdef', secret: 's3:cret' };
    const first = tokenOf(await classic(app, url));
    await classic(app, url);
    await post('__mock/clock?advance=5', '', url);
    expect(await businessErrcode(first, url)).toBe(40001);
    cli.child.kill('SIGINT');
    expect(await cli.exited).toBe(0);
  });

  it.each([
    [['--port', 'eighty'], '--port'],
    [['--port', '70000'], '--port'],
    [['--grace', '1.5'], '--grace'],
    [['--latency', 'x'], '--latency'],
    [['--bogus'], '--bogus'],
    [['--app', 'no-colon'], '--app'],
    [['--app', 'wx1:a', '--app', 'wx1:b'], '--app'],
    [['--host', ''], '--host'],
  ])('%j is refused with exit code 2 and a message naming %s', async (args, flag) => {
    const cli = run(args);
    expect(await cli.exited).toBe(2);
    expect(cli.output().stderr).toContain(flag);
    expect(cli.output().stdout).toBe('');
  });

  it('a port already taken is reported and exits 1', async () => {
    const cli = run(['--port', String(mock.port)]);
    expect(await cli.exited).toBe(1);
    expect(cli.output().stderr).toMatch(/^wxkit-mock-wechat: .*EADDRINUSE/);
  });

  it('mockServerCommand, as `wxkit mock-server` runs it, answers usage errors with 2 under the name it is given', async () => {
    const written: string[] = [];
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => (written.push(String(chunk)), true));
    try {
      expect(await mockServerCommand(['--port', 'x'], 'wxkit mock-server')).toBe(2);
    } finally {
      spy.mockRestore();
    }
    expect(written.join('')).toMatch(/^wxkit mock-server: --port must be an integer[^]*usage: wxkit mock-server \[options\]/);
  });

  it('--help prints the usage and exits 0', async () => {
    const cli = run(['--help']);
    expect(await cli.exited).toBe(0);
    expect(cli.output().stdout).toMatch(/^usage: wxkit-mock-wechat/);
  });
});
