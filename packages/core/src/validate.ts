import { ConfigError } from './errors.js';

/** `string`, `number`, `null`, `array`… as shown in option errors. Never the value itself: it may be a secret. */
export function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'string' && value.length === 0) return 'empty string';
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  return typeof value;
}

/**
 * `<Owner> options.<name> must be <rule> (got <type>)`: the one shape every option error takes. `shown`
 * replaces the type only for values that can never be a secret (see {@link optionalChoice}).
 */
export function invalidOption(owner: string, name: string, rule: string, value: unknown, shown = typeName(value)): ConfigError {
  return new ConfigError(`${owner} options.${name} must be ${rule} (got ${shown})`, name);
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
  if (!(choices as readonly unknown[]).includes(value)) throw invalidOption(owner, name, listChoices(choices), value, shownChoice(value));
  return value as T;
}

export function listChoices(choices: readonly string[]): string {
  const quoted = choices.map((choice) => `'${choice}'`);
  return quoted.length <= 2 ? quoted.join(' or ') : `one of ${quoted.join(', ')}`;
}

/** A short string as JSON, anything else as its type: for values that are never secrets. */
export function shownChoice(value: unknown): string {
  return typeof value === 'string' && value.length > 0 && value.length <= 32 ? JSON.stringify(value) : typeName(value);
}

export function assertOptionsObject(owner: string, options: unknown): asserts options is Record<string, unknown> {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(`${owner} options must be an object (got ${typeName(options)})`, 'options');
  }
}

export function optionalNumber(
  owner: string,
  options: Record<string, unknown>,
  name: string,
  fallback: number,
  { min = 0, integer = false }: { min?: number; integer?: boolean } = {},
): number {
  const value = options[name];
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || (integer && !Number.isInteger(value))) {
    throw invalidOption(owner, name, `${integer ? 'an integer' : 'a number'} >= ${min}`, value);
  }
  return value;
}

export function optionalFunction<T>(owner: string, options: Record<string, unknown>, name: string): T | undefined {
  const value = options[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'function') throw invalidOption(owner, name, 'a function', value);
  return value as T;
}

export function requiredString(owner: string, options: Record<string, unknown>, name: string): string {
  const value = options[name];
  if (typeof value !== 'string' || value.trim().length === 0) throw invalidOption(owner, name, 'a non-empty string', value);
  return value;
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
