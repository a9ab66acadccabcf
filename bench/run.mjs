#!/usr/bin/env node
// `pnpm bench [-- name…]`: runs the benchmarks against the mock WeChat server (20 ms per call; the
// faults benchmark also 0 ms, and 400 ms where a slow answer is its point) and real redis-server and
// memcached processes, prints each figure next to its baseline from the same run, writes
// bench/results/<name>.json, and refreshes the tables in docs/benchmarks.md.
import { cpus } from 'node:os';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ALL } from './scenarios.mjs';
import { startEnvironment } from './lib/harness.mjs';

const names = process.argv.slice(2).filter((arg) => arg !== '--');
for (const name of names) {
  if (!ALL[name]) {
    console.error(`unknown benchmark ${name}; known: ${Object.keys(ALL).join(', ')}`);
    process.exit(2);
  }
}
const selected = names.length ? names : Object.keys(ALL);
const machine = { node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown' };
const env = await startEnvironment();
const reports = {};
try {
  for (const name of selected) {
    process.stdout.write(`\n▶ ${name}…\n`);
    const started = Date.now();
    const report = await ALL[name](env);
    report.date = new Date().toISOString();
    report.machine = machine;
    report.seconds = Math.round((Date.now() - started) / 100) / 10;
    reports[name] = report;
    writeFileSync(new URL(`./results/${name}.json`, import.meta.url), `${JSON.stringify(report, null, 2)}\n`);
    print(report);
  }
} finally {
  await env.stop();
}
updateDoc(reports);
// Everything was closed above; exit anyway rather than let a stray handle in a peer library hold the run.
process.exit(0);

function columns(rows) {
  const keys = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  return keys.filter((key) => rows.every((row) => typeof row[key] !== 'object' || row[key] === null));
}

function cell(value) {
  if (typeof value === 'number') return value.toLocaleString('en', { maximumFractionDigits: 3 });
  return String(value ?? '');
}

/** Who a row's errors belong to: its subject, and in a table of scenarios its scenario and latency. */
function who(row) {
  return row.scenario === undefined ? row.subject : `${row.scenario} · ${row.subject}${row.mockMs === undefined ? '' : ` · ${row.mockMs} ms`}`;
}

function print(report) {
  const keys = columns(report.rows);
  const widths = keys.map((key) => Math.max(key.length, ...report.rows.map((row) => cell(row[key]).length)));
  // Numbers to the right, words to the left.
  const text = (i, value) => (typeof value === 'number' ? cell(value).padStart(widths[i]) : cell(value).padEnd(widths[i]));
  console.log(`${report.title}\nbaseline: ${report.baseline}`);
  for (const [id, what] of report.legend ?? []) console.log(`  ${id}: ${what}`);
  console.log(keys.map((key, i) => key.padEnd(widths[i])).join('  '));
  for (const row of report.rows) console.log(keys.map((key, i) => text(i, row[key])).join('  '));
  for (const row of report.rows) {
    if (row.errors && Object.keys(row.errors).length) console.log(`  ${who(row)} errors: ${JSON.stringify(row.errors)}`);
  }
}

function markdown(report) {
  const keys = columns(report.rows);
  const lines = [
    `### ${report.title}`,
    '',
    `Baseline: ${report.baseline}. Run ${report.date.slice(0, 10)} on Node ${report.machine.node}, ${report.machine.cpus} × ${report.machine.cpu}.`,
    '',
    ...(report.legend ?? []).map(([id, what]) => `- **${id}**: ${what}.`),
    ...(report.legend ? [''] : []),
    `| ${keys.join(' | ')} |`,
    `|${keys.map(() => '---').join('|')}|`,
    ...report.rows.map((row) => `| ${keys.map((key) => cell(row[key])).join(' | ')} |`),
  ];
  const errors = report.rows.filter((row) => row.errors && Object.keys(row.errors).length);
  if (errors.length) lines.push('', ...errors.map((row) => `- ${who(row)}: ${Object.entries(row.errors).map(([k, n]) => `${n} × ${k}`).join(', ')}`));
  return lines.join('\n');
}

/** Replaces the generated section of docs/benchmarks.md with every result on disk (this run's and older ones). */
function updateDoc(fresh) {
  const docPath = fileURLToPath(new URL('../docs/benchmarks.md', import.meta.url));
  const doc = readFileSync(docPath, 'utf8');
  const sections = Object.keys(ALL).map((name) => {
    if (fresh[name]) return markdown(fresh[name]);
    try {
      return markdown(JSON.parse(readFileSync(new URL(`./results/${name}.json`, import.meta.url), 'utf8')));
    } catch {
      return `### ${name}\n\n(not run yet)`;
    }
  });
  const start = '<!-- results:start -->';
  const end = '<!-- results:end -->';
  const next = `${doc.slice(0, doc.indexOf(start) + start.length)}\n${sections.join('\n\n')}\n${doc.slice(doc.indexOf(end))}`;
  writeFileSync(docPath, next);
  console.log(`\nresults: bench/results/*.json; tables: docs/benchmarks.md`);
}
