import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { TokenCache } from '@wxkit/core';

/** How to build a TokenCache in another process. `module` must resolve from anywhere: a file URL or an absolute path. */
export interface StoreSpec {
  module: string;
  export: string;
  args: unknown[];
}

/** How a worker builds its client; passed as JSON in the WXKIT_WORKER env variable. */
export interface WorkerConfig {
  baseUrl: string;
  appId: string;
  /** Not needed with `tokenSource`. */
  secret?: string;
  tokenEndpoint?: 'stable' | 'classic';
  /** The shared store; omitted, each worker keeps tokens in its own memory. */
  store?: StoreSpec;
  /** Take tokens from a `wxkit serve` service instead of WeChat. */
  tokenSource?: { url: string; key: string };
  /** A key schema by its @wxkit/core export name and options, e.g. `{ name: 'easyWeChat4', options: { prefix: 'think:' } }`. */
  schema?: { name: string; options?: Record<string, unknown> };
  /** Extra OfficialAccount options with plain values (timeoutMs, cacheTimeoutMs, memoMs, serviceName…). */
  clientOptions?: Record<string, number | string>;
  /** Every store call of the worker waits this long first: a slow (not down) store. */
  storeDelayMs?: number;
  /**
   * Give the client a clock the test can move forward with `WorkerGroup.advance()`: the real clock plus
   * what was advanced (`true`), or, `'frozen'`, the time the group started plus what was advanced, the
   * same in every worker of the group, so that neither how long the test takes nor when each worker
   * started moves it (a back-off step checked just short of its end).
   */
  clockControl?: boolean | 'frozen';
  /** Set by `WorkerGroup.start()` for a `'frozen'` clock: the group's start, unix ms. */
  clockBase?: number;
}

export interface WorkerRun {
  type: 'run';
  id: number;
  /** `ticket`: the jsapi ticket (`app.jssdk.getTicket()`). */
  op: 'getToken' | 'send' | 'ticket';
  count: number;
  /** Calls in flight at once. @default count (all at once) */
  concurrency?: number;
}

export interface WorkerResult {
  type: 'result';
  id: number;
  /** Tokens returned (getToken) or msgids (send), in completion order. */
  values: string[];
  ok: number;
  /** `code:errcode` of each failure, e.g. `ERR_WXKIT_WECHAT_API:40001`. */
  errors: string[];
  /** Unhandled promise rejections the worker saw since it started, or was last configured (it keeps running through them). */
  unhandled: number;
  /** wxkit log events seen since the previous result (during this run, or between the two), by name (`cache.unavailable`…). */
  events: Record<string, number>;
}

/** Builds the store a spec describes: `new (await import(module))[export](...args)`. */
export async function createStore(spec: StoreSpec): Promise<TokenCache> {
  const mod = (await import(spec.module)) as Record<string, new (...args: unknown[]) => TokenCache>;
  const Store = mod[spec.export];
  if (typeof Store !== 'function') throw new Error(`${spec.module} has no export ${spec.export}`);
  return new Store(...spec.args);
}

/**
 * `promise`'s value, or `fallback` once `ms` have passed without it: a bound on a failure (a child that
 * never reports, a store that never answers), not a measurement.
 */
export function settleWithin<T>(promise: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([promise, new Promise<T>((resolve) => (timer = setTimeout(() => resolve(fallback), ms)))]).finally(() => clearTimeout(timer));
}

/**
 * Worker processes, each with its own OfficialAccount and store client, run in lockstep. A group can be
 * given new apps with {@link WorkerGroup.configure} (scenario after scenario): its processes and their
 * store connections are made once.
 */
export class WorkerGroup {
  readonly #children: ChildProcess[] = [];
  /** Runs, advance() and `all` reach the first #active workers (configure(config, count)). */
  #active = 0;
  #nextId = 1;

  private constructor() {}

