import { CacheError, nativeSchema, type KeySchema, type StoredEntry, type TokenCache, type WeChatClient } from '@wxkit/core';
import { NOT_IN_SECRET, besideKey, clampRetryAt, inLife, isPlausibleToken, decodeMarker, decodePause, failureKey, heldPause, refetchPauseKey, type FailureRecord } from '@wxkit/core/internal';
import { PROFILES, accessTokenKey, buildClient, parseApp, resolveSchema } from './apps.js';
import { maskPasswords, parseCommand } from './args.js';
import { runDemo } from './demo.js';
import { CliError, EXIT, EXIT_HELP, listenFailure, type ExitKind } from './errors.js';
import { checkWritable, describeStore, missingDirectory, openStore } from './stores.js';

export { EXIT } from './errors.js';

const HELP = `wxkit — share WeChat access tokens between programs, processes and languages

usage: wxkit <command> [options]

commands:
  token get       the current token: from the store, or fetched (needs the secret)
  token inspect   what the store holds: key, remaining life, fetched_at, lock holder and lease, failure marker
  token refresh   fetch a new token now and store it (stable endpoint: force_refresh, 20 a day)
  token clear     delete the stored token and its failure marker (and its lock with --lock)
  serve           run the central token service for the apps in a config file
  mock-server     run the mock WeChat API server
  demo            run the demo (processes sharing one token, another system refreshing it)

Run \`wxkit <command> --help\` for a command's options. Every command but demo takes --json.

${EXIT_HELP}`;

const TOKEN_USAGE = `usage: wxkit token <get|inspect|refresh|clear> --store <url> [--app KIND:ID] [options]
Run 'wxkit token --help' for the options.`;

const TOKEN_HELP = `usage: wxkit token <get|inspect|refresh|clear> --store <url> [options]

  --store URL         file:///dir, redis://[user:pass@]host:port[/db], rediss://…,
                      memcached://[user:pass@]host:port[,host:port…]; or WXKIT_STORE in the
                      environment, which keeps a password out of the process list
  --app KIND:ID       official_account:<appid> (or oa:), mini_program:<appid> (or mp:),
                      work:<corpid>:<agentid>; default official_account:$WECHAT_APPID
  --endpoint E        stable or classic: the entry to use (official accounts, mini programs); default
                      stable, classic with a --profile other than native (the peer SDK's endpoint)
  --prefix P          key prefix (default wechat:)
  --profile NAME      the entries another SDK keeps: ${PROFILES.join(', ')}
  --profile-options J the profile's options as JSON, e.g. '{"prefix":"think:"}' (easyWeChat4)
  --secret-env NAME   read the secret from $NAME instead of $WECHAT_SECRET (get, refresh)
  --base-url URL      WeChat's API (a mock, a proxy); default https://api.weixin.qq.com (qyapi for WeCom)
  --show-token        print the token itself (masked otherwise)
  --lock              clear: remove the refresh lock too
  --lock-wait-ms N    get, refresh with the secret: how long to wait for another program that holds the
                      refresh lock (default 40000)
  --json              one JSON object on stdout

The secret is read from the environment only, never from a flag: flags land in shell history.
A failed fetch leaves <key>:failed, which holds every process back (a minute for a wrong secret):
inspect shows it, clear deletes it with the token, so a fixed secret is tried at once. So is
<key>:refetch, the fleet's pause of fetches after tokens WeChat rejected moments after each fetch.
get and refresh check first that the store takes writes (they write and delete <key>:probe):
a token nobody else can read would only replace the one the others hold.

${EXIT_HELP}`;

interface Output {
  json: boolean;
  out: (line: string) => void;
}

/**
 * The wxkit command. Resolves the exit code; never throws. `io` takes what the token commands print,
 * serve's help and failures, and the failure that ends mock-server or demo; the service's log lines go
 * to file descriptor 1 (pino), and mock-server and demo print the rest to the process's own streams.
 */
export async function main(argv: string[], io: { stdout?: NodeJS.WritableStream; stderr?: NodeJS.WritableStream } = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  const [command, ...rest] = argv;
  const json = rest.includes('--json');
  const output: Output = { json, out: (line) => stdout.write(`${line}\n`) };
  try {
    switch (command) {
      case 'token':
        return await tokenCommand(rest, output);
      case 'serve':
        return await (await import('./serve-command.js')).serveCommand(rest, output);
      case 'mock-server':
        try {
          const { mockServerCommand } = await import('@wxkit/testing');
          return await mockServerCommand(rest, 'wxkit mock-server');
        } catch (error) {
          const flag = (name: string) => (rest.includes(name) ? rest[rest.indexOf(name) + 1] : undefined);
          const { address, hostname, port } = error as { address?: string; hostname?: string; port?: number };
          throw listenFailure(error, address ?? hostname ?? flag('--host') ?? '127.0.0.1', port ?? flag('--port') ?? 0) ?? error;
        }
      case 'demo':
        return await runDemo(rest);
      case undefined:
      case '--help':
      case '-h':
      case 'help':
        output.out(HELP);
        return command === undefined ? EXIT.usage : EXIT.ok;
      case '--version':
        output.out((await import('@wxkit/core')).VERSION);
        return EXIT.ok;
      default:
        throw new CliError('usage', `${JSON.stringify(command)} is not a wxkit command (token, serve, mock-server, demo)`, {
          usage: "usage: wxkit <command> [options]\nRun 'wxkit --help' for the commands.",
        });
    }
  } catch (error) {
    return report(error, output, stderr);
  }
}

