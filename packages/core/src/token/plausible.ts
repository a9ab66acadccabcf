// WeChat asks integrators to reserve 512 characters for an access_token; tokens and tickets are
// printable ASCII without spaces. Anything else in a store was not written by WeChat's answer: a 1 MB
// or control-character "token" would make every request fail (HTTP 431, or a broken request line).
// Quotes, braces and brackets are what JSON and PHP's serialize() wrap a value in, and never part of
// what WeChat hands out (letters, digits, `_`, `-`; `@`, `+`, `/`, `=` in tickets and refresh tokens):
// a value holding them is another encoding of one (`"TOKEN"`, `s:5:"TOKEN";`, `{"data":"TOKEN",…}`),
// or a garbled answer, never a token to send.
const PLAUSIBLE_TOKEN = /^[\x21\x23-\x5a\x5c\x5e-\x7a\x7c\x7e]{1,512}$/;

/**
 * Whether `value` could be a WeChat access token or ticket: 1–512 printable ASCII characters, no spaces,
 * no quotes, braces or brackets.
 */
export function isPlausibleToken(value: unknown): value is string {
  return typeof value === 'string' && PLAUSIBLE_TOKEN.test(value);
}