  /** Forks `count` workers and resolves once every one has built its client. */
  static async start(count: number, config: WorkerConfig): Promise<WorkerGroup> {
    const group = new WorkerGroup();
    const frozen = withClockBase(config);
    await Promise.all(Array.from({ length: count }, (_, index) => group.#fork(index, frozen)));
    group.#active = count;
    return group;
  }

  /** Forks the worker of slot `index` with `config`; resolves once it has built its client. */
  #fork(index: number, config: WorkerConfig): Promise<void> {
    const script = fileURLToPath(new URL('./worker.js', import.meta.url));
    const child = fork(script, [], {
      env: { ...process.env, WXKIT_WORKER: JSON.stringify(config) },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.#children[index] = child;
    return new Promise<void>((resolve, reject) => {
      child.once('message', (message: { type?: string }) => (message.type === 'ready' ? resolve() : reject(new Error(`worker sent ${JSON.stringify(message)}`))));
      child.once('exit', (code) => reject(new Error(`worker exited with ${code} before it was ready`)));
    });
  }

  /** Sends `message` to a worker and resolves with its answer of type `answer` (same id). */
  #ask(index: number, message: { type: string } & Record<string, unknown>, answer: string): Promise<void> {
    const child = this.#children[index]!;
    const id = this.#nextId++;
    return new Promise<void>((resolve, reject) => {
      const onMessage = (reply: { type?: string; id?: number; error?: string }) => {
        if ((reply.type !== answer && reply.type !== 'failed') || reply.id !== id) return;
        child.off('message', onMessage);
        child.off('close', onClose);
        if (reply.type === 'failed') reject(new Error(`worker ${index} could not ${message.type}: ${reply.error}`));
        else resolve();
      };
      const onClose = (code: number | null, signal: string | null) => reject(new Error(`worker ${index} exited (${signal ?? code}) during ${message.type}`));
      child.on('message', onMessage);
      child.once('close', onClose);
      child.send({ ...message, id });
    });
  }

  /**
   * Gives the first `count` workers (all of the group by default) a new app from `config`, closing the
   * ones they had; each keeps its client of the store (a process's store client outlives its apps).
   * A worker that exited (kill()) is replaced by a new process, as is one the group lacks; the apps of
   * workers past `count` are closed. Runs then go to those `count` workers; events, rejections and the
   * clock start afresh in each.
   */
  async configure(config: WorkerConfig, count = this.#children.length): Promise<void> {
    const frozen = withClockBase(config);
    await Promise.all(
      Array.from({ length: Math.max(count, this.#children.length) }, (_, index) => {
        const child = this.#children[index];
        if (index >= count) return child && alive(child) ? this.#ask(index, { type: 'release' }, 'released') : undefined;
        if (!child || !alive(child)) return this.#fork(index, frozen);
        return this.#ask(index, { type: 'configure', config: frozen }, 'ready');
      }),
    );
    this.#active = count;
  }

  /** Closes every worker's app; the processes and their store clients stay, for {@link configure}. */
  async release(): Promise<void> {
    await Promise.all(this.#children.map((child, index) => (alive(child) ? this.#ask(index, { type: 'release' }, 'released') : undefined)));
  }

  get size(): number {
    return this.#active;
  }

  /**
   * Runs `op` `count` times in the given workers (all by default), `concurrency` at a time (all at
   * once by default); resolves their results in worker order.
   */
  run(
    op: WorkerRun['op'],
    count: number,
    which: number[] = this.all,
    concurrency?: number,
  ): Promise<WorkerResult[]> {
    const id = this.#nextId++;
    return Promise.all(
      which.map((index) => {
        const child = this.#children[index]!;
        return new Promise<WorkerResult>((resolve, reject) => {
          const onMessage = (message: WorkerResult) => {
            if (message.type !== 'result' || message.id !== id) return;
            child.off('message', onMessage);
            child.off('close', onExit);
            resolve(message);
          };
          const onExit = (code: number | null, signal: string | null) =>
            reject(new Error(`worker ${index} exited (${signal ?? code}) during ${op}`));
          child.on('message', onMessage);
          // 'close', not 'exit': a result sent just before the worker exits is still read first.
          child.once('close', onExit);
          child.send({ type: 'run', id, op, count, concurrency } satisfies WorkerRun);
        });
      }),
    );
  }

  /** Moves every worker's client clock forward by `ms` (workers started with `clockControl`). */
  async advance(ms: number): Promise<void> {
    const id = this.#nextId++;
    await Promise.all(
      this.#children.slice(0, this.#active).map(
        (child) =>
          new Promise<void>((resolve) => {
            const onMessage = (message: { type?: string; id?: number }) => {
              if (message.type !== 'advanced' || message.id !== id) return;
              child.off('message', onMessage);
              resolve();
            };
            child.on('message', onMessage);
            child.send({ type: 'advance', id, ms });
          }),
      ),
    );
  }

  /** All worker indexes, for `run(op, count, group.all, concurrency)`. */
  get all(): number[] {
    return Array.from({ length: this.#active }, (_, i) => i);
  }

  /** SIGKILLs one worker and waits for it to be gone. */
  async kill(index: number): Promise<void> {
    const child = this.#children[index]!;
    if (!alive(child)) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await gone;
  }

  /** Asks every worker to close its clients and exit; kills those that do not within 5 s. */
  async stop(): Promise<void> {
    await Promise.all(
      this.#children.map(async (child) => {
        if (!alive(child)) return;
        const gone = new Promise((resolve) => child.once('exit', resolve));
        child.send({ type: 'exit' });
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await gone;
        clearTimeout(timer);
      }),
    );
  }
}

const alive = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;

/** One frozen clock for the whole group: workers started a few hundred ms apart share it. */
function withClockBase(config: WorkerConfig): WorkerConfig {
  return config.clockControl === 'frozen' ? { ...config, clockBase: config.clockBase ?? Date.now() } : config;
}
