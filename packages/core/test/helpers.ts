import { createServer } from 'node:http';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { startMockWeChat, type MockComponent, type MockWeChat } from '@wxkit/testing';
import { expect } from 'vitest';
import { Agent, type Dispatcher } from 'undici';
import { MemoryCache, OfficialAccount, type Logger, type OfficialAccountOptions, type TokenCache } from '../src/index.js';

/** A logger that keeps every line, to assert on what was (and was not) logged. */
export function recordingLogger(): Logger & { lines: { level: string; fields: unknown; message: string }[] } {
  const lines: { level: string; fields: unknown; message: string }[] = [];
  const record = (level: string) => (fields: unknown, message: string) => {
    lines.push({ level, fields, message });
  };
  return { lines, debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
}

/** An OfficialAccount on a fresh mock app with its own MemoryCache unless one is given. */
export function newApp(
  mock: MockWeChat,
  options: Partial<OfficialAccountOptions> = {},
): { app: OfficialAccount; appId: string; secret: string; cache: TokenCache } {
  const { appId, secret } = mock.createApp();
  const cache = options.cache ?? new MemoryCache();
  const app = new OfficialAccount({ appId, secret, baseUrl: mock.url, logger: false, ...options, cache });
  return { app, appId, secret, cache };
}

/**
 * Two clients of one store, as two processes racing to force a refresh: once `arm()`ed, the lock `add` of
 * the one that took the fleet's 30 s force slot (`winner`) waits until the other (`loser`) has taken the
 * lock, so the loser of the slot locks first. `slotWritten` resolves when the winner has the slot.
 */
export function slotWinnerLocksSecond(
  mock: MockWeChat,
  options: { winner?: Partial<OfficialAccountOptions>; loser?: Partial<OfficialAccountOptions> } = {},
) {
  const { appId, secret } = mock.createApp();
  const shared = new MemoryCache();
  let key = '';
  let armed = false;
  let slotTaken!: () => void;
  let lockTaken!: () => void;
  const slotWritten = new Promise<void>((resolve) => (slotTaken = resolve));
  const loserLocked = new Promise<void>((resolve) => (lockTaken = resolve));
  /** The shared store as one client sees it: `add` may be held back, and is told of. */
  const seenBy = (before: (at: string) => Promise<void> | void, after: (at: string, added: boolean) => void) =>
    new Proxy(shared, {
      get(target, name) {
        const value = Reflect.get(target, name, target);
        if (name !== 'add') return typeof value === 'function' ? value.bind(target) : value;
        return async (at: string, v: string, ttl: number) => {
          await before(at);
          const added = await target.add(at, v, ttl);
          after(at, added);
          return added;
        };
      },
    });
  const winnerStore = seenBy(
    (at) => (armed && at === `${key}:lock` ? loserLocked : undefined),
    (at, added) => added && at === `${key}:forced` && slotTaken(),
  );
  const loserStore = seenBy(() => undefined, (at, added) => armed && added && at === `${key}:lock` && lockTaken());
  const winner = new OfficialAccount({ appId, secret, baseUrl: mock.url, logger: false, ...options.winner, cache: winnerStore });
  const loser = new OfficialAccount({ appId, secret, baseUrl: mock.url, logger: false, ...options.loser, cache: loserStore });
  key = winner.accessToken.cacheKey;
  return { appId, winner, loser, slotWritten, arm: () => void (armed = true) };
}

/** The options an OpenPlatform needs to be the mock's component app: its credentials and the mock's URL. */
export function componentOptions(mock: MockWeChat, component: MockComponent) {
  return {
    appId: component.appId,
    secret: component.secret,
    token: component.token,
    encodingAESKey: component.encodingAESKey,
    baseUrl: mock.url,
  };
}

/** Stores a verify ticket the mock issued for `component`, as if WeChat's push had arrived; returns it. */
export async function storeVerifyTicket(mock: MockWeChat, component: MockComponent, durable: TokenCache): Promise<string> {
  const ticket = mock.issueVerifyTicket(component.appId);
  // Pushed now, on the mock's clock: a ticket is refused unsent once its 12 hours are over.
  await durable.set(`wechat:component_verify_ticket:${component.appId}`, JSON.stringify({ component_verify_ticket: ticket, create_time: Math.floor(mock.now() / 1000) }), 3600);
  return ticket;
}

/** Everything an error exposes as text: message, stack, cause chain, and its JSON form. */
export function errorText(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current && depth < 5; depth += 1) {
    const e = current as { message?: unknown; stack?: unknown; cause?: unknown };
    parts.push(String(e.message), String(e.stack));
    try {
      parts.push(JSON.stringify(current));
    } catch {
      // circular: the other parts are enough
    }
    current = e.cause;
  }
  return parts.join('\n');
}

