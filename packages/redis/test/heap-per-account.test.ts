import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';

// The heap an account's client holds, as the scale benchmark counts it (docs/benchmarks.md, "Scale": one
// plain OfficialAccount per account, all on one RedisCache, each warm), whose goal is 5 KB an account at
// 10,000. Changes that each added a little took it past that goal twice (to 5.8 KB the last time, about
// 0.9 KB an account in one round of changes), and only a rerun of the benchmark showed it. This test
// makes 2,000 accounts the same way in a process of their own, and fails when each holds well past what
// it holds now.
//
// The figure is the clients' own heap: the process's modules, its shared pools and their sockets are
// made before it is counted (by 100 accounts first), and compiled code is left out (see
// fixtures/heap-child.mjs). The benchmark's figure counts them: it read 4.23 KB an account where this
// reads 2.8-2.9 KB. Over 30 runs (Node 20, ten of them with both cores of a 2-core machine busy; Node 22
// and 24 read the same) this read 2,780-2,990 bytes an account. The limit is about 300 bytes above
// that, so that the spread never reaches it, and about 400 bytes below what a growth like the last one
// reads: 3,670-3,790 with a client made 0.9 KB larger, 3,790-3,890 with 1 KB.
const LIMIT_BYTES = 3_300;
const ACCOUNTS = 2_000;
const WARM = 100;

let redis: StoreServer;
let mock: MockWeChat;
beforeAll(async () => {
  [redis, mock] = await Promise.all([startRedis(), startMockWeChat()]);
});
afterAll(async () => {
  await Promise.all([redis?.stop(), mock?.close()]);
});

const script = fileURLToPath(new URL('./fixtures/heap-child.mjs', import.meta.url));

/** The child's next message; rejects if it exits first. */
function nextMessage<T>(child: ChildProcess): Promise<T> {
  return new Promise((resolve, reject) => {
    const exited = (code: number | null) => reject(new Error(`the heap child exited with ${code} before it answered`));
    child.once('exit', exited);
    child.once('message', (message) => {
      child.off('exit', exited);
      resolve(message as T);
    });
  });
}

describe('heap per account, as the scale benchmark counts it', () => {
  it(`${ACCOUNTS.toLocaleString('en')} warm OfficialAccounts on one RedisCache hold less than ${LIMIT_BYTES.toLocaleString('en')} bytes of heap each`, async () => {
    const apps = Array.from({ length: WARM + ACCOUNTS }, () => mock.createApp()).map(({ appId, secret }) => ({ appId, secret }));
    const child = fork(script, [], {
      execArgv: ['--expose-gc', '--no-opt', '--no-maglev', '--no-sparkplug', '--no-flush-bytecode', '--single-threaded-gc'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const exited = once(child, 'exit');
    await nextMessage(child);
    child.send({ baseUrl: mock.url, url: redis.url, apps, warm: WARM, sendsEach: 2 });
    const answer = await nextMessage<{ accounts: number; failed: number; bytesPerAccount: number }>(child);
    const [code] = await exited;
    // Every account was made, fetched its token once and sent: the figure is that of warm accounts.
    expect({ accounts: answer.accounts, failed: answer.failed, code }).toEqual({ accounts: ACCOUNTS, failed: 0, code: 0 });
    expect(apps.reduce((sum, { appId }) => sum + mock.counters(appId).classicTokenRequests, 0)).toBe(WARM + ACCOUNTS);
    expect(Math.round(answer.bytesPerAccount)).toBeLessThan(LIMIT_BYTES);
  });
});