/** The exit code of a failure: the CLI's own kind, or the library error's code. */
function exitKind(error: unknown): ExitKind {
  if (error instanceof CliError) return error.exit;
  const { code, reason } = error as { code?: string; reason?: string };
  switch (code) {
    case 'ERR_WXKIT_INVALID_OPTION':
      return 'usage';
    case 'ERR_WXKIT_WECHAT_API':
      return 'wechat';
    case 'ERR_WXKIT_CACHE':
      // The store answered and refused a write: nothing it refused can be read back by anyone.
      return reason === 'readonly' ? 'notStored' : 'store';
    case 'ERR_WXKIT_NO_TOKEN':
      return 'noToken';
    case 'ERR_WXKIT_HTTP':
    case 'ERR_WXKIT_TIMEOUT':
    case 'ERR_WXKIT_BAD_RESPONSE':
      return 'network';
    default:
      return 'unexpected';
  }
}

/**
 * Prints a failure (as JSON with --json) and maps it to its exit code. Messages carry no secrets, and
 * the password of any URL a message quotes (a store URL typed where no argument is taken) is masked.
 */
export function report(error: unknown, output: Output, stderr: NodeJS.WritableStream): number {
  const kind = exitKind(error);
  const { code, errcode, cause } = error as { code?: string; errcode?: number; cause?: { reason?: string } };
  const reason = (error as { reason?: string }).reason ?? cause?.reason;
  const message = maskPasswords(error instanceof Error ? error.message : String(error));
  if (output.json) {
    const fields: Record<string, unknown> = { code: code ?? 'ERR_WXKIT_CLI', message, exit: EXIT[kind] };
    if (errcode !== undefined) fields.errcode = errcode;
    if (reason !== undefined) fields.reason = reason;
    output.out(JSON.stringify({ ok: false, error: fields }));
  } else {
    const usage = error instanceof CliError && error.usage ? `\n\n${error.usage}` : '';
    const bug = kind === 'unexpected' && error instanceof Error && error.stack ? `\n${maskPasswords(error.stack)}` : '';
    stderr.write(`wxkit: ${message}${usage}${bug}\n`);
  }
  return EXIT[kind];
}

/** The secret in WECHAT_SECRET, or in the variable `--secret-env` names, if it is set. */
function envSecret(envName: string | undefined): string | undefined {
  return process.env[envName ?? 'WECHAT_SECRET'] || undefined;
}

/** envSecret(), where a variable `--secret-env` names must be set. */
function secretFrom(envName: string | undefined): string | undefined {
  const value = envSecret(envName);
  if (envName !== undefined && value === undefined) {
    throw new CliError('config', `--secret-env ${envName} names an environment variable that is not set: export ${envName}=<the app's secret>`);
  }
  return value;
}

/** `86_Ab…xYz9 (136 chars)`: enough to tell tokens apart, not enough to use one. */
export function mask(token: string): string {
  return token.length <= 12 ? `${'*'.repeat(token.length)}` : `${token.slice(0, 5)}…${token.slice(-4)} (${token.length} chars)`;
}

