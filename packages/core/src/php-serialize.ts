/**
 * PHP's serialize() and unserialize() for the values PHP caches hold for WeChat SDKs: strings, integers,
 * floats, booleans, null and arrays of them. The serialized form is bytes, held as a binary string (see
 * bytes.ts); PHP strings are taken to be UTF-8 text, and their lengths count UTF-8 bytes, as PHP's do.
 * Objects, references and custom serializers are refused with an error, never guessed at.
 */
import { binaryToBuffer, isBinaryString, textToBinary } from './bytes.js';


export type PhpValue = string | number | boolean | null | PhpArray;
/** A PHP array, in insertion order: `[key, value]` pairs (keys are strings or integers). */
export type PhpArray = { __php: 'array'; entries: [string | number, PhpValue][] };

/** A PHP array from an object's own properties, in insertion order. */
export function phpArray(record: Record<string, PhpValue>): PhpArray {
  return { __php: 'array', entries: Object.entries(record) };
}

/** Exactly the bytes PHP's `serialize()` writes for `value`, as a binary string. */
export function phpSerialize(value: PhpValue): string {
  if (value === null) return 'N;';
  if (typeof value === 'boolean') return `b:${value ? 1 : 0};`;
  if (typeof value === 'number') {
    if (Number.isInteger(value)) return `i:${value};`;
    // serialize_precision -1: the shortest repeatable form, as JavaScript prints doubles.
    return `d:${Number.isFinite(value) ? String(value).replace('e+', 'E+').replace('e-', 'E-') : value > 0 ? 'INF' : value < 0 ? '-INF' : 'NAN'};`;
  }
  if (typeof value === 'string') return `s:${Buffer.byteLength(value, 'utf8')}:"${textToBinary(value)}";`;
  const body = value.entries.map(([key, item]) => `${phpSerialize(key)}${phpSerialize(item)}`).join('');
  return `a:${value.entries.length}:{${body}}`;
}

/** The longest double literal read, in characters: more than PHP's serialize() ever writes. */
const MAX_DOUBLE_LITERAL = 1024;

/** Why an input is not something `phpUnserialize` reads. */
export class PhpFormatError extends Error {}

/**
 * Reads what PHP's `serialize()` wrote, from its bytes as a binary string (a string that is no binary
 * string is taken as text and read as its UTF-8 bytes). Throws PhpFormatError on anything else, or on
 * objects.
 */
export function phpUnserialize(raw: string): PhpValue {
  const bytes = isBinaryString(raw) ? binaryToBuffer(raw, 'phpUnserialize') : Buffer.from(raw, 'utf8');
  let at = 0;
  const fail = (why: string): never => {
    throw new PhpFormatError(`${why} at byte ${at}`);
  };
  const expect = (char: string) => {
    if (bytes[at] !== char.charCodeAt(0)) fail(`expected "${char}"`);
    at += 1;
  };
  const until = (char: string) => {
    const end = bytes.indexOf(char.charCodeAt(0), at);
    if (end < 0) fail(`no "${char}"`);
    const slice = bytes.subarray(at, end).toString('latin1');
    at = end + 1;
    return slice;
  };
  const integer = (literal: string) => {
    if (!/^[+-]?\d{1,19}$/.test(literal)) fail('not an integer');
    const n = Number(literal);
    return Number.isSafeInteger(n) ? n : fail('an integer beyond 2^53');
  };
  // A string's byte length or an array's count: digits alone, as PHP reads them (a negative length
  // stepped back over bytes already read, and an array read the same entry again and again).
  const length = (literal: string) => (/^\d+$/.test(literal) ? integer(literal) : fail('not a length'));
  const read = (depth: number): PhpValue => {
    if (depth > 32) fail('nested too deep');
    const type = String.fromCharCode(bytes[at] ?? 0);
    at += 1;
    switch (type) {
      case 'N':
        expect(';');
        return null;
      case 'b': {
        expect(':');
        const flag = until(';');
        return flag === '1' ? true : flag === '0' ? false : fail('not a boolean');
      }
      case 'i':
        expect(':');
        return integer(until(';'));
      case 'd': {
        expect(':');
        const literal = until(';');
        if (literal === 'INF') return Number.POSITIVE_INFINITY;
        if (literal === '-INF') return Number.NEGATIVE_INFINITY;
        if (literal === 'NAN') return Number.NaN;
        // PHP prints a double in under 800 characters (a subnormal's 767 digits in full, at the highest
        // serialize_precision). The pattern below backtracks in time quadratic in the literal's length:
        // a stored value of 200 000 digits held the event loop for minutes, one of a megabyte for an hour.
        if (literal.length > MAX_DOUBLE_LITERAL) fail('a number longer than PHP writes');
        if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(literal)) fail('not a number');
        return Number(literal);
      }
      case 's': {
        expect(':');
        const byteLength = length(until(':'));
        expect('"');
        if (at + byteLength > bytes.length) fail('string longer than the input');
        const value = bytes.subarray(at, at + byteLength).toString('utf8');
        at += byteLength;
        expect('"');
        expect(';');
        return value;
      }
      case 'a': {
        expect(':');
        const count = length(until(':'));
        expect('{');
        const entries: [string | number, PhpValue][] = [];
        for (let i = 0; i < count; i += 1) {
          const key = read(depth + 1);
          if (typeof key !== 'string' && typeof key !== 'number') fail('an array key that is not a string or an integer');
          entries.push([key as string | number, read(depth + 1)]);
        }
        expect('}');
        return { __php: 'array', entries };
      }
      case 'O':
      case 'C':
        return fail('a PHP object');
      case 'r':
      case 'R':
        return fail('a PHP reference');
      default:
        return fail(`an unknown type "${type}"`);
    }
  };
  const value = read(0);
  if (at !== bytes.length) fail('trailing bytes');
  return value;
}

/** The value under `key` in a PHP array, or undefined. */
export function phpGet(value: PhpValue, key: string): PhpValue | undefined {
  if (value === null || typeof value !== 'object') return undefined;
  // A key named twice (never by serialize(), only by a hand-made value) is PHP's last one.
  return value.entries.findLast(([entryKey]) => String(entryKey) === key)?.[1];
}
