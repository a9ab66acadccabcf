// WeChat asks integrators to reserve 512 characters for an access_token; tokens and tickets are
// printable ASCII without spaces. Anything else in a store was not written by WeChat's answer: a 1 MB
// or control-character "token" would make every request fail (HTTP 431, or a broken request line).
const PLAUSIBLE_TOKEN = /^[\x21-\x7e]{1,512}$/;

/** Whether `value` could be a WeChat access token or ticket: 1–512 printable ASCII characters, no spaces. */
export function isPlausibleToken(value: unknown): value is string {
  return typeof value === 'string' && PLAUSIBLE_TOKEN.test(value);
}