async function tokenCommand(args: string[], output: Output): Promise<number> {
  const { values, positionals } = parseCommand(
    'token',
    args,
    {
      store: { type: 'string' },
      app: { type: 'string' },
      endpoint: { type: 'string' },
      prefix: { type: 'string' },
      profile: { type: 'string' },
      'profile-options': { type: 'string' },
      'secret-env': { type: 'string' },
      'base-url': { type: 'string' },
      'show-token': { type: 'boolean' },
      lock: { type: 'boolean' },
      'lock-wait-ms': { type: 'string' },
    },
    TOKEN_USAGE,
    { max: 1 },
  );
  if (values.help) {
    output.out(TOKEN_HELP);
    return EXIT.ok;
  }
  const action = positionals[0];
  const usage = (message: string) => new CliError('usage', message, { usage: TOKEN_USAGE });
  if (action === undefined) throw usage('wxkit token needs an action: get, inspect, refresh or clear');
  if (!['get', 'inspect', 'refresh', 'clear'].includes(action)) throw usage(`${JSON.stringify(action)} is not a token action: use get, inspect, refresh or clear`);
  // From the environment, a password in the URL stays out of the process list and the shell's history.
  const store = values.store ?? (process.env.WXKIT_STORE || undefined);
  if (!store) throw usage(`wxkit token ${action} needs --store (or WXKIT_STORE), the store the programs share (e.g. redis://127.0.0.1:6379)`);
  const envAppId = process.env.WECHAT_APPID;
  if (!values.app && !envAppId) throw usage(`wxkit token ${action} needs --app KIND:ID (e.g. --app oa:wx1234abcd5678ef90), or WECHAT_APPID in the environment`);
  // Flag values the library checks: its ConfigError becomes a usage error with the usage line.
  const asUsage = (error: unknown): never => {
    if ((error as { code?: string }).code === 'ERR_WXKIT_INVALID_OPTION') throw usage((error as Error).message);
    throw error;
  };
  const fromFlags = <T>(make: () => T): T => {
    try {
      return make();
    } catch (error) {
      return asUsage(error);
    }
  };
  const schema = fromFlags(() => resolveSchema({ profile: values.profile, profileOptions: values['profile-options'], prefix: values.prefix }));
  // Checked before the store is opened: a bad URL is a usage error, with nothing read or written.
  const baseUrl = values['base-url'];
  if (baseUrl !== undefined && !/^https?:$/.test(protocolOf(baseUrl))) {
    throw usage(`--base-url must be an http:// or https:// URL (got ${JSON.stringify(describeStore(baseUrl))})`);
  }
  const lockWaitText = values['lock-wait-ms'];
  const lockWaitMs = lockWaitText === undefined ? undefined : Number(lockWaitText);
  if (lockWaitMs !== undefined && !(/^\d+$/.test(lockWaitText!) && lockWaitMs >= 100 && lockWaitMs <= 600_000)) {
    throw usage(`--lock-wait-ms must be a whole number of ms from 100 to 600000 (got ${JSON.stringify(lockWaitText)})`);
  }
  // Whether the command may fetch from WeChat (and so take the refresh lock, or wait for another's).
  const mayFetch = (action === 'get' || action === 'refresh') && envSecret(values['secret-env']) !== undefined;
  // Taken where it is used only: accepted elsewhere, it would be a wait the user asked for and did not get.
  if (lockWaitMs !== undefined && !mayFetch) {
    throw usage('--lock-wait-ms is for get and refresh with the secret (without it, get waits 2 s for another program to write)');
  }
  const endpoint = values.endpoint ?? schema.defaultEndpoint ?? 'stable';
  if (endpoint !== 'stable' && endpoint !== 'classic') throw usage(`--endpoint must be stable or classic (got ${JSON.stringify(endpoint)})`);
  const app = fromFlags(() => parseApp(values.app ?? `official_account:${envAppId}`));
  // Refused, not ignored: a WeCom app has one token endpoint, and the key was meant for another app.
  if (app.kind === 'work' && values.endpoint !== undefined) throw usage('--endpoint is for official accounts and mini programs; WeCom has one token endpoint');
  // Given whenever it is set: a profile may build the keys of some apps only from the secret (wechatpy's
  // WeCom keys), and says so when it is missing. A command that needs no secret is not failed for one.
  const secretForKey = schema.keyNeedsSecret ? secretFrom(values['secret-env']) : envSecret(values['secret-env']);
  const needsSecret = () => {
    secretFrom(values['secret-env']);
    return new CliError('config', `--profile ${schema.name} builds this app's keys from its secret: set WECHAT_SECRET, or name another variable with --secret-env NAME`);
  };
  // Named by its variable, never quoted: a value read from a file keeps its line break, and WeChat
  // would refuse the secret (40125) with nothing to say why; a key built from it is no program's key.
  const checkSecret = (secret: string | undefined) => {
    if (secret !== undefined && NOT_IN_SECRET.test(secret)) {
      throw new CliError('config', `${values['secret-env'] ?? 'WECHAT_SECRET'} holds a space or a control character (a line break at its end, say), which no secret has`);
    }
  };
  if (schema.keyNeedsSecret && secretForKey === undefined) throw needsSecret();
  let key: string;
  try {
    // A secret no client takes builds no key: inspect and clear would look at, or clear, a key no
    // program uses. A key that needs it says so, and the secret's fault is named then.
    key = accessTokenKey(app, endpoint, schema, secretForKey !== undefined && NOT_IN_SECRET.test(secretForKey) ? undefined : secretForKey);
  } catch (error) {
    if ((error as { option?: string }).option === 'secret') {
      checkSecret(secretForKey);
      throw needsSecret();
    }
    throw error;
  }
  const shownKey = schema.redactKey?.(key) ?? key;
  // Until the command waits for a token (untilSignal), and again once it has let go of its refresh lock
  // until its store is closed, a signal ends it at once, as a failure with its exit code and, under
  // --json, its line: it holds no refresh lock then.
  let guard = exitOnSignal(output, 'before it waited for a token: it held no refresh lock');
  // What the command answers, printed once its store is closed: a signal before then ends it as stopped,
  // and it prints nothing else (no token after it was told to stop).
  const answer: string[] = [];
  const answerOutput: Output = { json: output.json, out: (line) => void answer.push(line) };
  let cache: TokenCache;
  try {
    cache = await openStore(store, values.store === undefined ? 'WXKIT_STORE' : '--store').catch(asUsage);
  } catch (error) {
    guard.release();
    throw error;
  }
  try {
    // Only a command that may fetch makes the directory, as a program would (refresh without the secret
    // fails for want of it, below).
    const missing = !mayFetch && action !== 'refresh' ? missingDirectory(store) : undefined;
    if (missing !== undefined) {
      // Reason `database`, as a Redis URL's database the server does not have: the store's place is wrong.
      throw new CacheError(`--store ${store} names a directory that does not exist (${missing}): no program shares a token there`, { reason: 'database' });
    }
    if (action === 'inspect') return await inspect(cache, key, shownKey, schema, store, values['show-token'] === true, answerOutput);
    if (action === 'clear') {
      const [held, besideHad, failed, paused] = await Promise.all([
        readEntryKey(cache, key),
        cache.get(besideKey(key)),
        cache.get(failureKey(key)),
        cache.get(refetchPauseKey(key)),
      ]);
      // Another program's value (a Redis hash, or bytes the profile cannot read, such as a PHP object),
      // which the library never replaces: it is no token, and it is left to that program.
      const foreignHeld = isForeign(schema, held);
      const had = foreignHeld || held === OTHER_KIND ? undefined : held;
      // Each only as it was read: a token another program wrote since is newer than the one the user
      // meant to clear (deleting it would send every program to WeChat again, and on the classic endpoint
      // end it). The marker of a failed fetch goes with the entry: left behind, a secret fixed since
      // (40125) would still fail every process with the old error until the marker's pause ran out, up to
      // a minute. So does the pause of fetches after a rejected token (the program that fetched in a loop
      // stopped since).
      const remove = async (at: string, value: string | undefined) =>
        value !== undefined && (cache.deleteIfEquals ? await cache.deleteIfEquals(at, value) : (await cache.delete(at), true));
      const [removed, failureRemoved, pauseRemoved] = [await remove(key, had), await remove(failureKey(key), failed), await remove(refetchPauseKey(key), paused)];
      // The fleet's token beside another program's value goes too: left, it would still be served.
      const besideRemoved = await remove(besideKey(key), besideHad);
      // The lock as it was read too: one a live program took meanwhile is its own.
      const lockHeld = values.lock ? await cache.get(schema.lockKey(key)) : undefined;
      const lockRemoved = await remove(schema.lockKey(key), lockHeld);
      const marker = decodeMarker(failed);
      const changed = [had !== undefined && !removed && 'the entry', besideHad !== undefined && !besideRemoved && 'the token beside it', failed !== undefined && !failureRemoved && 'its failure marker', paused !== undefined && !pauseRemoved && 'its pause'].filter(
        (what): what is string => typeof what === 'string',
      );
      emit(
        answerOutput,
        { ok: true, key: shownKey, removed, shared_removed: besideRemoved, failure_removed: failureRemoved, pause_removed: pauseRemoved, lock_removed: lockRemoved, changed_meanwhile: changed.length > 0 },
        [
          foreignHeld
            ? `kept ${shownKey}: it holds ${held === OTHER_KIND ? 'a value of another kind than a string' : `${Buffer.byteLength(held as string, 'latin1')} bytes that are not a ${schema.name} entry`}, another program's and no token; remove it in the store if nothing uses it`
            : `${removed ? 'removed' : had === undefined ? 'nothing stored at' : 'kept'} ${shownKey}`,
          ...(besideRemoved ? [`removed the token the fleet shared beside another program's value, at ${besideKey(shownKey)}`] : []),
          ...(values.lock ? [lockRemoved ? 'removed its refresh lock' : lockHeld === undefined ? 'no refresh lock was held' : 'kept its refresh lock: taken again while this command ran'] : []),
          ...(failureRemoved ? [`removed its failure marker${marker ? ` (${failureWhat(marker)})` : ''}: the next caller asks WeChat at once`] : []),
          ...(pauseRemoved ? ['removed its pause of fetches after a rejected token: the next caller that needs a token fetches one at once'] : []),
          ...(changed.length > 0 ? [`kept ${changed.join(', ')}: another program wrote it again while this command ran; run it again to clear what is there now`] : []),
        ],
      );
      return EXIT.ok;
    }
    const secret = secretFrom(values['secret-env']);
    checkSecret(secret);
    if (action === 'refresh' && secret === undefined) {
      throw new CliError('config', 'wxkit token refresh fetches from WeChat and needs the app\'s secret: set WECHAT_SECRET, or name another variable with --secret-env NAME');
    }
    // A library client keeps working when its store is down (it fetches and keeps the token to itself);
    // an operator asking for the shared token must not get a private one instead, and a refresh that
    // cannot be published would kill the token every other program holds. So: the store must answer,
    // and take writes, before anything is fetched (exit 3 or 8 otherwise).
    const holds = await readKey(cache, key, schema);
    // The token beside another program's value lives by the rule of the key it stands for, as the library judges it.
    const current = servable(schema, key, sharedEntry(holds), await storeTtlOf(cache, key, holds));
    if (secret !== undefined && (action === 'refresh' || !current)) await checkWritable(cache, key, describeStore(store));
    // The command's own connections to WeChat: a signal cuts the request under way (see untilSignal).
    const { Agent } = await import('undici');
    const dispatcher = new Agent();
    const client: WeChatClient = buildClient(app, {
      secret,
      cache,
      dispatcher,
      endpoint,
      schema,
      logger: false,
      // The shared store or nothing: a token kept in this host's fallback directory helps nobody here.
      fallbackDir: false,
      // Only the flag moves the secret to another host: never a variable left in the shell for a demo.
      ...(baseUrl ? { baseUrl } : {}),
      ...(secret === undefined ? { lockWaitMs: 2000 } : lockWaitMs === undefined ? {} : { lockWaitMs }),
    });
    guard.release();
    const signals = untilSignal(() => dispatcher.destroy());
    // Whether this command got a new token from WeChat (`fetched` in --json), not only read the store's.
    let fetched = false;
    client.on('access_token.fetched', () => void (fetched = true));
    // Whether the command failed before it closed its client: that failure is its answer, whatever signal
    // comes as the client closes.
    let failed = false;
    try {
      let entry;
      try {
        if (action === 'refresh') {
          // The token the store holds is the one to replace: a client that knows none would take it back
          // from the store as new, while another program holds the lock (and say it was refreshed). One
          // that is no entry, or past its use, is nothing to take back: reading it would fetch a token,
          // and the forced refresh a second.
          if (current) await signals.race(client.accessToken.getEntry());
          await signals.race(client.accessToken.forceRefresh());
        }
        entry = await signals.race(client.accessToken.getEntry());
      } catch (error) {
        const message = (error as Error).message ?? '';
        if (secret !== undefined && (error as { code?: string }).code === 'ERR_WXKIT_NO_TOKEN' && message.includes('holds the refresh lock')) {
          // Another program held the lock and wrote nothing: the library's advice is a client option.
          throw new CliError(
            'noToken',
            `${message.replace(/; raise lockWaitMs if refreshes are that slow$/, '')}. wxkit token inspect shows the lock's holder and lease; ` +
              `if that program is gone, wxkit token clear --lock removes its lock; --lock-wait-ms N waits longer`,
          );
        }
        if (secret === undefined && (error as { code?: string }).code === 'ERR_WXKIT_NO_TOKEN') {
          throw new CliError(
            'noToken',
            `No token is stored under ${shownKey}, and none appeared within 2 s. wxkit token get fetches one only with the app's secret: ` +
              'set WECHAT_SECRET (or name another variable with --secret-env NAME), or start the program that owns the refresh',
          );
        }
        throw error;
      }
      // What the others read: a token this command holds and the store does not is no shared token.
      // A key that holds another program's value, which the client never replaces: the fleet's token
      // lives beside it, at {key}:wxkit in the native format (key-schema.md).
      const shared = sharedEntry(await signals.race(readKey(cache, key, schema)));
      // A newer entry another program wrote meanwhile is fine; an older one or none means ours is lost.
      // Where the format records no fetched_at (a peer's), a token other than ours and than the one the
      // store held before is another program's later write; the one it held before, still there, says ours
      // was refused or dropped.
      const differs = shared !== undefined && shared.value !== entry.value;
      const ordered = shared?.fetchedAt !== undefined && entry.fetchedAt !== undefined;
      const lost = !shared || (differs && (ordered ? shared.fetchedAt! < entry.fetchedAt! : shared.value === sharedEntry(holds)?.value));
      if (lost) {
        throw new CliError(
          'notStored',
          `Fetched a token, but ${describeStore(store)} does not hold it under ${shownKey}: the store refused the write or dropped it, ` +
            'so no other program can read it (check the store\'s write permissions for that key, its eviction policy and memory limit)',
        );
      }
      if (shared!.value !== entry.value) entry = shared!;
      const token = values['show-token'] ? entry.value : mask(entry.value);
      const remaining = entry.expiresAt === undefined ? undefined : entry.expiresAt - Math.floor(Date.now() / 1000);
      emit(
        answerOutput,
        { ok: true, key: shownKey, token, expires_at: entry.expiresAt, fetched_at: entry.fetchedAt, remaining_seconds: remaining, refreshed: action === 'refresh', fetched },
        [
          `key        ${shownKey}`,
          `token      ${token}`,
          `remaining  ${remaining === undefined ? 'unknown' : `${remaining} s`}`,
          `fetched_at ${entry.fetchedAt === undefined ? 'unknown' : `${iso(entry.fetchedAt * 1000)} (${entry.fetchedAt})`}`,
        ],
      );
      return EXIT.ok;
    } catch (error) {
      failed = true;
      throw error;
    } finally {
      // Lets the refresh lock go once a fetch under way has ended (after a signal, cut); a second signal
      // meanwhile waits for it.
      await client.close();
      signals.release();
      guard = exitOnSignal(output, 'as it closed the store, once it had let go of any refresh lock it held');
      // Destroyed by a signal, it refuses close(): that is no error of the command's.
      await dispatcher.close().catch(() => undefined);
      // Told to stop while it closed its client, after it had its answer: stopped, with no token printed.
      if (!failed) signals.throwIfStopped();
    }
  } catch (error) {
    // A command that fails (stopped while its client closed, after it had its answer) prints its failure
    // only: never the token it was told to stop before showing.
    answer.length = 0;
    throw error;
  } finally {
    try {
      await cache.close?.();
    } finally {
      guard.release();
    }
    for (const line of answer) output.out(line);
  }
}

