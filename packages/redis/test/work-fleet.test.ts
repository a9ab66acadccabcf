import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMockWeChat, startRedis, type MockWeChat, type StoreServer } from '@wxkit/testing';

// WeCom's gettoken hands back the current token while it lives: a fetch ends no one else's token.
// Three processes on one Redis, two agents of one corp each, recover from a dead token and from an
// expired one with one gettoken per agent for the whole fleet, and an agent's death leaves the other alone.
let redis: StoreServer;
let mock: MockWeChat;
beforeAll(async () => {
  [redis, mock] = await Promise.all([startRedis(), startMockWeChat()]);
});
afterAll(async () => {
  await Promise.all([redis?.stop(), mock?.close()]);
});

const script = fileURLToPath(new URL('./fixtures/work-child.mjs', import.meta.url));

interface Answer {
  id: number;
  ok: number;
  errors: string[];
}

function start(agents: object[]): Promise<ChildProcess> {
  const child = fork(script, [], {
    env: { ...process.env, WXKIT_WORK_CHILD: JSON.stringify({ url: redis.url, baseUrl: mock.url, agents }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    child.once('message', () => resolve(child));
    child.once('exit', (code) => reject(new Error(`work child exited with ${code} before it was ready`)));
  });
}

let next = 0;
function run(child: ChildProcess, count: number): Promise<Answer> {
  const id = (next += 1);
  return new Promise((resolve) => {
    const onMessage = (answer: Answer) => {
      if (answer.id !== id) return;
      child.off('message', onMessage);
      resolve(answer);
    };
    child.on('message', onMessage);
    child.send({ id, count });
  });
}

describe('WeCom fleet on a real Redis', () => {
  it('3 processes, 2 agents: one gettoken per agent for the fleet at start, after a dead token (40014) and after expiry (42001)', async () => {
    const first = mock.createWorkApp();
    const second = mock.createWorkApp({ corpId: first.corpId });
    const ids = [first, second].map((agent) => `${agent.corpId}:${agent.agentId}`);
    const children = await Promise.all(Array.from({ length: 3 }, () => start([first, { ...second, agentId: Number(second.agentId) }])));
    const fetches = () => ids.map((id) => mock.counters(id).classicTokenRequests);
    const round = async () => {
      const answers = await Promise.all(children.map((child) => run(child, 5)));
      expect(answers.flatMap((answer) => answer.errors)).toEqual([]);
      expect(answers.reduce((sum, answer) => sum + answer.ok, 0)).toBe(30);
    };
    try {
      await round();
      expect(fetches()).toEqual([1, 1]);
      mock.invalidateTokens(ids[0]!);
      await round();
      expect(fetches()).toEqual([2, 1]);
      expect(mock.counters(ids[1]!).rejectedCalls).toBe(0);
      // Past both tokens' end on WeCom's clock, not on the fleet's: WeCom answers 42001 to both agents.
      mock.advanceClock(7300);
      await round();
      expect(fetches()).toEqual([3, 2]);
      expect(mock.counters(ids[0]!).errcodes).toMatchObject({ 40014: expect.any(Number), 42001: expect.any(Number) });
    } finally {
      await Promise.all(children.map((child) => new Promise((resolve) => (child.once('exit', resolve), child.send({ exit: true })))));
    }
  });

  it('3 processes with a wrong corpsecret (WeCom: 40001 at gettoken) and 3 with a wrong corpid (40013): one gettoken each for the fleet, no refetch loop', async () => {
    const agent = mock.createWorkApp();
    for (const [wrong, errcode] of [[{ secret: 'not-the-corpsecret' }, 40001], [{ corpId: 'wwnosuchcorp' }, 40013]] as const) {
      const children = await Promise.all(Array.from({ length: 3 }, () => start([{ ...agent, ...wrong }])));
      const before = mock.counters().classicTokenRequests;
      try {
        for (let i = 0; i < 2; i += 1) {
          const answers = await Promise.all(children.map((child) => run(child, 5)));
          expect(answers.flatMap((answer) => answer.errors)).toEqual(Array.from({ length: 15 }, () => `ERR_WXKIT_WECHAT_API:${errcode}`));
        }
        expect(mock.counters().classicTokenRequests - before).toBe(1);
        expect(mock.counters().requests - before).toBeGreaterThanOrEqual(1);
      } finally {
        await Promise.all(children.map((child) => new Promise((resolve) => (child.once('exit', resolve), child.send({ exit: true })))));
      }
    }
  });
});
