import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
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