/**
 * While installed, SIGINT and SIGTERM end the command at once, with their exit code (130, 143) and
 * their failure printed as any other (a line under --json), rather than by the signal's default action,
 * which prints nothing and leaves a parent process no exit code. For the steps that hold no refresh lock
 * of the command's (opening, reading and probing the store, inspect, clear, and closing it once the
 * client let its lock go): nothing is left to let go, and a store that does not answer is not waited
 * for. `when` ends the failure's message.
 */
function exitOnSignal(output: Output, when: string): { release(): void } {
  const onSignal = (signal: NodeJS.Signals) => {
    const exit = signal === 'SIGINT' ? 'interrupted' : 'terminated';
    process.exit(report(new CliError(exit, `stopped by ${signal} ${when}`), output, process.stderr));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    release() {
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
    },
  };
}

/**
 * While installed, SIGINT and SIGTERM call `cut` (which ends the requests to WeChat under way) and end
 * the wait of `race()` with a CliError (exit 130, 143), instead of ending the process where it stands:
 * the caller then closes its client, which lets the refresh lock go (left to its lease, it held every
 * other program back). A second signal ends the process at once (a store that does not answer the
 * release holds the close up to its timeout). `throwIfStopped()` throws that CliError where a signal
 * came after the last `race()` (while the client closed).
 */
