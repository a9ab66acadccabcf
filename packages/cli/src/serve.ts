import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { ConfigError, WORK_BASE_URL, nativeSchema, type Logger, type TokenCache, type WeChatClient } from '@wxkit/core';
import { appId, buildClient, type AppRef } from './apps.js';
import { openStore } from './stores.js';

/** One app the service owns the refresh of. */
export type ServiceApp = AppRef & {
  /** The secret itself (programmatic use). The config file names an environment variable instead. */
  secret: string;
  /** Official accounts and mini programs. @default 'stable' */
  tokenEndpoint?: 'stable' | 'classic';
};

/** Options of {@link startTokenService}. */
export interface TokenServiceOptions {
  /** The store every serve process (and every follower) shares. */
  cache: TokenCache;
  apps: ServiceApp[];
  /** Bearer keys callers may present; at least one. */
  keys: string[];
  /** @default '127.0.0.1' */
  host?: string;
  /** @default 7400; 0 for a free port */
  port?: number;
  /** Background refresh window. @default 600 */
  refreshAheadSeconds?: number;
  /** How often each app's token is checked, so refresh-ahead runs without callers. @default 30 */
  checkEverySeconds?: number;
  /** WeChat's API (a mock, a proxy). */
  baseUrl?: string;
  /** WeCom's API. */
  workBaseUrl?: string;
  logger?: Logger | false;
  /** Key name prefix. @default 'wechat:' */
  prefix?: string;
}

/** A running token service. */
export interface TokenService {
  readonly url: string;
  close(): Promise<void>;
}

interface Served {
  app: ServiceApp;
  client: WeChatClient & { jssdk?: { getTicket(type: never): Promise<string> } };
}

/**
 * The central token service WeChat recommends (中控服务器): it owns the refresh of the apps it is given,
 * with refresh-ahead, and hands their tokens to callers that present a bearer key:
 *
 * - `GET /v1/token/{kind}/{id}` → `{"access_token","expires_at","fetched_at"}` (the key-schema value)
 * - `GET /v1/ticket/{kind}/{id}/{type}` → `{"ticket","expires_at","fetched_at"}`
 * - `POST /v1/token/{kind}/{id}/invalidate` with `{"token":"…"}` → refreshes only if that token is
 *   still the current one, then answers the current value
 * - `GET /healthz` (no key)
 *
 * Several services on one shared store elect one refresher through the store's lock.
 */
