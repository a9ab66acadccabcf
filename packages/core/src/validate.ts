import { ConfigError } from './errors.js';

/**
 * The longest delay a Node timer keeps, in ms (2^31 − 1, about 24.8 days). A longer one is not a long
 * wait: Node warns (TimeoutOverflowWarning) and fires it after 1 ms, so an option meant as "wait
 * practically forever" would become "do not wait at all". Every duration option stops here.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * One option's rule, declared once in its constructor's schema: what is allowed, said as the error
 * says it, and the test. {@link checkOptions} reads a whole schema in one pass.
 */
export interface OptionRule {
  /** What the option allows, as the error says it after `must be`: `an integer from 1 to 2147483647 (ms)`. */
  readonly allowed: string;
  /** Whether `value` (never `undefined`: that is the option left out) is allowed. */
  readonly accepts: (value: unknown) => boolean;
  /**
   * How a rejected value appears in the error: its type (the default, as any value may be a secret), or
   * the value itself for values that are never secrets (numbers, a fixed set of words) so the typo shows.
   */
  readonly shows?: 'type' | 'value';
  /** Whether the option must be given. */
  readonly required?: boolean;
  /** Why a required option cannot be left out, said after its name instead of `must be …` when it is. */
  readonly missing?: string;
  /**
   * A fuller sentence for a well-known near miss (a Keyv instance given as a TokenCache), which
   * replaces `must be …` after the option's name; `undefined` for the ordinary message.
   */
  readonly nearMiss?: (value: unknown) => string | undefined;
}

/** The rules of one constructor's options, by name. Declare it `satisfies OptionSchema<keyof XOptions>`. */
export type OptionSchema<K extends PropertyKey = string> = { readonly [name in K]-?: OptionRule };

/** Options that were renamed or dropped, with what to use instead. */
export type RetiredOptions = Readonly<Record<string, string>>;

/** `string`, `number`, `null`, `array`… as shown in option errors. Never the value itself: it may be a secret. */
export function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'string' && value.length === 0) return 'empty string';
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  return typeof value;
}

/**
 * The error of a call's `options.signal` that is no AbortSignal, or undefined. Any object like one is
 * taken (another realm's, a polyfill's): it has a boolean `aborted` and `addEventListener`; `null` is no
 * signal, as the calls always took it. Checked before the call does anything: a string or a plain object
 * given as the signal would otherwise fail deep inside the call with a TypeError, after the call had
 * started a token fetch that nobody then waits for.
 */
function signalError(signal: unknown, owner: string): ConfigError | undefined {
  if (signal === undefined || signal === null) return undefined;
  const like = signal as { aborted?: unknown; addEventListener?: unknown } | null;
  if (typeof like === 'object' && like !== null && typeof like.aborted === 'boolean' && typeof like.addEventListener === 'function') return undefined;
  return new ConfigError(`${owner} options.signal must be an AbortSignal (got ${typeName(signal)})`, 'signal');
}

/**
 * The rejection a call starts with instead of its work: its `signal` is no AbortSignal (see
 * signalError), or is aborted already (its reason). Undefined when the call may start.
 */
export function signalRefusal(signal: AbortSignal | null | undefined, owner = "The call's"): Promise<never> | undefined {
  const bad = signalError(signal, owner);
  if (bad) return Promise.reject(bad);
  if (signal?.aborted) return Promise.reject(signal.reason);
  return undefined;
}

/**
 * `<Owner> options.<name> must be <rule> (got <type>)`: the one shape every option error takes. `shown`
 * replaces the type only for values that can never be a secret (see {@link OptionRule.shows}).
 */
export function invalidOption(owner: string, name: string, rule: string, value: unknown, shown = typeName(value)): ConfigError {
  return new ConfigError(`${owner} options.${name} must be ${rule} (got ${shown})`, name);
}

/**
 * Checks `options` against `schema` in one pass, before any I/O, and returns them typed: first that
 * they are an object, then every name given (a retired one names its replacement, an unknown one the
 * closest known name), then every rule in the schema's order. The first fault throws a ConfigError
 * whose `option` names the option and whose message says what is allowed. `path` prefixes nested
 * options (`sentinel` → `options.sentinel.masterName`).
 */