function untilSignal(cut: () => unknown): { race<T>(work: Promise<T>): Promise<T>; throwIfStopped(): void; release(): void } {
  let onSignal!: (signal: NodeJS.Signals) => void;
  let fired = false;
  let reason: CliError | undefined;
  const stopped = new Promise<never>((_, reject) => {
    onSignal = (signal) => {
      const exit = signal === 'SIGINT' ? 'interrupted' : 'terminated';
      if (fired) {
        process.stderr.write(`wxkit: stopped by ${signal} again: exiting without waiting for the store, whose refresh lock may stay until its lease ends\n`);
        process.exit(EXIT[exit]);
      }
      fired = true;
      void Promise.resolve()
        .then(cut)
        .catch(() => undefined);
      reason = new CliError(exit, `stopped by ${signal}: any request to WeChat under way was cut, and the command lets go of a refresh lock it held as it closes (another program's lock stays with that program)`);
      reject(reason);
    };
  });
  stopped.catch(() => undefined);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    race: (work) => Promise.race([work, stopped]),
    throwIfStopped() {
      if (reason) throw reason;
    },
    release() {
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
    },
  };
}

/** A key holding another kind of value than a string (a Redis hash, list or set: another program's). */
const OTHER_KIND: unique symbol = Symbol('another kind of value');