export async function startTokenService(options: TokenServiceOptions): Promise<TokenService> {
  if (!Array.isArray(options.keys) || options.keys.length === 0 || options.keys.some((key) => typeof key !== 'string' || key.length < 16)) {
    throw new ConfigError('the token service needs at least one bearer key of 16 characters or more', 'keys');
  }
  if (!Array.isArray(options.apps) || options.apps.length === 0) throw new ConfigError('the token service needs at least one app', 'apps');
  const digests = options.keys.map((key) => createHash('sha256').update(key).digest());
  const logger = options.logger ?? false;
  const served = new Map<string, Served>();
  for (const app of options.apps) {
    if (typeof app.secret !== 'string' || app.secret.length === 0) throw new ConfigError(`the app ${appId(app)} has no secret`, 'secret');
    const baseUrl = app.kind === 'work' ? (options.workBaseUrl ?? (options.baseUrl ? options.baseUrl : WORK_BASE_URL)) : options.baseUrl;
    const client = buildClient(app, {
      secret: app.secret,
      cache: options.cache,
      endpoint: app.kind === 'work' ? undefined : app.tokenEndpoint,
      prefix: options.prefix,
      refreshAheadSeconds: options.refreshAheadSeconds ?? 600,
      // A token service hands its token to many clients: it reads the store about every second, so a
      // token another service instance refreshed reaches its clients at once, not up to 30 s late.
      memoMs: 1000,
      logger,
      ...(baseUrl ? { baseUrl } : {}),
    }) as Served['client'];
    served.set(`${app.kind}/${appId(app)}`, { app, client });
  }

  // Keep each token warm so refresh-ahead runs even when no caller asks.
  const check = () => {
    for (const { client } of served.values()) client.accessToken.getToken().catch(() => undefined);
  };
  const timer = setInterval(check, (options.checkEverySeconds ?? 30) * 1000);
  timer.unref();
  check();

  const authorized = (req: IncomingMessage) => {
    const header = req.headers.authorization ?? '';
    const match = /^Bearer (.+)$/.exec(header);
    if (!match) return false;
    // Compare digests, so the comparison takes the same time whatever the key's length or content.
    const given = createHash('sha256').update(match[1]!).digest();
    return digests.some((digest) => timingSafeEqual(digest, given));
  };

  const server = createServer((req, res) => {
    const started = Date.now();
    handle(req, res)
      .catch((error: unknown) => fail(res, error))
      .finally(() => {
        if (logger && logger.info) {
          logger.info({ event: 'serve.request', method: req.method, path: (req.url ?? '').replace(/\?.*$/, ''), status: res.statusCode, ms: Date.now() - started }, 'token service request');
        }
      });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://service');
    if (url.pathname === '/healthz') return answer(res, 200, { ok: true, apps: served.size });
    if (!authorized(req)) {
      res.setHeader('www-authenticate', 'Bearer');
      return answer(res, 401, { error: 'a valid bearer key is required' });
    }
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    // /v1/{token|ticket}/{kind}/{id}[/{type}|/invalidate]
    if (parts[0] !== 'v1' || (parts[1] !== 'token' && parts[1] !== 'ticket')) return answer(res, 404, { error: 'no such endpoint' });
    const target = served.get(`${parts[2]}/${parts[3]}`);
    if (!target) return answer(res, 404, { error: `this service does not serve ${parts[2]}/${parts[3]}` });
    const field = parts[1] === 'token' ? 'access_token' : 'ticket';

    if (field === 'access_token' && parts.length === 5 && parts[4] === 'invalidate') {
      if (req.method !== 'POST') return answer(res, 405, { error: 'POST only' });
      const body = await readBody(req);
      const token = body?.token;
      if (typeof token !== 'string' || token.length === 0) return answer(res, 400, { error: 'the body must be {"token":"…"}' });
      // Token-scoped: the entry is replaced only if it still holds this token.
      await target.client.accessToken.invalidate(token);
      return sendEntry(res, field, await target.client.accessToken.getEntry());
    }
    if (req.method !== 'GET') return answer(res, 405, { error: 'GET only' });
    if (field === 'access_token' && parts.length === 4) return sendEntry(res, field, await target.client.accessToken.getEntry());
    if (field === 'ticket' && parts.length === 5) {
      const jssdk = target.client.jssdk;
      if (!jssdk) return answer(res, 404, { error: `${parts[2]} apps have no tickets` });
      const value = await jssdk.getTicket(parts[4] as never);
      // Tickets have their own entry; the value's expiry comes from the store's copy.
      const key = nativeSchema(options.prefix === undefined ? {} : { prefix: options.prefix }).ticketKey(
        target.app.kind === 'work'
          ? { kind: 'work', corpId: target.app.corpId, agentId: target.app.agentId }
          : { kind: target.app.kind, appId: target.app.appId, endpoint: target.app.tokenEndpoint ?? 'stable' },
        parts[4]!,
      );
      const stored = nativeSchema().decode('ticket', (await options.cache.get(key)) ?? '');
      const entry = stored?.value === value ? stored : { value, expiresAt: Math.floor(Date.now() / 1000) + 600 };
      return sendEntry(res, field, entry);
    }
    return answer(res, 404, { error: 'no such endpoint' });
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 7400, options.host ?? '127.0.0.1', () => resolve());
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${host}:${address.port}`,
    async close() {
      clearInterval(timer);
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections?.();
      await Promise.all([...served.values()].map(({ client }) => client.close()));
    },
  };
}

function sendEntry(res: ServerResponse, field: 'access_token' | 'ticket', entry: { value: string; expiresAt?: number; fetchedAt?: number }): void {
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ [field]: entry.value, expires_at: entry.expiresAt, fetched_at: entry.fetchedAt }));
}

function answer(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

/** WeChat's refusals pass through with their errcode (502); store and network failures are 503. */
function fail(res: ServerResponse, error: unknown): void {
  if (res.headersSent) return void res.destroy();
  const { code, errcode, errmsg } = error as { code?: string; errcode?: number; errmsg?: string };
  if (code === 'ERR_WXKIT_WECHAT_API') return answer(res, 502, { errcode, errmsg });
  answer(res, code === 'ERR_WXKIT_INVALID_OPTION' ? 400 : 503, { error: code ?? 'ERR_WXKIT_SERVE', message: (error as Error).message });
}

async function readBody(req: IncomingMessage): Promise<Record<string, unknown> | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > 16 * 1024) return undefined;
    chunks.push(chunk as Buffer);
  }
  try {
    const parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    return parsed && typeof parsed === 'object' ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

const SERVE_HELP = `usage: wxkit serve --store <url> --config <file> [--host 127.0.0.1] [--port 7400] [--json]

Runs the central token service for the apps in <file> until SIGINT or SIGTERM. Several services on one
store elect one refresher. The config file (JSON) names environment variables, never secrets:

  {
    "keysEnv": "WXKIT_SERVE_KEYS",          comma-separated bearer keys, 16+ characters each
    "refreshAheadSeconds": 600,
    "apps": [
      { "kind": "official_account", "appId": "wx…", "secretEnv": "OA_SECRET", "tokenEndpoint": "stable" },
      { "kind": "mini_program", "appId": "wx…", "secretEnv": "MP_SECRET" },
      { "kind": "work", "corpId": "ww…", "agentId": "1000002", "secretEnv": "WECOM_SECRET" }
    ],
    "baseUrl": "https://api.weixin.qq.com",   optional: a proxy (WeCom: "workBaseUrl")
    "prefix": "wechat:"                        optional
  }

Callers send "Authorization: Bearer <key>":
  GET  /v1/token/{kind}/{id}               {"access_token","expires_at","fetched_at"}
  GET  /v1/ticket/{kind}/{id}/{type}       {"ticket","expires_at","fetched_at"}
  POST /v1/token/{kind}/{id}/invalidate    {"token":"…"}: refreshes only if it is still current
  GET  /healthz                            (no key)
{id} is the AppID, or corpid:agentid for WeCom.`;

/** Reads and checks a serve config file; secrets and keys come from the environment it names. */
export function loadServeConfig(file: string): Omit<TokenServiceOptions, 'cache'> {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (error) {
    throw new ConfigError(`--config ${file}: ${(error as Error).message}`, 'config');
  }
  const fromEnv = (name: unknown, what: string) => {
    if (typeof name !== 'string' || !name) throw new ConfigError(`--config ${file}: ${what} must name an environment variable`, 'config');
    const value = process.env[name];
    if (!value) throw new ConfigError(`--config ${file}: the environment variable ${name} (${what}) is not set`, 'config');
    return value;
  };
  const keys = raw.keysEnv !== undefined ? fromEnv(raw.keysEnv, 'keysEnv').split(',').map((key) => key.trim()).filter(Boolean) : (raw.keys as string[]);
  if (!Array.isArray(raw.apps)) throw new ConfigError(`--config ${file}: "apps" must be a list`, 'config');
  const apps = raw.apps.map((entry: Record<string, unknown>, i: number): ServiceApp => {
    const secret = fromEnv(entry.secretEnv, `apps[${i}].secretEnv`);
    if (entry.kind === 'work') {
      if (typeof entry.corpId !== 'string' || !/^\d+$/.test(String(entry.agentId))) {
        throw new ConfigError(`--config ${file}: apps[${i}] (work) needs corpId and a numeric agentId`, 'config');
      }
      return { kind: 'work', corpId: entry.corpId, agentId: String(entry.agentId), secret };
    }
    if ((entry.kind !== 'official_account' && entry.kind !== 'mini_program') || typeof entry.appId !== 'string') {
      throw new ConfigError(`--config ${file}: apps[${i}] needs kind official_account, mini_program or work, and its appId`, 'config');
    }
    const endpoint = entry.tokenEndpoint ?? 'stable';
    if (endpoint !== 'stable' && endpoint !== 'classic') throw new ConfigError(`--config ${file}: apps[${i}].tokenEndpoint must be stable or classic`, 'config');
    return { kind: entry.kind, appId: entry.appId, secret, tokenEndpoint: endpoint };
  });
  const number = (name: string) => {
    const value = raw[name];
    if (value === undefined) return undefined;
    if (typeof value !== 'number' || !(value >= 0)) throw new ConfigError(`--config ${file}: "${name}" must be a number >= 0`, 'config');
    return value;
  };
  const url = (name: string) => {
    const value = raw[name];
    if (value === undefined) return undefined;
    if (typeof value !== 'string' || !/^https?:\/\//.test(value)) throw new ConfigError(`--config ${file}: "${name}" must be an http(s) URL`, 'config');
    return value;
  };
  return {
    keys,
    apps,
    refreshAheadSeconds: number('refreshAheadSeconds'),
    checkEverySeconds: number('checkEverySeconds'),
    baseUrl: url('baseUrl'),
    workBaseUrl: url('workBaseUrl'),
    prefix: typeof raw.prefix === 'string' ? raw.prefix : undefined,
  };
}

/** `wxkit serve`. */
export async function serveCommand(args: string[], output: { json: boolean; out: (line: string) => void }): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        store: { type: 'string' },
        config: { type: 'string' },
        host: { type: 'string' },
        port: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (error) {
    throw new ConfigError(`${(error as Error).message}\n\n${SERVE_HELP}`, 'args');
  }
  if (values.help) {
    output.out(SERVE_HELP);
    return 0;
  }
  if (!values.store || !values.config) throw new ConfigError(`serve needs --store and --config\n\n${SERVE_HELP}`, 'args');
  const port = values.port === undefined ? 7400 : Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError(`--port must be a port number (got ${JSON.stringify(values.port)})`, 'port');
  const config = loadServeConfig(values.config);
  const cache = openStore(values.store);
  const logger: Logger = output.json
    ? { warn: (fields, message) => output.out(JSON.stringify({ level: 'warn', message, ...fields })), info: (fields, message) => output.out(JSON.stringify({ level: 'info', message, ...fields })) }
    : { warn: (fields, message) => process.stderr.write(`wxkit serve: ${message} ${JSON.stringify(fields)}\n`) };
  const service = await startTokenService({ ...config, cache, host: values.host ?? '127.0.0.1', port, logger });
  output.out(output.json ? JSON.stringify({ event: 'serve.listening', url: service.url, apps: config.apps.map((app) => `${app.kind}/${appId(app)}`) }) : `wxkit serve: listening on ${service.url} for ${config.apps.length} app(s)`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await service.close();
  await cache.close?.();
  return 0;
}
