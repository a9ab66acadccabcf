import { parseArgs } from 'node:util';
import { CliError } from './errors.js';

/** The options of one command: each a string (takes a value) or a boolean (a switch). */
export type OptionSpec = Record<string, { type: 'string' | 'boolean' }>;

type Values<T extends OptionSpec> = { [K in keyof T]?: T[K]['type'] extends 'string' ? string : boolean } & { json?: boolean; help?: boolean };

// The masking of URL passwords in what is printed lives with the library's other redaction.
export { maskPasswords } from '@wxkit/core/internal';

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
