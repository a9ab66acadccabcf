import { createHash } from 'node:crypto';
import { binaryToText, textToBinary } from '../bytes.js';
import { shortDigest } from '../digest.js';
import { ID_RULE } from '../client-core.js';
import type { KeySchema } from '../token/entry.js';

// The open platform's records in the durable store and the cache (docs/key-schema.md): the verify ticket,
// an authorizer's refresh token with its write-ahead, and a spent authorization code's record. Each is
// UTF-8 JSON handed to the store as a binary string (see TokenCache); a profile's peer format for a key
// holds the bare token instead.

/**
 * What {@link OpenPlatform.handleAuthorization} learned from api_query_auth: the same for every caller
 * handed the same code (the one that asked WeChat, and the others, from the record it left).
 */
export interface Authorization {
  authorizerAppId: string;
  /** The permission sets (funcscope_category ids) the account granted. */
  funcInfo: number[];
}

/** @internal */
export interface RefreshRecord {
  token: string;
  /**
   * {@link refreshOrigin} of the token this record's line of rotations started from: the one
   * api_query_auth handed to an authorization, or api_get_authorizer_info to a recovery. Every refresh
   * keeps it, so an authorization can tell a token WeChat rotated its own into from an older one.
   */
  origin?: string | undefined;
  /** Unix seconds; set while a refresh with `token` is under way (the write-ahead). */
  pendingSince?: number;
  pendingBy?: string;
}


/**
 * The stored verify ticket (docs/key-schema.md): WeChat's field name first, then the push's CreateTime
 * and when it was received, unix seconds.
 * @internal
 */
export function encodeTicketRecord(ticket: string, createTime: number, receivedAt: number): string {
  return textToBinary(JSON.stringify({ component_verify_ticket: ticket, create_time: createTime, received_at: receivedAt }));
}

/**
 * The stored refresh token (docs/key-schema.md). `pending_since` / `pending_by` are the write-ahead:
 * present while a refresh with this token is under way, or after one was interrupted.
 * @internal
 */
export function encodeRefreshRecord(record: RefreshRecord, updatedAt: number, updatedBy: string): string {
  return textToBinary(
    JSON.stringify({
      authorizer_refresh_token: record.token,
      updated_at: updatedAt,
      updated_by: updatedBy,
      ...(record.origin === undefined ? {} : { origin: record.origin }),
      ...(record.pendingSince === undefined ? {} : { pending_since: record.pendingSince, pending_by: record.pendingBy }),
    }),
  );
}

/** @internal */
export function decodeTicket(raw: string | undefined): { ticket: string; createTime: number } | undefined {
  const record = parseObject(raw);
  const ticket = record?.component_verify_ticket;
  if (typeof ticket !== 'string' || ticket === '') return undefined;
  return { ticket, createTime: typeof record!.create_time === 'number' ? record!.create_time : 0 };
}

/**
 * What a record keeps of the token its line started from: the first 16 hex digits of the SHA-256 of its
 * UTF-8 bytes (docs/key-schema.md). Enough to recognise the token, and no copy of it.
 * @internal
 */
export function refreshOrigin(token: string): string {
  return shortDigest(token);
}

/**
 * What the key of a code's record holds of the code: the SHA-256 of its UTF-8 bytes, 64 hex digits
 * (docs/key-schema.md). The code grants the account's tokens until it is spent: it is never stored.
 * @internal
 */
export function authorizationCodeDigest(code: string): string {
  return createHash('sha256').update(code, 'utf8').digest('hex');
}

/**
 * The record of a spent authorization code (docs/key-schema.md): what api_query_auth answered that a
 * second caller of the code is given, no token.
 * @internal
 */
export function encodeAuthorizationRecord(authorization: Authorization, authorizedAt: number, authorizedBy: string): string {
  return textToBinary(
    JSON.stringify({ authorizer_appid: authorization.authorizerAppId, func_info: authorization.funcInfo, authorized_at: authorizedAt, authorized_by: authorizedBy }),
  );
}

/** @internal */
export function decodeAuthorizationRecord(raw: string | undefined): Authorization | undefined {
  const record = parseObject(raw);
  const appId = record?.authorizer_appid;
  if (typeof appId !== 'string' || !ID_RULE.accepts(appId)) return undefined;
  const funcInfo = Array.isArray(record!.func_info) ? record!.func_info.filter((id): id is number => typeof id === 'number') : [];
  return { authorizerAppId: appId, funcInfo };
}

/** The stored ticket, in wxkit's record or in the key's peer format (which records no push time). */
export function decodeStoredTicket(schema: KeySchema, key: string, raw: string | undefined): { ticket: string; createTime: number } | undefined {
  const codec = schema.openPlatformRecord?.(key);
  if (!codec) return decodeTicket(raw);
  const ticket = raw === undefined ? undefined : codec.decode(raw);
  return ticket ? { ticket, createTime: 0 } : undefined;
}

/** The stored refresh token record: wxkit's, or the key's peer format, a bare token (no write-ahead mark, no origin). */
export function decodeStoredRefresh(schema: KeySchema, key: string, raw: string | undefined): RefreshRecord | undefined {
  const codec = schema.openPlatformRecord?.(key);
  return codec ? wrapToken(raw === undefined ? undefined : codec.decode(raw)) : decodeRefresh(raw);
}

/**
 * Whether the refresh-token record `raw` may have been written at or after `at` (unix seconds): wxkit's
 * record says when by updated_at; a bare token (a peer's layout, which wxkit's processes write too) never
 * says, so it may have been.
 */
export function updatedSince(raw: string | undefined, at: number): boolean {
  const updatedAt = parseObject(raw)?.updated_at;
  return typeof updatedAt !== 'number' || updatedAt >= at;
}

function wrapToken(token: string | undefined): RefreshRecord | undefined {
  return token ? { token } : undefined;
}

/** @internal */
export function decodeRefresh(raw: string | undefined): RefreshRecord | undefined {
  const record = parseObject(raw);
  const token = record?.authorizer_refresh_token;
  if (typeof token !== 'string' || token === '') return undefined;
  return {
    token,
    ...(typeof record!.origin === 'string' ? { origin: record!.origin } : {}),
    ...(typeof record!.pending_since === 'number' ? { pendingSince: record!.pending_since } : {}),
    ...(typeof record!.pending_by === 'string' ? { pendingBy: record!.pending_by } : {}),
  };
}

/** A stored record: UTF-8 JSON, handed over by the store as a binary string (see TokenCache). */
function parseObject(raw: string | undefined): Record<string, unknown> | undefined {
  if (raw === undefined) return undefined;
  try {
    const parsed = JSON.parse(binaryToText(raw)) as unknown;
    return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
