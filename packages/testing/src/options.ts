import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

/** Values of one option: each valid one is accepted, each invalid one is a ConfigError naming the option. */
export interface OptionCases {
  valid: readonly unknown[];
  invalid: readonly unknown[];
}

/** What {@link describeOptions} checks: one constructor's options, every one of them. */
export interface DescribeOptionsOptions<Name extends string = string> {
  /** The name errors start with: `OfficialAccount` in `OfficialAccount options.timeoutMs must be …`. */
  owner: string;
  /** Builds the object under test; what it returns is handed to `close`. */
  make(options: Record<string, unknown>): unknown;
  /** Releases what `make` built. */
  close?(made: unknown): unknown;
  /** Where nested options sit (`sentinel`): errors then name `sentinel.masterName`. */
  path?: string;
  /** Options that make a valid whole, each case is added to. */
  base: Record<string, unknown>;
  /** Every option, with its cases. Declare it `satisfies Record<keyof XOptions, OptionCases>`. */
  cases: Record<Name, OptionCases>;
  /** Options whose values are secrets: no message may show them. */
  secrets?: readonly NoInfer<Name>[];
  /** Options that must be given: leaving one out is a ConfigError naming it. */
  required?: readonly NoInfer<Name>[];
  /** Misspelt names, each with the known name its error must suggest. */
  misspelt?: Readonly<Record<string, NoInfer<Name>>>;
  /** Retired names, each with a word its error must contain (the replacement). */
  retired?: Readonly<Record<string, string>>;
  /**
   * A built declaration file and the option interfaces in it: `cases` must list exactly their members
   * (with those of the interfaces they extend), so an option added to the types and not to the cases fails.
   */
  declarations?: { file: string | URL; interfaces: readonly string[] };
}

/**
 * A table-driven test of a constructor's options: each valid value accepted, each invalid one rejected
 * at construction with a ConfigError (`ERR_WXKIT_INVALID_OPTION`) whose `option` is exactly the option's
 * name and whose message says what is allowed, without showing a secret.
 */
export function describeOptions<Name extends string>(subject: DescribeOptionsOptions<Name>): void {
  const { owner, base } = subject;
  const names = Object.keys(subject.cases) as Name[];
  const at = (name: string) => (subject.path ? `${subject.path}.${name}` : name);
  const build = async (options: Record<string, unknown>): Promise<void> => {
    const made = subject.make(options);
    await subject.close?.(made);
  };
  const reject = (options: unknown) => {
    let made: unknown;
    try {
      made = subject.make(options as Record<string, unknown>);
    } catch (error) {
      expect(error).toMatchObject({ name: 'ConfigError', code: 'ERR_WXKIT_INVALID_OPTION' });
      return error as Error & { option: string };
    }
    void subject.close?.(made);
    throw new Error(`${owner} accepted ${describeValue(options)}`);
  };

  describe(`${owner} options`, () => {
    it('accepts the base options', () => build(base));

    const valid = names.flatMap((name) => subject.cases[name].valid.map((value) => [name, describeValue(value), value] as const));
    it.each(valid)('accepts options.%s = %s', (name, _shown, value) => build({ ...base, [name]: value }));

    const invalid = names.flatMap((name) => subject.cases[name].invalid.map((value) => [name, describeValue(value), value] as const));
    it.each(invalid)('rejects options.%s = %s, naming the option and what it allows', (name, _shown, value) => {
      const error = reject({ ...base, [name]: value });
      expect(error.option).toBe(at(name));
      expect(error.message.startsWith(`${owner} options.${at(name)} `)).toBe(true);
      // `must be <what is allowed> (got <type or value>)`, or a sentence for a known near miss.
      expect(error.message).toMatch(/ must be .+ \(got .+\)$| is a Keyv instance/);
      if ((subject.secrets as readonly string[] | undefined)?.includes(name) && (typeof value === 'string' || typeof value === 'number')) {
        if (String(value).trim().length > 0) expect(error.message).not.toContain(String(value));
      }
    });

    it.each((subject.required ?? []).map((name) => [name]))('options.%s must be given', (name) => {
      const options = { ...base };
      delete options[name];
      expect(reject(options).option).toBe(at(name));
    });

    it('rejects an unknown option, suggesting the closest known name, or listing them', () => {
      for (const [wrong, meant] of Object.entries(subject.misspelt ?? {})) {
        const error = reject({ ...base, [wrong]: 1 });
        expect(error.option).toBe(at(wrong));
        expect(error.message).toContain(`(did you mean ${meant}?)`);
      }
      const far = reject({ ...base, zzzzzzzzzzzz: 1 });
      expect(far.option).toBe(at('zzzzzzzzzzzz'));
      for (const name of names) expect(far.message).toContain(name);
    });

    // Registered only where there is something to check: a skipped test would read as a pass.
    if (subject.retired) it('a retired option names its replacement', () => {
      for (const [name, replacement] of Object.entries(subject.retired!)) {
        const error = reject({ ...base, [name]: 1 });
        expect(error.option).toBe(at(name));
        expect(error.message).toContain('is no longer an option');
        expect(error.message).toContain(replacement);
      }
    });

    if (subject.declarations) it('covers every option its declared types name', () => {
      const { file, interfaces } = subject.declarations!;
      const text = readFileSync(file, 'utf8');
      const declared = new Set(interfaces.flatMap((name) => members(text, name)));
      expect([...names].sort()).toEqual([...declared].sort());
    });
  });
}

/** The member names of `interface <name>` in a declaration file, with those of the interfaces it extends there. */
function members(text: string, name: string): string[] {
  const start = new RegExp(`^(?:export )?interface ${name}(?: extends ([\\w, ]+))? \\{$`, 'm').exec(text);
  if (!start) throw new Error(`interface ${name} is not in the declaration file`);
  const body = text.slice(start.index + start[0].length, text.indexOf('\n}', start.index));
  const own = [...body.matchAll(/^ {4}(?:readonly )?([A-Za-z_$][\w$]*)\??:/gm)].map((match) => match[1]!);
  const parents = (start[1] ?? '').split(',').map((parent) => parent.trim()).filter(Boolean);
  return [...own, ...parents.flatMap((parent) => members(text, parent))];
}

function describeValue(value: unknown): string {
  if (typeof value === 'number' || typeof value === 'boolean' || value === null || value === undefined) return String(value);
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 37)}...` : value);
  if (typeof value === 'function') return 'a function';
  return Array.isArray(value) ? `array(${value.length})` : `${(value as object).constructor?.name ?? 'object'} object`;
}
