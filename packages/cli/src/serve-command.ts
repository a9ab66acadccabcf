import { readFileSync } from 'node:fs';
import { WORK_BASE_URL, type Logger } from '@wxkit/core';
import { NOT_IN_BEARER_KEY, NOT_IN_SECRET, QUOTED, closestName } from '@wxkit/core/internal';
import { pino } from 'pino';
import { appId, parseApp } from './apps.js';
import { parseCommand } from './args.js';
import { CliError, EXIT_HELP, listenFailure } from './errors.js';
import { startTokenService, type ServiceApp, type TokenServiceOptions } from './serve.js';
import { openStore } from './stores.js';

const SERVE_USAGE = `usage: wxkit serve --store <url> --config <file> [--host 127.0.0.1] [--port 7400] [--log-level info]
Run 'wxkit serve --help' for the config file, the routes and the metrics.`;

const SERVE_HELP = `usage: wxkit serve --store <url> --config <file> [--host 127.0.0.1] [--port 7400] [--log-level info]

--store and --port may come from WXKIT_STORE and WXKIT_PORT instead (containers).
Runs the central token service for the apps in <file> until SIGINT or SIGTERM (a second signal while it
stops is logged and ignored: it ends within requestTimeoutMs, and a store that does not answer then adds
its own timeouts, a few seconds). Several services on one store elect one refresher. Logs are JSON
lines on stdout (pino): one per request, with app, route, status and duration; never a token, a secret
or a key. --log-level: debug, info (default), warn, error.
The config file (JSON) names environment variables, never secrets:

  {
    "keysEnv": "WXKIT_SERVE_KEYS",          comma-separated bearer keys, 16+ characters each, no spaces
    "apps": [
      { "app": "oa:wx…", "secretEnv": "OA_SECRET", "tokenEndpoint": "stable" },
      { "kind": "mini_program", "appId": "wx…", "secretEnv": "MP_SECRET" },
      { "app": "work:ww…:1000002", "secretEnv": "WECOM_SECRET" }
    ],
    "refreshAheadSeconds": 600,                optional
    "checkEverySeconds": 30,                   optional: how often each token is checked
    "healthCheckMs": 2000,                     optional: how often the store is probed
    "headersTimeoutMs": 10000,                 optional: slow clients get 408
    "requestTimeoutMs": 30000,                 optional: SIGTERM cuts requests still under way after it
    "keepAliveTimeoutMs": 5000,                optional: idle connections are closed
    "maxConnections": 10000,                   optional: past it, 503 busy (Retry-After: 1), then closed
    "baseUrl": "https://api.weixin.qq.com",   optional: a proxy (WeCom: "workBaseUrl")
    "prefix": "wechat:"                        optional
  }
Any other key, at the top level or in an app entry, stops the service from starting (exit 7).

Callers send "Authorization: Bearer <key>":
  GET  /v1/token/{kind}/{id}               {"access_token","expires_at","fetched_at"}
  GET  /v1/ticket/{kind}/{id}/{type}       {"ticket","expires_at","fetched_at"}
  POST /v1/token/{kind}/{id}/invalidate    {"token":"…"} (optional "errcode", "worked"): refreshes only if it is still current
  POST /v1/ticket/{kind}/{id}/{type}/invalidate
                                           {"ticket":"…"} (wx.config refused it): refreshes only if it is still
                                           current and was fetched 60 s ago or more (else 429)
{kind} is official_account (oa), mini_program (mp) or work; {id} the AppID, or corpid:agentid for WeCom;
{kind}/{id} may also be one app spec: /v1/token/oa:wx…
No key:
  GET  /healthz    200 while the store answers, 503 while it does not
  GET  /readyz     200 once every app has a token, 503 before (and while shutting down)
  GET  /metrics    Prometheus text: wxkit_token_fetches_total, wxkit_cache_reads_total,
                   wxkit_lock_waits_total, wxkit_upstream_request_duration_seconds,
                   wxkit_upstream_errors_total, wxkit_store_up, wxkit_http_requests_total, …
Every failure is {"error":{"code","message",…}}; a 401 says why in error.reason.

${EXIT_HELP}`;

const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;

/** The keys a config file may hold, and an app entry. */
const CONFIG_KEYS = [
  'keysEnv',
  'apps',
  'refreshAheadSeconds',
  'checkEverySeconds',
  'healthCheckMs',
  'headersTimeoutMs',
  'requestTimeoutMs',
  'keepAliveTimeoutMs',
  'maxConnections',
  'baseUrl',
  'workBaseUrl',
  'prefix',
] as const;
const APP_KEYS = ['app', 'kind', 'appId', 'corpId', 'agentId', 'secretEnv', 'tokenEndpoint'] as const;