/**
 * What the token's key holds: its bytes, none, or OTHER_KIND where the store says it holds another kind of
 * value (CacheError reason `type`), which the library reads as another program's value, as it does bytes
 * that are no entry, and shares the token beside.
 */
async function readEntryKey(cache: TokenCache, key: string): Promise<string | undefined | typeof OTHER_KIND> {
  try {
    return await cache.get(key);
  } catch (error) {
    if (error instanceof CacheError && error.reason === 'type') return OTHER_KIND;
    throw error;
  }
}

/** The entry in `raw`, or none where it is not one of the schema (another program's value included), as a client reads it. */
function decodedOrNone(schema: KeySchema, raw: string): StoredEntry | undefined {
  try {
    const entry = schema.decode('access_token', raw);
    return entry && isPlausibleToken(entry.value) ? entry : undefined;
  } catch {
    return undefined;
  }
}

/** What the token's key holds, read as a client reads it. */
interface KeyHolds {
  /** The key's bytes, none, or OTHER_KIND (a Redis hash…). */
  raw: string | undefined | typeof OTHER_KIND;
  /** The entry at the key, where it is one. */
  entry: StoredEntry | undefined;
  /** Another program's value, which no wxkit process replaces: the fleet's token is at {key}:wxkit. */
  foreign: boolean;
  /** What {key}:wxkit holds, read only when `foreign`. */
  beside?: { raw: string | undefined; entry: StoredEntry | undefined };
}

/**
 * Whether `raw`, what the key holds, is another program's value, which the library never replaces nor
 * serves; `entry` is what it decodes to, where the caller has it.
 */
function isForeign(schema: KeySchema, raw: string | undefined | typeof OTHER_KIND, entry = typeof raw === 'string' ? decodedOrNone(schema, raw) : undefined): boolean {
  return raw === OTHER_KIND || (raw !== undefined && entry === undefined && schema.replacesUndecodable !== true);
}

/**
 * The key as the library reads it: its entry; bytes that are none, which the next fetch replaces where
 * every writer of the key takes wxkit's lock (the native schema); or another program's value, left as it
 * is, with the fleet's token beside it.
 */
async function readKey(cache: TokenCache, key: string, schema: KeySchema): Promise<KeyHolds> {
  const raw = await readEntryKey(cache, key);
  const entry = typeof raw === 'string' ? decodedOrNone(schema, raw) : undefined;
  const foreign = isForeign(schema, raw, entry);
  if (!foreign) return { raw, entry, foreign };
  const besideRaw = await cache.get(besideKey(key));
  return { raw, entry, foreign, beside: { raw: besideRaw, entry: besideRaw === undefined ? undefined : decodedOrNone(nativeSchema(), besideRaw) } };
}

/** The entry the fleet serves from what `holds` read: the one beside another program's value, or the key's. */
function sharedEntry(holds: KeyHolds): StoredEntry | undefined {
  return holds.foreign ? holds.beside?.entry : holds.entry;
}

