/**
 * `redis://user:secret@host` → `redis://user:***@host`: a store URL as messages and output may show it,
 * never with its password. Shared by the adapters and the CLI through `@wxkit/core/internal`, as is the
 * rest of this module.
 */
export function maskUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    // A userinfo without ':' is the password in redis-cli's (and PHP's, Python's) reading of
    // `redis://secret@host`: shown as a user name it would print that secret in clear.
    else if (parsed.username) parsed.username = '***';
    // No host parsed (`user:secret@host:26379`, `redis:/:secret@host`, `redis:///:secret@host`: a scheme
    // left out or mistyped): the credentials sit in the path, and everything before the last `@` is masked.
    else if (parsed.host === '' && parsed.protocol !== 'file:' && url.includes('@')) return `${parsed.protocol}***${url.slice(url.lastIndexOf('@'))}`;
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}

/**
 * `text` as a message may quote it: the password of any URL in it masked (`redis://app:***@host`). A
 * store URL typed where the CLI takes no argument (`wxkit token get redis://…`, --store forgotten) is
 * quoted back, and a store's driver may quote its connection URL in its errors: such a password must not
 * land on a terminal, in a CI log or in a log line (see {@link withoutPasswords}).
 */
export function maskPasswords(text: string): string {
  // Word by word, with indexOf only (a pattern tried at each start of a long word takes time quadratic
  // in its length): in a word with `://`, what lies between the first `:` after it and the word's last
  // `@` is the password (a URL parser reads a raw @ or a quote there as part of it).
  return text
    .split(/(\s+)/)
    .map((word) =>
      // The usage's own placeholder (`redis://[user:pass@]host:port`) is no password: it stands aside (as
      // a mark with no `:` or `@`) while the word is masked as any word, then comes back as written.
      word.includes(PLACEHOLDER) && !word.includes(ASIDE) ? maskWord(word.split(PLACEHOLDER).join(ASIDE)).split(ASIDE).join(PLACEHOLDER) : maskWord(word),
    )
    .join('');
}

const PLACEHOLDER = '[user:pass@]';
const ASIDE = '\u0000';

