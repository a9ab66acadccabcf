import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeTokenSharing } from '@wxkit/testing/suite';

// The foundation's multi-process scenarios (cold stampede, invalidation, a lock holder killed, a corrupt
// entry), with worker processes that each open their own FileCache on one directory.
const dir = mkdtempSync(join(tmpdir(), 'wxkit-file-sharing-'));

describeTokenSharing('FileCache', {
  store: { module: new URL('../dist/index.js', import.meta.url).href, export: 'FileCache', args: [{ dir }] },
});

it('leaves no temp or guard files behind, and no lock but the one whose holder was killed', () => {
  const leftovers = readdirSync(dir).filter((name) => name.includes('~') || name.endsWith('%3Alock'));
  // The SIGKILLed holder's lock is replaced by whoever took over and then released; nothing stays.
  expect(leftovers).toEqual([]);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

it("a directory that cannot be used: the processes of the host share one fetch through the fallback directory, as for any other store's outage", async () => {
  const { startMockWeChat, WorkerGroup } = await import('@wxkit/testing');
  const { writeFileSync } = await import('node:fs');
  const base = mkdtempSync(join(tmpdir(), 'wxkit-file-unusable-'));
  // A file where the directory's parent should be: every call fails (ENOTDIR), as on a volume gone bad.
  writeFileSync(join(base, 'not-a-directory'), '');
  const mock = await startMockWeChat({ latencyMs: 5 });
  const app = mock.createApp();
  const group = await WorkerGroup.start(4, {
    baseUrl: mock.url,
    ...app,
    tokenEndpoint: 'classic',
    store: { module: new URL('../dist/index.js', import.meta.url).href, export: 'FileCache', args: [{ dir: join(base, 'not-a-directory', 'tokens') }] },
    clientOptions: { fallbackDir: join(base, 'fallback') },
  });
  try {
    const results = await group.run('send', 10);
    expect(results.flatMap((result) => result.errors)).toEqual([]);
    expect(results.map((result) => result.events['cache.unavailable'] ?? 0)).toEqual([1, 1, 1, 1]);
    expect(mock.counters(app.appId).tokenRequests).toBe(1);
  } finally {
    await group.stop();
    await mock.close();
    rmSync(base, { recursive: true, force: true });
  }
});

const canBindMount = process.platform === 'linux' && process.getuid?.() === 0 && (() => {
  const probe = mkdtempSync(join(tmpdir(), 'wxkit-file-bind-'));
  const mounted = spawnSync('mount', ['--bind', probe, probe]).status === 0;
  if (mounted) spawnSync('umount', [probe]);
  rmSync(probe, { recursive: true, force: true });
  return mounted;
})();

it.skipIf(!canBindMount)('the directory removed, then turned read-only, while 3 processes use it (Linux as root): no send lost, one fetch for the host each time its token is killed', async () => {
  const { startMockWeChat, WorkerGroup } = await import('@wxkit/testing');
  const base = mkdtempSync(join(tmpdir(), 'wxkit-file-readonly-'));
  const tokens = join(base, 'tokens');
  const mock = await startMockWeChat({ latencyMs: 5 });
  const app = mock.createApp();
  const entry = join(tokens, `wechat%3Aaccess_token%3A${app.appId}`);
  const group = await WorkerGroup.start(3, {
    baseUrl: mock.url,
    ...app,
    tokenEndpoint: 'classic',
    store: { module: new URL('../dist/index.js', import.meta.url).href, export: 'FileCache', args: [{ dir: tokens }] },
    clientOptions: { fallbackDir: join(base, 'fallback') },
    clockControl: 'frozen',
  });
  const fetches = () => mock.counters(app.appId).classicTokenRequests;
  const round = async () => {
    const results = await group.run('send', 5);
    expect(results.flatMap((result) => result.errors)).toEqual([]);
    return results;
  };
  let mounted = false;
  try {
    await round();
    expect(fetches()).toBe(1);

    // A cleaner of the temp directory removes it: the next write makes it again.
    rmSync(tokens, { recursive: true });
    mock.invalidateTokens(app.appId);
    await round();
    expect(fetches()).toBe(2);
    expect(readFileSync(entry, 'latin1')).toMatch(/^v1 \d+\n/);

    // The volume turns read-only (EROFS, even for root): the processes share one fetch through the fallback directory.
    execFileSync('mount', ['--bind', tokens, tokens]);
    mounted = true;
    execFileSync('mount', ['-o', 'remount,ro,bind', tokens]);
    mock.invalidateTokens(app.appId);
    const readonly = await round();
    expect(fetches()).toBe(3);
    expect(readonly.map((result) => result.events['cache.unavailable'] ?? 0)).toEqual([1, 1, 1]);

    // Writable again, and the token killed: the processes find the store back, each at its own moment, and
    // share one fetch, written to the directory. None is refused, nor fetches again, while a neighbour
    // still takes the store for down.
    // Lazily: a call under way may still hold a file of the read-only mount open.
    execFileSync('umount', ['-l', tokens]);
    mounted = false;
    const before = readFileSync(entry, 'latin1');
    mock.invalidateTokens(app.appId);
    await group.advance(120_000);
    for (let rounds = 0; rounds < 20 && readFileSync(entry, 'latin1') === before; rounds += 1) {
      await round();
      await group.advance(31_000);
    }
    expect(readFileSync(entry, 'latin1')).not.toBe(before);
    expect(fetches()).toBe(4);
  } finally {
    if (mounted) execFileSync('umount', ['-l', tokens]);
    await group.stop();
    await mock.close();
    rmSync(base, { recursive: true, force: true });
  }
});
