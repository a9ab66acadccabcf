import { performance } from 'node:perf_hooks';
import type { TokenCache, WeChatClient } from '@wxkit/core';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { Agent, DecoratorHandler, type Dispatcher } from 'undici';
import { localityOf, markLocality } from '@wxkit/core/internal';

/**
 * The WeChat errcodes a token or ticket fetch meets (WeChat's global return-code page, the open
 * platform's), each counted under its own label; any other is `other`.
 */
const KNOWN_ERRCODES = new Set([
  -1, 40001, 40002, 40013, 40014, 40091, 40125, 40164, 40243, 41001, 41002, 41004, 42001, 45009, 45011, 48001, 50001, 50002, 61003, 61004, 61005,
  61006, 61007, 61023, 60020, 89501, 89503, 89506, 89507,
]);

/**
 * The `errcode` label of a failed fetch: a WeChat errcode wxkit knows, `other` for any other errcode (an
 * answer may carry any number, and each label value is a time series kept for ever), else wxkit's code.
 */
export function errcodeLabel(errcode: number | undefined, code: string | undefined): string {
  if (typeof errcode === 'number') return KNOWN_ERRCODES.has(errcode) ? String(errcode) : 'other';
  return typeof code === 'string' && /^ERR_WXKIT_[A-Z_]+$/.test(code) ? code : 'unknown';
}

/**
 * Node's process metrics (`process_*`, `nodejs_*`), collected once per process and shown by every service
 * in it: prom-client's collection starts a GC observer and an event-loop-delay monitor that nothing can
 * stop, so one collection per service would leave both running after close(), one more pair per start.
 */
let processRegistry: Registry | undefined;
function processMetrics(): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

/** The token kinds whose fetches the service counts (the event names' prefixes). */
const TOKEN_LABELS = ['access_token', 'jsapi_ticket', 'wx_card_ticket', 'agent_jsapi_ticket'] as const;

/**
 * The service's Prometheus metrics, in a registry of its own (two services in one process do not mix;
 * Node's process metrics are the process's, shown by each):
 *
 * - `wxkit_token_fetches_total{app,token,result}`: fetches from WeChat, `result` ok or error
 * - `wxkit_cache_reads_total{app,result}`: reads of an app's access-token entry in the store, hit or miss
 * - `wxkit_lock_waits_total{app}`: refreshes that found the lock held by another process and waited
 * - `wxkit_lock_wait_timeouts_total{app}`: waits that ended without a token
 * - `wxkit_token_invalidated_externally_total{app,token}`: WeChat said 40001 for the token the store held,
 *   which nobody in the fleet had replaced: a program outside the fleet fetched one
 * - `wxkit_upstream_request_duration_seconds{app,path,outcome}`: WeChat's answer time, per API path
 * - `wxkit_upstream_errors_total{app,errcode}`: failed fetches by WeChat errcode (`other` for an errcode
 *   wxkit does not know), or wxkit's code for a transport failure
 * - `wxkit_store_up`: 1 while the store answers the health probe (each of its servers that holds an app's
 *   token or ticket, for a store of several), 0 while it does not
 * - `wxkit_http_requests_total{route,status}`, `wxkit_http_request_duration_seconds{route}`: the service's own requests
 * - `wxkit_http_connections_dropped_total`: connections closed unanswered, past `maxConnections`
 * - Node's process metrics (`process_*`, `nodejs_*`), the process's own: collected once, whatever the services
 */
