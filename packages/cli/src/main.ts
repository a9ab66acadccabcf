import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { KeySchema, TokenCache, WeChatClient } from '@wxkit/core';
import { mockServerCommand } from '@wxkit/testing';
import { PROFILES, accessTokenKey, buildClient, parseApp, resolveSchema } from './apps.js';
import { runDemo } from './demo.js';
import { serveCommand } from './serve.js';
import { describeStore, openStore } from './stores.js';

/** Exit codes of every command; documented in the README. */
export const EXIT = Object.freeze({
  ok: 0,
  /** WeChat refused (an errcode): credentials, IP whitelist, quota. */
  wechat: 1,
  /** Bad flags, a missing environment variable, a bad config file. */
  usage: 2,
  /** The store failed: down, refused, unreadable. */
  store: 3,
  /** The network: WeChat (or the mock) unreachable, timed out, or answering garbage. */
  network: 4,
  /** No token: `inspect` found no entry; a follower found none in time. */
  noToken: 5,
});

const HELP = `wxkit — share WeChat access tokens between programs, processes and languages

usage: wxkit <command> [options]

commands:
  token get       the current token: from the store, or fetched (needs the secret)
  token inspect   what the store holds: key, remaining life, fetched_at, lock holder and lease
  token refresh   fetch a new token now and store it (stable endpoint: force_refresh, 20 a day)
  token clear     delete the stored token (and its lock with --lock)
  serve           run the central token service for the apps in a config file
  mock-server     run the mock WeChat API server
  demo            run the demo (processes sharing one token, another system refreshing it)

Run \`wxkit <command> --help\` for a command's options. Every command takes --json.
Exit codes: 0 ok, 1 WeChat refused, 2 usage, 3 store failed, 4 network, 5 no token.`;

const TOKEN_HELP = `usage: wxkit token <get|inspect|refresh|clear> --store <url> [options]

  --store URL         file:///dir, redis://[user:pass@]host:port[/db], rediss://…, memcached://host:port
  --app KIND:ID       official_account:<appid> (or oa:), mini_program:<appid> (or mp:),
                      work:<corpid>:<agentid>; default official_account:$WECHAT_APPID
  --endpoint E        stable (default) or classic: the entry to use (official accounts, mini programs)
  --prefix P          key prefix (default wechat:)
  --profile NAME      the entries another SDK keeps: ${PROFILES.join(', ')}
  --profile-options J the profile's options as JSON, e.g. '{"prefix":"think:"}' (easyWeChat4)
  --secret-env NAME   read the secret from $NAME instead of $WECHAT_SECRET (get, refresh)
  --base-url URL      WeChat's API (a mock, a proxy); default https://api.weixin.qq.com (qyapi for WeCom)
  --show-token        print the token itself (masked otherwise)
  --lock              clear: remove the refresh lock too
  --json              one JSON object on stdout

The secret is read from the environment only, never from a flag: flags land in shell history.`;



/** Thrown for usage errors: printed with the command's help, exit code 2. */
class UsageError extends Error {}

interface Output {
  json: boolean;
  out: (line: string) => void;
}

