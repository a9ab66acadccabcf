import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A real store server started for a test, on 127.0.0.1 and a free port. */
export interface StoreServer {
  readonly host: string;
  readonly port: number;
  /** `redis://127.0.0.1:PORT` or `127.0.0.1:PORT` (memcached). */
  readonly url: string;
  /** Stops the server (SIGTERM, or SIGKILL to simulate a crash) and waits until its port is closed. */
  stop(signal?: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  /** Starts it again on the same port, with no data (as after a crash without persistence). */
  start(): Promise<void>;
  /**
   * Suspends the server (SIGSTOP), as a hung server: its connections stay open and the kernel still
   * accepts new ones, but nothing is answered until {@link StoreServer.resume}.
   */
  pause(): Promise<void>;
  /** Lets a paused server go on (SIGCONT): it then reads and answers what was sent to it meanwhile. */
  resume(): Promise<void>;
  /** The CA certificate (PEM) of a TLS server. */
  readonly ca?: string;
}

/** Three (or more) Redis Cluster masters. */
export interface RedisClusterServers {
  readonly nodes: StoreServer[];
  /** Root node URLs, e.g. for `new RedisCache({ cluster: urls })`. */
  readonly urls: string[];
  stop(): Promise<void>;
}

/** A Redis primary, its replica and three Sentinels watching them. */
export interface RedisSentinelServers {
  /** The name the Sentinels monitor the primary under (`sentinel monitor <name> …`). */
  readonly masterName: string;
  /** The Sentinels' URLs, e.g. for `new RedisCache({ sentinel: { sentinels: urls, masterName } })`. */
  readonly urls: string[];
  readonly sentinels: StoreServer[];
  /** The primary and the replica as started; after a failover their roles are swapped. */
  readonly primary: StoreServer;
  readonly replica: StoreServer;
  /**
   * SIGKILLs the current primary (as a crash would) and resolves once a Sentinel announces the new
   * master (`+switch-master`) and that node reports the role of master: the killed and the new master.
   */
  failover(): Promise<{ killed: StoreServer; promoted: StoreServer }>;
  stop(): Promise<void>;
}

export interface RedisSentinelOptions {
  /** The name the Sentinels monitor the primary under. @default 'wxkit-master' */
  masterName?: string;
  /** `requirepass` of the primary and the replica (and the Sentinels' `auth-pass` for them). */
  password?: string;
  /** `requirepass` of the Sentinels. */
  sentinelPassword?: string;
}

export interface RedisServerOptions {
  /** Extra `redis-server` arguments, e.g. `['--requirepass', 'secret']` or an ACL `--user` line. */
  args?: string[];
  /**
   * Serve TLS only, with a self-signed certificate for 127.0.0.1 made by `openssl`: the server's `url`
   * is then `rediss://…` and its `ca` is the certificate to trust.
   */
  tls?: boolean;
  /** The port to listen on, e.g. one a client was already told about; a free one by default. */
  port?: number;
}

/**
 * Test servers take their ports from a block of their own, below the range the kernel hands out for
 * `listen(0)` and outgoing connections (32768 and up on Linux by default). Test files run side by side,
 * one per vitest worker (`VITEST_POOL_ID`, 1 and up; 0 outside vitest), and each of the first four
 * workers has a block of 2500 ports in 11000-20999, so a port a test keeps unused, or frees to restart
 * its server there, is not taken meanwhile by another file's server or client. A Redis Cluster node's
 * bus port (its port + 10000) falls in 21000-30999, which no block uses. Workers past the fourth share a
 * block (pool id modulo 4); each process starts at a random place in its block, and a port in use is
 * skipped. On a machine whose kernel range starts lower (`net.ipv4.ip_local_port_range`), the blocks and
 * their bus ports shrink to fit between 1024 and its start; a range that starts below 1824 leaves no
 * room, and the default blocks are used (the kernel may then hand out one of their ports too).
 */
export interface PortBlocks {
  readonly base: number;
  readonly size: number;
  readonly count: number;
  /** What a Cluster node adds to its port for its bus port. */
  readonly bus: number;
}

const DEFAULT_PORT_BLOCKS: PortBlocks = { base: 11_000, size: 2_500, count: 4, bus: 10_000 };

/** The blocks for a kernel whose `listen(0)` range starts at `ephemeralStart` (unknown: the default). @internal */
export function portBlocks(ephemeralStart: number | undefined): PortBlocks {
  const { base, size, count, bus } = DEFAULT_PORT_BLOCKS;
  if (ephemeralStart === undefined || ephemeralStart >= base + count * size + bus) return DEFAULT_PORT_BLOCKS;
  const fitting = Math.floor((ephemeralStart - 1024) / (2 * count));
  if (fitting < 100) return DEFAULT_PORT_BLOCKS;
  return { base: 1024, size: fitting, count, bus: count * fitting };
}

/** Where Linux starts handing out ports for listen(0) and outgoing connections; undefined elsewhere. */
function ephemeralStart(): number | undefined {
  try {
    const start = Number.parseInt(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0] ?? '', 10);
    return Number.isSafeInteger(start) && start > 0 ? start : undefined;
  } catch {
    return undefined;
  }
}