/** Whether a client would serve `entry` (a format without an expiry: as long as the store keeps it), as the library judges it. */
function servable(schema: KeySchema, key: string, entry: StoredEntry | undefined, storeTtlMs?: number): boolean {
  if (entry === undefined) return false;
  const now = Date.now();
  // A format without an expiry: its remaining life is the store's TTL, where the store can tell (as
  // EntryStore.read judges it), so that its last 30 s are no token here either.
  const judged =
    entry.expiresAt === undefined && storeTtlMs !== undefined && Number.isFinite(storeTtlMs) && storeTtlMs > 0 ? { ...entry, expiresAt: Math.floor((now + storeTtlMs) / 1000) } : entry;
  return inLife(judged, (expiresIn) => schema.ttlSeconds(expiresIn, 'access_token', key), now);
}

/** The store's TTL of the key `holds` read its entry from, where the entry keeps no expiry of its own. */
async function storeTtlOf(cache: TokenCache, key: string, holds: KeyHolds): Promise<number | undefined> {
  const entry = sharedEntry(holds);
  return entry !== undefined && entry.expiresAt === undefined ? await cache.ttlMs?.(holds.foreign ? besideKey(key) : key) : undefined;
}

async function inspect(cache: TokenCache, key: string, shownKey: string, schema: KeySchema, store: string, showToken: boolean, output: Output): Promise<number> {
  const lockKey = schema.lockKey(key);
  const [holds, holder, lease, failed, paused] = await Promise.all([
    readKey(cache, key, schema),
    cache.get(lockKey),
    cache.ttlMs?.(lockKey),
    cache.get(failureKey(key)),
    cache.get(refetchPauseKey(key)),
  ]);
  const { raw, foreign } = holds;
  // Another program's value at the key: the fleet's token is the one beside it.
  const entryKey = foreign ? besideKey(key) : key;
  const shownEntryKey = foreign ? besideKey(shownKey) : shownKey;
  const entry = sharedEntry(holds);
  const ttl = entry ? await cache.ttlMs?.(entryKey) : undefined;
  const now = Math.floor(Date.now() / 1000);
  // An entry past its life (its expiry, its last 30 s, or the TTL its writer gave it, which a store that
  // keeps it longer still holds) is no token the library serves: every program fetches another.
  const inLifeNow = servable(schema, key, entry, ttl);
  const state = foreign ? 'foreign' : raw === undefined ? 'absent' : entry ? (inLifeNow ? 'present' : 'stale') : 'corrupt';
  const ok = entry !== undefined && inLifeNow;
  const token = entry ? (showToken ? entry.value : mask(entry.value)) : undefined;
  // A format without an expiry (EasyWeChat, wechatpy…): the store's TTL is its remaining life.
  const remaining = entry?.expiresAt !== undefined ? entry.expiresAt - now : entry && ttl !== undefined && Number.isFinite(ttl) ? Math.floor(ttl / 1000) : undefined;
  const lock = holder === undefined ? null : { holder, lease_ms: lease ?? null };
  const failure = failureState(failed, Date.now());
  const pause = pauseState(paused, Date.now());
  const bytes = typeof raw === 'string' ? Buffer.byteLength(raw, 'latin1') : undefined;
  const what = raw === OTHER_KIND ? 'a value of another kind than a string' : `${bytes} bytes that are not a ${schema.name} entry`;
  const why = foreign
    ? `${shownKey} holds another program's value (${what}), which wxkit never replaces; the fleet shares its token beside it, at ${shownEntryKey}`
    : `${shownKey} holds ${what}; wxkit replaces it on the next fetch`;
  // --json failures carry an error object, as every other failure prints it; the fields stay beside it.
  const error = ok
    ? undefined
    : {
        code: 'ERR_WXKIT_NO_TOKEN',
        message:
          state === 'absent'
            ? `No token is stored under ${shownKey}`
            : entry
              ? `${shownEntryKey} holds a token past its use (expired, in its last 30 s, or past the TTL its writer gave it): no program serves it, the next one that needs a token fetches another`
              : foreign
                ? `${why}, where no token is stored`
                : why,
        exit: EXIT.noToken,
      };
  emit(
    output,
    {
      ok,
      ...(error ? { error } : {}),
      key: shownKey,
      ...(foreign ? { shared_key: shownEntryKey } : {}),
      schema: schema.name,
      store: describeStore(store),
      state,
      token,
      expires_at: entry?.expiresAt,
      fetched_at: entry?.fetchedAt,
      remaining_seconds: remaining,
      store_ttl_ms: ttl ?? null,
      lock,
      failure: failure?.fields ?? null,
      refetch_pause: pause?.fields ?? null,
      // A binary string: one character per byte. None for a value of another kind.
      bytes: raw === OTHER_KIND ? null : (bytes ?? 0),
    },
    [
      `key         ${shownKey}`,
      ...(foreign ? [`shared at   ${shownEntryKey}`] : []),
      `schema      ${schema.name}`,
      `store       ${describeStore(store)}`,
      `state       ${state}${state === 'corrupt' || state === 'foreign' ? ` (${why}${foreign && !entry ? ', where no token is stored yet' : ''})` : ''}${entry && !inLifeNow ? `${state === 'stale' ? ' (' : '; '}a token past its use: no program serves it${state === 'stale' ? ')' : ''}` : ''}`,
      ...(entry
        ? [
            `token       ${token}`,
            `remaining   ${remaining === undefined ? 'unknown (the format keeps no expiry and the store cannot tell)' : `${remaining} s`}${entry.expiresAt === undefined ? '' : ` (expires ${iso(entry.expiresAt * 1000)})`}${ttl === undefined ? '' : Number.isFinite(ttl) ? `; the store drops it in ${Math.round(ttl / 1000)} s` : '; the store keeps it without expiry'}`,
            `fetched_at  ${entry.fetchedAt === undefined ? 'unknown' : `${iso(entry.fetchedAt * 1000)} (${entry.fetchedAt})`}`,
          ]
        : []),
      `lock        ${lock ? `held by ${lock.holder}${lock.lease_ms === null ? '' : Number.isFinite(lock.lease_ms) ? `, lease ${(lock.lease_ms / 1000).toFixed(1)} s left` : ', with no lease (it stays until removed: wxkit token clear --lock)'}` : 'free'}`,
      `failure     ${failure?.line ?? 'none'}`,
      `pause       ${pause?.line ?? 'none'}`,
    ],
  );
  return ok ? EXIT.ok : EXIT.noToken;
}

