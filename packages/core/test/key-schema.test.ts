import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { HttpError, WeChatApiError, easyWeChat4, easyWeChat6, nativeSchema, silenceper, wxJava, type EntryField, type KeySchema, type KeySubject } from '../src/index.js';
import { isPlausibleToken } from '../src/token/plausible.js';
import { encodeMarker, failureKey, markerFor } from '../src/token/failure.js';
import { refetchPauseKey } from '../src/token/spacing.js';
import { decodeEndRecord, encodeEndRecord, endKey } from '../src/token/entry-store.js';
import {
  authorizationCodeDigest,
  decodeAuthorizationRecord,
  encodeAuthorizationRecord,
  encodeRefreshRecord,
  encodeTicketRecord,
  refreshOrigin,
} from '../src/open-platform/records.js';

// docs/key-schema.md is the cross-language contract; its vector tables are the expected values here.
const doc = readFileSync(new URL('../../../docs/key-schema.md', import.meta.url), 'utf8');

/** The rows of the first table after `### <heading>`, as objects keyed by column name, backticks removed. */
function table(heading: string): Record<string, string>[] {
  const start = doc.indexOf(`### ${heading}\n`);
  if (start < 0) throw new Error(`docs/key-schema.md has no "### ${heading}" section`);
  const lines = doc.slice(start).split('\n');
  const first = lines.findIndex((line) => line.startsWith('|'));
  const rows: string[][] = [];
  for (const line of lines.slice(first)) {
    if (!line.startsWith('|')) break;
    rows.push(line.slice(1, -1).split('|').map((cell) => cell.trim().replace(/^`(.*)`$/, '$1')));
  }
  const [header, , ...body] = rows;
  return body.map((cells) => Object.fromEntries(header!.map((name, i) => [name, cells[i] ?? ''])));
}

