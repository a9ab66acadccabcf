import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileCache } from '../src/index.js';
import { decodeRefresh, decodeTicket, encodeRefreshRecord, encodeTicketRecord } from '../src/open-platform/records.js';

// The open platform's durable records are UTF-8 JSON handed to the store as binary strings, like every
// other wxkit value (docs/key-schema.md, "Bytes, not text"): a non-ASCII field (a host name in
// `pending_by`, say) is stored as its UTF-8 bytes and read back as the same text.
const dir = mkdtempSync(join(tmpdir(), 'wxkit-op-records-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('open-platform records with non-ASCII text, through a FileCache', () => {
  it('the refresh-token record round-trips, stored as UTF-8 JSON', async () => {
    const cache = new FileCache({ dir });
    const record = { token: 'refresh-令牌', pendingSince: 1_700_000_000, pendingBy: '主机-1:42' };
    await cache.set('wechat:authorizer_refresh_token:wxc:wxa', encodeRefreshRecord(record, 1_700_000_001, '主机-1:42'), 60);
    const raw = (await new FileCache({ dir }).get('wechat:authorizer_refresh_token:wxc:wxa'))!;
    expect(JSON.parse(Buffer.from(raw, 'latin1').toString('utf8'))).toMatchObject({ authorizer_refresh_token: 'refresh-令牌', updated_by: '主机-1:42', pending_by: '主机-1:42' });
    expect(decodeRefresh(raw)).toEqual(record);
  });

  it('the verify-ticket record round-trips, stored as UTF-8 JSON', async () => {
    const cache = new FileCache({ dir });
    await cache.set('wechat:component_verify_ticket:wxc', encodeTicketRecord('ticket@@@票', 1_700_000_000, 1_700_000_002), 60);
    const raw = (await new FileCache({ dir }).get('wechat:component_verify_ticket:wxc'))!;
    expect(JSON.parse(Buffer.from(raw, 'latin1').toString('utf8'))).toMatchObject({ component_verify_ticket: 'ticket@@@票', create_time: 1_700_000_000 });
    expect(decodeTicket(raw)).toEqual({ ticket: 'ticket@@@票', createTime: 1_700_000_000 });
  });
});
