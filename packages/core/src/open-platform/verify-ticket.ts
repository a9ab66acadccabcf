import type { ClientCore } from '../client-core.js';
import { CacheError, TokenUnavailableError } from '../errors.js';
import type { GuardedStore } from '../store.js';
import { FailureGate, decodeMarker } from '../token/failure.js';
import type { PlatformContext } from './context.js';
import { decodeStoredTicket, encodeTicketRecord } from './records.js';

/** A verify ticket is valid for 12 hours after its push (WeChat's component_verify_ticket doc). */
const TICKET_TTL_SECONDS = 12 * 3600;
/**
 * How far ahead of this host's clock a stored ticket's `create_time` may lie and still outrank a push,
 * at least: a push's CreateTime is WeChat's time, past when it arrives, and a host whose clock is behind
 * by up to `pushMaxAgeMs` still takes pushes. One dated further ahead (written in milliseconds, by a
 * clock far ahead, or by a program of another format) would refuse every push for 12 hours.
 */
const TICKET_CLOCK_AHEAD_SECONDS = 60;
/** What a read of a key holding another kind of value (a Redis hash, say) gives. */
const OTHER_KIND: unique symbol = Symbol('another kind of value');

/**
 * The component_verify_ticket WeChat pushes every 10 minutes: stored by the process the push reached,
 * in the durable store, and read by every process that fetches the component_access_token.
 */
export class VerifyTicket {
  readonly #appId: string;
  readonly #core: ClientCore;
  readonly #durable: GuardedStore;
  readonly #key: PlatformContext['key'];
  /** The component token's entry, whose failure marker a new ticket may end. */
  readonly #componentKey: string;

  /** How far ahead of this host's clock a stored ticket may be dated and still outrank a push, in seconds. */
  readonly #aheadSeconds: number;

  /** `pushMaxAgeMs`: how far off this host's clock a push is still taken (handleCallback()). */
  constructor(ctx: PlatformContext, pushMaxAgeMs: number) {
    this.#aheadSeconds = Math.max(TICKET_CLOCK_AHEAD_SECONDS, Math.ceil(pushMaxAgeMs / 1000));
    this.#appId = ctx.appId;
    this.#core = ctx.core;
    this.#durable = ctx.durable;
    this.#key = ctx.key;
    this.#componentKey = ctx.key('component_access_token');
  }

