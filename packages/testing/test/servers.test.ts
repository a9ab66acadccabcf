import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, startRedis } from '../src/index.js';
import { portBlocks, waitForPort } from '../src/servers.js';

// Test files run side by side, one per vitest worker: each worker's servers take ports from a block of
// their own, below the kernel's range for listen(0) (32768 and up), with room for a Cluster bus port.
describe('freePort', () => {
  const pool = process.env.VITEST_POOL_ID;
  afterEach(() => {
    if (pool === undefined) delete process.env.VITEST_POOL_ID;
    else process.env.VITEST_POOL_ID = pool;
  });

  const blockOf = async (id: string | undefined): Promise<number[]> => {
    if (id === undefined) delete process.env.VITEST_POOL_ID;
    else process.env.VITEST_POOL_ID = id;
    const ports: number[] = [];
    for (let i = 0; i < 20; i += 1) ports.push(await freePort());
    return ports;
  };

  it('gives each of four workers (and a process outside vitest) its own block, bus ports included', async () => {
    const blocks = [undefined, '1', '2', '3'].map((id, k) => ({ id, from: 11_000 + k * 2_500 }));
    const seen = new Set<number>();
    for (const { id, from } of blocks) {
      for (const port of await blockOf(id)) {
        expect(port).toBeGreaterThanOrEqual(from);
        expect(port).toBeLessThan(from + 2_500);
        // The bus port of a Cluster node: above every block, below the kernel's range.
        expect(port + 10_000).toBeGreaterThanOrEqual(21_000);
        expect(port + 10_000).toBeLessThan(32_768);
        seen.add(port);
      }
    }
    expect(seen.size).toBe(80);
  });

  it('a fifth worker shares the first one\'s block', async () => {
    for (const port of await blockOf('5')) {
      expect(port).toBeGreaterThanOrEqual(13_500);
      expect(port).toBeLessThan(16_000);
    }
  });
});

describe('portBlocks', () => {
  it('keeps the default blocks below a kernel range that starts at 31000 or above, or is unknown', () => {
    const standard = { base: 11_000, size: 2_500, count: 4, bus: 10_000 };
    expect(portBlocks(32_768)).toEqual(standard);
    expect(portBlocks(31_000)).toEqual(standard);
    expect(portBlocks(undefined)).toEqual(standard);
  });

  it('shrinks the blocks and their bus ports to fit below a kernel range that starts lower', () => {
    for (const start of [30_999, 15_000, 5_000, 1_824]) {
      const { base, size, count, bus } = portBlocks(start);
      expect(base).toBeGreaterThanOrEqual(1024);
      expect(size).toBeGreaterThanOrEqual(100);
      // Every block's ports, then every bus port, apart from each other and below the kernel's range.
      expect(bus).toBeGreaterThanOrEqual(count * size);
      expect(base + count * size - 1 + bus).toBeLessThan(start);
    }
  });

  it('falls back to the default blocks when the kernel range leaves no room below it', () => {
    expect(portBlocks(1_500)).toEqual({ base: 11_000, size: 2_500, count: 4, bus: 10_000 });
  });
});

describe('a server the kit starts', () => {
  it('fails to start on a port another process listens on, rather than hand out that process\'s server', async () => {
    const other = createServer((socket) => socket.end());
    const port = await freePort();
    await new Promise<void>((resolve) => other.listen(port, '127.0.0.1', resolve));
    try {
      await expect(startRedis({ port })).rejects.toThrow(/answers, but not from the redis-server started here|exited with/);
    } finally {
      await new Promise((resolve) => other.close(resolve));
    }
  });

  it('starts, and restarts on its port, when the port is its own', async () => {
    const redis = await startRedis();
    try {
      await redis.stop();
      await redis.start();
    } finally {
      await redis.stop();
    }
  });
});

/**
 * Runs a program, in a process group of its own, that starts a redis-server and a memcached with the kit,
 * prints their ports, then runs `then`; after `check`, both ports must stop answering. The group is
 * killed afterwards whatever happens: a failing run leaves nothing either.
 */
async function programWithServers(then: string, check: (child: ChildProcess, ended: { closed: Promise<number | null>; stderr: () => string }) => Promise<void>): Promise<void> {
  const kit = new URL('../dist/index.js', import.meta.url).href;
  const script = `
    const { startRedis, startMemcached } = await import(${JSON.stringify(kit)});
    const [redis, memcached] = await Promise.all([startRedis(), startMemcached()]);
    console.log(JSON.stringify([redis.port, memcached.port]));
    ${then}`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  // 'close': the output is read to its end.
  const closed = new Promise<number | null>((resolve) => child.once('close', resolve));
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  try {
    // Its line says both servers answer.
    const ports = await new Promise<number[]>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.includes('\n')) resolve(JSON.parse(stdout.trim()) as number[]);
      });
      child.once('close', (code) => reject(new Error(`the program ended (${code}) before its servers started: ${stderr}`)));
    });
    await check(child, { closed, stderr: () => stderr });
    // Each port stops answering (a bound, not a measurement).
    const stopped = (port: number) => waitForPort(port, false, 5_000).then(() => true, () => false);
    expect(await Promise.all(ports.map(stopped))).toEqual([true, true]);
  } finally {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // The group is gone: nothing was left.
    }
  }
}

describe('servers of a program that dies', () => {
  it('a program that ends by an uncaught exception before stopping its servers takes them with it', async () => {
    await programWithServers("throw new Error('the program dies here');", async (_, { closed, stderr }) => {
      expect(await closed, stderr()).toBe(1);
      expect(stderr()).toContain('the program dies here');
    });
  }, 30_000);

  it('a program killed by a signal (SIGKILL: no exit handler runs) takes them with it: its watchdog kills them', async () => {
    await programWithServers('setInterval(() => {}, 1000);', async (child, { closed }) => {
      // The program alone, not its group: the servers stay unless something else ends them.
      process.kill(child.pid!, 'SIGKILL');
      await closed;
    });
  }, 30_000);
});
