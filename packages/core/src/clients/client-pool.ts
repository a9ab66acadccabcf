import { onAbort } from '../abort.js';
import type { TokenCallOptions } from '../access-token.js';
import { abortable } from '../token/single-flight.js';
import { ClientCore, checkClientOptions, clientSchema, kForwardEvents, kPoolCore, type ClientOptions, type OwnKeys } from '../client-core.js';
import { ConfigError, CredentialsError } from '../errors.js';
import { SECRET_MARKER_LIFE_MS } from '../token/failure.js';
import { ID_RULE, durationMs, integer, oneOf, required, rule, signalRefusal, typeName, type OptionSchema } from '../validate.js';
import { ClientLru, DroppedRefusals, LetGo } from './client-lru.js';
import { MiniProgram } from './mini-program.js';
import { OfficialAccount, type TokenEndpoint } from './official-account.js';
import type { TokenEvents } from '../events.js';
import { Work, WORK_BASE_URL } from './work.js';
import { clientClosed, clientSecretRefused, inheritSecretRefusal, secretRefusalSeen } from './wechat-client.js';

/** What a {@link ClientPool} makes: official accounts, mini programs, or WeCom apps. */
export type ClientPoolKind = 'officialAccount' | 'miniProgram' | 'work';

/** An official account's or mini program's credentials, as the resolver hands them back. */
export interface AppCredentials {
  /** The AppSecret. May be left out only when the pool has `tokenSource` or `refresh: 'never'`. */
  secret?: string;
}

/** A WeCom app's credentials, as the resolver hands them back. */
export interface WorkCredentials {
  corpId: string;
  agentId: string | number;
  /** The agent's secret. May be left out only when the pool has `tokenSource` or `refresh: 'never'`. */
  secret?: string;
}

/** The credentials a pool of `K` expects from its resolver. */
export type CredentialsOf<K extends ClientPoolKind> = K extends 'work' ? WorkCredentials : AppCredentials;
/** The client a pool of `K` hands out. */
export type ClientOf<K extends ClientPoolKind> = K extends 'officialAccount' ? OfficialAccount : K extends 'miniProgram' ? MiniProgram : Work;

/**
 * Looks an account's credentials up (in the SaaS's own database, a vault…). `undefined` or `null`: no
 * such account. It is called once per client made, not per send, and not twice at once for one id while
 * it answers within `credentialsTimeoutMs`; a call that timed out is not waited for, and the id's next
 * `get()` calls it again. A client whose secret WeChat refused (40125, 40091; 40001 from a token
 * endpoint), to its own fetch or to another process's with the same secret (the fleet's failure marker
 * names it), is made anew at the next `get()`, which calls it again: a record fixed meanwhile is taken
 * without `delete(id)`. A record still wrong costs one call per refused fetch, however the refused client
 * went (made anew, idle, beyond `maxClients`), and whatever calls failed in between. It is called as a
 * plain function (`this` is undefined): pass a method bound.
 */
export type CredentialsResolver<K extends ClientPoolKind> = (
  id: string,
) => CredentialsOf<K> | undefined | null | Promise<CredentialsOf<K> | undefined | null>;

/** Options of {@link ClientPool}: what to make, where credentials come from, and every client option, shared. */
export interface ClientPoolOptions<K extends ClientPoolKind> extends ClientOptions {
  /** `officialAccount`, `miniProgram` or `work`. */
  kind: K;
  /**
   * Resolves an id to credentials on first use. For official accounts and mini programs the id is the
   * appId; for WeCom it is any name of yours for the app (`ww…:1000002`, a tenant id), and the resolver
   * returns `corpId`, `agentId` and `secret`.
   */
  credentials: CredentialsResolver<K>;
  /**
   * At most this many clients are kept; the least recently used one is dropped beyond it (calls under way
   * on it finish). A client is cheap to make again: its tokens are in the store, and only the resolver is
   * asked again. @default 1000
   */
  maxClients?: number;
  /** A client unused longer than this, in ms, is dropped at the next `get()` (no timers). @default 600000 */
  clientIdleMs?: number;
  /** How long the resolver may take, in ms, before `get()` fails with reason `timeout`. @default 10000 */
  credentialsTimeoutMs?: number;
  /** Official accounts and mini programs: the token endpoint of every client (see OfficialAccountOptions). */
  tokenEndpoint?: TokenEndpoint;
}