/** A promise and what resolves it: a gate the test opens, or a moment it waits for. */
export function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => (resolve = done));
  return { promise, resolve };
}

// The clients a test waits on through their own events (see nextEvent).
const awaited = new Set<object>();

/**
 * Resolves with `client`'s next `event`, holding the client until then. A test awaiting only an event
 * of its client holds it through nothing the runtime counts: the stores' health holds clients weakly
 * (a client made per request and never closed is collected), the client holds the listener, and the
 * listener the test's own suspended frame. The collector may take all of it, the test with it, and the
 * event never comes.
 */
export function nextEvent<T = unknown>(client: { once(event: never, listener: (payload: T) => void): unknown }, event: string): Promise<T> {
  awaited.add(client);
  return new Promise<T>((resolve) =>
    (client.once as (event: string, listener: (payload: T) => void) => unknown)(event, (payload) => {
      awaited.delete(client);
      resolve(payload);
    }),
  );
}

/**
 * A MemoryCache whose answer to the `add` of the key given to `lock()` waits until `release()`: the refresh
 * that takes that lock is then under way, before its fetch.
 */
export function holdingLock(): { cache: MemoryCache; arrived: Promise<void>; release: () => void; lock: (key: string) => void } {
  const arrived = deferred();
  const released = deferred();
  let lockKey = '';
  class HoldingLock extends MemoryCache {
    override async add(key: string, value: string, ttlSeconds: number): Promise<boolean> {
      if (key === lockKey) {
        arrived.resolve();
        await released.promise;
      }
      return super.add(key, value, ttlSeconds);
    }
  }
  return { cache: new HoldingLock(), arrived: arrived.promise, release: released.resolve, lock: (key: string) => void (lockKey = key) };
}

/**
 * A component's callback URL on 127.0.0.1 (path /open): each push WeChat (the mock) sends is handed to
 * `handle`, whose status is the answer ('success' with 200).
 */
