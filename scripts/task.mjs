#!/usr/bin/env node
// The README's commands in one place, so each works on a fresh machine with only Node and npm:
//   pnpm demo  → install, build, run the demo
//   pnpm test  → install what the tests need (Debian packages included), build, lint, run every test,
//                and end with one plain line "N passed, N failed" read from vitest's JSON report.
//   pnpm bench → install, build, run the benchmarks
//   pnpm pack:all → install, build, pack every package into dist-pack/, and check each tarball holds
//                what its package.json names (a package packed before its build has no dist/)
// It runs pnpm through the copy that started it, or through `npx pnpm@<packageManager version>` when
// started by npm, so a failing corepack never stands in the way.
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tarballProblems } from './tarball-check.mjs';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const [task, ...rest] = process.argv.slice(2);
const args = rest[0] === '--' ? rest.slice(1) : rest;

// Debian packages each task needs, each with the shell check that shows it is there. Tests start their
// own servers from these binaries on free ports; nothing needs to be running beforehand.
const STORE_SERVERS = [
  { check: 'command -v redis-server', pkg: 'redis-server' },
  { check: 'command -v redis-cli', pkg: 'redis-tools' },
  { check: 'command -v memcached', pkg: 'memcached' },
  // The TLS test makes a self-signed certificate for its rediss:// server.
  { check: 'command -v openssl', pkg: 'openssl' },
];
// The polyglot examples: PHP and Python programs sharing tokens with wxkit (Debian's python3, which the
// python3-* modules are built for, whatever python3 comes first on the PATH).
const POLYGLOT = [
  { check: 'command -v php', pkg: 'php-cli' },
  { check: 'php -m | grep -qx redis', pkg: 'php-redis' },
  { check: 'php -m | grep -qx memcached', pkg: 'php-memcached' },
  // igbinary: the codec's tests cross-check what wxkit writes against PHP's own igbinary_unserialize().
  { check: 'php -m | grep -qx igbinary', pkg: 'php-igbinary' },
  { check: '/usr/bin/python3 -c "import redis"', pkg: 'python3-redis' },
  { check: '/usr/bin/python3 -c "import pymemcache"', pkg: 'python3-pymemcache' },
];
// The real peers (tests/peers): Symfony Cache's RedisAdapter and DefaultMarshaller, as EasyWeChat 5 and 6
// use them, on Debian's PHP. Debian's php-redis is built against igbinary (it cannot load without it), so a
// stock Debian PHP with Redis always has igbinary loaded: the case the igbinary codec exists for.
const REAL_PEERS = [
  { check: 'php -m | grep -qx igbinary', pkg: 'php-igbinary' },
  { check: 'test -f /usr/share/php/Symfony/Component/Cache/Psr16Cache.php', pkg: 'php-symfony-cache' },
  { check: 'test -f /usr/share/php/Psr/SimpleCache/autoload.php', pkg: 'php-psr-simple-cache' },
];
const SYSTEM_PACKAGES = {
  test: [...STORE_SERVERS, ...POLYGLOT, ...REAL_PEERS],
  demo: [],
  bench: STORE_SERVERS,
  pack: [],
};

function run(command, commandArgs, options = {}) {
  const result = spawnSync(command, commandArgs, { stdio: 'inherit', cwd: root, ...options });
  if (result.error) throw result.error;
  return result.status ?? 1;
}