/** Reads and checks a serve config file; secrets and keys come from the environment it names. */
export function loadServeConfig(file: string): Omit<TokenServiceOptions, 'cache'> {
  const wrong = (message: string) => new CliError('config', `--config ${file}: ${message}`);
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (error) {
    const { code } = error as { code?: string };
    throw wrong(code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'not readable' : `not JSON (${(error as Error).message})`);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw wrong('must be a JSON object with "keysEnv" and "apps"');
  // A misspelt key would be dropped without a word: "baseURL" for "baseUrl" sends every app's secret to
  // api.weixin.qq.com instead of the proxy or mock the file names.
  const unknownKey = (entry: Record<string, unknown>, known: readonly string[], at: (name: string) => string) => {
    const name = Object.keys(entry).find((key) => !known.includes(key));
    if (name === undefined) return;
    const near = closestName(name, known);
    // An app entry holding a service-wide key (refreshAheadSeconds, baseUrl…): it is set once, for every app.
    const shared = near === undefined && known === APP_KEYS ? closestName(name, CONFIG_KEYS) : undefined;
    throw wrong(
      `${at(name)} is not a config key${near ? ` (did you mean "${near}"?)` : shared ? `: "${shared}" is set at the top level, for every app` : `; the keys are ${known.join(', ')}`}`,
    );
  };
  unknownKey(raw, CONFIG_KEYS, (name) => JSON.stringify(name));
  const fromEnv = (name: unknown, what: string) => {
    if (typeof name !== 'string' || !name) throw wrong(`${what} must name an environment variable`);
    const value = process.env[name];
    if (!value) throw wrong(`the environment variable ${name} (${what}) is not set: export ${name}=…`);
    return value;
  };
  const keys = fromEnv(raw.keysEnv, 'keysEnv')
    .split(',')
    .map((key) => key.trim())
    .filter(Boolean);
  if (keys.length === 0 || keys.some((key) => key.length < 16)) throw wrong(`every key in ${String(raw.keysEnv)} must have 16 characters or more`);
  // Never quoted: the message says which rule, not which key.
  if (keys.some((key) => NOT_IN_BEARER_KEY.test(key))) {
    throw wrong(`a key in ${String(raw.keysEnv)} holds a space, a control character or a character past U+00FF, which no "Authorization: Bearer <key>" header can carry`);
  }
  if (!Array.isArray(raw.apps) || raw.apps.length === 0) throw wrong('"apps" must be a list of one app or more');
  const apps = raw.apps.map((entry: Record<string, unknown>, i: number): ServiceApp => {
    if (entry && typeof entry === 'object' && !Array.isArray(entry)) unknownKey(entry, APP_KEYS, (name) => `apps[${i}].${name}`);
    const secret = fromEnv(entry?.secretEnv, `apps[${i}].secretEnv`);
    // No AppSecret or corpsecret holds one: a value read from a file keeps its line break, and WeChat
    // would refuse the secret (40125) with nothing to say why. Never quoted. The clients' own rule
    // (NOT_IN_SECRET: the C1 controls U+0080–U+009F too) is checked here as well, so that the message
    // names the variable rather than the client's option.
    if (NOT_IN_BEARER_KEY.test(secret) || NOT_IN_SECRET.test(secret)) {
      throw wrong(`the environment variable ${String(entry.secretEnv)} (apps[${i}].secretEnv) holds a space, a control character or a character past U+00FF (a line break at its end, say), which no secret has`);
    }
    if (QUOTED.test(secret)) {
      throw wrong(`the environment variable ${String(entry.secretEnv)} (apps[${i}].secretEnv) is still in quotes, which no secret has (an env file read as it is, docker --env-file, keeps them): remove them`);
    }
    const endpoint = entry.tokenEndpoint ?? 'stable';
    if (endpoint !== 'stable' && endpoint !== 'classic') throw wrong(`apps[${i}].tokenEndpoint must be stable or classic`);
    const kind = entry.kind === 'oa' ? 'official_account' : entry.kind === 'mp' ? 'mini_program' : entry.kind;
    let ref;
    try {
      // "app": "oa:wx…", as on the command line, or kind and appId (corpId and agentId for WeCom).
      ref = typeof entry.app === 'string' ? parseApp(entry.app) : kind === 'work' ? parseApp(`work:${String(entry.corpId)}:${String(entry.agentId)}`) : parseApp(`${String(kind)}:${String(entry.appId)}`);
    } catch {
      throw wrong(`apps[${i}] needs "app" (oa:wx…, mp:wx…, work:ww…:1000002), or "kind" (official_account, mini_program, work) with "appId" (WeCom: "corpId" and a numeric "agentId")`);
    }
    // Refused, not dropped: the client takes none for WeCom, and an entry that names one was written for another app.
    if (ref.kind === 'work' && entry.tokenEndpoint !== undefined) throw wrong(`apps[${i}].tokenEndpoint is for official accounts and mini programs; WeCom has one token endpoint`);
    return ref.kind === 'work' ? { ...ref, secret } : { ...ref, secret, tokenEndpoint: endpoint };
  });
  const number = (name: string) => {
    const value = raw[name];
    if (value === undefined) return undefined;
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) throw wrong(`"${name}" must be a number > 0`);
    return value;
  };
  const url = (name: string) => {
    const value = raw[name];
    if (value === undefined) return undefined;
    if (typeof value !== 'string' || !/^https?:\/\//.test(value)) throw wrong(`"${name}" must be an http(s) URL`);
    return value;
  };
  if (raw.prefix !== undefined && typeof raw.prefix !== 'string') throw wrong(`"prefix" must be a string, such as "wechat:" (got ${raw.prefix === null ? 'null' : typeof raw.prefix})`);
  return {
    keys,
    apps,
    refreshAheadSeconds: number('refreshAheadSeconds'),
    checkEverySeconds: number('checkEverySeconds'),
    healthCheckMs: number('healthCheckMs'),
    headersTimeoutMs: number('headersTimeoutMs'),
    requestTimeoutMs: number('requestTimeoutMs'),
    keepAliveTimeoutMs: number('keepAliveTimeoutMs'),
    maxConnections: number('maxConnections'),
    baseUrl: url('baseUrl'),
    workBaseUrl: url('workBaseUrl'),
    prefix: raw.prefix as string | undefined,
  };
}

/** The service's logger: JSON lines on stdout, level names, ISO times, token fields censored whatever logs them. */
function serviceLogger(level: string): Logger & { flush(): void } {
  return pino({
    level,
    base: { service: 'wxkit-serve' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: { paths: ['access_token', 'ticket', 'token', 'secret', 'authorization', '*.access_token', '*.ticket', '*.token', '*.authorization'], censor: '[redacted]' },
  });
}

/** `wxkit serve`. */
export async function serveCommand(args: string[], output: { json: boolean; out: (line: string) => void }): Promise<number> {
  const { values } = parseCommand(
    'serve',
    args,
    { store: { type: 'string' }, config: { type: 'string' }, host: { type: 'string' }, port: { type: 'string' }, 'log-level': { type: 'string' } },
    SERVE_USAGE,
  );
  if (values.help) {
    output.out(SERVE_HELP);
    return 0;
  }
  const usage = (message: string) => new CliError('usage', message, { usage: SERVE_USAGE });
  // A container passes the store (it may hold a password) and the port through its environment.
  const store = values.store ?? (process.env.WXKIT_STORE || undefined);
  const portText = values.port ?? (process.env.WXKIT_PORT || undefined);
  if (!store || !values.config) throw usage(`wxkit serve needs ${!store ? '--store (or WXKIT_STORE), the store the services share' : '--config, the JSON file that lists the apps'}`);
  const port = portText === undefined ? 7400 : Number(portText);
  if (!/^\d+$/.test(portText ?? '0') || port > 65535) throw usage(`--port (or WXKIT_PORT) must be a port number from 0 to 65535 (got ${JSON.stringify(portText)})`);
  const level = values['log-level'] ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(level)) throw usage(`--log-level must be one of ${LOG_LEVELS.join(', ')} (got ${JSON.stringify(level)})`);
  const config = loadServeConfig(values.config);
  let cache;
  try {
    cache = await openStore(store, values.store === undefined ? 'WXKIT_STORE' : '--store');
  } catch (error) {
    throw usage((error as Error).message);
  }
  const logger = serviceLogger(level);
  const host = values.host ?? '127.0.0.1';
  // Taken from the start: a signal while the store's first probe is under way (a slow or silent store
  // holds start-up for up to its timeout) stops the service as soon as it has started, exit 0.
  let stop!: () => void;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  let stopping = false;
  // Held until the service and the store are closed: a second signal (Ctrl-C twice, or once under npm,
  // which forwards the terminal's SIGINT to a child that got it already) would otherwise kill the process
  // mid-shutdown, with a token fetched and not written and the refresh lock held for its lease.
  const onSignal = (signal: NodeJS.Signals) => {
    if (!stopping) {
      stopping = true;
      return stop();
    }
    logger.warn(
      { event: 'serve.already_stopping', signal },
      `${signal} while stopping: the requests under way finish, or are cut requestTimeoutMs after the first signal; SIGKILL ends the process at once, leaving a refresh lock it holds until its lease runs out`,
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const release = () => {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  };
  let service;
  try {
    service = await startTokenService({ ...config, cache, host, port, logger });
  } catch (error) {
    release();
    await cache.close?.();
    const listening = listenFailure(error, host, port);
    if (listening) throw listening;
    const { code } = error as { code?: string };
    if (code === 'ERR_WXKIT_INVALID_OPTION') throw new CliError('config', `--config ${values.config}: ${(error as Error).message}`);
    throw error;
  }
  // Where the secrets go, as startTokenService picks it per app: a config that names no proxy (or
  // misnames it) shows api.weixin.qq.com here.
  const upstream = [
    ...new Set(config.apps.map((app) => new URL(app.kind === 'work' ? (config.workBaseUrl ?? WORK_BASE_URL) : (config.baseUrl ?? 'https://api.weixin.qq.com')).origin)),
  ];
  logger.info?.(
    { event: 'serve.listening', url: service.url, upstream, apps: config.apps.map((app) => `${app.kind}/${appId(app)}`) },
    `listening on ${service.url}; WeChat's API at ${upstream.join(', ')}`,
  );
  await stopped;
  logger.info?.({ event: 'serve.stopping' }, 'stopping: finishing the requests under way');
  try {
    await service.close();
    await cache.close?.();
  } finally {
    release();
  }
  logger.flush();
  return 0;
}