/** The wxkit command. Resolves the exit code; never throws. */
export async function main(argv: string[], io: { stdout?: NodeJS.WritableStream; stderr?: NodeJS.WritableStream } = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  const [command, ...rest] = argv;
  const json = rest.includes('--json');
  const output: Output = { json, out: (line) => stdout.write(`${line}\n`) };
  try {
    switch (command) {
      case 'token':
        return await tokenCommand(rest, output);
      case 'serve':
        return await serveCommand(rest, output);
      case 'mock-server':
        return await mockServerCommand(rest, 'wxkit mock-server');
      case 'demo':
        return await runDemo(rest);
      case undefined:
      case '--help':
      case '-h':
      case 'help':
        output.out(HELP);
        return command === undefined ? EXIT.usage : EXIT.ok;
      case '--version':
        output.out((await import('@wxkit/core')).VERSION);
        return EXIT.ok;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)}\n\n${HELP}`);
    }
  } catch (error) {
    return report(error, output, stderr);
  }
}

/** Maps an error to its exit code and prints it (as JSON with --json). Messages carry no secrets. */
function report(error: unknown, output: Output, stderr: NodeJS.WritableStream): number {
  const code = (error as { code?: string }).code;
  const exit =
    error instanceof UsageError || code === 'ERR_WXKIT_INVALID_OPTION'
      ? EXIT.usage
      : code === 'ERR_WXKIT_WECHAT_API'
        ? EXIT.wechat
        : code === 'ERR_WXKIT_CACHE'
          ? EXIT.store
          : code === 'ERR_WXKIT_NO_TOKEN'
            ? EXIT.noToken
            : code === 'ERR_WXKIT_HTTP' || code === 'ERR_WXKIT_TIMEOUT' || code === 'ERR_WXKIT_BAD_RESPONSE'
              ? EXIT.network
              : 1;
  const message = error instanceof Error ? error.message : String(error);
  if (output.json) {
    const fields: Record<string, unknown> = { ok: false, error: { code: code ?? 'ERR_WXKIT_CLI', message } };
    const errcode = (error as { errcode?: number }).errcode;
    if (errcode !== undefined) (fields.error as Record<string, unknown>).errcode = errcode;
    output.out(JSON.stringify(fields));
  } else {
    stderr.write(`wxkit: ${message}\n`);
  }
  return exit;
}

function parse<T extends ParseArgsConfig['options']>(args: string[], options: T, help: string) {
  try {
    return parseArgs({ args, options: { ...options, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: true });
  } catch (error) {
    throw new UsageError(`${(error as Error).message}\n\n${help}`);
  }
}

function secretFrom(envName: string | undefined): string | undefined {
  const name = envName ?? 'WECHAT_SECRET';
  const value = process.env[name];
  if (envName !== undefined && !value) throw new UsageError(`--secret-env ${envName}: the environment variable is not set`);
  return value || undefined;
}

/** `86_Ab…xYz9 (136 chars)`: enough to tell tokens apart, not enough to use one. */
export function mask(token: string): string {
  return token.length <= 12 ? `${'*'.repeat(token.length)}` : `${token.slice(0, 5)}…${token.slice(-4)} (${token.length} chars)`;
}

async function tokenCommand(args: string[], output: Output): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      store: { type: 'string' },
      app: { type: 'string' },
      endpoint: { type: 'string' },
      prefix: { type: 'string' },
      profile: { type: 'string' },
      'profile-options': { type: 'string' },
      'secret-env': { type: 'string' },
      'base-url': { type: 'string' },
      'show-token': { type: 'boolean' },
      lock: { type: 'boolean' },
    },
    TOKEN_HELP,
  );
  const action = positionals[0];
  if (values.help) {
    output.out(TOKEN_HELP);
    return EXIT.ok;
  }
  if (!['get', 'inspect', 'refresh', 'clear'].includes(action ?? '')) throw new UsageError(`token needs get, inspect, refresh or clear\n\n${TOKEN_HELP}`);
  if (!values.store) throw new UsageError(`token ${action} needs --store\n\n${TOKEN_HELP}`);
  const schema = resolveSchema({ profile: values.profile, profileOptions: values['profile-options'], prefix: values.prefix });
  const endpoint = values.endpoint ?? schema.defaultEndpoint ?? 'stable';
  if (endpoint !== 'stable' && endpoint !== 'classic') throw new UsageError(`--endpoint must be stable or classic (got ${JSON.stringify(endpoint)})`);
  const envAppId = process.env.WECHAT_APPID;
  if (!values.app && !envAppId) throw new UsageError(`token ${action} needs --app KIND:ID or WECHAT_APPID in the environment`);
  const app = parseApp(values.app ?? `official_account:${envAppId}`);
  const secretForKey = schema.keyNeedsSecret ? secretFrom(values['secret-env']) : undefined;
  const key = accessTokenKey(app, endpoint, schema, secretForKey);
  const shownKey = schema.redactKey?.(key) ?? key;
  const cache = openStore(values.store);
  try {
    if (action === 'inspect') return await inspect(cache, key, shownKey, schema, values.store, values['show-token'] === true, output);
    if (action === 'clear') {
      const had = (await cache.get(key)) !== undefined;
      await cache.delete(key);
      if (values.lock) await cache.delete(schema.lockKey(key));
      emit(output, { ok: true, key: shownKey, removed: had, lock_removed: values.lock === true }, [
        `${had ? 'removed' : 'nothing stored at'} ${shownKey}${values.lock ? ' (and its lock)' : ''}`,
      ]);
      return EXIT.ok;
    }
    const secret = secretFrom(values['secret-env']);
    if (action === 'refresh' && secret === undefined) {
      throw new UsageError(`token refresh fetches from WeChat and needs the secret: set WECHAT_SECRET or use --secret-env NAME`);
    }
    // A library client keeps working when its store is down (it fetches and keeps the token to itself);
    // an operator asking for the shared token must not get a private one instead, and a refresh that
    // cannot be published would kill the token every other program holds. So: store first, or exit 3.
    await cache.get(key);
    const client: WeChatClient = buildClient(app, {
      secret,
      cache,
      endpoint,
      schema,
      logger: false,
      ...(values['base-url'] ? { baseUrl: values['base-url'] } : {}),
      ...(secret === undefined ? { lockWaitMs: 2000 } : {}),
    });
    try {
      if (action === 'refresh') await client.accessToken.forceRefresh();
      const entry = await client.accessToken.getEntry();
      const token = values['show-token'] ? entry.value : mask(entry.value);
      const remaining = entry.expiresAt === undefined ? undefined : entry.expiresAt - Math.floor(Date.now() / 1000);
      emit(
        output,
        { ok: true, key: shownKey, token, expires_at: entry.expiresAt, fetched_at: entry.fetchedAt, remaining_seconds: remaining, refreshed: action === 'refresh' },
        [
          `key        ${shownKey}`,
          `token      ${token}`,
          `remaining  ${remaining === undefined ? 'unknown' : `${remaining} s`}`,
          `fetched_at ${entry.fetchedAt === undefined ? 'unknown' : `${new Date(entry.fetchedAt * 1000).toISOString()} (${entry.fetchedAt})`}`,
        ],
      );
      return EXIT.ok;
    } finally {
      await client.close();
    }
  } finally {
    await cache.close?.();
  }
}

async function inspect(cache: TokenCache, key: string, shownKey: string, schema: KeySchema, store: string, showToken: boolean, output: Output): Promise<number> {
  const lockKey = schema.lockKey(key);
  const [raw, ttl, holder, lease] = await Promise.all([cache.get(key), cache.ttlMs?.(key), cache.get(lockKey), cache.ttlMs?.(lockKey)]);
  const entry = raw === undefined ? undefined : schema.decode('access_token', raw);
  const now = Math.floor(Date.now() / 1000);
  const state = raw === undefined ? 'absent' : entry ? 'present' : 'corrupt';
  const token = entry ? (showToken ? entry.value : mask(entry.value)) : undefined;
  // A format without an expiry (EasyWeChat, wechatpy…): the store's TTL is its remaining life.
  const remaining = entry?.expiresAt !== undefined ? entry.expiresAt - now : entry && ttl !== undefined && Number.isFinite(ttl) ? Math.floor(ttl / 1000) : undefined;
  const lock = holder === undefined ? null : { holder, lease_ms: lease ?? null };
  emit(
    output,
    {
      ok: state === 'present',
      key: shownKey,
      schema: schema.name,
      store: describeStore(store),
      state,
      token,
      expires_at: entry?.expiresAt,
      fetched_at: entry?.fetchedAt,
      remaining_seconds: remaining,
      store_ttl_ms: ttl ?? null,
      lock,
      bytes: raw === undefined ? 0 : raw.length, // a binary string: one character per byte
    },
    [
      `key         ${shownKey}`,
      `schema      ${schema.name}`,
      `store       ${describeStore(store)}`,
      `state       ${state}${state === 'corrupt' ? ` (${Buffer.byteLength(raw ?? '')} bytes that are not a ${schema.name} entry; wxkit replaces it on the next fetch)` : ''}`,
      ...(entry
        ? [
            `token       ${token}`,
            `remaining   ${remaining === undefined ? 'unknown (the format keeps no expiry and the store cannot tell)' : `${remaining} s`}${entry.expiresAt === undefined ? '' : ` (expires ${new Date(entry.expiresAt * 1000).toISOString()})`}${ttl === undefined ? '' : `; the store drops it in ${Math.round(ttl / 1000)} s`}`,
            `fetched_at  ${entry.fetchedAt === undefined ? 'unknown' : `${new Date(entry.fetchedAt * 1000).toISOString()} (${entry.fetchedAt})`}`,
          ]
        : []),
      `lock        ${lock ? `held by ${lock.holder}${lock.lease_ms === null ? '' : `, lease ${(lock.lease_ms / 1000).toFixed(1)} s left`}` : 'free'}`,
    ],
  );
  return state === 'present' ? EXIT.ok : EXIT.noToken;
}

function emit(output: Output, fields: Record<string, unknown>, lines: string[]): void {
  output.out(output.json ? JSON.stringify(fields) : lines.join('\n'));
}