describe('docs/key-schema.md test vectors', () => {
  it('keys', () => {
    const rows = table('Keys');
    expect(rows.length).toBeGreaterThanOrEqual(7);
    for (const row of rows) {
      const schema = nativeSchema({ prefix: row.prefix! });
      const subject = (endpoint: 'stable' | 'classic'): KeySubject => ({ kind: 'official_account', appId: row.appid!, endpoint });
      const entry = row.entry!;
      const key =
        entry === 'access_token, stable'
          ? schema.accessTokenKey(subject('stable'))
          : entry === 'access_token, classic'
            ? schema.accessTokenKey(subject('classic'))
            : entry === 'jsapi ticket'
              ? schema.ticketKey(subject('stable'), 'jsapi')
              : entry === 'wx_card ticket'
                ? schema.ticketKey(subject('stable'), 'wx_card')
                : entry === 'lock, stable'
                  ? schema.lockKey(schema.accessTokenKey(subject('stable')))
                  : entry === 'lock, classic'
                    ? schema.lockKey(schema.accessTokenKey(subject('classic')))
                    : entry === 'failure marker, classic'
                      ? failureKey(schema.accessTokenKey(subject('classic')))
                      : entry === 'pause after rejected tokens, classic'
                        ? refetchPauseKey(schema.accessTokenKey(subject('classic')))
                        : entry === 'end record, jsapi ticket'
                          ? endKey(schema.ticketKey(subject('stable'), 'jsapi'))
                          : `unknown entry ${entry}`;
      expect(key, entry).toBe(row.key);
    }
  });

  it('open-platform keys', () => {
    const rows = table('Open-platform keys');
    expect(rows).toHaveLength(5);
    for (const row of rows) {
      const schema = nativeSchema({ prefix: row.prefix! });
      const entry = row.entry!.replace(/ lock$/, '') as Parameters<NonNullable<typeof schema.openPlatformKey>>[0];
      const key = schema.openPlatformKey!(entry, row.component!, row.authorizer || undefined);
      expect(row.entry!.endsWith(' lock') ? schema.lockKey(key) : key, row.entry).toBe(row.key);
    }
  });

  it('open-platform keys, values, locks and TTLs on the compatibility profiles', () => {
    const rows = table('Open-platform profile vectors');
    expect(rows.length).toBeGreaterThanOrEqual(14);
    const profiles: Record<string, (options: never) => KeySchema> = { easyWeChat4, easyWeChat6, wxJava, silenceper };
    for (const row of rows) {
      const label = `${row.profile} ${row.options} ${row.entry}`;
      const schema = profiles[row.profile!]!(JSON.parse(row.options!) as never);
      const entry = row.entry as Parameters<NonNullable<KeySchema['openPlatformKey']>>[0];
      const key = schema.openPlatformKey!(entry, 'wxc0a1b2c3d4e5f601', entry.startsWith('authorizer_') ? 'wx4202f388888ab123' : undefined);
      expect(key, label).toBe(row.key);
      if (entry.endsWith('_access_token')) {
        expect(schema.lockKey(key), label).toBe(row.lock);
        expect(schema.encode('access_token', 'TOKEN123', 7200, 1763996400), label).toBe(row['stored value']);
        expect(schema.ttlSeconds(7200, 'access_token', key), label).toBe(Number(row.ttl));
        expect(schema.decode('access_token', row['stored value']!)?.value, label).toBe('TOKEN123');
        expect(schema.openPlatformRecord?.(key), label).toBeUndefined();
      } else if (row['stored value'] === 'wxkit record') {
        expect(schema.openPlatformRecord?.(key), label).toBeUndefined();
      } else {
        const codec = schema.openPlatformRecord?.(key);
        expect(codec?.encode('VALUE123'), label).toBe(row['stored value']);
        expect(codec?.decode(row['stored value']!), label).toBe('VALUE123');
      }
    }
  });

  it("EasyWeChat 6's copy of an authorizer token: key, value and TTL", () => {
    const rows = table("EasyWeChat 6's copy of an authorizer token");
    expect(rows).toHaveLength(4);
    for (const row of rows) {
      const schema = easyWeChat6(JSON.parse(row.options!) as never);
      const copy = schema.openPlatformTokenCopy?.('wxc0a1b2c3d4e5f601', 'wx4202f388888ab123', row['refresh token']!);
      expect(copy?.key, row.options).toBe(row.key);
      expect(Buffer.from(copy!.encode('TOKEN123'), 'latin1').toString('hex'), row.options).toBe(row['stored value (hex)']);
      expect(copy!.ttlSeconds(7200), row.options).toBe(Number(row.ttl));
      expect(copy!.marginSeconds, row.options).toBe(7200 - Number(row.ttl));
      expect(copy!.decode(copy!.encode('TOKEN123')), row.options).toBe('TOKEN123');
    }
    // The other profiles keep no such copy.
    for (const schema of [easyWeChat4(), wxJava(), silenceper(), nativeSchema()]) {
      expect(schema.openPlatformTokenCopy?.('wxc0a1b2c3d4e5f601', 'wx4202f388888ab123', 'REFRESH123')).toBeUndefined();
    }
  });

  it('authorization-code records: key and value, byte for byte', () => {
    const rows = table('Authorization-code records');
    expect(rows).toHaveLength(2);
    for (const row of rows) {
      const schema = nativeSchema({ prefix: row.prefix! });
      expect(schema.openPlatformKey!('authorization_code', row.component!, authorizationCodeDigest(row.code!)), row.code).toBe(row.key);
      const authorization = { authorizerAppId: row.authorizer!, funcInfo: row.func_info ? row.func_info.split(',').map(Number) : [] };
      expect(encodeAuthorizationRecord(authorization, Number(row.time), row.writer!), row.code).toBe(row['stored value']);
      expect(decodeAuthorizationRecord(row['stored value']), row.code).toEqual(authorization);
    }
    // Every profile keeps the record under wxkit's own key: no peer records spent codes.
    for (const schema of [easyWeChat4(), easyWeChat6(), wxJava({ openKeyPrefix: 'shop1' }), silenceper()]) {
      expect(schema.openPlatformKey!('authorization_code', 'wxc0a1b2c3d4e5f601', 'ab12')).toBe('wechat:authorization_code:wxc0a1b2c3d4e5f601:ab12');
    }
  });

  it('open-platform values, byte for byte', () => {
    const rows = table('Open-platform values');
    expect(rows).toHaveLength(5);
    for (const row of rows) {
      const time = Number(row.time);
      const value =
        row.entry === 'component_verify_ticket'
          ? encodeTicketRecord(row.token!, time, time)
          : encodeRefreshRecord(
              {
                token: row.token!,
                ...(row['origin of'] ? { origin: refreshOrigin(row['origin of']) } : {}),
                ...(row.pending_since ? { pendingSince: Number(row.pending_since), pendingBy: row.writer } : {}),
              },
              time,
              row.writer!,
            );
      expect(value, row.entry).toBe(row['stored value']);
    }
  });

  it('values, byte for byte', () => {
    const rows = table('Values');
    expect(rows.length).toBeGreaterThanOrEqual(3);
    for (const row of rows) {
      const value = nativeSchema().encode(row.field as EntryField, row.value!, Number(row.expires_in), Number(row.fetched_at), {
        fetchedBy: row.fetched_by || undefined,
      });
      expect(value).toBe(row['stored value']);
      expect(Buffer.byteLength(value, 'utf8')).toBe(Number(row.bytes));
    }
  });

  it('end records, byte for byte', () => {
    const rows = table('End records');
    expect(rows.length).toBeGreaterThanOrEqual(2);
    for (const row of rows) {
      const record = row['stored record']!;
      expect(encodeEndRecord(row.value!, Number(row.expires_at))).toBe(record);
      expect(decodeEndRecord(record, row.value!)).toBe(Number(row.expires_at));
      // Another value's record says nothing of this one.
      expect(decodeEndRecord(record, `${row.value!}x`)).toBeUndefined();
    }
  });

  it('TTL rule', () => {
    const rows = table('TTL');
    expect(rows.length).toBeGreaterThanOrEqual(8);
    for (const row of rows) {
      const ttl = nativeSchema({ marginSeconds: Number(row.margin) }).ttlSeconds(Number(row.expires_in));
      expect(ttl, `expires_in ${row.expires_in}, margin ${row.margin}`).toBe(Number(row.ttl));
    }
  });

  it('reading', () => {
    const rows = table('Reading');
    expect(rows.length).toBeGreaterThanOrEqual(12);
    for (const row of rows) {
      // A reader's rule: the schema's fields, and a token that could be WeChat's.
      const decoded = nativeSchema().decode(row.field as EntryField, row['stored value']!);
      const entry = decoded && isPlausibleToken(decoded.value) ? decoded : undefined;
      if (row['well-formed'] === 'yes') expect(entry?.value, row['stored value']).toBe(row.token);
      else expect(entry, row['stored value']).toBeUndefined();
    }
    expect(isPlausibleToken('A'.repeat(512))).toBe(true);
    expect(isPlausibleToken('A'.repeat(513))).toBe(false);
  });

  it('failure markers', () => {
    const rows = table('Failure markers');
    expect(rows.length).toBeGreaterThanOrEqual(7);
    for (const row of rows) {
      const stored = JSON.parse(row['stored marker']!) as { errcode?: number; errmsg?: string; path: string; status?: number };
      const error =
        stored.errcode !== undefined
          ? new WeChatApiError({ errcode: stored.errcode, errmsg: stored.errmsg }, stored.path)
          : new HttpError('ERR_WXKIT_HTTP', `WeChat answered ${stored.path} with HTTP ${stored.status}`, { path: stored.path, status: stored.status });
      // random() = 0.5: the middle of the jitter.
      const marker = markerFor(error, Number(row.attempt), Number(row.failed_at), row.failed_by!, () => 0.5);
      expect(encodeMarker(marker!), `${row.failure} attempt ${row.attempt}`).toBe(row['stored marker']);
    }
  });

  it('the key table names the keys the implementation builds', () => {
    // The prose table uses placeholders; check that each native key shape appears in it.
    for (const shape of ['{prefix}access_token:{appid}', '{prefix}stable_access_token:{appid}', '{prefix}jsapi_ticket:{appid}', '{entry key}:lock']) {
      expect(doc).toContain(`\`${shape}\``);
    }
  });
});
