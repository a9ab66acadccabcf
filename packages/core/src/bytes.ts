/**
 * The TokenCache contract carries bytes as "binary strings": one character per byte, char codes 0–255
 * (Node's `latin1` encoding). A PHP peer's igbinary entry is binary (a 136-character token has a length
 * byte of 0x88), so the contract cannot be UTF-8 text. wxkit's own values are UTF-8 JSON: their codecs
 * turn the JSON into its UTF-8 bytes, then into a binary string, so a non-ASCII character is stored as
 * exactly the bytes any other language writes for it. docs/key-schema.md states the rule.
 */

/** The binary string of `text`'s UTF-8 bytes: what a codec hands the store for a text value. */
export function textToBinary(text: string): string {
  // ASCII is its own UTF-8 and its own binary string: the common case costs no copy.
  return /^[\x00-\x7f]*$/.test(text) ? text : Buffer.from(text, 'utf8').toString('latin1');
}

/**
 * The text whose UTF-8 bytes a binary string holds. A string with a character above U+00FF is no binary
 * string (a hand-made store that returned text): it is taken as the text it already is.
 */
export function binaryToText(binary: string): string {
  if (/^[\x00-\x7f]*$/.test(binary)) return binary;
  if (!isBinaryString(binary)) return binary;
  return Buffer.from(binary, 'latin1').toString('utf8');
}

/**
 * A custom KeySchema's encoded value as the store takes it: a binary string as it is; a string with a
 * character above U+00FF, which no byte is, taken as text and turned into its UTF-8 bytes, as the
 * native codec does. (Text whose characters all lie below U+0100 cannot be told from bytes: a schema
 * must return binary strings, see docs/key-schema.md.)
 */
export function encodedToBinary(value: string): string {
  return isBinaryString(value) ? value : textToBinary(value);
}

/** Whether every character of `value` is one byte (char code 0–255). */
export function isBinaryString(value: string): boolean {
  return !/[^\x00-\xff]/.test(value);
}

/** The bytes of a binary string. Throws a RangeError for a character above U+00FF, which no byte is. */
export function binaryToBuffer(value: string, where: string): Buffer {
  if (!isBinaryString(value)) {
    throw new RangeError(
      `${where} takes binary strings (one character per byte, char codes 0–255); encode text as UTF-8 first`,
    );
  }
  return Buffer.from(value, 'latin1');
}

/**
 * `text` as one flat string. V8 keeps a string joined with `+` or a template as a tree of its parts (32
 * bytes a join, and the parts): a key that each of 10,000 clients holds would keep its tree for good.
 * Reading it as a number makes V8 flatten it in place, and the garbage collector then drops the tree.
 */
export function flattened(text: string): string {
  // The value is thrown away: the read is what flattens. (A redactKey of one's own may return anything.)
  if (typeof text === 'string') void Number(text);
  return text;
}