export async function startCallback(handle: (query: URLSearchParams, body: string) => Promise<number>): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      void handle(new URL(req.url ?? '/', 'http://x').searchParams, body).then((status) => {
        res.statusCode = status;
        res.end(status === 200 ? 'success' : '');
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return {
    url: `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/open`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Captures the rejection of a promise that must reject. */
export async function rejection(promise: Promise<unknown>): Promise<Error & Record<string, unknown>> {
  try {
    await promise;
  } catch (error) {
    return error as Error & Record<string, unknown>;
  }
  throw new Error('expected the promise to reject');
}

/**
 * The error `waiting` (a call waiting on another process's refresh) ended with once its client was
 * closed: a rejection of its own when it is still waiting 10 s later, as a wait that outlived close().
 */
export function endedByClose(waiting: Promise<unknown>): Promise<unknown> {
  const ended = waiting.then(
    () => undefined,
    (error: unknown) => error,
  );
  return Promise.race([ended, new Promise((_, reject) => setTimeout(() => reject(new Error('the wait outlived close()')), 10_000).unref())]);
}

/**
 * A dispatcher through which the answers to requests whose path includes `path` arrive with `from`
 * replaced by `to` (as long, so that Content-Length still holds): WeChat acted on the request, and its
 * answer reaches the client altered.
 */
export function rewritingDispatcher(path: string, from: string, to: string): Dispatcher {
  if (Buffer.byteLength(from, 'latin1') !== Buffer.byteLength(to, 'latin1')) throw new Error('rewritingDispatcher: `from` and `to` must be as long');
  return new Agent().compose((dispatch) => (options, handler) => {
    if (!String(options.path).includes(path)) return dispatch(options, handler);
    const rewrite = (chunk: Buffer) => Buffer.from(chunk.toString('latin1').replace(from, to), 'latin1');
    const wrapped = new Proxy(handler, {
      get(target, name, receiver) {
        const value = Reflect.get(target, name, receiver) as unknown;
        if (typeof value !== 'function') return value;
        if (name === 'onResponseData') return (controller: unknown, chunk: Buffer) => value.call(target, controller, rewrite(chunk));
        if (name === 'onData') return (chunk: Buffer) => value.call(target, rewrite(chunk));
        return value.bind(target);
      },
    });
    return dispatch(options, wrapped);
  });
}

/**
 * A dispatcher that holds the requests whose path includes one of `paths`, before they leave, until
 * `release()` (of that path, or of all), and says how many arrived (at that path, or at all).
 */
export function holdingDispatcher(...paths: string[]): { agent: Agent; release: (path?: string) => void; arrived: (path?: string) => number } {
  const agent = new Agent();
  const gates = new Map<string, { released: Promise<void>; open: () => void; arrived: number }>(
    paths.map((path) => {
      let open!: () => void;
      const released = new Promise<void>((resolve) => (open = resolve));
      return [path, { released, open, arrived: 0 }] as const;
    }),
  );
  const dispatch = agent.dispatch.bind(agent);
  agent.dispatch = (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) => {
    const gate = [...gates].find(([path]) => String(options.path).includes(path))?.[1];
    if (!gate) return dispatch(options, handler);
    gate.arrived += 1;
    void gate.released.then(() => dispatch(options, handler));
    return true;
  };
  const chosen = (path?: string) => (path === undefined ? [...gates.values()] : [gates.get(path)!]);
  return {
    agent,
    release: (path) => chosen(path).forEach((gate) => gate.open()),
    arrived: (path) => chosen(path).reduce((sum, gate) => sum + gate.arrived, 0),
  };
}

setFlagsFromString('--expose-gc');
/** V8's garbage collector, for tests that check what a client leaves reachable. */
export const gc = runInNewContext('gc') as () => void;

/** Collects garbage after the current job, so that WeakRefs made during it may be cleared. */
export async function collect(): Promise<void> {
  for (let round = 0; round < 3; round += 1) {
    await new Promise((resolve) => setImmediate(resolve));
    gc();
  }
}

/**
 * Two processes of one host on one store, `a` and `b`, each holding the first token: it is killed while
 * the store is down (`outage.down()`: the host fetches once, through its fallback), then the store comes
 * back (`outage.up()`), which `a` finds and `b` does not yet (`outage.holdSecond(true)` keeps b's own
 * connection refused), and the token fetched during the outage is killed and reported by both.
 */
export async function killedAcrossOutage(
  mock: MockWeChat,
  appId: string,
  a: OfficialAccount,
  b: OfficialAccount,
  outage: { down(): void; up(): void; holdSecond(held: boolean): void },
): Promise<{ during: string }> {
  const fetches = () => mock.counters(appId).classicTokenRequests;
  const first = await a.accessToken.getToken();
  expect(await b.accessToken.getToken()).toBe(first);
  outage.down();
  mock.invalidateTokens(appId);
  await a.accessToken.invalidate(first, 40001);
  await b.accessToken.invalidate(first, 40001);
  const during = await a.accessToken.getToken();
  expect(await b.accessToken.getToken()).toBe(during);
  expect(fetches()).toBe(2);
  outage.holdSecond(true);
  const recovered = nextEvent(a, 'cache.recovered');
  outage.up();
  await recovered;
  mock.invalidateTokens(appId);
  await a.accessToken.invalidate(during, 40001);
  await b.accessToken.invalidate(during, 40001);
  return { during };
}

/** The clock of a test's mock WeChat (see onMockClock): `now` for the clients, `at()` to move it. */
export class TestClock {
  /** 2026-11-25 04:00 UTC, noon in Beijing: no quota day ends within a test's two hours. */
  readonly start = Date.UTC(2026, 10, 25, 4, 0, 0);
  #at = this.start;
  /** The clock's time, unix ms: hand it to clients and stores as their `now`. */
  readonly now = (): number => this.#at;
  /** Sets the clock `sinceStartMs` after its start. */
  at(sinceStartMs: number): void {
    this.#at = this.start + sinceStartMs;
  }
}

/** Runs `run` with a mock WeChat on a clock of the test's own, closed once `run` settles. */
export async function onMockClock(run: (mock: MockWeChat, clock: TestClock) => Promise<void>): Promise<void> {
  const clock = new TestClock();
  const mock = await startMockWeChat({ now: clock.now });
  try {
    await run(mock, clock);
  } finally {
    await mock.close();
  }
}

/** `shared` with the methods of `methods` in place of its own (a store that fails or lies at some calls). */
export function over(shared: MemoryCache, methods: Partial<TokenCache>): TokenCache {
  return new Proxy(shared, {
    get(target, name) {
      if (name in methods) return (methods as Record<string | symbol, unknown>)[name];
      const value = Reflect.get(target, name, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  }) as unknown as TokenCache;
}