const PORT_BLOCKS = portBlocks(ephemeralStart());
/** Where this process goes on in its block: a random start, so a worker's child processes spread out. */
let portCursor = Math.floor(Math.random() * PORT_BLOCKS.size);

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** A port nobody listens on right now, from this process's block (free until a server takes it). */
export async function freePort(): Promise<number> {
  const pool = Number.parseInt(process.env.VITEST_POOL_ID ?? '0', 10);
  const base = PORT_BLOCKS.base + ((Number.isSafeInteger(pool) && pool > 0 ? pool : 0) % PORT_BLOCKS.count) * PORT_BLOCKS.size;
  for (let tried = 0; tried < PORT_BLOCKS.size; tried += 1) {
    const port = base + (portCursor++ % PORT_BLOCKS.size);
    if ((await canListen(port)) && (await canListen(port + PORT_BLOCKS.bus))) return port;
  }
  throw new Error(`no free port in ${base}-${base + PORT_BLOCKS.size - 1}`);
}

function requireCommand(command: string, debianPackage: string): void {
  const found = spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
  if (!found) {
    throw new Error(`${command} is not installed; run the README's test command (it installs ${debianPackage}) or apt-get install ${debianPackage}`);
  }
}

/** Resolves once `port` on 127.0.0.1 accepts connections (`up`) or refuses them; rejects after `timeoutMs`. */
export async function waitForPort(port: number, up: boolean, timeoutMs = 10_000): Promise<void> {
  const started = Date.now();
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open === up) return;
    if (Date.now() - started > timeoutMs) throw new Error(`port ${port} did not ${up ? 'open' : 'close'} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/**
 * Whether process `pid` holds the IPv4 socket listening on `port` (Linux: /proc/net/tcp names the listening
 * socket's inode, /proc/<pid>/fd the process's sockets; the kit's servers bind 127.0.0.1 only). Without
 * /proc it cannot tell, and says yes. A server that could not bind exits, but the port answering may be
 * another process's server.
 */
function ownsPort(pid: number, port: number): boolean {
  if (!existsSync('/proc/net/tcp')) return true;
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const inodes = new Set<string>();
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    // local_address, rem_address, st (0A: LISTEN), …, inode (the tenth field)
    if (fields[1]?.endsWith(hex) && fields[3] === '0A' && fields[9]) inodes.add(`socket:[${fields[9]}]`);
  }
  try {
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return inodes.has(readlinkSync(`/proc/${pid}/fd/${fd}`));
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

interface Owned {
  running: Set<ChildProcess>;
  hooked: boolean;
  /** The watchdog's stdin, where the servers' pids are told (`+pid`, `-pid`); undefined where there is none. */
  watchdog?: NodeJS.WritableStream | null;
}

/**
 * The servers this process started and has not seen exit. A program that dies by an uncaught exception,
 * or calls process.exit(), before it stopped them would leave them running, holding their ports: they
 * are killed as it exits. One killed by a signal (SIGKILL, a runner's SIGTERM) runs no exit handler: a
 * watchdog, a shell reading the servers' pids from a pipe of this process's, kills those still listed
 * when the pipe closes, which it does when this process ends, however it ends. Kept on globalThis: a
 * test runner that loads the kit afresh for each file adds no exit handler or watchdog per load.
 */
const ours = ((globalThis as { [key: symbol]: Owned | undefined })[Symbol.for('@wxkit/testing/servers')] ??= { running: new Set(), hooked: false });

// The watchdog: `+pid` lists a server, `-pid` takes it off (it exited); at the end of its input, it
// kills what is still listed. No command but the shell's own, and in a session of its own, so that
// neither a terminal's signals nor a kill of this process's group end it before its work.
const WATCHDOG = `pids=''
while IFS= read -r line; do
  case "$line" in
    +*) pids="$pids \${line#+}" ;;
    -*) rest=''; for p in $pids; do [ "$p" = "\${line#-}" ] || rest="$rest $p"; done; pids=$rest ;;
  esac