export function checkOptions<T extends object>(
  owner: string,
  schema: OptionSchema<keyof T>,
  options: unknown,
  { retired = {}, path }: { retired?: RetiredOptions; path?: string } = {},
): T {
  const at = (name: string) => (path ? `${path}.${name}` : name);
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(`${owner} options${path ? `.${path}` : ''} must be an object (got ${typeName(options)})`, path ?? 'options');
  }
  const given = options as Record<string, unknown>;
  const rules = schema as Readonly<Record<string, OptionRule>>;
  for (const name of Object.keys(given)) {
    if (Object.hasOwn(rules, name) || given[name] === undefined) continue;
    const instead = Object.hasOwn(retired, name) ? retired[name] : undefined;
    if (instead !== undefined) throw new ConfigError(`${owner} options.${at(name)} is no longer an option: ${instead}`, at(name));
    const near = closestName(name, Object.keys(rules));
    throw new ConfigError(
      `${owner} options.${at(name)} is not an option${near ? ` (did you mean ${near}?)` : `; the options are ${Object.keys(rules).join(', ')}`}`,
      at(name),
    );
  }
  for (const [name, rule] of Object.entries(rules)) {
    const value = given[name];
    if (value === undefined ? !rule.required : rule.accepts(value)) continue;
    const special = value === undefined ? rule.missing : rule.nearMiss?.(value);
    if (special !== undefined) throw new ConfigError(`${owner} options.${at(name)} ${special}`, at(name));
    throw invalidOption(owner, at(name), rule.allowed, value, rule.shows === 'value' ? shownValue(value) : typeName(value));
  }
  return options as T;
}

/**
 * The known name a misspelt one was most likely meant as: the same letters but for case, `_` and `-`
 * (`app_id` → `appId`), else one holding the other (`timeout` → `timeoutMs`), else the nearest by edit
 * distance within a third of its length (`tokenEndPoint` → `tokenEndpoint`).
 */