const KINDS = ['officialAccount', 'miniProgram', 'work'] as const;
const OWN_OPTIONS = {
  kind: required(oneOf(KINDS), "is required: 'officialAccount', 'miniProgram' or 'work'"),
  credentials: required(rule('a function (id) => credentials, or a promise of them', (value) => typeof value === 'function')),
  maxClients: integer(1, Number.MAX_SAFE_INTEGER),
  clientIdleMs: durationMs(),
  credentialsTimeoutMs: durationMs(),
  tokenEndpoint: oneOf(['stable', 'classic']),
} as const satisfies OptionSchema<OwnKeys<ClientPoolOptions<ClientPoolKind>>>;
const SCHEMA = clientSchema<ClientPoolOptions<ClientPoolKind>>(OWN_OPTIONS);
const DEFAULTS = Object.freeze({ maxClients: 1000, clientIdleMs: 600_000, credentialsTimeoutMs: 10_000 });
const WORK_ID = /^[A-Za-z0-9_.:-]{1,128}$/;

/**
 * Clients for many accounts, made on first use from credentials you resolve, so 10,000 accounts need no
 * configuration up front: `get(appId)` asks the resolver once, builds an ordinary client (template
 * messages, JS-SDK, 40001 recovery, the token shared through `cache`), and keeps it while it is used.
 * Idle clients and those beyond `maxClients` are dropped at the next `get()` (calls under way on them
 * finish); there is no timer per client. All clients share the options given here and one HTTP client,
 * which sends through the connection pools the process shares per origin with every other client (or
 * through `dispatcher`).
 *
 * @example
 * ```ts
 * const accounts = new ClientPool({
 *   kind: 'officialAccount',
 *   credentials: async (appId) => db.oneOrNone('SELECT secret FROM wechat_accounts WHERE app_id = $1', [appId]),
 *   cache: new RedisCache(process.env.REDIS_URL!),
 * });
 * await (await accounts.get(appId)).templateMessage.send({ touser, template_id, data });
 * ```
 */
