import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

// The README's three lines, pasted into a shell: the key `docker compose` starts the service with must be
// the key the curl line on the next line sends. `docker` and `curl` are stubbed to print what they got.
const readme = readFileSync(new URL('./README.md', import.meta.url), 'utf8');
const block = /```sh\n([\s\S]*?)```/.exec(readme)![1]!;

describe('examples/serve-docker/README.md', () => {
  it('the curl line sends the same bearer key docker compose was started with', () => {
    const stubs = [
      'docker() { echo "SERVICE_KEY=$WXKIT_SERVE_KEYS"; }',
      'curl() { for a in "$@"; do case "$a" in Authorization:*) echo "CURL_HEADER=$a";; esac; done; }',
    ].join('\n');
    const run = spawnSync('bash', ['-c', `${stubs}\n${block}`], { encoding: 'utf8', env: { PATH: process.env.PATH } });
    const service = /SERVICE_KEY=(.*)/.exec(run.stdout)?.[1];
    const header = /CURL_HEADER=(.*)/.exec(run.stdout)?.[1];
    expect(service).toMatch(/^[0-9a-f]{48}$/);
    expect(header).toBe(`Authorization: Bearer ${service}`);
  });
});