done
[ -n "$pids" ] && kill -9 $pids 2>/dev/null
exit 0`;

function tellWatchdog(line: string): void {
  if (ours.watchdog === undefined) {
    ours.watchdog = null;
    if (process.platform === 'win32') return;
    try {
      const watchdog = spawn('sh', ['-c', WATCHDOG], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
      watchdog.on('error', () => (ours.watchdog = null));
      // Neither the watchdog nor its pipe keeps this process running.
      watchdog.unref();
      const stdin = watchdog.stdin!;
      (stdin as unknown as { unref?: () => void }).unref?.();
      stdin.on('error', () => (ours.watchdog = null));
      ours.watchdog = stdin;
    } catch {
      return;
    }
  }
  ours.watchdog?.write(`${line}\n`);
}

function owned(child: ChildProcess): void {
  ours.running.add(child);
  if (child.pid !== undefined) tellWatchdog(`+${child.pid}`);
  child.once('exit', () => {
    ours.running.delete(child);
    if (child.pid !== undefined) tellWatchdog(`-${child.pid}`);
  });
  if (ours.hooked) return;
  ours.hooked = true;
  process.on('exit', () => {
    for (const server of ours.running) server.kill('SIGKILL');
  });
}

/** Runs `command args` as a server process we own; restartable on the same port. */
function managedServer(command: string, args: (port: number) => string[], port: number, url: string): StoreServer {
  let child: ChildProcess | undefined;
  let output = '';
  const server: StoreServer = {
    host: '127.0.0.1',
    port,
    url,
    async start() {
      if (child && child.exitCode === null && child.signalCode === null) return;
      output = '';
      child = spawn(command, args(port), { stdio: ['ignore', 'pipe', 'pipe'] });
      owned(child);
      child.stdout?.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-4000)));
      child.stderr?.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-4000)));
      const exited = new Promise<never>((_, reject) =>
        child!.once('exit', (code) => reject(new Error(`${command} exited with ${code} at start:\n${output}`))),
      );
      await Promise.race([waitForPort(port, true), exited]);
      const started = child;
      if (started.exitCode === null && started.signalCode === null && ownsPort(started.pid!, port)) return;
      started.kill('SIGKILL');
      throw new Error(`port ${port} answers, but not from the ${command} started here: another process listens there\n${output}`);
    },
    async stop(signal = 'SIGTERM') {
      const current = child;
      if (!current || current.exitCode !== null || current.signalCode !== null) return;
      const gone = new Promise((resolve) => current.once('exit', resolve));
      current.kill(signal);
      // A paused server takes its SIGTERM only once it goes on.
      current.kill('SIGCONT');
      await gone;
      await waitForPort(port, false);
    },
    async pause() {
      if (!child || child.exitCode !== null || child.signalCode !== null) throw new Error(`${command} is not running`);
      child.kill('SIGSTOP');
      await stateIs(child.pid!, 'T');
    },
    async resume() {
      if (!child || child.exitCode !== null || child.signalCode !== null) throw new Error(`${command} is not running`);
      child.kill('SIGCONT');
      await stateIs(child.pid!, undefined);
    },
  };
  return server;
}

/**
 * Waits until process `pid` is stopped (`T`) or, undefined, runs again, as /proc tells; where there is
 * no /proc the signal is taken to have landed.
 */
async function stateIs(pid: number, stopped: 'T' | undefined): Promise<void> {
  const started = Date.now();
  for (;;) {
    let state: string | undefined;
    try {
      // The state follows the command's name in parentheses, which may hold spaces.
      state = /\)\s+(\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1];
    } catch {
      return;
    }
    if (stopped ? state === 'T' : state !== 'T') return;
    if (Date.now() - started > 5_000) throw new Error(`process ${pid} did not ${stopped ? 'stop' : 'go on'} within 5 s`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Starts a real `redis-server` (Debian's package) on a free 127.0.0.1 port, without persistence, in a
 * directory of its own. It never touches another Redis on the machine.
 */
export async function startRedis(options: RedisServerOptions = {}): Promise<StoreServer> {
  requireCommand('redis-server', 'redis-server');
  const port = options.port ?? (await freePort());
  let tls: string[] = [];
  let ca: string | undefined;
  if (options.tls) {
    requireCommand('openssl', 'openssl');
    const dir = mkdtempSync(join(tmpdir(), 'wxkit-redis-tls-'));
    const made = spawnSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ]);
    if (made.status !== 0) throw new Error(`openssl could not make a certificate: ${made.stderr}`);
    ca = readFileSync(join(dir, 'cert.pem'), 'utf8');
    tls = ['--tls-cert-file', join(dir, 'cert.pem'), '--tls-key-file', join(dir, 'key.pem'), '--tls-ca-cert-file', join(dir, 'cert.pem'), '--tls-auth-clients', 'no'];
  }
  // No persistence: `--save ''` and no AOF, so the server writes nothing to its directory.
  const server = managedServer(
    'redis-server',
    (p) => [
      ...(options.tls ? ['--port', '0', '--tls-port', String(p), ...tls] : ['--port', String(p)]),
      '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmpdir(), '--daemonize', 'no', ...(options.args ?? []),
    ],
    port,
    `${options.tls ? 'rediss' : 'redis'}://127.0.0.1:${port}`,
  );
  await server.start();
  return ca === undefined ? server : Object.assign(server, { ca });
}

