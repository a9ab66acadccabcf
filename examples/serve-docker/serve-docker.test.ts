import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';

// The image cannot be built here; its command line can run. This reads the Dockerfile, and runs its CMD
// word for word, with its ENV and the file it COPYs, against a real redis-server and the mock server;
// then runs its HEALTHCHECK, while Redis is up and while it is down.
const here = fileURLToPath(new URL('.', import.meta.url));
const bin = fileURLToPath(new URL('../../packages/cli/bin/wxkit.mjs', import.meta.url));
const KEY = 'docker-example-key-0123456789';

interface Dockerfile {
  env: Record<string, string>;
  copies: Map<string, string>;
  cmd: string[];
  healthcheck: string[];
}

function parseDockerfile(text: string): Dockerfile {
  const instructions = text
    .replace(/\\\n\s*/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith('#'));
  const env: Record<string, string> = {};
  const copies = new Map<string, string>();
  let cmd: string[] = [];
  let healthcheck: string[] = [];
  for (const line of instructions) {
    const [instruction, rest = ''] = line.split(/\s+(.*)/s);
    if (instruction === 'ENV') for (const [, name, value] of rest.matchAll(/(\w+)=(\S+)/g)) env[name!] = value!;
    if (instruction === 'COPY') {
      const [from, to] = rest.split(/\s+/);
      copies.set(to!, from!);
    }
    if (instruction === 'CMD') cmd = JSON.parse(rest) as string[];
    if (instruction === 'HEALTHCHECK') healthcheck = JSON.parse(rest.slice(rest.indexOf('CMD ') + 4)) as string[];
  }
  return { env, copies, cmd, healthcheck };
}

const dockerfile = parseDockerfile(readFileSync(join(here, 'Dockerfile'), 'utf8'));
const config = JSON.parse(readFileSync(join(here, 'serve.json'), 'utf8')) as { keysEnv: string; apps: { app: string; secretEnv: string }[] };
const appId = config.apps[0]!.app.split(':')[1]!;
const dir = mkdtempSync(join(tmpdir(), 'wxkit-docker-'));

let mock: MockWeChat;
let redis: StoreServer;
let env: Record<string, string | undefined>;
beforeAll(async () => {
  [mock, redis] = await Promise.all([startMockWeChat(), startRedis()]);
  const app = mock.createApp({ appId });
  env = {
    ...process.env,
    ...dockerfile.env,
    // What docker-compose.yml sets, with this test's Redis, port and secrets.
    WXKIT_STORE: redis.url,
    WXKIT_PORT: String(await freePort()),
    [config.keysEnv]: KEY,
    [config.apps[0]!.secretEnv]: app.secret,
  };
});
afterAll(async () => {
  await Promise.all([mock?.close(), redis?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

/** The image's files as this checkout has them; serve.json with the mock's URL, the one change. */
function localPath(arg: string): string {
  const source = dockerfile.copies.get(arg);
  if (source !== 'serve.json') return arg;
  const local = join(dir, 'serve.json');
  writeFileSync(local, JSON.stringify({ ...config, baseUrl: mock.url }));
  return local;
}

function healthcheck(): Promise<number | null> {
  const [command, ...args] = dockerfile.healthcheck;
  expect(command).toBe('node');
  const child = spawn(process.execPath, args, { env, stdio: 'ignore' });
  return new Promise((resolve) => child.once('exit', resolve));
}

describe('examples/serve-docker', () => {
  it('the compose file passes every variable serve.json names, and maps the port the image exposes', () => {
    const compose = readFileSync(join(here, 'docker-compose.yml'), 'utf8');
    for (const name of ['WXKIT_STORE', config.keysEnv, ...config.apps.map((app) => app.secretEnv)]) expect(compose).toMatch(new RegExp(`^\\s+${name}: `, 'm'));
    expect(compose).toContain(`127.0.0.1:${dockerfile.env.WXKIT_PORT}:${dockerfile.env.WXKIT_PORT}`);
    expect(dockerfile.cmd[0]).toBe('wxkit');
  });

  it('the image’s CMD serves tokens; its HEALTHCHECK passes while Redis is up and fails while it is down', async () => {
    const [, ...args] = dockerfile.cmd;
    const child = spawn(process.execPath, [bin, ...args.map(localPath)], { env });
    const lines: Record<string, unknown>[] = [];
    let output = '';
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const seen = (event: string) =>
      new Promise<Record<string, unknown>>((resolve, reject) => {
        const found = lines.find((line) => line.event === event);
        if (found) return resolve(found);
        const onLine = () => {
          const line = lines.find((each) => each.event === event);
          if (line) resolve(line);
        };
        rl.on('line', onLine);
        child.once('exit', (code) => reject(new Error(`wxkit serve exited with ${code} before ${event}: ${output}`)));
      });
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (text) => {
      output += `${text}\n`;
      lines.push(JSON.parse(text) as Record<string, unknown>);
    });
    try {
      const listening = await seen('serve.listening');
      const url = listening.url as string;
      expect(url).toBe(`http://0.0.0.0:${env.WXKIT_PORT}`);
      const local = `http://127.0.0.1:${env.WXKIT_PORT}`;
      expect(await healthcheck()).toBe(0);
      const token = await fetch(`${local}/v1/token/oa/${appId}`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(token.status).toBe(200);
      expect(mock.counters(appId).tokenRequests).toBe(1);

      await redis.stop();
      await seen('serve.store_down');
      expect(await healthcheck()).toBe(1);
      await redis.start();
    } finally {
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
  });
});
