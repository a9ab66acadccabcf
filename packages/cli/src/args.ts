import { parseArgs } from 'node:util';
import { CliError } from './errors.js';

/** The options of one command: each a string (takes a value) or a boolean (a switch). */
export type OptionSpec = Record<string, { type: 'string' | 'boolean' }>;

type Values<T extends OptionSpec> = { [K in keyof T]?: T[K]['type'] extends 'string' ? string : boolean } & { json?: boolean; help?: boolean };

/**
 * `text` as a message may quote it: the password of any URL in it masked (`redis://app:***@host`). A
 * store URL typed where no argument is taken (`wxkit token get redis://…`, --store forgotten) is quoted
 * back, and its password must not land on the terminal or in a CI log: every failure wxkit prints goes
 * through it (main's report), and runDemo's, which a program may call, too.
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

/** Options that are not wxkit's, with what to do instead. */
const INSTEAD: Record<string, string> = {
  secret:
    'the secret is read from the environment only, never from a flag (flags land in shell history): set WECHAT_SECRET, or name another variable with --secret-env NAME',
  appid: 'use --app official_account:<appid> (or oa:, mp:, work:<corpid>:<agentid>)',
  'app-id': 'use --app official_account:<appid> (or oa:, mp:, work:<corpid>:<agentid>)',
};

/**
 * Parses a command's arguments and says what is wrong in wxkit's words, with the usage line: an unknown
 * option, a value missing or given to a switch, a positional the command does not take. Every command
 * takes --json and --help.
 */
export function parseCommand<T extends OptionSpec>(
  command: string,
  args: string[],
  spec: T,
  usage: string,
  positionals: { max: number } = { max: 0 },
): { values: Values<T>; positionals: string[] } {
  const options: OptionSpec = { ...spec, json: { type: 'boolean' }, help: { type: 'boolean' } };
  const fail = (message: string) => new CliError('usage', message, { usage });
  const parsed = parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: false, allowPositionals: true, tokens: true });
  for (const token of parsed.tokens) {
    if (token.kind !== 'option') continue;
    // Own properties only: `--toString` or `--constructor` names no option, whatever Object.prototype holds.
    const known = Object.hasOwn(options, token.name) ? options[token.name] : undefined;
    if (!known || (token.rawName.startsWith('-') && !token.rawName.startsWith('--') && token.rawName !== '-h')) {
      const instead = Object.hasOwn(INSTEAD, token.name) ? INSTEAD[token.name] : undefined;
      throw fail(`wxkit ${command} has no option ${token.rawName}${instead ? `: ${instead}` : ''}`);
    }
    if (known.type === 'string') {
      const value = token.value;
      if (value === undefined || value === '' || (!token.inlineValue && /^--[a-z]/.test(value) && Object.hasOwn(options, value.slice(2).split('=')[0]!))) {
        throw fail(`${token.rawName} needs a value`);
      }
    } else if (token.inlineValue) {
      throw fail(`${token.rawName} is a switch and takes no value (got ${token.rawName}=${token.value})`);
    }
  }
  // A string option given twice keeps the last, as parseArgs does; a shell script that repeats one is fine.
  if (parsed.positionals.length > positionals.max) {
    const extra = parsed.positionals[positionals.max]!;
    throw fail(`wxkit ${command} takes ${positionals.max === 0 ? 'no arguments' : `at most ${positionals.max} argument${positionals.max > 1 ? 's' : ''}`} besides its options (got ${JSON.stringify(extra)})`);
  }
  return { values: parsed.values as Values<T>, positionals: parsed.positionals };
}