/**
 * The fleet's pause of fetches after a token WeChat rejected before any call went through with it
 * (`{key}:refetch`), as inspect shows it, or undefined when there is none. Read as a process on this
 * host reads it (heldPause()): its end held to one step of this clock, and one that ends too far ahead
 * (a clock far ahead, a value no wxkit wrote) holding no one back.
 */
function pauseState(raw: string | undefined, now: number): { fields: Record<string, unknown>; line: string } | undefined {
  if (raw === undefined) return undefined;
  const slot = decodePause(raw, now);
  if (!slot) return { fields: { state: 'corrupt', bytes: raw.length }, line: `corrupt (${raw.length} bytes that are not a pause; it holds no one back)` };
  const held = heldPause(slot, now);
  const stored = { until: slot.until, step_ms: slot.step };
  if (!held) {
    return {
      fields: { state: 'ignored', ...stored },
      line:
        slot.reason !== undefined
          ? `ignored: a slot of another kind (${slot.reason}), not a pause; it holds no one back`
          : `ignored: it ends at ${iso(slot.until)}, further ahead than its step and a minute (a clock far ahead, or a value no wxkit wrote); it holds no one back`,
    };
  }
  const at = iso(held.until);
  return held.until > now
    ? {
        fields: { state: 'in_force', ...stored, retry_at: held.until },
        line: `WeChat rejected tokens moments after they were fetched; no process fetches another before ${at} (${Math.ceil((held.until - now) / 1000)} s, a step of ${held.step / 1000} s): wxkit token clear removes it`,
      }
    : {
        fields: { state: 'past', ...stored },
        line: `the last one ended at ${at} (a step of ${held.step / 1000} s; kept so that the next one in a row is longer)`,
      };
}

/** A URL's scheme (`https:`), or '' when it is no URL. */
function protocolOf(url: string): string {
  try {
    return new URL(url).protocol;
  } catch {
    return '';
  }
}

/** A time in unix ms as ISO 8601, or its number where no date has it (a peer's microseconds, a corrupt value). */
function iso(ms: number): string {
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? String(ms) : date.toISOString();
}

/** What failed, as a marker records it: WeChat's errcode and errmsg, or the error code and HTTP status. */
function failureWhat(marker: FailureRecord & { code: string }): string {
  if (marker.errcode !== undefined) return `errcode ${marker.errcode}${marker.errmsg ? `, ${marker.errmsg}` : ''}`;
  return `${marker.code}${marker.status === undefined ? '' : `, HTTP ${marker.status}`}`;
}

/**
 * The failure marker `{key}:failed` as inspect shows it, or undefined when there is none. Its times are
 * unix milliseconds, as stored (docs/key-schema.md); `retry_at` is the one the fleet holds to, clamped
 * as every process clamps it.
 */
function failureState(raw: string | undefined, now: number): { fields: Record<string, unknown>; line: string } | undefined {
  if (raw === undefined) return undefined;
  const marker = decodeMarker(raw);
  // Every process ignores a marker it cannot read: it holds no one back.
  if (!marker) return { fields: { state: 'corrupt', bytes: raw.length }, line: `corrupt (${raw.length} bytes that are not a failure marker; it holds no one back)` };
  const retryAt = clampRetryAt(marker, now);
  const inForce = retryAt > now;
  return {
    fields: {
      state: inForce ? 'in_force' : 'past',
      code: marker.code,
      errcode: marker.errcode,
      errmsg: marker.errmsg,
      status: marker.status,
      path: marker.path,
      failed_by: marker.failedBy,
      failed_at: marker.failedAt,
      retry_at: retryAt,
      attempt: marker.attempt,
    },
    line:
      `${failureWhat(marker)}${marker.path ? ` on ${marker.path}` : ''}, ${marker.failedBy ? `by ${marker.failedBy} ` : ''}at ${iso(marker.failedAt)}` +
      (inForce
        ? `; every process fails with it until ${iso(retryAt)} (${Math.ceil((retryAt - now) / 1000)} s): wxkit token clear removes it`
        : `; its pause ended at ${iso(retryAt)} (kept so that the next failure pauses longer)`),
  };
}

function emit(output: Output, fields: Record<string, unknown>, lines: string[]): void {
  output.out(output.json ? JSON.stringify(fields) : lines.join('\n'));
}