/** Each URL of `word` masked, and the word read as one URL: a word may hold several (`redis://a@h1,redis://b@h2`). */
function maskWord(word: string): string {
  // Where each URL after the first starts: its scheme's letters before its `://` (indexOf only, as above).
  const starts: number[] = [];
  const first = word.indexOf('://');
  for (let at = first < 0 ? -1 : word.indexOf('://', first + 3); at > 0; at = word.indexOf('://', at + 3)) {
    let start = at;
    while (start > 0 && /[A-Za-z0-9+.-]/.test(word[start - 1]!)) start -= 1;
    // Only after a separator (a list's comma, a quote, a bracket, a query's `&` or `=`): a `://` inside a
    // password splits nothing.
    if (start < at && start > first + 3 && /[,;"'()<>|&=]/.test(word[start - 1]!) && (starts.length === 0 || start > starts[starts.length - 1]! + 3)) starts.push(start);
  }
  // A split may lie inside a password (`redis://u:pa,ss://word@h`): what the word read as one URL masks is
  // masked too, with what each part masks.
  // So is what the rest of the word from each split reads as (`…&x=redis://u:p=q://r@h`: a split after the
  // password's `=` would show `p=q`).
  const hidden = [
    passwordOf(word),
    ...[0, ...starts].map((start, i) => shift(passwordOf(word.slice(start, starts[i])), start)),
    ...starts.map((start) => shift(passwordOf(word.slice(start)), start)),
  ];
  const ranges = hidden.filter((range): range is [number, number] => range !== undefined).sort((a, b) => a[0] - b[0]);
  let out = '';
  let from = 0;
  for (let i = 0; i < ranges.length; i += 1) {
    // Overlapping ranges merged: the next one starts past this one's end.
    const start = ranges[i]![0];
    let end = ranges[i]![1];
    while (i + 1 < ranges.length && ranges[i + 1]![0] <= end) end = Math.max(end, ranges[++i]![1]);
    out += `${word.slice(from, start)}***`;
    from = end;
  }
  return out + word.slice(from);
}

function shift(range: [number, number] | undefined, by: number): [number, number] | undefined {
  return range && [range[0] + by, range[1] + by];
}

/** Where the password of the URL `word` lies, as [start, end). */
function passwordOf(word: string): [number, number] | undefined {
  const scheme = word.indexOf('://');
  if (scheme < 1) return undefined;
  const colon = word.indexOf(':', scheme + 3);
  const at = word.lastIndexOf('@');
  if (colon >= 0 && at > colon && !word.slice(scheme + 3, colon).includes('@')) return [colon + 1, at];
  // A userinfo with no `:` (`redis://secret@host`) is the password in redis-cli's reading (and PHP's,
  // Python's), as the library's messages take it: masked whole.
  const slash = word.indexOf('/', scheme + 3);
  const lone = word.lastIndexOf('@', slash < 0 ? word.length : slash);
  return lone > scheme + 3 && !word.slice(scheme + 3, lone).includes(':') ? [scheme + 3, lone] : undefined;
}

/**
 * How far {@link scrubError} looks: the errors reached from the first (its cause chain, an
 * AggregateError's `errors`, an error in any field), the levels of other values under each error (an
 * error met at any level starts again at 0), and the values in all. More errors or values than that are
 * taken to quote something (it may be in the last), so the error is copied, and a copy keeps no error
 * past `errors` in its chain; values deeper than `levels` under an error are not looked at.
 */
const LOOK = { errors: 32, levels: 4, values: 5_000 } as const;

/**
 * `error` as an error's `cause` may keep it, where `mask` changes some text of it (a credential it quotes):
 * a copy (name, message, stack, code, cause, an AggregateError's errors) with every text masked, its cause
 * chain and errors copied likewise; whatever else it holds (a URL as `input`, a request, a socket) is left
 * out of the copy. An error that quotes nothing `mask` changes is kept as it is. A quoted value that is
 * no error becomes its masked text, or nothing.
 *
 * It looks at own properties, under string and symbol keys, array items, the entries of Maps and Sets,
 * and the text of URL and URLSearchParams objects (not into bytes, nor into other objects' private
 * fields), each object once; see {@link LOOK} for how far.
 */
export function scrubError(error: unknown, mask: (text: string) => string): unknown {
  const quotes = (root: unknown): boolean => {
    const seen = new Set<object>();
    let errors = 0;
    let values = 0;
    const look = (value: unknown, level: number): boolean => {
      if ((values += 1) > LOOK.values) return true;
      if (typeof value === 'string') return mask(value) !== value;
      if (value === null || typeof value !== 'object' || seen.has(value) || ArrayBuffer.isView(value)) return false;
      seen.add(value);
      try {
        if (value instanceof Error) {
          if ((errors += 1) > LOOK.errors) return true;
          level = 0;
        } else if (level > LOOK.levels) return false;
        // Their text lives in private fields, which util.inspect shows and own keys do not.
        if (value instanceof URL || value instanceof URLSearchParams) return look(String(value), level);
        if (value instanceof Map) {
          for (const [key, item] of value) if (look(key, level + 1) || look(item, level + 1)) return true;
        } else if (value instanceof Set) {
          for (const item of value) if (look(item, level + 1)) return true;
        }
        for (const key of Reflect.ownKeys(value)) if (look((value as Record<PropertyKey, unknown>)[key], level + 1)) return true;
        return false;
      } catch {
        // A getter that throws, a revoked Proxy: not looked through, so not kept.
        return true;
      }
    };
    return look(root, 0);
  };
  const scrub = (value: unknown, depth: number): unknown => {
    if (!quotes(value)) return value;
    if (!(value instanceof Error) || depth >= LOOK.errors) return typeof value === 'string' ? mask(value) : undefined;
    const errors = value instanceof AggregateError && Array.isArray(value.errors) ? value.errors.map((item: unknown) => scrub(item, depth + 1)).filter((item) => item !== undefined) : undefined;
    const copy = errors ? new AggregateError(errors, mask(value.message)) : new Error(mask(value.message));
    copy.name = value.name;
    copy.stack = mask(value.stack ?? `${value.name}: ${value.message}`);
    const code = (value as { code?: unknown }).code;
    if (typeof code === 'string' || typeof code === 'number') Object.assign(copy, { code });
    if (value.cause !== undefined) {
      const cause = scrub(value.cause, depth + 1);
      if (cause !== undefined) Object.defineProperty(copy, 'cause', { value: cause, writable: true, configurable: true });
    }
    return copy;
  };
  return scrub(error, 0);
}

/**
 * A store driver's error as a CacheError's `cause` may keep it: where it quotes a URL with a password
 * (its message, its `input` as Node's URL parser leaves it, a cause), a copy with each password masked
 * ({@link scrubError}, {@link maskPasswords}); otherwise the error itself.
 */
export function withoutPasswords(error: unknown): unknown {
  return scrubError(error, maskPasswords);
}