export class ClientPool<K extends ClientPoolKind = 'officialAccount'> {
  readonly kind: K;
  readonly #resolve: CredentialsResolver<K>;
  /** The timeouts #within() gave: a get() that joined a client under way, its own time not up, asks again. */
  readonly #lateForAnother = new WeakSet<object>();
  readonly #timeoutMs: number;
  readonly #options: Record<string | symbol, unknown>;
  readonly #core: ClientCore;
  readonly #clients: ClientLru<ClientOf<K>>;
  /**
   * The refusals seen by the clients the sweep dropped, and by those no new client replaced (the resolver
   * failed), for their accounts' next clients.
   */
  readonly #refusals: DroppedRefusals;
  readonly #pending = new Map<string, Promise<ClientOf<K>>>();
  readonly #letGo = new LetGo();
  /** Aborted by close(): a resolver call under way is no longer waited for. */
  readonly #closeSignal = new AbortController();
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(options: ClientPoolOptions<K>) {
    const owner = 'ClientPool';
    const opts = checkClientOptions<ClientPoolOptions<K>>(owner, SCHEMA, options);
    this.kind = opts.kind;
    this.#resolve = opts.credentials;
    this.#timeoutMs = opts.credentialsTimeoutMs ?? DEFAULTS.credentialsTimeoutMs;
    if (this.kind === 'work' && opts.tokenEndpoint !== undefined) {
      throw new ConfigError(`${owner} options.tokenEndpoint is for official accounts and mini programs; WeCom has one token endpoint`, 'tokenEndpoint');
    }
    const clientOptions: Record<string, unknown> = { ...opts };
    for (const name of Object.keys(OWN_OPTIONS)) if (name !== 'tokenEndpoint') delete clientOptions[name];
    // The pool's core checks every client option now, before any account is asked for, and holds what
    // the clients share: the HTTP client, the stores, the settings. Each account costs its token manager.
    // Without a dispatcher of the caller's, that HTTP client sends through the process's shared pools of
    // the origin, as a plain client does: sockets per origin and process, not per account nor per pool.
    this.#core = new ClientCore(owner, 'pool', clientOptions as ClientOptions, this.kind === 'work' ? WORK_BASE_URL : undefined);
    // pool.on('access_token.fetched', …) hears every account's client, however often it is made anew.
    this.#options = { ...clientOptions, [kPoolCore]: this.#core, [kForwardEvents]: this.#core };
    const now = opts.now ?? (() => performance.now());
    const maxClients = opts.maxClients ?? DEFAULTS.maxClients;
    // As many as clients may be held: most dropped clients saw no refusal, and keep nothing here.
    this.#refusals = new DroppedRefusals({ max: maxClients, lifeMs: SECRET_MARKER_LIFE_MS, now });
    this.#clients = new ClientLru({
      maxClients,
      idleMs: opts.clientIdleMs ?? DEFAULTS.clientIdleMs,
      now,
      // The clients share the pool's HTTP client and store, which stay open. A dropped client is only let
      // go of: a caller that still holds it finishes its calls (closing it would end their token waits);
      // it is closed with the pool. The secret refusal it saw goes to its account's next client.
      drop: (client, id) => {
        this.#letGo.add(client);
        this.#refusals.keep(id, secretRefusalSeen(client));
      },
    });
  }

  /**
   * Listens to the events of every account's client (`access_token.fetched`, `.fetch_failed`,
   * `jsapi_ticket.fetched`…, and `cache.corrupt_entry` / `cache.foreign_entry` for an entry of its own,
   * each with the account's `appId`: a WeCom app's corpId, its `key` naming the agent), however often the
   * clients are dropped and made again, and to the pool's own: `cache.unavailable` / `cache.recovered` for
   * the store every client shares (reported once for the pool, not once per account). A listener added to
   * a client (`(await pool.get(id)).on(…)`) goes with that client when it is dropped.
   */
  on<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.#core.events.on(event, listener);
    return this;
  }

  /** Listens to the next `event` only, of whichever account's client or of the store it comes. */
  once<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.#core.events.once(event, listener);
    return this;
  }

  /** Stops listening. */
  off<E extends keyof TokenEvents>(event: E, listener: (event: TokenEvents[E]) => void): this {
    this.#core.events.off(event, listener);
    return this;
  }

  /** How many clients are held now. */
  get size(): number {
    return this.#clients.size;
  }

  /**
   * The client of `id`: the one held, or one made now from the resolver's credentials. Concurrent first
   * calls for one id share one resolver call and one client. Rejects with a CredentialsError when the
   * resolver fails, times out, knows no such account or returns something unusable; nothing of a failure
   * is remembered, so the next call asks again. `signal` stops this caller's wait (with its reason); the
   * resolver's answer still makes the client for the callers that wait on, and for the next get().
   */
  get(id: string, options: TokenCallOptions = {}): Promise<ClientOf<K>> {
    if (this.#closed) return Promise.reject(new ConfigError('ClientPool is closed', 'id'));
    if (typeof id !== 'string' || !(this.kind === 'work' ? WORK_ID.test(id) : ID_RULE.accepts(id))) {
      const rule = this.kind === 'work' ? 'up to 128 letters, digits, `_`, `.`, `:` or `-`' : 'an appId (letters, digits, `_`, `.` or `-`)';
      return Promise.reject(new ConfigError(`ClientPool get(id) must be given ${rule} (got ${typeName(id)})`, 'id'));
    }
    const signal = (options as TokenCallOptions | undefined)?.signal;
    const refused = signalRefusal(signal, 'ClientPool get(id, options)');
    if (refused) return refused;
    const client = this.#get(id, performance.now() + this.#timeoutMs);
    return signal ? abortable(client, signal) : client;
  }

  /** get() once `id` is checked; `deadline` (performance.now()) bounds a client made now (see #make). */
  #get(id: string, deadline: number): Promise<ClientOf<K>> {
    const found = this.#clients.get(id);
    let refusal: number | undefined;
    if (found) {
      const { value: held, idle } = found;
      if (!idle && !clientClosed(held) && !clientSecretRefused(held)) return Promise.resolve(held);
      // Unused past clientIdleMs (the map forgot it already): a new one is made, the resolver asked again.
      // So is one its caller closed (it would start no refresh), as after delete(), and one whose secret
      // WeChat refused: the account's record may have been fixed since, and the resolver is asked again (a
      // record still wrong costs one resolver call per failed fetch, which the fleet's back-off spaces: a
      // minute).
      if (!idle) this.#clients.delete(id);
      if (!clientClosed(held)) this.#letGo.add(held);
      // The fleet's failure that refused its secret, or that its predecessor was made anew for: the client
      // made anew does not take the same failure, when it reads it, as a reason to be made anew once more.
      refusal = secretRefusalSeen(held);
    }
    const joined = this.#pending.get(id);
    if (joined) {
      // The client under way is bounded by the deadline of the get() that started it: one that joined
      // later, whose own time is not up when that one's runs out, asks again on its own.
      return joined.catch((error: unknown) => {
        if (this.#lateForAnother.has(error as object) && performance.now() < deadline) return this.#get(id, deadline);
        throw error;
      });
    }
    // Or the refusal a client of `id` saw that another account's get() dropped (idle, or beyond
    // maxClients): the one made now takes it over all the same.
    refusal ??= this.#refusals.take(id);
    const made: Promise<ClientOf<K>> = this.#make(id, () => this.#pending.get(id) === made, deadline, refusal)
      .catch((error: unknown) => {
        // No client took the refusal over (the resolver failed, timed out, or answered nothing usable): the
        // next one made does, or it would take the fleet's same refusal as news and cost one resolver call
        // more. Not after delete(id): the credentials were said to have changed. (close() forgets them all.)
        if (this.#pending.get(id) === made) this.#refusals.keep(id, refusal);
        throw error;
      })
      .finally(() => {
        if (this.#pending.get(id) === made) this.#pending.delete(id);
      });
    this.#pending.set(id, made);
    return made;
  }

  /**
   * Lets go of the client of `id`, if one is held or under way (resolves once that one is settled): calls
   * under way on it finish. A `get(id)` from now on asks the resolver again, even while the one under way
   * still waits for its answer, whose answer is then dropped: the get() calls that asked before it get the
   * client of the new answer too. Call it after an account's credentials changed.
   */
  async delete(id: string): Promise<void> {
    const pending = this.#pending.get(id);
    // The client under way is made for the get() calls that asked before, and let go of as it is made.
    this.#pending.delete(id);
    const held = this.#clients.delete(id);
    if (held) this.#letGo.add(held);
    // Nor is the refusal a dropped client saw carried over: the credentials were said to have changed.
    this.#refusals.forget(id);
    await pending?.catch(() => undefined);
  }

  /**
   * Closes every client, the ones it dropped too while a caller holds them or awaits one of their calls
   * (their waits end; their refreshes and reports under way write, and release their locks, before it
   * resolves), and leaves the process's shared connection pools (closed with their last user; a
   * dispatcher of yours is left open). A `get()` still waiting for the resolver rejects at once, as one
   * after close() does. The cache is yours to close.
   */
  close(): Promise<void> {
    // Once: a second call resolves when the first one's work is done, not before.
    return (this.#closing ??= this.#close());
  }

  async #close(): Promise<void> {
    this.#closed = true;
    this.#closeSignal.abort();
    await Promise.all([...this.#pending.values()].map((pending) => pending.catch(() => undefined)));
    this.#refusals.clear();
    await Promise.all([...this.#clients.clear().map((client) => client.close()), this.#letGo.closeAll(), this.#core.closeBusy()]);
    await this.#core.close();
  }

  /**
   * A client of `id` from the resolver's answer, held unless `current()` says delete() came meanwhile.
   * `deadline` (performance.now()) ends the wait of the get() calls it serves, however often it starts over.
   */
  async #make(id: string, current: () => boolean, deadline: number, refusal?: number): Promise<ClientOf<K>> {
    const credentials = await this.#credentials(id);
    if (this.#closed) throw new ConfigError('ClientPool is closed', 'id');
    // A delete() came while the resolver answered: its answer may hold the credentials delete() was
    // called to replace (a client of them would fail its fetch and back the account off fleet-wide).
    // The callers that asked before get the account's client as it is now made, within what is left of
    // their credentialsTimeoutMs: a delete() during every answer must not hold them for ever.
    if (!current()) return this.#within(deadline, id, () => this.#get(id, deadline));
    let client: ClientOf<K>;
    try {
      client = this.#build(id, credentials);
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      // The client's own check names the field and its type, never its value.
      throw new CredentialsError('invalid', id, `ClientPool: the credentials resolved for ${id} are not usable: ${error.message}`);
    }
    inheritSecretRefusal(client, refusal);
    this.#clients.set(id, client);
    return client;
  }

  /**
   * The client `next()` makes, or a CredentialsError `timeout` once `deadline` (performance.now()) has
   * passed; past it, nothing more is asked of the resolver for these callers.
   */
  async #within(deadline: number, id: string, next: () => Promise<ClientOf<K>>): Promise<ClientOf<K>> {
    const late = () => {
      const error = new CredentialsError('timeout', id, `ClientPool: no client of ${id} within ${this.#timeoutMs} ms (credentialsTimeoutMs): delete(${id}) came during each of the resolver's answers`);
      this.#lateForAnother.add(error);
      return error;
    };
    const left = deadline - performance.now();
    if (left <= 0) throw late();
    let timer: NodeJS.Timeout | undefined;
    const ends = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(late()), left);
    });
    try {
      return await Promise.race([next(), ends]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The resolver's answer, bounded in time, checked for shape; every failure a CredentialsError. */
  async #credentials(id: string): Promise<Record<string, unknown>> {
    let timer: NodeJS.Timeout | undefined;
    let stopClose: (() => void) | undefined;
    let closed: ConfigError | undefined;
    const signal = this.#closeSignal.signal;
    let answer: unknown;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new CredentialsError('timeout', id, `ClientPool's credentials resolver did not answer for ${id} within ${this.#timeoutMs} ms (credentialsTimeoutMs)`)),
          this.#timeoutMs,
        );
        // close() does not wait for the resolver: its callers get the error of a get() after close().
        // One listener on the pool's signal, however many resolver calls are under way.
        stopClose = onAbort(signal, () => reject((closed = new ConfigError('ClientPool is closed', 'id'))));
      });
      // Called as a plain function: the pool is nobody's `this` (an unbound method gets undefined, as it would anywhere).
      const resolve = this.#resolve;
      answer = await Promise.race([Promise.resolve().then(() => resolve(id)), timeout]);
    } catch (error) {
      if (error instanceof CredentialsError || (closed !== undefined && error === closed)) throw error;
      throw new CredentialsError('failed', id, `ClientPool's credentials resolver failed for ${id}; its error is the cause`, { cause: error });
    } finally {
      clearTimeout(timer);
      stopClose?.();
    }
    if (answer === undefined || answer === null) {
      throw new CredentialsError('unknown', id, `ClientPool's credentials resolver knows no account ${id} (it returned ${typeName(answer)})`);
    }
    if (typeof answer !== 'object' || Array.isArray(answer)) {
      throw new CredentialsError('invalid', id, `ClientPool's credentials resolver must return an object such as { secret } for ${id} (got ${typeName(answer)})`);
    }
    // The fields are read once, here: a getter that throws (a secret decrypted as it is read, a proxy
    // over a database row) fails as the resolver would.
    try {
      const { secret, corpId, agentId } = answer as Record<string, unknown>;
      return this.kind === 'work' ? { corpId, agentId, secret } : { secret };
    } catch (error) {
      throw new CredentialsError('failed', id, `ClientPool could not read the credentials resolved for ${id}; the error is the cause`, { cause: error });
    }
  }

  #build(id: string, credentials: Record<string, unknown>): ClientOf<K> {
    const secret = credentials.secret;
    if (this.kind === 'work') {
      return new Work({ ...this.#options, corpId: credentials.corpId, agentId: credentials.agentId, secret } as never) as ClientOf<K>;
    }
    const options = { ...this.#options, appId: id, secret } as never;
    return (this.kind === 'officialAccount' ? new OfficialAccount(options) : new MiniProgram(options)) as ClientOf<K>;
  }
}
