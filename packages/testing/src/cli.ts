import { parseArgs } from 'node:util';
import { startMockWeChat, type MockApp } from './mock-wechat.js';

/** The help text, under the name the command was run as (`wxkit-mock-wechat` or `wxkit mock-server`). */
const help = (name: string) => `usage: ${name} [options]

Runs a mock of WeChat's API with WeChat's token semantics, for tests and demos.

  --host HOST        address to listen on (default 127.0.0.1)
  --port PORT        port (default 0: a free one, printed at start)
  --grace SECONDS    life of the previous token after a new one is issued (default 300)
  --latency MS       delay before every answer (default 0)
  --app ID:SECRET    an app the mock accepts; repeat for more (default: one random app)
  --json             print one JSON line {"url","apps"} instead of text
  --help             this text

Runs until SIGINT or SIGTERM, then exits 0; a usage error exits 2.
Control it over HTTP (JSON answers):
  GET  /__mock/counters[?appid=]           POST /__mock/apps (JSON: appId, secret, jsapiTicket)
  POST /__mock/invalidate?appid=           POST /__mock/issue-classic-token?appid=
  POST /__mock/issue-ticket?appid=[&type=jsapi]
  POST /__mock/clock?advance=SECONDS       POST /__mock/latency?ms=
  POST /__mock/fault (JSON: kind, path, times, errcode, sizeBytes, intervalMs, seed, field, value, from)
  POST /__mock/reset (counters, faults, latency)`;

/** A mistake in the command line: reported with the help text and exit code 2, as usage errors are. */
class UsageError extends Error {
  override name = 'UsageError';
}

function integer(flag: string, value: string | undefined, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) > max) {
    throw new UsageError(`--${flag} must be an integer from 0 to ${max} (got ${JSON.stringify(value)})`);
  }
  return Number(value);
}

function parseApps(specs: string[]): MockApp[] {
  const seen = new Set<string>();
  return specs.map((spec) => {
    // The secret may itself contain ':'; the appid never does.
    const at = spec.indexOf(':');
    if (at <= 0 || at === spec.length - 1) throw new UsageError(`--app must look like wx1234567890abcdef:secret (got ${JSON.stringify(spec)})`);
    const appId = spec.slice(0, at);
    if (seen.has(appId)) throw new UsageError(`--app ${appId} is given twice`);
    seen.add(appId);
    return { appId, secret: spec.slice(at + 1) };
  });
}

/**
 * The mock server command, shared by `wxkit-mock-wechat` and `wxkit mock-server`: starts the mock,
 * prints its URL and apps (text, or one JSON line with `--json`), serves until SIGINT or SIGTERM, then
 * closes it. A usage error is printed to stderr naming the flag, with the help.
 *
 * @param argv - the arguments after the command name.
 * @param name - the command's name in messages and help.
 * @returns the exit code: 0 after a signal or `--help`, 2 for a usage error. Other failures (the port
 *   is taken) reject.
 */
export async function mockServerCommand(argv: string[], name = 'wxkit-mock-wechat'): Promise<number> {
  let mock;
  let apps: MockApp[];
  let json: boolean;
  try {
    const { values } = parseArgs({
      args: argv,
      options: {
        host: { type: 'string' },
        port: { type: 'string' },
        grace: { type: 'string' },
        latency: { type: 'string' },
        app: { type: 'string', multiple: true },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    });
    if (values.help) {
      process.stdout.write(`${help(name)}\n`);
      return 0;
    }
    if (values.host === '') throw new UsageError('--host must not be empty');
    json = values.json;
    apps = parseApps(values.app ?? []);
    const port = integer('port', values.port, 0, 65535);
    const graceSeconds = integer('grace', values.grace, 300, 86_400);
    const latencyMs = integer('latency', values.latency, 0, 600_000);
    mock = await startMockWeChat({ host: values.host ?? '127.0.0.1', port, graceSeconds, latencyMs, apps });
  } catch (error) {
    // parseArgs names the flag in its own message ("Unknown option '--bogus'"); keep it, add the help.
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      // With --json, stdout carries one JSON object whatever happens, as every wxkit command's does.
      if (argv.includes('--json')) process.stdout.write(`${JSON.stringify({ ok: false, error: { code: 'ERR_WXKIT_USAGE', message: (error as Error).message, exit: 2 } })}\n`);
      process.stderr.write(`${name}: ${(error as Error).message}\n\n${help(name)}\n`);
      return 2;
    }
    throw error;
  }

  if (apps.length === 0) apps.push(mock.createApp());
  if (json) {
    process.stdout.write(`${JSON.stringify({ url: mock.url, apps })}\n`);
  } else {
    process.stdout.write(`mock WeChat API at ${mock.url}\n`);
    for (const app of apps) process.stdout.write(`  app ${app.appId}  secret ${app.secret}\n`);
    process.stdout.write('Ctrl-C stops it.\n');
  }
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await mock.close();
  return 0;
}

/**
 * The `wxkit-mock-wechat` command, as its bin runs it: `process.exitCode = await main(argv)`.
 * Never rejects: an unexpected failure (the port is taken) is printed and gives exit code 1.
 *
 * @param argv - the arguments after the command name, e.g. `process.argv.slice(2)`.
 * @returns the exit code: 0, 1 for a failure, 2 for a usage error.
 */
export async function main(argv: string[]): Promise<number> {
  try {
    return await mockServerCommand(argv, 'wxkit-mock-wechat');
  } catch (error) {
    process.stderr.write(`wxkit-mock-wechat: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}
