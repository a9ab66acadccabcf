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
