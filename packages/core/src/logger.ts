import type { EventEmitter } from 'node:events';

/**
 * What wxkit logs through. `console` and pino (or any logger with pino's `(fields, message)` call
 * shape) fit as they are. Fields never hold a token, a ticket, a secret or a URL with its query string.
 */
export interface Logger {
  debug?(fields: LogFields, message: string): void;
  info?(fields: LogFields, message: string): void;
  warn(fields: LogFields, message: string): void;
  error?(fields: LogFields, message: string): void;
}

/** Structured fields of a log line. `event` names what happened, e.g. `access_token.fetched`. */
export interface LogFields {
  event: string;
  appId?: string;
  key?: string;
  [field: string]: unknown;
}

export type Level = 'debug' | 'info' | 'warn' | 'error';

/**
 * Internal: one place that turns any accepted logger option into calls that cannot throw, and that
 * emits every line's fields as an event of the same name on the client (`app.on('access_token.fetched', …)`).
 */
/** Where a Log finds the emitter its events go to (a client's core): undefined while nobody listens. */
export interface EventSource {
  readonly emitter: EventEmitter | undefined;
}

const NO_EVENTS: EventSource = { emitter: undefined };

export class Log {
  readonly #target: Logger | undefined;
  /** Holds the client's emitter once anyone listened (most of a platform's 10,000 clients never do). */
  readonly #events: EventSource;

  /**
   * A second emitter for every event of this client: a ClientPool's or an OpenPlatform's, for the clients
   * it makes. Their store is the pool's, whose outages the pool's own Log reports once; what this client
   * emits is its own (its tokens, its entries' `cache.corrupt_entry`), heard once by each emitter.
   */
  readonly #also: EventSource | undefined;

  constructor(target: Logger | false | undefined, events: EventSource = NO_EVENTS, also?: EventSource) {
    this.#target = target === false ? undefined : (target ?? defaultLogger);
    this.#events = events;
    this.#also = also;
  }

  /**
   * Where the lines go (undefined: nowhere), so that a line about something many clients share (their
   * store) is written once per logger, not once per client.
   */
  get sink(): Logger | undefined {
    return this.#target;
  }

  /** The event alone, without a line: the line was written through another client with the same logger. */
  event(level: Level, fields: LogFields, message: string): void {
    this.#emit(level, fields, message, false);
  }

  /** The line alone, without the event: the event was emitted already. */
  line(level: Level, fields: LogFields, message: string): void {
    this.#write(level, fields, message);
  }

  debug(fields: LogFields, message: string): void {
    this.#emit('debug', fields, message);
  }

  info(fields: LogFields, message: string): void {
    this.#emit('info', fields, message);
  }

  warn(fields: LogFields, message: string): void {
    this.#emit('warn', fields, message);
  }

  error(fields: LogFields, message: string): void {
    this.#emit('error', fields, message);
  }

  #emit(level: Level, fields: LogFields, message: string, line = true): void {
    deliver(this.#events.emitter, fields, level, message);
    if (this.#also) deliver(this.#also.emitter, fields, level, message);
    if (line) this.#write(level, fields, message);
  }

  #write(level: Level, fields: LogFields, message: string): void {
    const target = this.#target;
    const fn = target?.[level] ?? (level === 'error' ? target?.warn : undefined);
    if (!target || typeof fn !== 'function') return;
    try {
      // console prints its arguments in order; pino wants fields first. Give console the readable order.
      if (target === globalThis.console) fn.call(target, `[wxkit] ${message}` as never, fields as never);
      else fn.call(target, fields, message);
    } catch {
      // A broken logger must not break token handling.
    }
  }
}

/** Emits a line's fields as its event on `events`, if anyone listens there; a throwing listener is ignored. */
function deliver(events: EventEmitter | undefined, fields: LogFields, level: Level, message: string): void {
  if (events === undefined || events.listenerCount(fields.event) === 0) return;
  try {
    events.emit(fields.event, { ...fields, level, message });
  } catch {
    // A throwing listener must not break token handling either.
  }
}

/** The logger used when none is given: warnings and errors to stderr, nothing else. */
const defaultLogger: Logger = {
  warn(fields, message) {
    process.stderr.write(`[wxkit] ${message} ${JSON.stringify(fields)}\n`);
  },
  error(fields, message) {
    process.stderr.write(`[wxkit] ${message} ${JSON.stringify(fields)}\n`);
  },
};