  /**
   * The stored verify ticket: every process reads the one the push handler wrote. One whose 12 hours are
   * over (a store that ignores TTLs kept it) is as good as none: WeChat would refuse it (61005), so it
   * is not sent. A peer's format records no push time, and its ticket is taken as it is.
   */
  async read(): Promise<string> {
    const key = this.#key('component_verify_ticket');
    const ticket = decodeStoredTicket(this.#core.schema, key, await this.#durable.get(key));
    const pushes = 'WeChat pushes one every 10 minutes to the callback URL, which must call handleCallback(); until then no component_access_token can be fetched';
    if (!ticket) throw new TokenUnavailableError(`No component_verify_ticket is stored for ${this.#appId}: ${pushes}`);
    if (ticket.createTime > 0 && ticket.createTime + TICKET_TTL_SECONDS <= Math.floor(this.#core.settings.now() / 1000)) {
      throw new TokenUnavailableError(
        `The component_verify_ticket stored for ${this.#appId} was pushed at ${new Date(ticket.createTime * 1000).toISOString()}, more than 12 hours ago, and WeChat no longer takes it (the durable store kept it past its TTL): ${pushes}`,
      );
    }
    return ticket.ticket;
  }

  /** Stores a pushed ticket unless the store holds a newer one; a store that fails rejects (the callback answers an error, and WeChat pushes again). */
  async store(ticket: string, createTime: number): Promise<void> {
    const key = this.#key('component_verify_ticket');
    const codec = this.#core.schema.openPlatformRecord?.(key);
    // A peer's format records no push time: there, the newer-ticket check cannot hold.
    const now = Math.floor(this.#core.settings.now() / 1000);
    // The ticket lasts 12 hours from its push, not from its arrival: a push delivered late, or a captured
    // one handed in again, keeps only what is left of its life, and one with none left is not stored.
    const ttl = Math.min(TICKET_TTL_SECONDS, createTime + TICKET_TTL_SECONDS - now);
    if (ttl <= 0) {
      this.#core.log.warn(
        { event: 'component_verify_ticket.not_stored', appId: this.#appId, createTime, reason: 'expired' },
        'A pushed component_verify_ticket was not stored: it was pushed more than 12 hours ago, and is no longer valid',
      );
      return;
    }
    const value = codec ? codec.encode(ticket) : encodeTicketRecord(ticket, createTime, now);
    // A push delivered late (WeChat retries) must not replace a newer ticket, even one another process
    // stores between this read and this write: the write is an add or a compare-and-set on what was read.
    for (let round = 0; ; round += 1) {
      // A read that fails is the push's failure (the callback answers an error, and WeChat pushes again):
      // read as "no ticket", it sent an add against a key that holds one, refused three times, unlogged.
      const raw = await this.#durable.getOrOtherKind(key, OTHER_KIND);
      if (raw === OTHER_KIND) {
        throw new CacheError(
          `The key ${key} holds another kind of value than a component_verify_ticket (written by another program); the pushed ticket was not stored, and no component_access_token can be fetched until that key is removed`,
          { reason: 'type' },
        );
      }
      const stored = decodeStoredTicket(this.#core.schema, key, raw);
      if (stored && stored.createTime > createTime && stored.createTime <= now + this.#aheadSeconds) {
        // A push delivered late (WeChat pushes again when an answer was slow) is no fault: said at info.
        this.#core.log.info(
          { event: 'component_verify_ticket.not_stored', appId: this.#appId, createTime, storedCreateTime: stored.createTime, reason: 'older' },
          'A pushed component_verify_ticket was not stored: the store holds one pushed later',
        );
        return;
      }
      let written: boolean;
      if (raw === undefined) {
        const added = this.#durable.add(key, value, ttl);
        written = added === undefined ? (await this.#durable.set(key, value, ttl), true) : await added;
      } else if (this.#durable.atomicCompareAndSet) {
        written = await this.#durable.compareAndSet(key, raw, value, ttl);
      } else {
        // A store without compare-and-set: the newer-ticket check above is all there is.
        await this.#durable.set(key, value, ttl);
        written = true;
      }
      if (written) break;
      // Written by someone else meanwhile; read again. A key rewritten this often is given up on.
      if (round >= 2) {
        this.#core.log.warn(
          { event: 'component_verify_ticket.not_stored', appId: this.#appId, createTime, reason: 'contended' },
          'A pushed component_verify_ticket was not stored: the record changed under each of three writes (other processes storing pushes at once)',
        );
        return;
      }
    }
    this.#core.log.info({ event: 'component_verify_ticket.received', appId: this.#appId, createTime }, 'Stored a new component_verify_ticket');
    await this.#endTicketBackoff();
  }

  /**
   * A new ticket ends the fleet's back-off of the component token that the old one caused (61005
   * expired, 61006 unknown): the next call fetches with the new ticket at once, rather than failing with
   * the old ticket's error for up to a minute more. One fetch more per push at most. Best effort: the
   * back-off also ends by itself.
   */
  async #endTicketBackoff(): Promise<void> {
    const store = this.#core.store;
    const key = new FailureGate(this.#componentKey, 'component_access_token').key;
    try {
      const raw = await store.get(key);
      const errcode = decodeMarker(raw)?.errcode;
      if (raw !== undefined && (errcode === 61005 || errcode === 61006)) await store.deleteIfEquals(key, raw);
    } catch {
      // The store did not answer: the marker runs out by itself.
    }
  }
}
