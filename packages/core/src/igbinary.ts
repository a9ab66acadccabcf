/**
 * PHP's igbinary format (the igbinary extension, format version 2), for the values PHP caches hold for
 * WeChat SDKs. Symfony Cache's DefaultMarshaller writes it whenever the extension is loaded (symfony/cache
 * 4.2–7.1), and Debian's php-redis brings the extension in. Written from the format's description: a
 * 4-byte big-endian version header, then one type byte per value; integers big-endian in the smallest
 * of 8/16/32/64 bits with the sign in the type; strings as length + bytes, and a string met a second
 * time (a key or a value) as a back-reference to its number in order of first appearance.
 *
 * PHP strings are bytes, so strings here are binary strings (one character per byte, see bytes.ts) in
 * both directions. References, Serializable objects, enums and strings over 4 GiB are refused with an
 * error, never guessed at.
 */

/** A PHP array, in insertion order, as php-serialize.ts models it. */
export interface IgbinaryArray {
  __php: 'array';
  entries: [string | number, IgbinaryValue][];
}

/** A PHP object: its class name and its properties (or what its __serialize() returned), in order. */
export interface IgbinaryObject {
  __php: 'object';
  className: string;
  entries: [string | number, IgbinaryValue][];
}

export type IgbinaryValue = string | number | boolean | null | IgbinaryArray | IgbinaryObject;

/** Why bytes are not something `igbinaryUnserialize` reads. */
export class IgbinaryFormatError extends Error {}

const HEADER = [0, 0, 0, 2];
const MAX_DEPTH = 32;

const T = {
  null: 0x00,
  ref8: 0x01,
  ref16: 0x02,
  ref32: 0x03,
  false: 0x04,
  true: 0x05,
  long8p: 0x06,
  long8n: 0x07,
  long16p: 0x08,
  long16n: 0x09,
  long32p: 0x0a,
  long32n: 0x0b,
  double: 0x0c,
  stringEmpty: 0x0d,
  stringId8: 0x0e,
  stringId16: 0x0f,
  stringId32: 0x10,
  string8: 0x11,
  string16: 0x12,
  string32: 0x13,
  array8: 0x14,
  array16: 0x15,
  array32: 0x16,
  object8: 0x17,
  object16: 0x18,
  object32: 0x19,
  objectId8: 0x1a,
  objectId16: 0x1b,
  objectId32: 0x1c,
  long64p: 0x20,
  long64n: 0x21,
} as const;

/** Whether a stored value starts with igbinary's version-2 header. */
export function looksLikeIgbinary(raw: string): boolean {
  return raw.length >= 5 && HEADER.every((byte, i) => raw.charCodeAt(i) === byte);
}

/** Reads what PHP's `igbinary_serialize()` wrote, given as a binary string. Throws IgbinaryFormatError. */
export function igbinaryUnserialize(raw: string): IgbinaryValue {
  if (/[^\x00-\xff]/.test(raw)) throw new IgbinaryFormatError('not a binary string');
  const bytes = Buffer.from(raw, 'latin1');
  if (!looksLikeIgbinary(raw)) throw new IgbinaryFormatError('no igbinary version 2 header');
  let at = 4;
  // Every string met in full, in order: the targets of back-references (class names included).
  const strings: string[] = [];
  const fail = (why: string): never => {
    throw new IgbinaryFormatError(`${why} at byte ${at}`);
  };
  const take = (n: number): number => {
    if (at + n > bytes.length) fail('truncated');
    const start = at;
    at += n;
    return start;
  };
  const u8 = () => bytes[take(1)]!;
  const u16 = () => bytes.readUInt16BE(take(2));
  const u32 = () => bytes.readUInt32BE(take(4));
  const u64 = () => {
    const n = bytes.readBigUInt64BE(take(8));
    return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : fail('an integer beyond 2^53');
  };
  const chars = (length: number) => {
    const start = take(length);
    const value = bytes.subarray(start, start + length).toString('latin1');
    strings.push(value);
    return value;
  };
  const stringId = (id: number) => strings[id] ?? fail(`a back-reference to string ${id}, of ${strings.length}`);

  // A string where the format allows one (keys, class names): a string type, or fail.
  const readString = (type: number): string | undefined => {
    switch (type) {
      case T.stringEmpty:
        return '';
      case T.string8:
        return chars(u8());
      case T.string16:
        return chars(u16());
      case T.string32:
        return chars(u32());
      case T.stringId8:
        return stringId(u8());
      case T.stringId16:
        return stringId(u16());
      case T.stringId32:
        return stringId(u32());
      default:
        return undefined;
    }
  };
  const readLong = (type: number): number | undefined => {
    switch (type) {
      case T.long8p:
        return u8();
      case T.long8n:
        return -u8();
      case T.long16p:
        return u16();
      case T.long16n:
        return -u16();
      case T.long32p:
        return u32();
      case T.long32n:
        return -u32();
      case T.long64p:
        return u64();
      case T.long64n:
        return -u64();
      default:
        return undefined;
    }
  };
  const readEntries = (count: number, depth: number): [string | number, IgbinaryValue][] => {
    const entries: [string | number, IgbinaryValue][] = [];
    for (let i = 0; i < count; i += 1) {
      const keyType = u8();
      const key = readLong(keyType) ?? readString(keyType) ?? fail(`an array key of type 0x${keyType.toString(16)}`);
      entries.push([key, read(depth + 1)]);
    }
    return entries;
  };
  const readObject = (className: string, depth: number): IgbinaryObject => {
    const type = u8();
    const count = type === T.array8 ? u8() : type === T.array16 ? u16() : type === T.array32 ? u32() : fail('an object without properties');
    return { __php: 'object', className, entries: readEntries(count, depth) };
  };
  const read = (depth: number): IgbinaryValue => {
    if (depth > MAX_DEPTH) fail('nested too deep');
    const type = u8();
    const long = readLong(type);
    if (long !== undefined) return long;
    const string = readString(type);
    if (string !== undefined) return string;
    switch (type) {
      case T.null:
        return null;
      case T.false:
        return false;
      case T.true:
        return true;
      case T.double:
        return bytes.readDoubleBE(take(8));
      case T.array8:
        return { __php: 'array', entries: readEntries(u8(), depth) };
      case T.array16:
        return { __php: 'array', entries: readEntries(u16(), depth) };
      case T.array32:
        return { __php: 'array', entries: readEntries(u32(), depth) };
      case T.object8:
        return readObject(chars(u8()), depth);
      case T.object16:
        return readObject(chars(u16()), depth);
      case T.object32:
        return readObject(chars(u32()), depth);
      case T.objectId8:
        return readObject(stringId(u8()), depth);
      case T.objectId16:
        return readObject(stringId(u16()), depth);
      case T.objectId32:
        return readObject(stringId(u32()), depth);
      case T.ref8:
      case T.ref16:
      case T.ref32:
        return fail('a PHP reference');
      default:
        return fail(`an unsupported type 0x${type.toString(16)}`);
    }
  };
  const value = read(0);
  if (at !== bytes.length) fail('trailing bytes');
  return value;
}

