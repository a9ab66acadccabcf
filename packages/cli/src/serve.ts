import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { ConfigError, WORK_BASE_URL, nativeSchema, type KeySubject, type Logger, type StoredEntry, type TokenCache, type WeChatClient } from '@wxkit/core';
import { NOT_IN_BEARER_KEY, forgetTicket, inLife, invalidateTicket, invalidateUnproven, partitionOf, retryAtOf, ticketEntry } from '@wxkit/core/internal';
import { Agent, request, type Dispatcher } from 'undici';
import { appId, buildClient, parseApp, type AppRef } from './apps.js';
import { StoreProbe, type StoreState } from './serve-health.js';
import { ServiceMetrics } from './serve-metrics.js';

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
  /** Bearer keys callers may present; at least one, 16 characters or more each, no spaces, control characters or characters past U+00FF. */
  keys: string[];
  /** @default '127.0.0.1' */
  host?: string;
  /** @default 7400; 0 for a free port */
  port?: number;
  /** Background refresh window. @default 600 */
  refreshAheadSeconds?: number;
  /** How often each app's token is checked, so refresh-ahead runs without callers. @default 30 */
  checkEverySeconds?: number;
  /** How often the store is probed for `/healthz`, in ms. @default 2000 */
  healthCheckMs?: number;
  /** A client that sends its request headers slower than this gets 408 and is disconnected, in ms. @default 10000 */
  headersTimeoutMs?: number;
  /**
   * A client that sends its whole request slower than this gets 408 and is disconnected, in ms. Also how
   * long close() lets the requests under way finish before it cuts their connections. @default 30000
   */
  requestTimeoutMs?: number;
  /** An idle keep-alive connection is closed after this long, in ms. @default 5000 */
  keepAliveTimeoutMs?: number;
  /**
   * The most connections the service serves at once. A band above it (a tenth more, 16 to 1,024) is
   * answered 503 `busy` with `Retry-After: 1` and closed (`serve.connections_busy`); one past the band
   * is closed at once, unanswered (logged as `serve.connections_dropped`, counted in
   * `wxkit_http_connections_dropped_total`), and its client fails its request and asks again later.
   * Bounds the service's sockets and memory when a fleet of thousands of processes starts at once, well
   * below the file descriptors a process gets. @default 10000
   */
  maxConnections?: number;
  /** WeChat's API (a mock, a proxy). */
  baseUrl?: string;
  /** WeCom's API. */
  workBaseUrl?: string;
  /** The service's log lines (one per request, store state changes) and its clients'. pino fits as it is. */
  logger?: Logger | false;
  /** Key name prefix. @default 'wechat:' */
  prefix?: string;
}

/** A running token service. */
export interface TokenService {
  readonly url: string;
  /**
   * Stops taking requests, finishes those under way, and closes the clients. The store is yours to close.
   * Each answer from then on closes its connection, and a request that arrives on a kept-alive connection
   * afterwards gets 503 `shutting_down`; connections idle or that have sent nothing yet close at once,
   * and those still busy `requestTimeoutMs` after close() began are cut, so it always resolves. Every
   * request taken is logged (`serve.request`, once) and counted before it resolves: one cut while its
   * handler still waits (a store that does not answer) as `cut_at_shutdown` then, whatever the handler
   * does later. A ticket's report under way may still be deleting the reported ticket's entry, or putting
   * it back: close() waits for that write (the store's 2 s deadline at most) and its log line; a report
   * that comes to one once the clients are closed writes nothing. Calling it again resolves when the first call's work is done.
   */
  close(): Promise<void>;
}

interface Served {
  app: ServiceApp;
  /** `official_account/wx…`, as in URLs, logs and metrics. */
  name: string;
  client: WeChatClient & { jssdk?: { getTicket(type: never): Promise<string> } };
  /** Unix seconds at which the last token this service handed out or checked expires. */
  tokenExpiresAt: number | undefined;
  /** When (unix ms) a report last made this instance replace the token: the spacing's clock for an entry without fetched_at. */
  replacedAt?: number;
  /** The last ticket of each type a report made this instance replace, and when (unix ms): see reportTicket. */
  ticketsReplaced?: Map<string, { value: string; at: number }>;
  /** Asks WeChat whether it still takes `token`; see {@link tokenWorks}. */
  tokenWorks(token: string): Promise<boolean | undefined>;
  /** The check under way per token, so concurrent reports of one token make one call. */
  checks?: Map<string, Promise<boolean | undefined>>;
  /** The look after a failed getEntry(), due when its back-off ends (see entryOf). */
  recheck?: NodeJS.Timeout;
}

/** Ticket types per app kind: what `jssdk.getTicket()` takes. */
const TICKET_TYPES: Record<AppRef['kind'], readonly string[]> = {
  official_account: ['jsapi', 'wx_card'],
  mini_program: [],
  work: ['jsapi', 'agent_jsapi'],
};

/**
 * A report of a token fetched less than this long ago is checked with WeChat before it is acted on:
 * unchecked replacements stay at 1,440 a day per app at most, under the classic endpoint's daily quota of
 * 2,000 fetches, however many instances of the service share the store (the entry's fetched_at says when
 * the token was fetched; without one, per instance). A ticket, which WeChat has no call to check, is not
 * replaced on a report so soon: a program that reports every ticket wx.config refuses, for a page URL it
 * signed wrong as much as for a ticket another program ended, costs a fetch a minute at most.
 */
const INVALIDATE_SPACING_MS = 60_000;

/** The deadline of the service's own store reads: the clients' cacheTimeoutMs default. */
const STORE_READ_TIMEOUT_MS = 2_000;

const KIND_ALIASES: Record<string, AppRef['kind']> = { official_account: 'official_account', oa: 'official_account', mini_program: 'mini_program', mp: 'mini_program', work: 'work' };

/** A failure answered with one JSON shape: `{"error":{"code","message",…}}`. */
class Problem extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** What a request log line and the metrics say of a request. */
interface RequestInfo {
  route: string;
  app?: string;
  reason?: string;
}

/**
 * The central token service WeChat recommends (中控服务器): it owns the refresh of the apps it is given,
 * with refresh-ahead, and hands their tokens to callers that present a bearer key:
 *
 * - `GET /v1/token/{kind}/{id}` → `{"access_token","expires_at","fetched_at"}` (the key-schema value)
 * - `GET /v1/ticket/{kind}/{id}/{type}` → `{"ticket","expires_at","fetched_at"}`
 * - `POST /v1/token/{kind}/{id}/invalidate` with `{"token":"…"}` (and WeChat's `"errcode"`, and
 *   `"worked"`, whether a call went through with it, optional) → refreshes only if that token is still
 *   the current one, then answers the current value
 * - `POST /v1/ticket/{kind}/{id}/{type}/invalidate` with `{"ticket":"…"}` (wx.config refused it) →
 *   refreshes only if that ticket is still the current one and was fetched a minute ago or more, then
 *   answers the current ticket
 * - `GET /healthz` (the store answers), `GET /readyz` (every app has a token), `GET /metrics` (Prometheus); no key
 *
 * `{kind}` is official_account (or oa), mini_program (or mp) or work; `{kind}/{id}` may also be written
 * as one app spec, `oa:wx…`. Every failure is `{"error":{"code","message",…}}`. Several services on one
 * shared store elect one refresher through the store's lock.
 */
