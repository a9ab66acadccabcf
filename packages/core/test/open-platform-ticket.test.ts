import { afterAll, describe, expect, it } from 'vitest';
import { CacheError, ConfigError, MemoryCache, MessageCrypto, MessageCryptoError, OpenPlatform } from '../src/index.js';
import { cdata } from '../src/open-platform/xml.js';

// A verify-ticket push must never replace a newer ticket: not one already stored, and not one another
// process stores between this push's read of the record and its write.
const COMPONENT = 'wxcomponent0000002';
const TOKEN = 'callback-token';
const KEY = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG';
const TICKET_KEY = `wechat:component_verify_ticket:${COMPONENT}`;
const crypto = new MessageCrypto({ token: TOKEN, encodingAESKey: KEY, appId: COMPONENT });
const opened: OpenPlatform[] = [];
/** The platforms' clock: the pushes below were made a few minutes before it. */
const NOW_S = 1_000;
afterAll(() => Promise.all(opened.map((open) => open.close())));

function platform(durableStore: MemoryCache, logger: false | { warn(obj: object, msg: string): void } = false): OpenPlatform {
  const open = new OpenPlatform({ appId: COMPONENT, secret: 's', token: TOKEN, encodingAESKey: KEY, baseUrl: 'http://127.0.0.1:9', cache: new MemoryCache(), durableStore, logger, now: () => NOW_S * 1000 });
  opened.push(open);
  return open;
}

/** The request WeChat sends at `signedAt` (by default now, NOW_S) for a verify-ticket push made at `createTime`. */
function push(ticket: string, createTime: number, signedAt = NOW_S) {
  const xml = `<xml><AppId>${cdata(COMPONENT)}</AppId><CreateTime>${createTime}</CreateTime><InfoType>${cdata('component_verify_ticket')}</InfoType><ComponentVerifyTicket>${cdata(ticket)}</ComponentVerifyTicket></xml>`;
  const encrypt = crypto.encrypt(xml);
  const timestamp = String(signedAt);
  const nonce = 'n0nce';
  return { query: { msg_signature: crypto.signature(timestamp, nonce, encrypt), timestamp, nonce }, body: `<xml><AppId>${cdata(COMPONENT)}</AppId><Encrypt>${cdata(encrypt)}</Encrypt></xml>` };
}

const storedTicket = async (store: MemoryCache) => JSON.parse(Buffer.from((await store.get(TICKET_KEY))!, 'latin1').toString('utf8')).component_verify_ticket;