function must(command, commandArgs, what, { quiet = false } = {}) {
  if (!quiet) {
    const status = run(command, commandArgs);
    if (status === 0) return;
    console.error(`\n${what} failed (exit ${status}).`);
    process.exit(status);
  }
  // Quiet steps show their output only when they fail.
  const result = spawnSync(command, commandArgs, { cwd: root, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (result.error) throw result.error;
  if (result.status === 0) return;
  process.stdout.write(result.stdout ?? '');
  process.stderr.write(result.stderr ?? '');
  console.error(`\n${what} failed (exit ${result.status}).`);
  process.exit(result.status ?? 1);
}

function pnpm() {
  const execPath = process.env.npm_execpath ?? '';
  if (/pnpm/.test(execPath) && existsSync(execPath)) {
    return execPath.endsWith('.js') || execPath.endsWith('.cjs') ? [process.execPath, execPath] : [execPath];
  }
  const { packageManager } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  return ['npx', '-y', packageManager];
}

function pnpmRun(pnpmArgs, what, options) {
  const [command, ...prefix] = pnpm();
  must(command, [...prefix, ...pnpmArgs], what, options);
}

function installSystemPackages(list) {
  const missing = list.filter(({ check }) => run('sh', ['-c', `${check} >/dev/null 2>&1`], { stdio: 'ignore' }) !== 0);
  if (missing.length === 0) return;
  const names = missing.map(({ pkg }) => pkg);
  if (process.getuid?.() !== 0) {
    console.error(`The tests need these Debian packages: ${names.join(' ')}. Install them (sudo apt-get install -y ${names.join(' ')}) or run as root.`);
    process.exit(1);
  }
  console.log(`Installing ${names.join(', ')} from Debian…`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  if (run('apt-get', ['update', '-qq'], { env }) !== 0 || run('apt-get', ['install', '-y', '-qq', ...names], { env }) !== 0) {
    console.error(`apt-get could not install ${names.join(' ')}.`);
    process.exit(1);
  }
}

function prepare(name) {
  installSystemPackages(SYSTEM_PACKAGES[name] ?? []);
  console.log('Installing dependencies and building the packages…');
  pnpmRun(['install', '--frozen-lockfile', '--prefer-offline'], 'pnpm install', { quiet: true });
  pnpmRun(['run', 'build'], 'The build', { quiet: true });
}

function test() {
  prepare('test');
  const { node, rest: testArgs } = takeNodeFlag(args);
  if (!testArgs.includes('--no-lint')) pnpmRun(['run', 'lint'], 'The lint (type check, publint, are-the-types-wrong)');
  const vitestArgs = testArgs.filter((arg) => arg !== '--no-lint');
  const reportDir = join(root, 'node_modules', '.cache', 'wxkit');
  const report = join(reportDir, 'vitest.json');
  mkdirSync(reportDir, { recursive: true });
  rmSync(report, { force: true });
  // vitest, and every process the tests start (they use process.execPath), run on the chosen Node.
  const [command, ...prefix] = node ? [node, join(root, 'node_modules', 'vitest', 'vitest.mjs')] : [...pnpm(), 'exec', 'vitest'];
  const status = run(command, [
    ...prefix,
    'run',
    '--reporter=default',
    '--reporter=json',
    `--outputFile.json=${report}`,
    ...vitestArgs,
  ]);
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  if (existsSync(report)) {
    const json = JSON.parse(readFileSync(report, 'utf8'));
    passed = json.numPassedTests ?? 0;
    failed = json.numFailedTests ?? 0;
    skipped = (json.numPendingTests ?? 0) + (json.numTodoTests ?? 0);
    // A test file that fails to load runs no test; count it as a failure rather than lose it.
    for (const file of json.testResults ?? []) {
      if (file.status === 'failed' && !(file.assertionResults ?? []).some((t) => t.status === 'failed')) failed += 1;
    }
  } else {
    failed = 1;
    console.error('vitest wrote no report; counting the run as failed.');
  }
  // vitest fails a run with every test green when it caught an error outside them (an unhandled
  // rejection, a socket's uncaught error): the line must say so too, not "0 failed" beside a failed run.
  if (status !== 0 && failed === 0) {
    failed = 1;
    console.error('vitest failed the run with no failed test (an error outside the tests: see "Unhandled Errors" above); counting it as one failure.');
  }
  if (skipped > 0) console.log(`${skipped} skipped (not counted as passed)`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed > 0 || status !== 0 ? 1 : 0);
}

/**
 * `--node 22` (or 24, or a full version): runs the tests on that Node release, fetched once from the npm
 * registry's `node` package, so the supported releases can be checked on a machine that has only one.
 */
function takeNodeFlag(list) {
  const at = list.indexOf('--node');
  if (at === -1) return { node: undefined, rest: list };
  const version = list[at + 1];
  if (!version || !/^\d+(\.\d+){0,2}$/.test(version)) {
    console.error('--node needs a Node.js version such as 22 or 24.1.0');
    process.exit(2);
  }
  const found = spawnSync('npx', ['-y', `node@${version}`, '-e', 'process.stdout.write(process.execPath + " " + process.version)'], {
    cwd: root,
    encoding: 'utf8',
  });
  const [execPath, release] = (found.stdout ?? '').trim().split(' ');
  if (found.status !== 0 || !execPath || !existsSync(execPath)) {
    process.stderr.write(found.stderr ?? '');
    console.error(`Could not get Node.js ${version} from the npm registry.`);
    process.exit(1);
  }
  // npx keeps it in this user's own cache, which the tests that run a child as another user (a
  // directory that user may not write to) cannot reach: the binary, which needs nothing beside it, is
  // copied beside the workspace's other caches.
  const copy = join(root, 'node_modules', '.cache', 'wxkit', `node-${release}`, 'bin', 'node');
  if (!existsSync(copy)) {
    mkdirSync(dirname(copy), { recursive: true });
    copyFileSync(execPath, copy);
    chmodSync(copy, 0o755);
  }
  console.log(`Running the tests on Node.js ${release}.`);
  return { node: copy, rest: [...list.slice(0, at), ...list.slice(at + 2)] };
}

function demo() {
  prepare('demo');
  process.exit(run(process.execPath, [join(root, 'packages', 'cli', 'bin', 'wxkit.mjs'), 'demo', ...args]));
}

function bench() {
  prepare('bench');
  process.exit(run(process.execPath, [join(root, 'bench', 'run.mjs'), ...args]));
}

function pack() {
  prepare('pack');
  // Tarballs of an earlier version or build are not left beside the new ones.
  const destination = join(root, 'dist-pack');
  rmSync(destination, { recursive: true, force: true });
  pnpmRun(['-r', '--filter=./packages/*', 'pack', '--pack-destination', destination], 'pnpm pack');
  const tarballs = existsSync(destination) ? readdirSync(destination).filter((name) => name.endsWith('.tgz')).sort() : [];
  const problems = tarballs.length === 0 ? [`pnpm pack wrote no tarball to ${destination}`] : tarballs.flatMap((name) => tarballProblems(join(destination, name)));
  if (problems.length > 0) {
    for (const problem of problems) console.error(problem);
    // Tarballs that lack what their package.json names are not left to be installed.
    rmSync(destination, { recursive: true, force: true });
    console.error(`\nno tarballs kept: ${problems.length} problem(s) above`);
    process.exit(1);
  }
  console.log(`\n${tarballs.length} tarballs in ${destination}`);
}

const tasks = { test, demo, bench, pack };
if (!tasks[task]) {
  console.error(`usage: node scripts/task.mjs <${Object.keys(tasks).join('|')}> [-- args]`);
  process.exit(2);
}
tasks[task]();
