import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';

export const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
export const builtRedis = fileURLToPath(new URL('../../packages/redis/dist/index.js', import.meta.url));

/** A child process's exit code, output, and its first line once it has one (for gated starts). */
export interface Child {
  /** Resolves with the first line of stdout (the peer's "ready"). */
  firstLine: Promise<string>;
  /** Writes a line to the child's stdin. */
  send(line: string): void;
  done: Promise<{ code: number | null; out: string; err: string }>;
}

/** Starts a command asynchronously: the mock WeChat server runs in this process's event loop. */
export function start(command: string, args: string[]): Child {
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let resolveLine: (line: string) => void;
  const firstLine = new Promise<string>((resolve) => (resolveLine = resolve));
  child.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    const newline = out.indexOf('\n');
    if (newline !== -1) resolveLine(out.slice(0, newline));
  });
  child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      resolveLine('');
      resolve({ code, out: out.trim(), err: err.trim() });
    });
  });
  return { firstLine, send: (line) => child.stdin.end(`${line}\n`), done };
}

/** Options of the PHP peer, tests/peers/fixtures/easywechat-peer.php (its header says what each does). */
export interface PhpPeerOptions {
  redis: string;
  sdk: '4' | '5' | '6';
  store: 'symfony' | 'thinkphp';
  marshaller?: 'stock' | 'serialize';
  /** Store "symfony": a RedisTagAwareAdapter in place of the RedisAdapter. */
  tags?: boolean;
  prefix?: string;
  appid: string;
  secret: string;
  baseUrl: string;
}

export interface PeerFigures {
  token?: string | null;
  sent?: number;
  failed?: number;
  fetches?: number;
  rejected?: number;
  /** Values the peer met and could not decode. */
  unparseable: number;
}

/** Runs one action of the PHP peer and returns its figures; a non-zero exit fails the test with its stderr. */
export async function phpPeer(options: PhpPeerOptions, action: string, ...args: string[]): Promise<PeerFigures> {
  const { code, out, err } = await start('php', [fixture('easywechat-peer.php'), JSON.stringify(options), action, ...args]).done;
  expect(code, err).toBe(0);
  return JSON.parse(out) as PeerFigures;
}

/**
 * Starts an action of the PHP peer held at a gate: it has connected to Redis and loaded its code, and
 * waits. `go()` releases it and resolves with its figures; call it in the same tick as wxkit's own call.
 */
export async function gatedPhpPeer(options: PhpPeerOptions, action: string, ...args: string[]): Promise<{ go(): Promise<PeerFigures> }> {
  const child = start('php', [fixture('easywechat-peer.php'), JSON.stringify({ ...options, gate: true }), action, ...args]);
  expect(await child.firstLine).toBe('ready');
  return {
    async go() {
      child.send('go');
      const { code, out, err } = await child.done;
      expect(code, err).toBe(0);
      return JSON.parse(out.slice(out.indexOf('\n') + 1)) as PeerFigures;
    },
  };
}

/** The raw bytes of a Redis key, read by PHP (phpredis) as hex, so binary values arrive intact. */
export async function rawHex(redisAddress: string, key: string): Promise<string> {
  const [host, port] = redisAddress.split(':');
  const code = `$r = new Redis(); $r->connect('${host}', ${port}); $v = $r->get($argv[1]); echo $v === false ? '' : bin2hex($v);`;
  const result = await start('php', ['-r', code, key]).done;
  expect(result.code, result.err).toBe(0);
  return result.out;
}

/** igbinary's format header, version 2: what every igbinary_serialize() value starts with. */
export const IGBINARY_HEADER = '00000002';

/** The template message the Node side sends in the peer tests. */
export const nodeMessage = { touser: 'oNodeUser', template_id: 'TPL_NODE', data: { first: { value: 'from Node' } } };

/** What the peer tests need of a wxkit client and of the mock. */
interface Sender {
  templateMessage: { send(message: typeof nodeMessage): Promise<unknown> };
  accessToken: { getToken(): Promise<string> };
}
interface Upstream {
  isTokenValid(appId: string, token: string): boolean;
  counters(appId: string): object;
  invalidateTokens(appId: string): void;
}

/** After a round of simultaneous refreshes: the peer reads a token WeChat accepts, and sends with it without a fetch. */
export async function expectPeerReadsAndSends(php: PhpPeerOptions, mock: Upstream, appId: string): Promise<void> {
  const read = await phpPeer(php, 'read');
  expect(read.unparseable).toBe(0);
  expect(mock.isTokenValid(appId, read.token ?? '')).toBe(true);
  expect(await phpPeer(php, 'send', '1')).toMatchObject({ sent: 1, failed: 0, fetches: 0, unparseable: 0 });
}

/**
 * Both sides still share one entry after 3 rounds of simultaneous refreshes (7 fetches so far): the peer
 * refreshes after WeChat dropped every token, and wxkit's next sends, rejected with its remembered
 * token, find the peer's in the store and fetch nothing. Every send of both sides was delivered:
 * 3 rounds × (5 wxkit + 1 PHP), then 5 more.
 */
export async function expectOneEntryAfterPeerRefresh(php: PhpPeerOptions, mock: Upstream, appId: string, client: Sender): Promise<void> {
  mock.invalidateTokens(appId);
  const { token: last } = await phpPeer(php, 'refresh');
  await Promise.all(Array.from({ length: 5 }, () => client.templateMessage.send(nodeMessage)));
  expect(await client.accessToken.getToken()).toBe(last);
  expect(mock.counters(appId)).toMatchObject({ tokenRequests: 8, templateSends: 3 * 6 + 5 });
}