/**
 * Starts a Redis Cluster of `masters` (default 3) real `redis-server` processes with no replicas, all
 * slots assigned, and waits until every node reports `cluster_state:ok`.
 */
export async function startRedisCluster(masters = 3): Promise<RedisClusterServers> {
  requireCommand('redis-server', 'redis-server');
  requireCommand('redis-cli', 'redis-tools');
  const dir = mkdtempSync(join(tmpdir(), 'wxkit-redis-cluster-'));
  const nodes: StoreServer[] = [];
  for (let i = 0; i < masters; i += 1) {
    const port = await freePort();
    const node = managedServer(
      'redis-server',
      (p) => [
        '--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no',
        '--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${p}.conf`, '--cluster-node-timeout', '2000',
        // Redis's own bus port is the port + 10000; blocks shrunk for a low kernel range name theirs (Redis 7).
        ...(PORT_BLOCKS.bus === 10_000 ? [] : ['--cluster-port', String(p + PORT_BLOCKS.bus)]),
      ],
      port,
      `redis://127.0.0.1:${port}`,
    );
    await node.start();
    nodes.push(node);
  }
  const create = spawnSync('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (create.status !== 0) throw new Error(`redis-cli --cluster create failed:\n${create.stdout}${create.stderr}`);
  const started = Date.now();
  for (const node of nodes) {
    for (;;) {
      const info = spawnSync('redis-cli', ['-p', String(node.port), 'cluster', 'info'], { encoding: 'utf8' }).stdout;
      if (info.includes('cluster_state:ok')) break;
      if (Date.now() - started > 20_000) throw new Error(`Redis Cluster node ${node.port} never reached cluster_state:ok`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  return {
    nodes,
    urls: nodes.map((node) => node.url),
    async stop() {
      await Promise.all(nodes.map((node) => node.stop()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Starts a primary, a replica of it and three Sentinels (`redis-server --sentinel`, quorum 2), all on
 * free 127.0.0.1 ports, each Sentinel with a config file of its own in a temporary directory. A
 * primary is declared down after 1 s and a failover may take 3 s, so one takes a few seconds. Resolves
 * once the replica is in sync and every Sentinel sees the replica and the two other Sentinels.
 */
export async function startRedisSentinel(options: RedisSentinelOptions = {}): Promise<RedisSentinelServers> {
  requireCommand('redis-server', 'redis-server');
  requireCommand('redis-cli', 'redis-tools');
  const masterName = options.masterName ?? 'wxkit-master';
  const { password, sentinelPassword } = options;
  const dir = mkdtempSync(join(tmpdir(), 'wxkit-redis-sentinel-'));
  const auth = password ? ['--requirepass', password, '--masterauth', password] : [];
  const dataArgs = (p: number) => ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no', ...auth];
  const dataCli = (port: number, ...args: string[]) => redisCli(port, ...(password ? ['-a', password] : []), ...args);
  const sentinelCli = (port: number, ...args: string[]) => redisCli(port, ...(sentinelPassword ? ['-a', sentinelPassword] : []), ...args);
  const [primaryPort, replicaPort] = [await freePort(), await freePort()];
  const primary = managedServer('redis-server', dataArgs, primaryPort, `redis://127.0.0.1:${primaryPort}`);
  const replica = managedServer('redis-server', (p) => [...dataArgs(p), '--replicaof', '127.0.0.1', String(primaryPort)], replicaPort, `redis://127.0.0.1:${replicaPort}`);
  const sentinels: StoreServer[] = [];
  const started: StoreServer[] = [];
  const stopAll = async () => {
    await Promise.all(started.map((server) => server.stop()));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const server of [primary, replica]) {
      await server.start();
      started.push(server);
    }
    for (let i = 0; i < 3; i += 1) {
      const port = await freePort();
      // Sentinel rewrites its config file as it learns the topology: one file each.
      const conf = join(dir, `sentinel-${port}.conf`);
      writeFileSync(
        conf,
        [
          `port ${port}`,
          'bind 127.0.0.1',
          `dir ${dir}`,
          `sentinel monitor ${masterName} 127.0.0.1 ${primaryPort} 2`,
          `sentinel down-after-milliseconds ${masterName} 1000`,
          `sentinel failover-timeout ${masterName} 3000`,
          `sentinel parallel-syncs ${masterName} 1`,
          ...(password ? [`sentinel auth-pass ${masterName} ${password}`] : []),
          // Sentinels use their own requirepass to talk to each other too.
          ...(sentinelPassword ? [`requirepass ${sentinelPassword}`] : []),
          '',
        ].join('\n'),
      );
      const sentinel = managedServer('redis-server', () => [conf, '--sentinel'], port, `redis://127.0.0.1:${port}`);
      await sentinel.start();
      started.push(sentinel);
      sentinels.push(sentinel);
    }
    await until(() => /master_link_status:up/.test(dataCli(replicaPort, 'INFO', 'replication')), 'the replica to sync with the primary');
    for (const sentinel of sentinels) {
      await until(() => {
        const fields = sentinelCli(sentinel.port, 'SENTINEL', 'MASTER', masterName).split('\n');
        const field = (name: string) => fields[fields.indexOf(name) + 1];
        return field('num-slaves') === '1' && field('num-other-sentinels') === '2';
      }, `Sentinel ${sentinel.port} to see the replica and the other Sentinels`);
    }
  } catch (error) {
    await stopAll();
    throw error;
  }
  const byPort = (port: number) => [primary, replica].find((server) => server.port === port);
  return {
    masterName,
    urls: sentinels.map((sentinel) => sentinel.url),
    sentinels,
    primary,
    replica,
    async failover() {
      const current = Number(sentinelCli(sentinels[0]!.port, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', masterName).split('\n')[1]);
      const killed = byPort(current);
      if (!killed) throw new Error(`the Sentinels name an unknown master on port ${current}`);
      const switched = sentinelEvent(sentinels[0]!.port, '+switch-master', masterName, sentinelPassword);
      await switched.subscribed;
      await killed.stop('SIGKILL');
      const message = await switched.message;
      // `+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`
      const promoted = byPort(Number(message.split(' ')[4]));
      if (!promoted || promoted === killed) throw new Error(`unexpected failover: ${message}`);
      if (dataCli(promoted.port, 'ROLE').split('\n')[0] !== 'master') throw new Error(`${promoted.url} was announced but is not a master`);
      return { killed, promoted };
    },
    stop: stopAll,
  };
}

/** Polls a synchronous check every 50 ms, for at most 30 s. */
async function until(check: () => boolean, what: string): Promise<void> {
  const started = Date.now();
  while (!check()) {
    if (Date.now() - started > 30_000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Subscribes to one Sentinel event channel over a plain connection (inline commands, replies read as
 * text) and resolves the first message for `masterName`.
 */
function sentinelEvent(port: number, channel: string, masterName: string, password?: string): { subscribed: Promise<void>; message: Promise<string> } {
  const socket = createConnection({ host: '127.0.0.1', port });
  let buffer = '';
  let onSubscribed: () => void = () => undefined;
  const subscribed = new Promise<void>((resolve) => (onSubscribed = resolve));
  const message = new Promise<string>((resolve, reject) => {
    socket.setEncoding('utf8');
    socket.once('connect', () => socket.write(`${password ? `AUTH ${password}\r\n` : ''}SUBSCRIBE ${channel}\r\n`));
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      // RESP2 push: *3 $7 message $<n> <channel> $<n> <payload>; the subscribe reply comes first.
      if (buffer.includes('subscribe')) onSubscribed();
      const lines = buffer.split('\r\n');
      const payload = lines.find((line) => line.startsWith(`${masterName} `));
      if (lines.includes('message') && payload) {
        socket.destroy();
        resolve(payload);
      }
    });
    socket.once('error', reject);
  });
  return { subscribed, message };
}

/** Options of {@link startMemcached}. */
export interface MemcachedServerOptions {
  /** More command-line options for memcached (`['-C']`: no CAS). @default none */
  args?: string[];
}

/** Starts a real `memcached` (Debian's package) on a free 127.0.0.1 port, TCP only. */
export async function startMemcached(options: MemcachedServerOptions = {}): Promise<StoreServer> {
  requireCommand('memcached', 'memcached');
  const port = await freePort();
  const runAsRoot = process.getuid?.() === 0 ? ['-u', 'root'] : [];
  const args = options.args ?? [];
  const server = managedServer('memcached', (p) => ['-p', String(p), '-l', '127.0.0.1', '-U', '0', '-m', '64', ...runAsRoot, ...args], port, `127.0.0.1:${port}`);
  await server.start();
  return server;
}

/** Runs `redis-cli` against a server and returns its output without the trailing newline. */
export function redisCli(port: number, ...args: string[]): string {
  const result = spawnSync('redis-cli', ['-p', String(port), '--no-auth-warning', ...args], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`redis-cli ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout.replace(/\n$/, '');
}

/**
 * The bytes `redis-cli GET` prints for a key (redis-cli prints values raw when its output is no
 * terminal), or undefined when the key is absent: what another language's client reads.
 */
export function redisGetBytes(port: number, key: string, ...args: string[]): Buffer | undefined {
  if (redisCli(port, ...args, 'EXISTS', key) === '0') return undefined;
  const result = spawnSync('redis-cli', ['-p', String(port), '--no-auth-warning', ...args, 'GET', key]);
  if (result.status !== 0) throw new Error(`redis-cli GET failed: ${result.stderr.toString()}`);
  return result.stdout.subarray(0, result.stdout.length - 1);
}

/** The exact bytes memcached holds for a key, read with the plain text protocol, or undefined. */
export async function memcachedGetBytes(port: number, key: string): Promise<Buffer | undefined> {
  const reply = await memcachedCommand(port, `get ${key}\r\n`);
  const match = /^VALUE \S+ \d+ (\d+)\r\n/.exec(reply);
  if (!match) return undefined;
  const start = match[0].length;
  return Buffer.from(reply, 'latin1').subarray(start, start + Number(match[1]));
}

/**
 * Reads a key from memcached with the plain text protocol (`get <key>`), as a PHP or Python client
 * would see it: the exact bytes, or undefined when absent.
 */
export async function memcachedGet(port: number, key: string): Promise<string | undefined> {
  return memcachedCommand(port, `get ${key}\r\n`).then((reply) => {
    const match = /^VALUE \S+ \d+ (\d+)\r\n/.exec(reply);
    if (!match) return undefined;
    const start = match[0].length;
    return Buffer.from(reply, 'latin1').subarray(start, start + Number(match[1])).toString('utf8');
  });
}

/** Writes a key to memcached with the plain text protocol (`set <key> 0 <ttl> <bytes>`). */
export async function memcachedSet(port: number, key: string, value: string, ttlSeconds: number): Promise<void> {
  const bytes = Buffer.from(value, 'utf8');
  const reply = await memcachedCommand(port, `set ${key} 0 ${ttlSeconds} ${bytes.length}\r\n${bytes.toString('latin1')}\r\n`);
  if (!reply.startsWith('STORED')) throw new Error(`memcached set failed: ${reply}`);
}

/**
 * Sends one command of memcached's text protocol (`lru_crawler metadump all\r\n`, say) and resolves its
 * whole answer, up to the line that ends it (`END`, `STORED`, `NOT_STORED` or an error).
 */
export function memcachedCommand(port: number, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    let reply = '';
    socket.setEncoding('latin1');
    socket.once('connect', () => socket.write(command, 'latin1'));
    socket.on('data', (chunk: string) => {
      reply += chunk;
      if (/(END|STORED|NOT_STORED|ERROR[^\r]*)\r\n$/.test(reply)) socket.end();
    });
    socket.once('end', () => resolve(reply));
    socket.once('error', reject);
  });
}
