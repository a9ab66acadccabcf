import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startMockWeChat, type MockWeChat } from '@wxkit/testing';

// `wxkit serve --config`: a key the loader does not know is refused before anything starts (exit 7),
// never dropped: a misspelt "baseUrl" sent every app's secret to api.weixin.qq.com instead of the proxy.
const bin = fileURLToPath(new URL('../bin/wxkit.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'wxkit-serve-config-'));
const env = { TEST_SERVE_KEYS: 'serve-config-key-0123456789', TEST_OA_SECRET: 'not-a-real-secret' };
const app = { app: 'oa:wx1234abcd5678ef90', secretEnv: 'TEST_OA_SECRET' };

let mock: MockWeChat;
beforeAll(async () => {
  mock = await startMockWeChat();
});
afterAll(async () => {
  await mock?.close();
});

async function serve(name: string, config: Record<string, unknown>, extraEnv: Record<string, string> = {}): Promise<{ code: number | null; stderr: string }> {
  const file = join(dir, `${name}.json`);
  writeFileSync(file, JSON.stringify(config));
  const child = spawn(process.execPath, [bin, 'serve', '--store', `file://${join(dir, 'store')}`, '--config', file, '--port', '0'], {
    env: { ...process.env, ...env, ...extraEnv },
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  // Started after all: stopped, so the test fails on the exit code instead of waiting for one.
  child.stdout.once('data', () => child.kill('SIGTERM'));
  // 'close': stderr is read to its end (at 'exit' the last lines may still be in the pipe).
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  return { code, stderr };
}

describe('wxkit serve --config', () => {
  it('refuses an unknown top-level key, naming the key it resembles', async () => {
    const typo = await serve('typo', { keysEnv: 'TEST_SERVE_KEYS', apps: [app], baseURL: mock.url });
    expect(typo.code, typo.stderr).toBe(7);
    expect(typo.stderr).toContain('"baseURL" is not a config key (did you mean "baseUrl"?)');
    const ahead = await serve('ahead', { keysEnv: 'TEST_SERVE_KEYS', apps: [app], baseUrl: mock.url, refreshAhead: 600 });
    expect(ahead.code, ahead.stderr).toBe(7);
    expect(ahead.stderr).toContain('"refreshAhead" is not a config key (did you mean "refreshAheadSeconds"?)');
    // Nothing like any key: the message lists them.
    const other = await serve('other', { keysEnv: 'TEST_SERVE_KEYS', apps: [app], baseUrl: mock.url, colour: 'blue' });
    expect(other.code, other.stderr).toBe(7);
    expect(other.stderr).toContain('"colour" is not a config key; the keys are keysEnv, apps,');
  });

  it('refuses an unknown key in an app entry, and one that belongs at the top level', async () => {
    const typo = await serve('app-typo', { keysEnv: 'TEST_SERVE_KEYS', apps: [app, { ...app, app: 'mp:wx0123456789abcdef', tokenEndPoint: 'classic' }], baseUrl: mock.url });
    expect(typo.code, typo.stderr).toBe(7);
    expect(typo.stderr).toContain('apps[1].tokenEndPoint is not a config key (did you mean "tokenEndpoint"?)');
    const ahead = await serve('app-ahead', { keysEnv: 'TEST_SERVE_KEYS', apps: [{ ...app, refreshAhead: 600 }], baseUrl: mock.url });
    expect(ahead.code, ahead.stderr).toBe(7);
    expect(ahead.stderr).toContain('apps[0].refreshAhead is not a config key: "refreshAheadSeconds" is set at the top level, for every app');
  });

  it('refuses a token endpoint for a WeCom app, rather than drop it', async () => {
    const work = { app: 'work:ww1234abcd5678ef90:1000002', secretEnv: 'TEST_OA_SECRET', tokenEndpoint: 'classic' };
    const wrong = await serve('work-endpoint', { keysEnv: 'TEST_SERVE_KEYS', apps: [app, work], baseUrl: mock.url });
    expect(wrong.code, wrong.stderr).toBe(7);
    expect(wrong.stderr).toContain('apps[1].tokenEndpoint is for official accounts and mini programs; WeCom has one token endpoint');
  });

  it('refuses a secret with a line break, a space or a control character (exit 7), never quoting it: WeChat would refuse it with 40125 and no reason', async () => {
    for (const secret of ['not-a-real-secret\n', 'not-a-real-secret\r\n', 'not a real secret', 'not-a-real-secret\u0007', 'not-a-real-secret\u0085', 'not-a-real-\u009bsecret']) {
      const wrong = await serve('secret-break', { keysEnv: 'TEST_SERVE_KEYS', apps: [app], baseUrl: mock.url }, { TEST_OA_SECRET: secret });
      expect(wrong.code, wrong.stderr).toBe(7);
      expect(wrong.stderr).toContain('the environment variable TEST_OA_SECRET (apps[0].secretEnv) holds a space, a control character or a character past U+00FF');
      expect(wrong.stderr).not.toContain('not-a-real');
    }
  });

  it('refuses a secret still in quotes (exit 7), naming the variable, never quoting it', async () => {
    for (const secret of ['"not-a-real-secret"', "'not-a-real-secret'"]) {
      const wrong = await serve('secret-quoted', { keysEnv: 'TEST_SERVE_KEYS', apps: [app], baseUrl: mock.url }, { TEST_OA_SECRET: secret });
      expect(wrong.code, wrong.stderr).toBe(7);
      expect(wrong.stderr).toContain('the environment variable TEST_OA_SECRET (apps[0].secretEnv) is still in quotes');
      expect(wrong.stderr).not.toContain('not-a-real');
    }
  });

  it('refuses a prefix that is not a string', async () => {
    for (const prefix of [1, null, { value: 'wechat:' }]) {
      const wrong = await serve('prefix', { keysEnv: 'TEST_SERVE_KEYS', apps: [app], baseUrl: mock.url, prefix });
      expect(wrong.code, wrong.stderr).toBe(7);
      expect(wrong.stderr).toContain('"prefix" must be a string');
    }
  });

  it('logs the origin of the API the secrets go to', async () => {
    const file = join(dir, 'upstream.json');
    writeFileSync(file, JSON.stringify({ keysEnv: 'TEST_SERVE_KEYS', apps: [app], baseUrl: mock.url }));
    const child = spawn(process.execPath, [bin, 'serve', '--store', `file://${join(dir, 'store')}`, '--config', file, '--port', String(await freePort())], {
      env: { ...process.env, ...env },
    });
    const lines = createInterface({ input: child.stdout });
    const listening = await new Promise<string>((resolve, reject) => {
      lines.on('line', (line) => (JSON.parse(line) as { event?: string }).event === 'serve.listening' && resolve(line));
      child.once('exit', (code) => reject(new Error(`wxkit serve exited with ${code}`)));
    });
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
    expect(JSON.parse(listening)).toMatchObject({ upstream: [new URL(mock.url).origin] });
  });
});
