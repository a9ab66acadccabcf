/**
 * Exit codes of every command, one per kind of failure, so a script can tell them apart. Documented in
 * `wxkit --help` and the README; a code never changes meaning.
 */
export const EXIT = Object.freeze({
  ok: 0,
  /** Something wxkit did not expect: a bug, please report it with the message. */
  unexpected: 1,
  /** The command line is wrong: an unknown command or option, a missing or malformed value. */
  usage: 2,
  /** The store could not be reached or failed: down, connection refused, authentication, TLS, wrong database. */
  store: 3,
  /** WeChat (or the mock, or the proxy) unreachable, timed out, or answering something that is not WeChat's. */
  network: 4,
  /** No token: `inspect` found none; `get` without the secret saw none appear. */
  noToken: 5,
  /** WeChat answered with an errcode: credentials, IP whitelist, quota. */
  wechat: 6,
  /** The environment or a config file is wrong: a variable that is not set, a config file that does not parse. */
  config: 7,
  /** The token could not be stored: the store refuses writes (a read-only replica, an ACL), so nobody else could read it. */
  notStored: 8,
  /** Stopped by SIGINT (Ctrl-C) while it waited for a token: what it asked of WeChat was cut and its refresh lock released. */
  interrupted: 130,
  /** Stopped by SIGTERM, likewise. */
  terminated: 143,
});

export type ExitKind = keyof typeof EXIT;

/** The exit-code table as `--help` prints it. */
export const EXIT_HELP = `exit codes:
  0  done
  1  unexpected error (a bug: please report it)
  2  usage: unknown command or option, a missing or malformed value
  3  store unreachable or failing: down, refused, authentication, TLS, wrong database
  4  WeChat unreachable: network, timeout, an answer that is not WeChat's
  5  no token: none stored (inspect), none appeared (get without the secret), or another program
     holds the refresh lock and wrote none (get, refresh)
  6  WeChat API error: an errcode (credentials, IP whitelist, quota)
  7  configuration: an environment variable not set, a config file that is wrong
  8  token not stored: the store refuses writes (read-only replica, ACL), nobody else could read it
  130, 143  stopped by SIGINT, SIGTERM while waiting for a token: the fetch cut, the refresh lock released`;

/** The `code` of a CliError in --json output, by kind; the library's own codes where they exist. */
const CODES: Partial<Record<ExitKind, string>> = {
  usage: 'ERR_WXKIT_USAGE',
  config: 'ERR_WXKIT_CONFIG',
  store: 'ERR_WXKIT_CACHE',
  noToken: 'ERR_WXKIT_NO_TOKEN',
  notStored: 'ERR_WXKIT_NOT_STORED',
};

/** A failure the command line reports itself, with the exit code of its kind. */
export class CliError extends Error {
  readonly exit: ExitKind;
  /** Printed after the message: the command's usage line. */
  readonly usage: string | undefined;
  readonly code: string;

  constructor(exit: ExitKind, message: string, options: { usage?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.exit = exit;
    this.usage = options.usage;
    this.code = CODES[exit] ?? 'ERR_WXKIT_CLI';
  }
}

/** A server's listen() failure as a configuration error (exit 7) naming `host:port`, or undefined for another error. */
export function listenFailure(error: unknown, host: string, port: number | string): CliError | undefined {
  const { code } = error as { code?: string };
  if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
    return new CliError('config', `cannot listen on ${host}:${port} (${code}): ${code === 'EADDRINUSE' ? 'another process has that port' : 'not an address this host may listen on'}`);
  }
  // A --host that does not resolve (a typo, a name the resolver does not know, or cannot ask about now).
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_FAIL' || code === 'EAI_NONAME') {
    return new CliError('config', `cannot listen on ${host}:${port} (${code}): the --host name does not resolve: check its spelling, or give an IP address such as 127.0.0.1 or 0.0.0.0`);
  }
  return undefined;
}