describe('storing a pushed component_verify_ticket', () => {
  it('a late push does not replace a newer stored ticket; a newer push does', async () => {
    const durable = new MemoryCache();
    const open = platform(durable);
    const skipped: object[] = [];
    open.on('component_verify_ticket.not_stored', (event) => skipped.push(event));
    await open.handleCallback(push('ticket-200', 200));
    await open.handleCallback(push('ticket-100', 100));
    expect(await storedTicket(durable)).toBe('ticket-200');
    // Said, not dropped silently: WeChat pushing an old ticket again is worth a line.
    expect(skipped).toEqual([expect.objectContaining({ createTime: 100, storedCreateTime: 200, reason: 'older' })]);
    await open.handleCallback(push('ticket-300', 300));
    expect(await storedTicket(durable)).toBe('ticket-300');
    expect(skipped).toHaveLength(1);
  });

  it.each([
    ['in milliseconds', NOW_S * 1000],
    ['a day ahead', NOW_S + 86_400],
    ['just past pushMaxAgeMs, 5 minutes', NOW_S + 301],
  ])('a stored record dated ahead of the clock (%s) is replaced by a push; one within pushMaxAgeMs ahead is not', async (_, ahead) => {
    // WeChat's pushes are dated in its past: a record dated further ahead than the clock of a host that
    // still takes pushes may be behind (pushMaxAgeMs) is no push's (a program of another format, a clock
    // far ahead), and would refuse every push until it expired, 12 hours.
    const durable = new MemoryCache();
    const open = platform(durable);
    const record = (ticket: string, createTime: number) => JSON.stringify({ component_verify_ticket: ticket, create_time: createTime, received_at: NOW_S });
    await durable.set(TICKET_KEY, record('ticket-ahead', ahead), 43_200);
    await open.handleCallback(push('ticket-now', NOW_S - 10));
    expect(await storedTicket(durable)).toBe('ticket-now');
    // Within pushMaxAgeMs ahead it may be a newer push stored by a host whose clock is right, read on one
    // whose clock is behind (which still takes pushes): it stays.
    for (const within of [NOW_S + 120, NOW_S + 300]) {
      await durable.set(TICKET_KEY, record('ticket-newer', within), 43_200);
      await open.handleCallback(push('ticket-now', NOW_S - 10));
      expect(await storedTicket(durable)).toBe('ticket-newer');
    }
  });

  it('a newer ticket stored by another process between the read and the write survives', async () => {
    // The durable store: right after this push reads the record, another process stores a newer ticket.
    class RacedStore extends MemoryCache {
      raced = false;
      override async get(key: string): Promise<string | undefined> {
        const value = await super.get(key);
        if (key === TICKET_KEY && !this.raced) {
          this.raced = true;
          await other.handleCallback(push('ticket-300', 300));
        }
        return value;
      }
    }
    const durable = new RacedStore();
    const other = platform(durable);
    await durable.set(TICKET_KEY, Buffer.from(JSON.stringify({ component_verify_ticket: 'ticket-100', create_time: 100, received_at: 100 })).toString('latin1'), 3600);
    await platform(durable).handleCallback(push('ticket-200', 200));
    expect(durable.raced).toBe(true);
    expect(await storedTicket(durable)).toBe('ticket-300');
  });

  it('a ticket key holding another kind of value fails the push with a CacheError (type), where it was dropped unsaid', async () => {
    // A Redis hash at the key, say: reads fail with WRONGTYPE, and an add finds the key taken.
    class OtherKind extends MemoryCache {
      adds = 0;
      override async get(key: string): Promise<string | undefined> {
        if (key === TICKET_KEY) throw new CacheError('WRONGTYPE Operation against a key holding the wrong kind of value', { reason: 'type' });
        return super.get(key);
      }
      override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (key !== TICKET_KEY) return super.add(key, value, ttlSeconds);
        this.adds += 1;
        return false;
      }
    }
    const durable = new OtherKind();
    const failure = await platform(durable).handleCallback(push('ticket-200', 200)).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(CacheError);
    expect(failure).toMatchObject({ reason: 'type', message: expect.stringContaining(TICKET_KEY) });
    expect(durable.adds).toBe(0);
  });

  it('a push whose every write meets a record changed under it is logged as not stored', async () => {
    class Churning extends MemoryCache {
      writes = 0;
      override async compareAndSet(key: string, expected: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (key !== TICKET_KEY) return super.compareAndSet(key, expected, value, ttlSeconds);
        this.writes += 1;
        return false;
      }
    }
    const durable = new Churning();
    await durable.set(TICKET_KEY, Buffer.from(JSON.stringify({ component_verify_ticket: 'ticket-100', create_time: 100, received_at: 100 })).toString('latin1'), 3600);
    const warnings: object[] = [];
    const open = platform(durable, { warn: (obj) => warnings.push(obj) });
    const events: object[] = [];
    open.on('component_verify_ticket.not_stored', (event) => events.push(event));
    await open.handleCallback(push('ticket-200', 200));
    expect(durable.writes).toBe(3);
    expect(warnings).toEqual([expect.objectContaining({ event: 'component_verify_ticket.not_stored', createTime: 200, reason: 'contended' })]);
    expect(events).toEqual([expect.objectContaining({ createTime: 200, reason: 'contended' })]);
  });

  it('a ticket lives 12 hours from its push: a late push keeps what is left of it, and one pushed over 12 hours ago is not stored', async () => {
    class Ttls extends MemoryCache {
      readonly ttls: number[] = [];
      override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
        if (key === TICKET_KEY) this.ttls.push(ttlSeconds);
        return super.add(key, value, ttlSeconds);
      }
    }
    const durable = new Ttls();
    const warnings: object[] = [];
    const open = platform(durable, { warn: (obj) => warnings.push(obj) });
    // Pushed 12 hours and a second before the platform's clock: a replay, or a delivery long after.
    await open.handleCallback(push('ticket-stale', NOW_S - 12 * 3600 - 1));
    expect(await durable.get(TICKET_KEY)).toBeUndefined();
    expect(warnings).toEqual([expect.objectContaining({ event: 'component_verify_ticket.not_stored', reason: 'expired' })]);
    // Pushed 400 s before the clock: stored for the rest of its 12 hours.
    await open.handleCallback(push('ticket-late', NOW_S - 400));
    expect(await storedTicket(durable)).toBe('ticket-late');
    expect(durable.ttls).toEqual([12 * 3600 - 400]);
  });

  it('a push signed further than pushMaxAgeMs from the clock, either way, is refused and stores nothing; one within it is stored', async () => {
    const durable = new MemoryCache();
    const open = platform(durable);
    for (const signedAt of [NOW_S - 301, NOW_S + 301]) {
      const refused = await open.handleCallback(push('ticket-replayed', NOW_S, signedAt)).catch((error: unknown) => error);
      expect(refused).toBeInstanceOf(MessageCryptoError);
      expect(refused).toMatchObject({ reason: 'expired', message: expect.stringContaining('301 s') });
    }
    expect(await durable.get(TICKET_KEY)).toBeUndefined();
    // A forged request is named a forgery, however old its timestamp.
    const forged = push('ticket-forged', NOW_S, NOW_S - 3600);
    await expect(open.handleCallback({ ...forged, query: { ...forged.query, nonce: 'other' } })).rejects.toMatchObject({ reason: 'signature' });
    await open.handleCallback(push('ticket-299-behind', NOW_S, NOW_S - 299));
    expect(await storedTicket(durable)).toBe('ticket-299-behind');
    // The window is the platform's to set.
    const lenient = new OpenPlatform({ appId: COMPONENT, secret: 's', token: TOKEN, encodingAESKey: KEY, baseUrl: 'http://127.0.0.1:9', cache: new MemoryCache(), durableStore: durable, logger: false, now: () => NOW_S * 1000, pushMaxAgeMs: 3_600_000 });
    opened.push(lenient);
    await lenient.handleCallback(push('ticket-3599-ahead', NOW_S + 1, NOW_S + 3599));
    expect(await storedTicket(durable)).toBe('ticket-3599-ahead');
  });

  it('a push after close() is refused, and nothing is written to the store the program may have closed', async () => {
    const durable = new MemoryCache();
    const open = platform(durable);
    await open.close();
    await expect(open.handleCallback(push('ticket-after-close', NOW_S))).rejects.toThrow(ConfigError);
    expect(await durable.get(TICKET_KEY)).toBeUndefined();
  });
});