/**
 * Exactly the bytes PHP's `igbinary_serialize()` writes for `value` (compact strings on, igbinary's
 * default), as a binary string. Strings are taken as binary strings. Objects are not written.
 */
export function igbinarySerialize(value: IgbinaryValue): string {
  const out: number[] = [...HEADER];
  // igbinary numbers strings only inside arrays and objects: a lone scalar string is written in full.
  const ids = new Map<string, number>();
  const scalar = value === null || typeof value !== 'object';
  const byte = (n: number) => out.push(n & 0xff);
  const be = (n: number, width: 1 | 2 | 4) => {
    for (let shift = (width - 1) * 8; shift >= 0; shift -= 8) byte(Math.floor(n / 2 ** shift));
  };
  // A count, length or id in the smallest of 8, 16 or 32 bits, after the type that says which.
  const sized = (n: number, [type8, type16, type32]: readonly [number, number, number]) => {
    const width = n <= 0xff ? 1 : n <= 0xffff ? 2 : 4;
    byte(width === 1 ? type8 : width === 2 ? type16 : type32);
    be(n, width);
  };
  const long = (n: number) => {
    if (!Number.isSafeInteger(n)) throw new RangeError(`igbinarySerialize writes safe integers only (got ${n})`);
    const k = Math.abs(n);
    const positive = n >= 0;
    if (k > 0xffffffff) {
      byte(positive ? T.long64p : T.long64n);
      const big = Buffer.alloc(8);
      big.writeBigUInt64BE(BigInt(k));
      out.push(...big);
      return;
    }
    const width = k <= 0xff ? 1 : k <= 0xffff ? 2 : 4;
    if (width === 1) byte(positive ? T.long8p : T.long8n);
    else if (width === 2) byte(positive ? T.long16p : T.long16n);
    else byte(positive ? T.long32p : T.long32n);
    be(k, width);
  };
  const string = (s: string): void => {
    if (/[^\x00-\xff]/.test(s)) throw new RangeError('igbinarySerialize takes binary strings (char codes 0–255)');
    if (s === '') {
      byte(T.stringEmpty);
      return;
    }
    if (!scalar) {
      const id = ids.get(s);
      if (id !== undefined) {
        sized(id, [T.stringId8, T.stringId16, T.stringId32]);
        return;
      }
      ids.set(s, ids.size);
    }
    sized(s.length, [T.string8, T.string16, T.string32]);
    for (let i = 0; i < s.length; i += 1) byte(s.charCodeAt(i));
  };
  const write = (v: IgbinaryValue): void => {
    if (v === null) return void byte(T.null);
    if (v === true || v === false) return void byte(v ? T.true : T.false);
    if (typeof v === 'number') {
      if (Number.isInteger(v)) return long(v);
      byte(T.double);
      const double = Buffer.alloc(8);
      double.writeDoubleBE(v);
      return void out.push(...double);
    }
    if (typeof v === 'string') return string(v);
    if (v.__php !== 'array') throw new RangeError('igbinarySerialize does not write objects');
    sized(v.entries.length, [T.array8, T.array16, T.array32]);
    for (const [key, item] of v.entries) {
      if (typeof key === 'number') long(key);
      else string(key);
      write(item);
    }
  };
  write(value);
  return Buffer.from(out).toString('latin1');
}
