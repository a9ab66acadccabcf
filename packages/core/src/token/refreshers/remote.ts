import { HttpError } from '../../errors.js';
import { isPlausibleToken } from '../plausible.js';
import { MAX_SOURCE_EXPIRES_IN_S, type TokenSource, type TokenSourceRequest } from '../../token-source.js';
import type { StoredEntry } from '../entry.js';
import { endingOf, whileWanted, type Refreshed, type RefreshRequest, type Refresher, type TokenContext } from '../refresher.js';

/** How long a client holding a good token waits for its token service before it serves that token instead. */
const HELD_GRACE_MS = 1_000;

/**
 * Takes values from a token service (`wxkit serve`) that owns the refresh under its own lock; WeChat's
 * rejections are reported to it, and it refreshes only if the rejected value is still its current one.
 * The value is kept in this process's memo only: the service's store is the service's to write.
 */
export class RemoteRefresher implements Refresher {
  readonly fetches = true;
  // The service is this process's store: while it does not answer, the token it handed out serves on. A
  // service that answers at all does so within this, its own refresh included (a WeChat fetch under its
  // lock); one that takes longer is let answer in the background.
  readonly servesHeldAfterMs = HELD_GRACE_MS;
  readonly #ctx: TokenContext;
  readonly #source: TokenSource;
  readonly #request: TokenSourceRequest;
  readonly #deadlineMs: number;

  /** `deadlineMs`: the longest a source's answer is waited for (a source of one's own may have none). */
  constructor(ctx: TokenContext, source: TokenSource, request: TokenSourceRequest, deadlineMs: number) {
    this.#ctx = ctx;
    this.#source = source;
    this.#request = request;
    this.#deadlineMs = deadlineMs;
  }

  async refresh(request: RefreshRequest): Promise<Refreshed | undefined> {
    // The service refreshes ahead on its own; a client has nothing to do early.
    if (request.ahead) return undefined;
    const started = performance.now();
    // Only to a source that takes ticket reports: one written for access tokens alone may answer with its
    // access token, which would be taken for the ticket.
    if (request.force && this.#request.field === 'ticket' && this.#source.takesTicketReports === true) {
      const reported = await this.#reportTicket(request, started);
      if (reported) return reported;
    }
    // The service's answer is waited for only while someone wants it: once every caller gave up, or the
    // client closed, the request is let go (a program that never calls close() can exit, and close() does
    // not wait for a service that is itself waiting for its lock). The service's own refresh goes on.
    const fetched = await whileWanted(this.#ctx, request, endingOf(this.#ctx, request), (signal) => this.#withDeadline(this.#source.fetch(this.#request, request.force ? { signal, force: true } : { signal })));
    const refreshed = this.#take(fetched, started);
    if (typeof refreshed === 'string') throw new HttpError('ERR_WXKIT_HTTP', `The token source answered ${refreshed}`, { path: 'token source' });
    return refreshed;
  }

  /**
   * Reports `value`; what the source answers with (wxkit serve: the current token, the one that replaced
   * `value`) is the refresh, so the client need not ask again. Undefined when it answered none.
   * `accepted`: whether a call went through with `value` first, which the source is told (`worked`).
   */
  async invalidate(value: string, errcode: number | undefined, _known?: StoredEntry, accepted?: boolean): Promise<Refreshed | undefined> {
    const ctx = this.#ctx;
    const started = performance.now();
    const worked = accepted === undefined ? {} : { worked: accepted };
    // Let go when the client closes, as a fetch is: close() does not wait out the source's timeoutMs.
    const answered = await whileWanted(ctx, { force: false }, ctx.closed, (signal) => this.#withDeadline(this.#source.invalidate(this.#request, value, errcode, { signal, ...worked })));
    ctx.log.info({ event: `${ctx.label}.invalidated`, appId: ctx.appId, key: ctx.logKey, errcode, source: 'remote' }, `Reported a rejected ${ctx.label} to the token service`);
    // A source that answers nothing, or something else (a source in plain JavaScript that returns what
    // its HTTP call did): the client asks fetch() next, as before sources could answer.
    if (!answered) return undefined;
    const refreshed = this.#take(answered, started);
    return typeof refreshed === 'string' ? undefined : refreshed;
  }

  /**
   * refreshTicket(): `wx.config` refused the ticket the program signs with (another program got WeChat to
   * hand out a new one), and the service would answer a fetch with that very ticket until it expires. The
   * ticket this process holds (holding none, the one the service answers) is reported: the service
   * replaces it if it still holds it, and answers the current one, which is the refresh. When the source
   * answered none (a service without the route), the ticket fetched to be reported, if one was; else
   * undefined, and the client fetches as before.
   */
  async #reportTicket(request: RefreshRequest, started: number): Promise<Refreshed | undefined> {
    let fetched: { value: string; expiresIn: number } | undefined;
    const answered = await whileWanted(this.#ctx, request, endingOf(this.#ctx, request), async (signal) => {
      let held = request.current;
      if (held === undefined) {
        fetched = await this.#withDeadline(this.#source.fetch(this.#request, { signal, force: true }));
        held = fetched?.value;
      }
      if (!isPlausibleToken(held)) return undefined;
      return this.#withDeadline(this.#source.invalidate(this.#request, held, undefined, { signal, force: true }));
    });
    for (const entry of [answered, fetched]) {
      if (!entry) continue;
      const refreshed = this.#take(entry, started);
      if (typeof refreshed !== 'string') return refreshed;
    }
    return undefined;
  }

  /** The entry of a source's answer, or what is wrong with it. */
  #take(fetched: { value: string; expiresIn: number } | undefined, started: number): Refreshed | string {
    const ctx = this.#ctx;
    // A source in plain JavaScript may answer anything: "7200" would be added to the fetch time as text
    // (Number.isFinite refuses whatever is no number).
    if (!isPlausibleToken(fetched?.value) || !Number.isFinite(fetched.expiresIn) || !(fetched.expiresIn > 0)) return `without a usable ${ctx.label}`;
    // WeChat's tokens and tickets live 2 h: a day or more is another unit (milliseconds, say), and the
    // value would be kept long after WeChat dropped it.
    if (fetched.expiresIn >= MAX_SOURCE_EXPIRES_IN_S) return `expiresIn ${fetched.expiresIn} for the ${ctx.label}: a day or more (it takes seconds)`;
    const { entry } = ctx.entries.encode(fetched, Math.floor(ctx.settings.now() / 1000), ctx.writer);
    ctx.log.info(
      { event: `${ctx.label}.fetched`, appId: ctx.appId, key: ctx.logKey, source: 'remote', expiresIn: fetched.expiresIn, ms: Math.round(performance.now() - started) },
      `Got a ${ctx.label} from the token service`,
    );
    return { entry, tier: 'process', fetched: true };
  }

  /** A source that never answers must not hang every caller of this process. */
  #withDeadline<T>(promise: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new HttpError('ERR_WXKIT_TIMEOUT', `The token source did not answer within ${this.#deadlineMs} ms`, { path: 'token source' })),
        this.#deadlineMs,
      );
      timer.unref?.();
    });
    return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
  }
}