export async function startTokenService(options: TokenServiceOptions): Promise<TokenService> {
  if (!Array.isArray(options.keys) || options.keys.length === 0 || options.keys.some((key) => typeof key !== 'string' || key.length < 16)) {
    throw new ConfigError('the token service needs at least one bearer key of 16 characters or more', 'keys');
  }
  // "Bearer <key>" carries one word: a key with a space, a control character or a character past U+00FF could never be presented.
  if (options.keys.some((key) => NOT_IN_BEARER_KEY.test(key))) {
    throw new ConfigError('a bearer key of the token service holds a space, a control character or a character past U+00FF, which no Authorization header can carry', 'keys');
  }
  if (!Array.isArray(options.apps) || options.apps.length === 0) throw new ConfigError('the token service needs at least one app', 'apps');
  const timeouts = {
    headersTimeout: positive(options.headersTimeoutMs, 10_000, 'headersTimeoutMs'),
    requestTimeout: positive(options.requestTimeoutMs, 30_000, 'requestTimeoutMs'),
    keepAliveTimeout: positive(options.keepAliveTimeoutMs, 5_000, 'keepAliveTimeoutMs'),
  };
  // Node requires headersTimeout <= requestTimeout.
  timeouts.headersTimeout = Math.min(timeouts.headersTimeout, timeouts.requestTimeout);
  const healthCheckMs = positive(options.healthCheckMs, 2_000, 'healthCheckMs');
  const maxConnections = positive(options.maxConnections ?? undefined, 10_000, 'maxConnections', 'a whole number of at least 1');
  const checkEveryMs = seconds(options.checkEverySeconds, 30, 'checkEverySeconds');
  const digests = options.keys.map((key) => createHash('sha256').update(key).digest());
  const log = options.logger || undefined;
  const metrics = new ServiceMetrics();
  const schema = nativeSchema(options.prefix === undefined ? {} : { prefix: options.prefix });
  const subjectOf = (app: ServiceApp): KeySubject =>
    app.kind === 'work' ? { kind: 'work', corpId: app.corpId, agentId: app.agentId } : { kind: app.kind, appId: app.appId, endpoint: app.tokenEndpoint ?? 'stable' };

  // Each app's name in the metrics and the log. An app listed twice would be served by the last of its
  // clients, the first one left open.
  const names = options.apps.map((app) => `${app.kind}/${appId(app)}`);
  const twice = names.find((name, i) => names.indexOf(name) !== i);
  if (twice) throw new ConfigError(`the app ${twice} is listed twice in apps; list each app once`, 'apps');
  // The clients see the store through a wrapper that counts token reads and lock waits per app.
  const tokenKeys = new Map<string, string>();
  const lockKeys = new Map<string, string>();
  for (const [i, app] of options.apps.entries()) {
    const key = schema.accessTokenKey(subjectOf(app));
    tokenKeys.set(key, names[i]!);
    lockKeys.set(schema.lockKey(key), names[i]!);
  }
  const cache = metrics.countingCache(options.cache, tokenKeys, lockKeys);
  // One connection pool for WeChat, timed per app; the clients do not own it, so close() ends it here.
  const agent = new Agent({ keepAliveTimeout: 10_000, connect: { timeout: 10_000 }, headersTimeout: 10_000, bodyTimeout: 10_000 });

  const served = new Map<string, Served>();
  for (const [i, app] of options.apps.entries()) {
    if (typeof app.secret !== 'string' || app.secret.length === 0) throw new ConfigError(`the app ${appId(app)} has no secret`, 'secret');
    const name = names[i]!;
    // WeCom's apps go to WeCom (or workBaseUrl), never to baseUrl: that is WeChat's (or a proxy for it).
    const baseUrl = app.kind === 'work' ? (options.workBaseUrl ?? WORK_BASE_URL) : options.baseUrl;
    const dispatcher = metrics.timedDispatcher(agent, name);
    const client = buildClient(app, {
      secret: app.secret,
      cache,
      endpoint: app.kind === 'work' ? undefined : app.tokenEndpoint,
      prefix: options.prefix,
      refreshAheadSeconds: options.refreshAheadSeconds ?? 600,
      // A token service hands its token to many clients: it reads the store about every second, so a
      // token another service instance refreshed reaches its clients at once, not up to 30 s late.
      memoMs: 1000,
      logger: log ?? false,
      dispatcher,
      ...(baseUrl ? { baseUrl } : {}),
    }) as Served['client'];
    metrics.watch(client, name);
    const apiBase = baseUrl ?? 'https://api.weixin.qq.com';
    served.set(name, { app, name, client, tokenExpiresAt: undefined, tokenWorks: (token) => tokenWorks(apiBase, token, dispatcher) });
  }

  let rechecking = true;
  const entryOf = async (target: Served): Promise<StoredEntry> => {
    let entry: StoredEntry;
    try {
      entry = await target.client.accessToken.getEntry();
    } catch (error) {
      // The client holds no token it could hand out (getEntry answers the one it holds, whatever the store
      // or WeChat say): /readyz must not go on saying the app has one until the last one's expiry.
      target.tokenExpiresAt = undefined;
      // Behind a balancer that routes by /readyz no request comes to make it ready again: looked at once
      // more when the failure's back-off ends (a second at least, the periodic check at most).
      if (rechecking && target.recheck === undefined) {
        const retryAt = retryAtOf(error);
        const delay = Math.min(checkEveryMs, Math.max(1_000, retryAt === undefined ? 1_000 : retryAt - Date.now()));
        target.recheck = setTimeout(() => {
          target.recheck = undefined;
          if (rechecking) entryOf(target).catch(() => undefined);
        }, delay);
        target.recheck.unref();
      }
      throw error;
    }
    target.tokenExpiresAt = entry.expiresAt ?? Math.floor(Date.now() / 1000) + 60;
    return entry;
  };
  /**
   * The app's entry as the store holds it now, past the client's memory of it; undefined when there is
   * none, or none the clients would serve: past its expiry, in its last 30 s, or past the TTL its writer
   * gave it, in a store that still holds it (a store without TTLs, a read-only replica that took none of
   * this instance's writes). Such a token is never handed out.
   */
  const storedEntry = async (target: Served): Promise<StoredEntry | undefined> => {
    const key = target.client.accessToken.cacheKey;
    const raw = await cache.get(key);
    const entry = raw === undefined ? undefined : schema.decode('access_token', raw);
    return entry !== undefined && inLife(entry, (expiresIn) => schema.ttlSeconds(expiresIn, 'access_token', key), Date.now()) ? entry : undefined;
  };
  /**
   * The app's ticket entry of `type` as the store holds it now, as storedEntry reads the token's, with
   * its key and the text the store holds (which a compare-and-delete names); `absent` where the key holds
   * nothing at all (not an entry this instance cannot read, or one near its end).
   */
  const storedTicket = async (target: Served, type: string): Promise<StoredTicket> => {
    const key = schema.ticketKey(subjectOf(target.app), type as never);
    const raw = await cache.get(key);
    const entry = raw === undefined ? undefined : schema.decode('ticket', raw);
    if (entry !== undefined && inLife(entry, (expiresIn) => schema.ttlSeconds(expiresIn, 'ticket', key), Date.now())) return { key, entry, raw, absent: false };
    return { key, absent: raw === undefined };
  };
  /**
   * `POST /v1/ticket/{app}/{type}/invalidate` with `{"ticket"}`: wx.config refused the ticket (another
   * program got WeChat to hand out a new one, and a GET would answer the refused one until it expires).
   * Replaced only if the fleet still holds it (see replaceTicket): the store's entry is deleted only if
   * it holds that ticket, and the next one is fetched by one process of the fleet under the lock, the
   * others reading it; so N clients reporting one ticket cost one fetch. Answered with the current ticket.
   */
  const reportTicket = async (req: IncomingMessage, res: ServerResponse, target: Served, type: string): Promise<void> => {
    const body = await readBody(req, '{"ticket":"…"}');
    const ticket = body.ticket;
    if (typeof ticket !== 'string' || ticket.length === 0) throw new Problem(400, 'bad_request', 'the body must be {"ticket":"…"}, the ticket wx.config refused');
    const jssdk = target.client.jssdk!;
    // A ticket this instance replaced already (on a report under way beside this one): the current one,
    // whatever its age.
    const replaced = target.ticketsReplaced?.get(type);
    if (replaced?.value === ticket) return sendEntry(res, 'ticket', withLife(await ticketEntry(jssdk, type)));
    // The store says which ticket the fleet holds, and when it was fetched; where it does not answer, or
    // holds none, this instance's own (a second old at most, or fetched now).
    const read = await withinDeadline(storedTicket(target, type), STORE_READ_TIMEOUT_MS);
    // The store holds no ticket (another instance's report deleted it, and its fetch is under way): what
    // this instance remembers of the reported one is no answer.
    if (read?.absent) forgetTicket(jssdk, type, ticket);
    const before = read?.entry ?? (await ticketEntry(jssdk, type));
    if (before.value !== ticket) return sendEntry(res, 'ticket', withLife(before));
    const now = Date.now();
    // When the ticket was fetched, by whichever instance: never later than now, and no earlier than this
    // instance's own last replacement (a clock behind), as for tokens.
    const fetchedAt = before.fetchedAt === undefined ? -Infinity : Math.min(before.fetchedAt * 1000, now);
    const since = Math.max(fetchedAt, replaced?.at ?? -Infinity);
    if (now - since < INVALIDATE_SPACING_MS) {
      const seconds = Math.max(1, Math.ceil((since + INVALIDATE_SPACING_MS - now) / 1000));
      throw new Problem(
        429,
        'invalidate_spaced',
        `the ticket was fetched less than ${INVALIDATE_SPACING_MS / 1000} s ago; the service replaces it in ${seconds} s at the earliest`,
        { retryAfterSeconds: seconds },
        { 'retry-after': String(seconds) },
      );
    }
    const after = await replaceTicket(target, type, before, read);
    if (after.value !== ticket) (target.ticketsReplaced ??= new Map()).set(type, { value: ticket, at: now });
    return sendEntry(res, 'ticket', withLife(after));
  };
  /**
   * Replaces `ticket` (`before`, as the store or this instance held it), and resolves the current
   * ticket. Where the store answered (`read`), the entry read is deleted only if the store still holds
   * it, as it was: of the instances that took a report of it at once, one deletes it and fetches the next
   * ticket under the lock; the others find it gone, or replaced, and read the next one, waiting for that
   * fetch. None takes `ticket` for refused: WeChat may hand it out again (a ticket it still takes, which
   * wx.config refused for the page URL), and an instance that refused it would fetch once more on reading
   * it. Where the store did not answer, holds an entry this instance cannot read, or cannot
   * compare-and-delete: through the client's own report, which refuses it.
   */
  const replaceTicket = async (target: Served, type: string, before: StoredEntry, read: StoredTicket | undefined): Promise<StoredEntry> => {
    const jssdk = target.client.jssdk!;
    const ticket = before.value;
    const { deleteIfEquals } = cache;
    let gone: boolean | undefined;
    if (read?.absent) gone = false;
    else if (read?.raw !== undefined && deleteIfEquals) {
      // Not once close() has closed the clients (storeWrite): the client's own report then, which a closed
      // client refuses without touching the store.
      gone = await storeWrite(async () => {
        const deleted = (await withinDeadline(deleteIfEquals.call(cache, read.key, read.raw!).then((done) => ({ done })), STORE_READ_TIMEOUT_MS))?.done;
        if (deleted) log?.info?.({ event: 'serve.ticket_replaced', app: target.name, type }, `A client reported the ${type} ticket refused; the service deleted it, and fetches the next one`);
        return deleted;
      });
    }
    const refuse = async () => {
      await invalidateTicket(jssdk, type, ticket);
      return ticketEntry(jssdk, type);
    };
    if (gone === undefined) return refuse();
    forgetTicket(jssdk, type, ticket);
    let after: StoredEntry;
    try {
      after = await ticketEntry(jssdk, type);
    } catch (error) {
      // WeChat handed out no ticket (getticket's 45009, or a fetch that never left the host): the entry
      // this instance deleted goes back, unless another instance wrote one meanwhile. A report may be
      // wrong (a page URL signed wrong, not a ticket superseded), and the fleet keeps the ticket it had, as
      // the clients that hold it do, rather than none until the back-off ends (for 45009, the next day).
      // Where WeChat may have handed one out (it answered with a ticket that could not be read, or the
      // answer was lost), the key stays empty: its current ticket may be another, and the next fetch,
      // after a pause of seconds, gets it.
      if (gone && noTicketHandedOut(error)) await restoreTicket(target, type, before, read!);
      throw error;
    }
    // Still the very entry deleted (a read of this instance's under way as it went, or the copy this host
    // kept while the store was away): refused, through the client's own report.
    if (after.value === ticket && before.fetchedAt !== undefined && after.fetchedAt === before.fetchedAt) return refuse();
    return after;
  };
  /**
   * Puts back the ticket entry `read` this instance deleted, as it was, with what is left of its life:
   * only where the key is still empty (add), so a ticket another instance fetched meanwhile stays.
   * Best effort, within the store's deadline: a store that cannot add, or fails, leaves the key empty.
   */
  const restoreTicket = async (target: Served, type: string, before: StoredEntry, read: StoredTicket): Promise<void> => {
    const { add } = cache;
    const { expiresAt, fetchedAt } = before;
    if (!add || read.raw === undefined || expiresAt === undefined) return;
    // The TTL its writer gave it, where it records when it was fetched (docs/key-schema.md): a store with
    // TTLs drops it then, as it would have.
    const endsAt = fetchedAt !== undefined && expiresAt > fetchedAt ? Math.min(expiresAt, fetchedAt + schema.ttlSeconds(expiresAt - fetchedAt, 'ticket', read.key)) : expiresAt;
    const seconds = Math.floor(endsAt - Date.now() / 1000);
    if (seconds <= 0) return;
    await storeWrite(async () => {
      const put = await withinDeadline(add.call(cache, read.key, read.raw!, seconds), STORE_READ_TIMEOUT_MS);
      if (put) log?.info?.({ event: 'serve.ticket_restored', app: target.name, type }, `The next ${type} ticket could not be fetched; the service put back the one it deleted`);
    });
  };
  /** The service's own writes to the store under way, each with its log line (see storeWrite). */
  const writing = new Set<Promise<unknown>>();
  /** Set once close() has closed the clients: no write starts from then on, and close() waits for those under way. */
  let writesEnded = false;
  /**
   * Runs `write`, a write of the service's own to the store (a reported ticket's compare-and-delete, its
   * putting back) and the line that logs it, each within the store's deadline: close() waits for it, so
   * that the write lands and its line is written before close() resolves (the store and the log are its
   * caller's to close then). Once close() has closed the clients, none starts: undefined.
   */
  const storeWrite = <T>(write: () => Promise<T>): Promise<T> | undefined => {
    if (writesEnded) return undefined;
    const written = write();
    writing.add(written);
    const done = () => void writing.delete(written);
    written.then(done, done);
    return written;
  };
  // Keep each token warm so refresh-ahead runs even when no caller asks; /readyz reports the result.
  const check = () => {
    for (const target of served.values()) entryOf(target).catch(() => undefined);
  };
  const timer = setInterval(check, checkEveryMs);
  timer.unref();
  check();

  // /healthz: a read of an app's token key (one the store's ACL lets the service read) on each part of
  // the store: a store spread over servers (TokenCache.partition, MemcachedCache with several) is probed
  // on every server that holds an app's token or ticket entry, so one server down is reported with the
  // apps it holds.
  // Its tickets' entries too: the store may place them on a server that holds no token.
  const probed: [key: string, name: string][] = [...tokenKeys];
  for (const [i, app] of options.apps.entries()) {
    for (const type of TICKET_TYPES[app.kind]) probed.push([schema.ticketKey(subjectOf(app), type as never), names[i]!]);
  }
  const byPart = new Map<string, { key: string; apps: string[] }>();
  for (const [key, name] of probed) {
    const part = partitionOf(options.cache, key) ?? '';
    const known = byPart.get(part);
    if (!known) byPart.set(part, { key, apps: [name] });
    else if (!known.apps.includes(name)) known.apps.push(name);
  }
  const partitioned = byPart.size > 1;
  const probes = [...byPart.entries()].map(([part, { key, apps }]) => {
    const probe: StoreProbe = new StoreProbe(options.cache, key, {
      intervalMs: healthCheckMs,
      timeoutMs: Math.min(healthCheckMs, 2_000),
      onChange: (state: StoreState) => {
        metrics.storeUp.set(probes.every((each) => each.probe.state?.up !== false) ? 1 : 0);
        // The part's name (a server's host:port) is for the log only, as the adapter's message is.
        const where = partitioned ? { part, apps } : {};
        if (state.up) log?.info?.({ event: 'serve.store_up', ...where }, partitioned ? `The store's server for ${apps.join(', ')} answers` : 'The store answers');
        else {
          log?.warn(
            { event: 'serve.store_down', reason: state.reason, error: state.message, ...where },
            partitioned ? `The store's server for ${apps.join(', ')} does not answer; /healthz reports 503 until it does` : 'The store does not answer; /healthz reports 503 until it does',
          );
        }
      },
    });
    return { probe, apps };
  });
  await Promise.all(probes.map(({ probe }) => probe.start()));
  /** Ends the periodic check, the looks after failures and the store probes: at close(), or when listening failed. */
  const stopChecks = () => {
    clearInterval(timer);
    rechecking = false;
    for (const target of served.values()) clearTimeout(target.recheck);
    for (const { probe } of probes) probe.stop();
  };
  let closing = false;
  /** The answers close() cut past its grace, their clients still waiting for them then. */
  const cut = new WeakSet<ServerResponse>();
  /** The answers not finished yet: those under way when close() begins close their connection once sent. */
  const open = new Set<ServerResponse>();
  /**
   * The requests not logged yet, each with what logs it once its connection is closed: close() logs those
   * left (see stop), so that no line comes after it resolves.
   */
  const unreported = new Map<ServerResponse, () => void>();
  /** Connections taken past maxConnections (see the band below): each gets one 503 busy, then is closed. */
  const busy = new WeakSet<Socket>();
  const noteBusy = onceASecond((answered) =>
    log?.warn(
      { event: 'serve.connections_busy', answered, maxConnections },
      `The service holds maxConnections (${maxConnections}) connections: new ones are answered 503 busy with Retry-After: 1; raise maxConnections if the host has the file descriptors`,
    ),
  );

  const authorize = (req: IncomingMessage) => {
    const header = req.headers.authorization;
    const challenge = { 'www-authenticate': 'Bearer' };
    if (header === undefined) throw new Problem(401, 'unauthorized', 'this endpoint needs "Authorization: Bearer <key>"', { reason: 'missing_key' }, challenge);
    const match = /^Bearer +(\S+)$/i.exec(header);
    if (!match) throw new Problem(401, 'unauthorized', 'the Authorization header must be "Bearer <key>"', { reason: 'malformed_header' }, challenge);
    // Compare digests, so the comparison takes the same time whatever the key's length or content.
    const given = createHash('sha256').update(match[1]!).digest();
    if (!digests.some((digest) => timingSafeEqual(digest, given))) {
      throw new Problem(401, 'unauthorized', 'this key is not one of the service\'s keys', { reason: 'unknown_key' }, { 'www-authenticate': 'Bearer error="invalid_token"' });
    }
  };

  /** `{kind}/{id}` or the spec `oa:wx…` at parts[i]: the served app and how many segments it took. */
  const findApp = (parts: string[], i: number): { target: Served; used: number } => {
    let ref: AppRef | undefined;
    let used = 2;
    const first = parts[i] ?? '';
    if (first.includes(':')) {
      try {
        ref = parseApp(first);
        used = 1;
      } catch {
        ref = undefined;
      }
    } else if (Object.hasOwn(KIND_ALIASES, first) && parts[i + 1] !== undefined) {
      const kind = KIND_ALIASES[first]!;
      const id = parts[i + 1]!;
      if (kind === 'work') {
        // corpId:agentId, exactly: `ww1:1000002:anything` names no app (it was served as ww1:1000002).
        const [corpId, agentId, ...extra] = id.split(':');
        if (corpId && agentId && extra.length === 0) ref = { kind, corpId, agentId };
      } else {
        ref = { kind, appId: id };
      }
    }
    if (!ref) {
      throw new Problem(404, 'unknown_app', 'name the app as {kind}/{id} (official_account or oa, mini_program or mp, work) or as one spec such as oa:wx…');
    }
    const target = served.get(`${ref.kind}/${appId(ref)}`);
    if (!target) throw new Problem(404, 'unknown_app', `this service does not serve ${ref.kind}/${appId(ref)}`);
    return { target, used };
  };

  async function handle(req: IncomingMessage, res: ServerResponse, info: RequestInfo): Promise<void> {
    // A request that arrives on a kept-alive connection once close() began: refused, as /readyz says. Its
    // route is not read (as for busy): the log line and the metrics say why by its reason.
    if (closing) {
      info.reason = 'shutting_down';
      throw new Problem(503, 'shutting_down', 'the service is shutting down');
    }
    // A connection past maxConnections, within the band above it: told when to come back, then closed.
    if (busy.has(req.socket)) {
      info.reason = 'busy';
      noteBusy();
      throw new Problem(503, 'busy', `the service holds maxConnections (${maxConnections}) connections; try again in a second`, { retryAfterSeconds: 1 }, { 'retry-after': '1', connection: 'close' });
    }
    const path = (req.url ?? '/').replace(/[?#].*$/, '');
    let parts: string[];
    try {
      parts = path.split('/').filter(Boolean).map((part) => decodeURIComponent(part));
    } catch {
      throw new Problem(400, 'bad_request', 'the path has a malformed percent-escape (a % not followed by two hex digits, or bytes that are not UTF-8)');
    }
    const method = req.method ?? 'GET';
    const only = (...allowed: string[]) => {
      if (!allowed.includes(method)) throw new Problem(405, 'method_not_allowed', `${info.route} takes ${allowed.join(' or ')}`, {}, { allow: allowed.join(', ') });
    };

    if (parts.length === 1 && (parts[0] === 'healthz' || parts[0] === 'readyz' || parts[0] === 'metrics')) {
      info.route = `/${parts[0]}`;
      only('GET', 'HEAD');
      if (parts[0] === 'metrics') {
        const body = await metrics.text();
        closeIfUnread(res);
        res.writeHead(200, { 'content-type': metrics.registry.contentType, 'cache-control': 'no-store' });
        return void res.end(body);
      }
      if (parts[0] === 'healthz') {
        const states = probes.map(({ probe, apps }) => ({ state: probe.state!, apps }));
        const down = states.filter(({ state }) => !state.up);
        if (down.length > 0) {
          const { reason } = down[0]!.state;
          // The reason code only: the adapter's message names the store's host and port, which an
          // unauthenticated endpoint does not tell (the log line has it). Down since the first part went down.
          const since = Math.min(...down.map(({ state }) => state.since));
          const apps = down.flatMap((part) => part.apps);
          const message = partitioned
            ? `${down.length} of the store's ${states.length} servers ${down.length === 1 ? 'does' : 'do'} not answer${reason ? ` (${reason})` : ''}; the apps on ${down.length === 1 ? 'it' : 'them'}: ${apps.join(', ')}`
            : `the store does not answer${reason ? ` (${reason})` : ''}`;
          throw new Problem(503, 'store_unavailable', message, {
            ...(reason ? { reason } : {}),
            since: new Date(since).toISOString(),
            ...(partitioned ? { apps } : {}),
          });
        }
        // Up since the last part came back.
        const since = Math.max(...states.map(({ state }) => state.since));
        return answer(res, 200, { status: 'ok', store: 'up', since: new Date(since).toISOString() });
      }
      const now = Math.floor(Date.now() / 1000);
      const waiting = [...served.values()].filter((target) => !(target.tokenExpiresAt !== undefined && target.tokenExpiresAt > now)).map((target) => target.name);
      if (waiting.length > 0) throw new Problem(503, 'not_ready', `no token yet for ${waiting.join(', ')}`, { apps: waiting });
      return answer(res, 200, { status: 'ready', apps: served.size });
    }

    if (parts[0] !== 'v1' || (parts[1] !== 'token' && parts[1] !== 'ticket')) {
      throw new Problem(404, 'not_found', 'no such endpoint: /v1/token/{kind}/{id}, /v1/ticket/{kind}/{id}/{type}, their /invalidate, /healthz, /readyz, /metrics');
    }
    info.route = parts[1] === 'token' ? '/v1/token/{app}' : '/v1/ticket/{app}/{type}';
    authorize(req);
    const { target, used } = findApp(parts, 2);
    info.app = target.name;
    const rest = parts.slice(2 + used);

    if (parts[1] === 'token') {
      if (rest.length === 1 && rest[0] === 'invalidate') {
        info.route = '/v1/token/{app}/invalidate';
        only('POST');
        const body = await readBody(req);
        const token = body.token;
        if (typeof token !== 'string' || token.length === 0) throw new Problem(400, 'bad_request', 'the body must be {"token":"…"}, the token WeChat rejected');
        // WeChat's errcode for it, when the client sent it (remoteTokenSource does): a 40001 on the token
        // the store holds says a program outside the fleet fetched one, and is logged and counted so. A
        // client of another make may send it as text, or send something else: taken as text, else left out
        // (the report itself is good without it).
        const errcode = errcodeOf(body.errcode);
        // A report of a token replaced less than the spacing ago is checked with WeChat first: a client
        // that reports every token it gets (a loop) costs a harmless call, not a token fetch, while a token
        // WeChat really rejected (another program fetched) is replaced at once. The entry's fetched_at says
        // when the token was replaced, by whichever instance of the service (or other program) fetched it,
        // so the spacing holds for the whole fleet; an entry written without it (the key schema leaves it
        // optional) falls back to this instance's own last replacement.
        const check = (): Promise<boolean | undefined> => {
          const checks = (target.checks ??= new Map());
          let pending = checks.get(token);
          if (!pending) {
            pending = target.tokenWorks(token).finally(() => checks.delete(token));
            checks.set(token, pending);
          }
          return pending;
        };
        // A client that says a call went through with the token (`"worked": true`) reports it even where the
        // service holds none to hand out (within the pause after rejections another client's report of it
        // began): the store says which token is current, and WeChat took the fleet's tokens, which ends
        // that pause, as it ends a client's that fetches for itself.
        let before: StoredEntry | undefined;
        try {
          before = await entryOf(target);
        } catch (error) {
          if (body.worked !== true) throw error;
        }
        // Whether the report is of the token the fleet holds now (else it is answered with that one).
        let current = before !== undefined && before.value === token;
        if (!current) {
          // This instance's memory of the token (a second at most) may be older than the token reported:
          // another instance replaced it. The store says which is current; a report of an older token
          // is answered with the store's, which costs no fetch.
          const read = await withinDeadline(storedEntry(target).then((entry) => ({ entry })), STORE_READ_TIMEOUT_MS);
          if (read === undefined) {
            // The store did not answer: which token is current is unknown, and neither this instance's
            // memory nor the reported token may be dropped on a guess. WeChat says whether it takes the
            // reported one; only a token it rejects goes on to the token-scoped replacement below.
            const works = await check();
            // Its expiry is unknown here: a minute, so a client asks again soon.
            if (works === true) return sendEntry(res, 'access_token', { value: token, expiresAt: Math.floor(Date.now() / 1000) + 60 });
            if (works === undefined) {
              throw new Problem(503, 'store_unavailable', 'the store did not answer, and WeChat could not say whether it takes this token; try again shortly', { retryAfterSeconds: 1 }, { 'retry-after': '1' });
            }
          } else if (read.entry !== undefined) {
            if (read.entry.value !== token) return sendEntry(res, 'access_token', read.entry);
            before = read.entry;
            current = true;
          }
        }
        const now = Date.now();
        // When the token was fetched, by whichever instance: never later than now (a clock ahead, or a
        // store that lies), and no earlier than this instance's own last replacement (a clock behind).
        const fetchedAt = before?.fetchedAt === undefined ? undefined : Math.min(before.fetchedAt * 1000, now);
        const replacedAt = current ? Math.max(fetchedAt ?? -Infinity, target.replacedAt ?? -Infinity) : -Infinity;
        if (now - replacedAt < INVALIDATE_SPACING_MS) {
          const works = await check();
          if (works === true && before !== undefined) return sendEntry(res, 'access_token', before);
          if (works === undefined) {
            const seconds = Math.max(1, Math.ceil((replacedAt + INVALIDATE_SPACING_MS - now) / 1000));
            throw new Problem(
              429,
              'invalidate_spaced',
              `the token was fetched less than ${INVALIDATE_SPACING_MS / 1000} s ago, and WeChat could not say whether it takes it; the service replaces it in ${seconds} s at the earliest`,
              { retryAfterSeconds: seconds },
              { 'retry-after': String(seconds) },
            );
          }
        }
        // Token-scoped: the entry is replaced only if it still holds this token. One the client says no call
        // went through with (`"worked": false`) is replaced as the clients that fetch for themselves replace
        // theirs: at once, then 1 s, 2 s … 60 s apart while such rejections go on, fleet-wide, so that a
        // token WeChat rejects moments after each fetch (another program fetching in a loop, an account
        // WeChat refuses) costs one fetch per step, not one per round of reports.
        await (body.worked === false ? invalidateUnproven(target.client.accessToken, token, errcode) : target.client.accessToken.invalidate(token, errcode));
        const after = await entryOf(target);
        if (after.value !== before?.value) target.replacedAt = now;
        return sendEntry(res, 'access_token', after);
      }
      if (rest.length !== 0) throw new Problem(404, 'not_found', 'no such endpoint under /v1/token/{app}: only /invalidate');
      only('GET');
      return sendEntry(res, 'access_token', await entryOf(target));
    }

    const type = rest[0];
    const reporting = rest.length === 2 && rest[1] === 'invalidate';
    if (reporting) info.route = '/v1/ticket/{app}/{type}/invalidate';
    else if (rest.length !== 1 || type === undefined) throw new Problem(404, 'not_found', 'a ticket is /v1/ticket/{app}/{type}, and its report /v1/ticket/{app}/{type}/invalidate');
    only(reporting ? 'POST' : 'GET');
    const types = TICKET_TYPES[target.app.kind];
    if (type === undefined || !types.includes(type) || !target.client.jssdk) {
      throw new Problem(404, 'unknown_ticket_type', types.length ? `${target.app.kind} apps have the tickets ${types.join(', ')}` : `${target.app.kind} apps have no tickets`);
    }
    if (reporting) return reportTicket(req, res, target, type);
    const value = await target.client.jssdk.getTicket(type as never);
    // Tickets have their own entry; the value's expiry comes from the store's copy.
    // Read with the clients' store deadline: a store that does not answer costs the exact expiry, not the request.
    const raw = await withinDeadline(options.cache.get(schema.ticketKey(subjectOf(target.app), type)), STORE_READ_TIMEOUT_MS);
    const stored = schema.decode('ticket', raw ?? '');
    return sendEntry(res, 'ticket', stored?.value === value ? stored : { value, expiresAt: Math.floor(Date.now() / 1000) + 600 });
  }

  const server = createServer(
    {
      ...timeouts,
      // How often Node checks the two request timeouts; its default (30 s) would let a slow client stay far longer.
      connectionsCheckingInterval: Math.max(100, Math.min(1_000, Math.floor(timeouts.headersTimeout / 4))),
    },
    (req, res) => {
      const started = performance.now();
      const info: RequestInfo = { route: 'unmatched' };
      open.add(res);
      if (closing) res.setHeader('connection', 'close');
      /** The connection closed before the answer was out: its client went away (an abort, its own timeout). */
      let gone = false;
      /** Settles once the answer is out ('finish') or its connection closed first. */
      let settle: () => void = () => undefined;
      const settled = new Promise<void>((resolve) => (settle = resolve));
      res.once('finish', () => settle());
      const lost = () => {
        open.delete(res);
        if (!res.writableFinished) gone = true;
        settle();
      };
      // An answer pipelined behind another has no socket of its own until that one is out, and hears no
      // 'close' when the connection closes meanwhile: the connection tells it.
      const unwatch = onConnectionClose(req.socket, lost);
      res.once('close', () => {
        unwatch();
        lost();
        // An answer whose headers were out before close() began keeps its connection alive: closed here.
        if (closing) server.closeIdleConnections();
      });
      /** Logs and counts the answer, as its client got it: once, by its handler's end or by close(). */
      const report = () => {
        if (!unreported.delete(res)) return;
        // Cut by the service's own shutdown (under way past requestTimeoutMs after SIGTERM, its client
        // still there then), whatever the handler did after: its client got no answer.
        if (cut.has(res)) {
          info.reason = 'cut_at_shutdown';
          res.statusCode = 503;
        } else if (gone) {
          // Whatever the handler answered afterwards went nowhere: not an answer its client got.
          info.reason = 'client_gone';
          res.statusCode = 499;
        }
        const seconds = (performance.now() - started) / 1000;
        metrics.request(info.route, res.statusCode, seconds);
        log?.info?.(
          {
            event: 'serve.request',
            method: req.method,
            route: info.route,
            ...(info.app ? { app: info.app } : {}),
            status: res.statusCode,
            ms: Math.round(seconds * 1000),
            ...(info.reason ? { reason: info.reason } : {}),
          },
          'request',
        );
      };
      // Once close() has closed every connection, what this request's client got is known whatever its
      // handler still waits for (a store that does not answer, a fetch cut a few turns back). The socket's
      // own 'close' may still be to come (Node counts a connection gone at once, and says so to the
      // socket once its handle has closed), so it is taken as come.
      unreported.set(res, () => {
        lost();
        report();
      });
      handle(req, res, info)
        .catch((error: unknown) => fail(res, error, info, log))
        .finally(() => {
          // An answer pipelined behind another is not out when its handler ends: it is logged once it is
          // sent, or as client_gone if its connection closes first.
          if (res.socket === null && !res.writableFinished && !gone && !connectionOf(res)?.destroyed) void settled.then(report);
          else report();
        });
    },
  );
  // Node's own clientError handling stays: a stalled request gets 408 and is closed, a malformed one 400.
  // Past maxConnections, a band of connections (a tenth more, 16 to 1,024) is still taken, for one answer
  // each: 503 busy with Retry-After, so a client holds back (remoteTokenSource does) instead of asking
  // again at once, then the connection is closed. Past the band Node closes a new connection as soon as
  // it is accepted: counted, and logged at most once a second with how many went since the last line, so
  // a stampede does not flood the log.
  const band = Math.min(1_024, Math.max(16, Math.ceil(maxConnections / 10)));
  server.maxConnections = maxConnections + band;
  // The connections served: those in the band count apart, so that a band of silent ones (held up to
  // headersTimeout) never turns a served connection away once the served ones have closed.
  let serving = 0;
  // Every connection, so that close() ends at once those that have sent no byte yet (a load balancer's
  // pre-opened ones): Node's closeIdleConnections() takes them for busy, which held close() for
  // requestTimeoutMs. No 'data' listener: one would take the socket from the HTTP parser's native path.
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    if (serving < maxConnections) {
      serving += 1;
      socket.once('close', () => (serving -= 1));
      return;
    }
    busy.add(socket);
    // One answer, soon: a client that sends nothing does not hold a place in the band.
    socket.setTimeout(timeouts.headersTimeout, () => socket.destroy());
  });
  const noteDrop = onceASecond((dropped) =>
    log?.warn(
      { event: 'serve.connections_dropped', dropped, maxConnections },
      `The service holds maxConnections (${maxConnections}) connections: new ones are closed unanswered; raise maxConnections if the host has the file descriptors`,
    ),
  );
  server.on('drop', () => {
    metrics.connectionsDropped.inc();
    noteDrop();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 7400, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  }).catch(async (error: unknown) => {
    stopChecks();
    await Promise.all([...served.values()].map(({ client }) => client.close()));
    await agent.close();
    throw error;
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const stop = async () => {
    closing = true;
    stopChecks();
    // The answers under way close their connections once sent: a client that keeps asking on a kept-alive
    // connection would otherwise be served on it for as long as it asks, and close() would wait as long.
    for (const res of open) if (!res.headersSent) res.setHeader('connection', 'close');
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    // Those that have sent no byte are closed once the event loop has been through its I/O poll: a
    // request already in the host's buffer as close() began is read there, and answered 503
    // shutting_down, rather than cut unanswered. An immediate set from an immediate runs after the next
    // poll, wherever in the loop close() was called.
    setImmediate(() => setImmediate(() => {
      for (const socket of sockets) if (socket.bytesRead === 0) socket.destroy();
    }));
    // What is still under way past the request timeout is cut, its calls to WeChat with it.
    const grace = setTimeout(() => {
      for (const res of open) if (!res.writableFinished && !connectionOf(res)?.destroyed) cut.add(res);
      // The clients first: a fetch cut by their close is no failure of WeChat's, and is not recorded as
      // one for the other instances sharing the store.
      for (const { client } of served.values()) void client.close();
      server.closeAllConnections();
      agent.destroy().catch(() => undefined);
    }, timeouts.requestTimeout);
    try {
      await closed;
      await Promise.all([...served.values()].map(({ client }) => client.close()));
      // A ticket's report cut past the grace (or whose client went away) may still be deleting the
      // reported entry, or putting it back: its write lands, and its line is written, first. None starts
      // from now on (a report whose read of the store answers only now): the wait is for the writes under
      // way, each within the store's deadline, not for those others come to meanwhile.
      writesEnded = true;
      await Promise.allSettled(writing);
      if (!agent.destroyed) await agent.close();
    } finally {
      writesEnded = true;
      clearTimeout(grace);
      // Every connection is closed: the requests whose handlers have not ended (one cut past the grace, one
      // whose client went away) are logged and counted now, as their clients got them, so a caller that
      // closes its log once close() resolves loses none; their handlers' own reports, later, add nothing.
      for (const closeReport of [...unreported.values()]) closeReport();
    }
  };
  let stopping: Promise<void> | undefined;
  return {
    url: `http://${host}:${address.port}`,
    close: () => (stopping ??= stop()),
  };
}

/**
 * Whether WeChat still takes `token`, by a harmless call with it (`cgi-bin/get_api_domain_ip`, which
 * official accounts, mini programs and WeCom all have): true when it answers, false when it rejects the
 * token (40001, 40014, 42001), undefined when it could not say (unreachable, another errcode).
 */
const CHECK_TIMEOUT_MS = 4_000;

async function tokenWorks(baseUrl: string, token: string, dispatcher: Dispatcher): Promise<boolean | undefined> {
  try {
    const url = new URL('cgi-bin/get_api_domain_ip', baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`);
    url.searchParams.set('access_token', token);
    // 4 s at most: a report waits for this check, then perhaps a fetch (10 s at most), and its client
    // (remoteTokenSource, 20 s by default) must get the answer.
    const { statusCode, body } = await request(url, { dispatcher, signal: AbortSignal.timeout(CHECK_TIMEOUT_MS) });
    let text = '';
    for await (const chunk of body) {
      text += String(chunk);
      if (text.length > 64 * 1024) {
        body.destroy();
        return undefined;
      }
    }
    if (statusCode !== 200) return undefined;
    const errcode = (JSON.parse(text) as { errcode?: unknown }).errcode;
    if (errcode === undefined || errcode === 0) return true;
    return errcode === 40001 || errcode === 40014 || errcode === 42001 ? false : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether a failed ticket fetch says WeChat handed out no ticket: WeChat refused it (an errcode), or the
 * request never left this host. A ticket that could not be read, or an answer lost on the way, may have
 * been a new one.
 */
function noTicketHandedOut(error: unknown): boolean {
  const { code, sent } = (error ?? {}) as { code?: unknown; sent?: unknown };
  return code === 'ERR_WXKIT_WECHAT_API' || ((code === 'ERR_WXKIT_HTTP' || code === 'ERR_WXKIT_TIMEOUT') && sent === false);
}

/** `promise`'s value, or undefined when it fails or has not settled within `ms`. */
async function withinDeadline<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<undefined>((resolve) => {
    timer = setTimeout(resolve, ms, undefined);
    timer.unref();
  });
  try {
    return await Promise.race([promise.catch(() => undefined), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

function positive(value: number | undefined, fallback: number, name: string, what = 'an integer number of ms between 1 and 2147483647'): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0 || value > 2 ** 31 - 1) {
    throw new ConfigError(`the token service's ${name} must be ${what}`, name);
  }
  return value;
}

/** A period in seconds, as ms a timer can hold (beyond 2³¹ − 1 ms Node would run it every millisecond). */
function seconds(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback * 1000;
  const ms = value * 1000;
  if (typeof value !== 'number' || !Number.isFinite(value) || ms < 1 || ms > 2 ** 31 - 1) {
    throw new ConfigError(`the token service's ${name} must be a number of seconds between 0.001 and 2147483.647`, name);
  }
  return ms;
}

/**
 * Counts what it is called for and hands `line` the count since its last call, at most once a second (on
 * the monotonic clock), so that a stampede does not flood the log.
 */
function onceASecond(line: (count: number) => void): () => void {
  let count = 0;
  let last = -Infinity;
  return () => {
    count += 1;
    const now = performance.now();
    if (now - last < 1_000) return;
    last = now;
    line(count);
    count = 0;
  };
}

/** A ticket entry as the store holds it, read by the token service (see storedTicket). */
interface StoredTicket {
  key: string;
  entry?: StoredEntry;
  raw?: string;
  /** The key holds nothing at all. */
  absent: boolean;
}

/** The longest a WeChat token or ticket lives, in seconds. */
const WECHAT_LIFE_S = 7_200;

/**
 * A ticket entry as answered: one without an expiry (a peer's format that records none) lives 10 minutes,
 * as a ticket the store's copy says nothing of is answered by GET.
 */
function withLife(entry: StoredEntry): StoredEntry {
  return entry.expiresAt === undefined ? { ...entry, expiresAt: Math.floor(Date.now() / 1000) + 600 } : entry;
}

function sendEntry(res: ServerResponse, field: 'access_token' | 'ticket', entry: { value: string; expiresAt?: number; fetchedAt?: number }): void {
  closeIfUnread(res);
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  // An entry recording a later expiry than any WeChat token has (another program's milliseconds, a
  // clock far ahead) is answered as living 7,200 s at most: its clients use it as a client reading the
  // store would, until WeChat rejects it and they report it, and the service replaces it. Answered as it
  // is, every client refused it (an expires_at a day or more ahead is another unit) and nothing ever
  // sent it to WeChat to be rejected.
  const latest = Math.floor(Date.now() / 1000) + WECHAT_LIFE_S;
  const expiresAt = entry.expiresAt === undefined ? undefined : Math.min(entry.expiresAt, latest);
  res.end(JSON.stringify({ [field]: entry.value, expires_at: expiresAt, fetched_at: entry.fetchedAt }));
}

/**
 * Closes the connection after the answer when the request's body is not all in: a route that reads
 * none (any but a report of a token or a ticket, which reads 16 KiB at most), or an answer given before reading it (a
 * 401). Kept alive, Node would read that body to its end first: a keyless GET or POST /healthz with a
 * 100 GB body was read until requestTimeoutMs.
 */
function closeIfUnread(res: ServerResponse): void {
  const req = res.req;
  const bodied = Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding'] !== undefined;
  if (bodied && !req.complete) res.setHeader('connection', 'close');
}

function answer(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  closeIfUnread(res);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

/**
 * The connection an answer goes out on: an answer pipelined behind another has no socket of its own
 * (`res.socket` is null) until the one before it is out, and its client is still there meanwhile.
 */
function connectionOf(res: ServerResponse): Socket | null {
  return res.socket ?? res.req?.socket ?? null;
}

/** The answers under way on each connection, told when it closes: one listener per connection, however many are pipelined. */
const closeWatchers = new WeakMap<Socket, Set<() => void>>();

/** Calls `onClose` when `socket` closes; returns what stops that. */
function onConnectionClose(socket: Socket, onClose: () => void): () => void {
  let watchers = closeWatchers.get(socket);
  if (watchers === undefined) {
    const own = new Set<() => void>();
    closeWatchers.set(socket, own);
    socket.once('close', () => {
      closeWatchers.delete(socket);
      for (const watcher of own) watcher();
    });
    watchers = own;
  }
  const set = watchers;
  set.add(onClose);
  return () => void set.delete(onClose);
}

/**
 * Every failure as `{"error":{"code","message",…}}`: the service's own (4xx), WeChat's refusal (502, with
 * its errcode and errmsg, also at the top level as WeChat answers, so WeChat-speaking clients such as
 * remoteTokenSource see WeChat's error), the store or WeChat unreachable (503), anything else (500).
 */
function fail(res: ServerResponse, error: unknown, info: RequestInfo, log: Logger | undefined): void {
  if (res.headersSent) return void res.destroy();
  // The client went away under the request (it hung up while sending its body, or Node answered 408 to
  // a body that stalled): no one to answer, and no fault of the service's. Counted as 499, as proxies do.
  const connection = connectionOf(res);
  if (!connection || connection.destroyed) {
    info.reason = 'client_gone';
    res.statusCode = 499;
    return;
  }
  if (error instanceof Problem) {
    if (typeof error.details.reason === 'string') info.reason = error.details.reason;
    return answer(res, error.status, { error: { code: error.code, message: error.message, ...error.details } }, error.headers);
  }
  const { code, errcode, errmsg, reason } = error as { code?: string; errcode?: number; errmsg?: string; reason?: string };
  const message = error instanceof Error ? error.message : String(error);
  // A fetch the fleet backs off from (its failure marker) says until when: its clients are told to wait
  // as long, not to ask at every call. This instance's own pause, when its fetch never left its host,
  // carries none: its clients may reach another instance meanwhile.
  const retryAt = retryAtOf(error);
  const seconds = retryAt === undefined ? 0 : Math.ceil((retryAt - Date.now()) / 1000);
  const retry = seconds > 0 ? { retryAfterSeconds: seconds } : {};
  const wait: Record<string, string> = seconds > 0 ? { 'retry-after': String(seconds) } : {};
  switch (code) {
    case 'ERR_WXKIT_WECHAT_API':
      return answer(res, 502, { errcode, errmsg, error: { code: 'wechat_error', message, errcode, errmsg, ...retry } }, wait);
    case 'ERR_WXKIT_HTTP':
    case 'ERR_WXKIT_TIMEOUT':
    case 'ERR_WXKIT_BAD_RESPONSE':
      return answer(res, 503, { error: { code: 'wechat_unreachable', message, ...retry } }, wait);
    case 'ERR_WXKIT_CACHE':
      if (reason) info.reason = reason;
      return answer(res, 503, { error: { code: 'store_unavailable', message, ...(reason ? { reason } : {}) } });
    case 'ERR_WXKIT_NO_TOKEN':
      return answer(res, 503, { error: { code: 'no_token', message, ...retry } }, wait);
    case 'ERR_WXKIT_INVALID_OPTION':
      return answer(res, 400, { error: { code: 'bad_request', message } });
    default:
      log?.error?.({ event: 'serve.internal_error', route: info.route, error: message }, 'unexpected error');
      return answer(res, 500, { error: { code: 'internal', message: 'the service failed unexpectedly; its log has the details' } });
  }
}

/** WeChat's errcode as a client reported it: a whole number, or one written as text; else none. */
function errcodeOf(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) ? value : undefined;
  return typeof value === 'string' && /^-?\d{1,9}$/.test(value) ? Number(value) : undefined;
}

/** The body of a report, a JSON object of 16 KiB at most; `shape` is what its failures name. */
async function readBody(req: IncomingMessage, shape = '{"token":"…"}'): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    // The connection closes after the answer: kept alive, the rest of the body would be read to its end.
    if (size > 16 * 1024) throw new Problem(413, 'body_too_large', 'the body must be at most 16 KiB', {}, { connection: 'close' });
    chunks.push(chunk as Buffer);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new Problem(400, 'bad_request', `the body must be JSON: ${shape}`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Problem(400, 'bad_request', `the body must be a JSON object: ${shape}`);
  return parsed as Record<string, unknown>;
}