export class ServiceMetrics {
  readonly registry = new Registry();
  readonly #fetches = new Counter({ name: 'wxkit_token_fetches_total', help: 'Fetches of a token or ticket from WeChat, by app, token and result (ok, error).', labelNames: ['app', 'token', 'result'], registers: [this.registry] });
  readonly #reads = new Counter({ name: 'wxkit_cache_reads_total', help: "Reads of an app's access-token entry in the shared store: hit (an entry) or miss (none).", labelNames: ['app', 'result'], registers: [this.registry] });
  readonly #lockWaits = new Counter({ name: 'wxkit_lock_waits_total', help: 'Refreshes that found the refresh lock held by another process, and waited for its token.', labelNames: ['app'], registers: [this.registry] });
  readonly #external = new Counter({
    name: 'wxkit_token_invalidated_externally_total',
    help: 'Tokens WeChat said were superseded (40001) while the store still held them: a program outside the fleet fetched one.',
    labelNames: ['app', 'token'],
    registers: [this.registry],
  });
  readonly #lockTimeouts = new Counter({ name: 'wxkit_lock_wait_timeouts_total', help: 'Lock waits that ended without a token.', labelNames: ['app'], registers: [this.registry] });
  readonly #upstream = new Histogram({
    name: 'wxkit_upstream_request_duration_seconds',
    help: 'Time from sending a request to WeChat to the end of its answer, by app, API path and outcome (ok, error).',
    labelNames: ['app', 'path', 'outcome'],
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly #errors = new Counter({ name: 'wxkit_upstream_errors_total', help: "Failed fetches from WeChat, by app and WeChat's errcode (or ERR_WXKIT_HTTP, ERR_WXKIT_TIMEOUT, ERR_WXKIT_BAD_RESPONSE).", labelNames: ['app', 'errcode'], registers: [this.registry] });
  readonly storeUp = new Gauge({ name: 'wxkit_store_up', help: '1 while the shared store answers the health probe (each of its servers that holds an app\'s token or ticket), 0 while it does not.', registers: [this.registry] });
  /** Connections closed unanswered at once: the service held `maxConnections` already. */
  readonly connectionsDropped = new Counter({ name: 'wxkit_http_connections_dropped_total', help: 'Connections closed at once, unanswered, because the service held maxConnections already.', registers: [this.registry] });
  readonly #requests = new Counter({ name: 'wxkit_http_requests_total', help: "The service's requests, by route and status.", labelNames: ['route', 'status'], registers: [this.registry] });
  readonly #requestSeconds = new Histogram({
    name: 'wxkit_http_request_duration_seconds',
    help: "The service's answer time, by route.",
    labelNames: ['route'],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [this.registry],
  });

  readonly #process = processMetrics();

  /** The `/metrics` text: the service's own metrics, then Node's process metrics. */
  async text(): Promise<string> {
    const [own, node] = await Promise.all([this.registry.metrics(), this.#process.metrics()]);
    return `${own.endsWith('\n') ? own : `${own}\n`}${node}`;
  }

  /** Counts an app's fetches, failures, external invalidations and lock wait timeouts from its client's events. */
  watch(client: WeChatClient, app: string): void {
    for (const token of TOKEN_LABELS) {
      client.on(`${token}.fetched`, () => this.#fetches.inc({ app, token, result: 'ok' }));
      client.on(`${token}.invalidated_externally`, () => this.#external.inc({ app, token }));
      client.on(`${token}.fetch_failed`, (event) => {
        this.#fetches.inc({ app, token, result: 'error' });
        this.#errors.inc({ app, errcode: errcodeLabel(event.errcode, event.code) });
      });
    }
    client.on('lock.wait_timeout', () => this.#lockTimeouts.inc({ app }));
  }

  /**
   * The store as the clients see it, counting reads of each app's access-token key (hit or miss) and
   * lock takes that found the lock held. Methods the store lacks stay absent: core reads their absence.
   */
  countingCache(cache: TokenCache, tokenKeys: Map<string, string>, lockKeys: Map<string, string>): TokenCache {
    // A waiter polls the lock: one wait is counted from its first refused take until it takes the lock or
    // reads a token, not once per poll.
    const waiting = new Set<string>();
    const counted: TokenCache = {
      get: async (key) => {
        const value = await cache.get(key);
        const app = tokenKeys.get(key);
        if (app !== undefined) {
          this.#reads.inc({ app, result: value === undefined ? 'miss' : 'hit' });
          if (value !== undefined) waiting.delete(app);
        }
        return value;
      },
      set: (key, value, ttlSeconds) => cache.set(key, value, ttlSeconds),
      delete: (key) => cache.delete(key),
    };
    const { add, deleteIfEquals, compareAndSet, ttlMs, watch, partition, close } = cache;
    if (typeof add === 'function') {
      counted.add = async (key, value, ttlSeconds) => {
        const added = await add.call(cache, key, value, ttlSeconds);
        const app = lockKeys.get(key);
        if (app !== undefined) {
          if (added) waiting.delete(app);
          else if (!waiting.has(app)) {
            waiting.add(app);
            this.#lockWaits.inc({ app });
          }
        }
        return added;
      };
    }
    if (typeof deleteIfEquals === 'function') counted.deleteIfEquals = deleteIfEquals.bind(cache);
    if (typeof compareAndSet === 'function') counted.compareAndSet = compareAndSet.bind(cache);
    if (typeof ttlMs === 'function') counted.ttlMs = ttlMs.bind(cache);
    // Write notifications wake the clients waiting on another instance's refresh instead of polling.
    if (typeof watch === 'function') counted.watch = watch.bind(cache);
    // A store spread over servers (memcached://a,b) names the one that holds each key: without it, one
    // server down is the whole store down for the clients, and the apps on the servers that answer leave
    // the store for the host's directory, their tokens no longer shared with the fleet.
    if (typeof partition === 'function') counted.partition = partition.bind(cache);
    if (typeof close === 'function') counted.close = close.bind(cache);
    // Where the store keeps its entries (a file store's directory): the clients keep their host's
    // fallback directory out of it, as they would for the store itself.
    const locality = localityOf(cache);
    if (locality) markLocality(counted, locality);
    return counted;
  }

  /**
   * A dispatcher for an app's client that times each request to WeChat (from dispatch to the answer's
   * last byte, or its error), labelled by the API path without its query string (which holds tokens).
   */
  timedDispatcher(agent: Agent, app: string): Dispatcher {
    const histogram = this.#upstream;
    return agent.compose((dispatch) => (options, handler) => {
      const started = performance.now();
      const path = String(options.path).replace(/\?.*$/, '').replace(/^\/+/, '');
      const observe = (outcome: 'ok' | 'error') => histogram.observe({ app, path, outcome }, (performance.now() - started) / 1000);
      return dispatch(options, new Timed(handler, observe));
    });
  }

  request(route: string, status: number, seconds: number): void {
    this.#requests.inc({ route, status: String(status) });
    this.#requestSeconds.observe({ route }, seconds);
  }
}

// undici's DecoratorHandler forwards every callback to the handler it wraps; its type declares none.
type EndArgs = Parameters<Required<Dispatcher.DispatchHandler>['onResponseEnd']>;
type ErrorArgs = Parameters<Required<Dispatcher.DispatchHandler>['onResponseError']>;
interface Forwarding extends Dispatcher.DispatchHandler {
  onResponseEnd(...args: EndArgs): void;
  onResponseError(...args: ErrorArgs): void;
}
const Decorator = DecoratorHandler as unknown as new (handler: Dispatcher.DispatchHandler) => Forwarding;

/** Reports how an exchange ended, once, then lets it go on as it would have. */
class Timed extends Decorator {
  readonly #observe: (outcome: 'ok' | 'error') => void;

  constructor(handler: Dispatcher.DispatchHandler, observe: (outcome: 'ok' | 'error') => void) {
    super(handler);
    this.#observe = observe;
  }

  override onResponseEnd(...args: EndArgs): void {
    this.#observe('ok');
    super.onResponseEnd(...args);
  }

  override onResponseError(...args: ErrorArgs): void {
    this.#observe('error');
    super.onResponseError(...args);
  }
}