export function closestName(name: string, known: readonly string[]): string | undefined {
  const plain = (text: string) => text.toLowerCase().replace(/[_-]/g, '');
  const exact = known.find((candidate) => plain(candidate) === plain(name));
  if (exact) return exact;
  // A name with its unit or a word left out (`timeout`, `durable`), or one word of it (`aesKey`).
  const part = known
    .filter((candidate) => Math.min(name.length, candidate.length) >= 3 && (plain(candidate).includes(plain(name)) || plain(name).includes(plain(candidate))))
    .sort((a, b) => a.length - b.length)[0];
  if (part) return part;
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(name.length / 3)) + 1;
  for (const candidate of known) {
    const distance = editDistance(plain(name), plain(candidate));
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i += 1) {
    const current = [i];
    for (let j = 1; j <= b.length; j += 1) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** A short string as JSON, a number as written, anything else as its type: for values that are never secrets. */
export function shownValue(value: unknown): string {
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  return typeof value === 'string' && value.length > 0 && value.length <= 32 ? JSON.stringify(value) : typeName(value);
}

// The rules options are made of. Each says in `allowed` exactly what its test lets through.

/** An integer from `min` to `max`; `unit` is said after the range (`ms`, `s`, `bytes`). */
export function integer(min: number, max: number, unit?: string): OptionRule {
  return {
    allowed: `an integer from ${min} to ${max}${unit ? ` (${unit})` : ''}`,
    accepts: (value) => Number.isInteger(value) && (value as number) >= min && (value as number) <= max,
    shows: 'value',
  };
}

/**
 * A duration in whole ms, from `min` (1 unless 0 means something, such as "off") to
 * {@link MAX_TIMER_MS}, the longest a timer can wait.
 */
export function durationMs(min = 1): OptionRule {
  return integer(min, MAX_TIMER_MS, 'ms');
}

/** One of a fixed set of words, shown as given when it is not one (a typo, never a secret). */
export function oneOf(choices: readonly string[]): OptionRule {
  return { allowed: listChoices(choices), accepts: (value) => choices.includes(value as string), shows: 'value' };
}

/** A string that is not empty (nor only spaces). Its message shows the type only: it may be a secret. */
export function nonEmptyString(): OptionRule {
  return { allowed: 'a non-empty string', accepts: (value) => typeof value === 'string' && value.trim().length > 0 };
}

/** What no secret holds: whitespace and control characters (see {@link secretString}). */
export const NOT_IN_SECRET = /[\s\x00-\x1f\x7f-\x9f]/;

/**
 * A secret (an AppSecret, a corpsecret): a non-empty string without whitespace or control characters.
 * None holds one; a value read from a file keeps its line break, and WeChat would refuse the secret
 * (40125) with nothing to say why. Nor is one quoted: an env file read as it is keeps its quotes. Its
 * message shows the type only.
 */
export function secretString(): OptionRule {
  return {
    allowed: 'a non-empty string without spaces or control characters (a line break read from a file, say)',
    accepts: (value) => typeof value === 'string' && value.length > 0 && !NOT_IN_SECRET.test(value) && !QUOTED.test(value),
    nearMiss: (value) =>
      typeof value === 'string' && QUOTED.test(value)
        ? 'is still in quotes: no secret has them, and an env file read as it is (docker --env-file) keeps them; remove them'
        : undefined,
  };
}

/** A value wrapped in one pair of quotes, as an env file written for a shell and read as it is keeps it. */
export const QUOTED = /^(["'`]).*\1$/s;

/** Whitespace that only its ends hold: a value read from a file or an env file, with its line break. */
const PADDED = /^\s+\S*$|^\S*\s+$/;

/** A string the pattern matches in full; `allowed` says it in words. */
export function matching(pattern: RegExp, allowed: string): OptionRule {
  return { allowed, accepts: (value) => typeof value === 'string' && pattern.test(value) };
}

/** A credential-like id (appId, corpId) that becomes part of a store key. */
export const ID_RULE: OptionRule = {
  ...matching(/^[A-Za-z0-9_.-]{1,64}$/, 'a string of letters, digits, `_`, `.` or `-` (WeChat ids look like wx1234abcd5678ef90)'),
  nearMiss: (value) =>
    typeof value === 'string' && PADDED.test(value)
      ? 'has a space or line break at its start or end (read from a file or an env file, say); trim it'
      : undefined,
};

/** A function. */
export function fn(): OptionRule {
  return { allowed: 'a function', accepts: (value) => typeof value === 'function' };
}

/** Anything `accepts` lets through, said as `allowed`. */
export function rule(allowed: string, accepts: (value: unknown) => boolean, extra: Omit<OptionRule, 'allowed' | 'accepts'> = {}): OptionRule {
  return { allowed, accepts, ...extra };
}

/** The same rule, and the option must be given; `missing` says why, when the rule alone does not. */
export function required(base: OptionRule, missing?: string): OptionRule {
  return { ...base, required: true, ...(missing === undefined ? {} : { missing }) };
}

/** An object (not null, not an array) whose `methods` are functions. */
export function hasMethods(value: unknown, ...methods: string[]): boolean {
  return (
    value !== null &&
    (typeof value === 'object' || typeof value === 'function') &&
    !Array.isArray(value) &&
    methods.every((method) => typeof (value as Record<string, unknown>)[method] === 'function')
  );
}

/**
 * An option with a fixed set of values: `fallback` when absent, else one of `choices`. Such a value never
 * holds a secret, so the error echoes a short string to show the typo: `must be 'a' or 'b' (got "fast")`.
 */
export function optionalChoice<T extends string, F extends T | undefined>(
  owner: string,
  options: Record<string, unknown>,
  name: string,
  choices: readonly T[],
  fallback: F,
): T | F {
  const value = options[name];
  if (value === undefined) return fallback;
  if (!(choices as readonly unknown[]).includes(value)) throw invalidOption(owner, name, listChoices(choices), value, shownValue(value));
  return value as T;
}

export function listChoices(choices: readonly string[]): string {
  const quoted = choices.map((choice) => `'${choice}'`);
  return quoted.length <= 2 ? quoted.join(' or ') : `one of ${quoted.join(', ')}`;
}

export function assertOptionsObject(owner: string, options: unknown, known?: readonly string[]): asserts options is Record<string, unknown> {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(`${owner} options must be an object (got ${typeName(options)})`, 'options');
  }
  if (!known) return;
  // A misspelt option would be dropped without a word: a profile with the wrong prefix reads and writes
  // keys no peer uses, and the fleet fetches beside it.
  for (const [name, value] of Object.entries(options)) {
    if (known.includes(name) || value === undefined) continue;
    const near = closestName(name, known);
    throw new ConfigError(
      `${owner} options.${name} is not an option${near ? ` (did you mean ${near}?)` : known.length ? `; the options are ${known.join(', ')}` : '; it takes none'}`,
      name,
    );
  }
}

/** Rejects a message without the fields WeChat requires, before any request. */
export function requireFields(what: string, input: unknown, fields: string[]): void {
  if (input === null || typeof input !== 'object') {
    throw new ConfigError(`${what} must be an object (got ${typeName(input)})`, 'input');
  }
  for (const field of fields) {
    const value = (input as Record<string, unknown>)[field];
    if (typeof value !== 'string' || value.length === 0) {
      throw new ConfigError(`${what}.${field} must be a non-empty string (got ${typeName(value)})`, field);
    }
  }
}

/**
 * What a bearer key cannot hold: whitespace, which ends it in the header, control characters, and
 * characters past U+00FF, which a header's bytes cannot carry. The rule of both sides: `wxkit serve`
 * refuses such a key in its configuration.
 */
export const NOT_IN_BEARER_KEY = /[\s\x00-\x1f\x7f]|[^\x00-\xff]/;
