import { mkdirSync, statSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { dirname } from 'node:path';

// `mkdir -p`, one level at a time. Node's own `{ recursive: true }` loops for ever (and spins a core)
// where a directory answers ENOENT to a mkdir inside it though it exists, as /proc's do: a FileCache
// or a fallbackDir under /proc would then never answer. Here each level is tried once.

/** Makes `dir` and its missing parents with `mode`; resolves when it is a directory, rejects with the errno otherwise. */
export async function makeDirectory(dir: string, mode: number): Promise<void> {
  try {
    await mkdir(dir, { mode });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return isDirectory(await stat(dir), dir);
    const parent = dirname(dir);
    if (code !== 'ENOENT' || parent === dir) throw error;
    await makeDirectory(parent, mode);
    try {
      await mkdir(dir, { mode });
    } catch (again) {
      if ((again as NodeJS.ErrnoException).code !== 'EEXIST') throw again;
      isDirectory(await stat(dir), dir);
    }
  }
}

/** {@link makeDirectory}, synchronously. */
export function makeDirectorySync(dir: string, mode: number): void {
  try {
    mkdirSync(dir, { mode });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return isDirectory(statSync(dir), dir);
    const parent = dirname(dir);
    if (code !== 'ENOENT' || parent === dir) throw error;
    makeDirectorySync(parent, mode);
    try {
      mkdirSync(dir, { mode });
    } catch (again) {
      if ((again as NodeJS.ErrnoException).code !== 'EEXIST') throw again;
      isDirectory(statSync(dir), dir);
    }
  }
}

function isDirectory(stats: { isDirectory(): boolean }, dir: string): void {
  if (!stats.isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), { code: 'ENOTDIR' });
}
