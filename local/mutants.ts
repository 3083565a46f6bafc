/**
 * `npm run mutants [-- --only id,id] [-- --list] [-- --check]` (--check: only whether each mutant still applies): does the test suite catch plausible
 * one-line bugs? Each mutant below is put into the source, one at a time, the
 * tests that should catch it are run (on the servers local/test.sh started),
 * and the source is put back. A mutant is killed when its tests fail, and
 * survives when they pass: a survivor is a test that does not check what it
 * claims. Prints a table; exits 1 if any mutant survived (or could not be
 * applied because the code it names changed: update the mutant then), 0 if
 * every one was killed.
 *
 * First the chosen tests run on the code as it is (the baseline): a test that
 * fails already cannot kill anything, so a failing baseline stops the run.
 *
 * The source is restored from what was read before the change, in a
 * `finally`, and on SIGINT/SIGTERM; a run killed harder than that leaves
 * `.data/test/mutants/applied.json`, from which the next run restores the
 * file before anything else. A mutated file must have no uncommitted changes,
 * so `git checkout -- <file>` is always a safe way back too.
 *
 * Not part of `npm test`: each mutant costs a test run (minutes in all).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

interface Mutant {
  id: string;
  /** The bug, as a reviewer would put it. */
  bug: string;
  file: string;
  /** Replacements made in order; each `from` must occur exactly once at that point. */
  edits: [from: string, to: string][];
  /** Test files, and the tests in them (a name pattern), that must fail. */
  tests: string[];
  pattern: string;
}

const MUTANTS: Mutant[] = [
  {
    id: 'register-after-counters',
    bug: 'ring.ts: a pair listed in the register after its counters are written, not before',
    file: 'lib/count/ring.ts',
    edits: [[
      '    await Promise.all([fresh.length > 0 ? this.register(deltas, fresh) : null, this.announceSums(withSums), this.markHigh(deltas, risky)]);\n    const missing = settle(writes, await this.arith(writes, notNumbers));',
      '    await Promise.all([this.announceSums(withSums), this.markHigh(deltas, risky)]);\n    const missing = settle(writes, await this.arith(writes, notNumbers));\n    if (fresh.length > 0) await this.register(deltas, fresh);',
    ]],
    tests: ['test/ring.test.ts'],
    pattern: 'killed right after its counters',
  },
  {
    id: 'ack-before-store',
    bug: 'worker.ts: a fold\'s jobs acknowledged as its store starts, before its counts are stored and committed',
    file: 'lib/count/worker.ts',
    edits: [
      ['      if (fold.watched.length > 0) await this.queueWatched(fold, retrying);\n      if (deltas.pairs.length > 0) {', '      if (fold.watched.length > 0) await this.queueWatched(fold, retrying);\n      for (const job of jobs) job.conn.complete(job.handle);\n      if (deltas.pairs.length > 0) {'],
      ['      for (const job of jobs) job.conn.complete(job.handle);\n    } finally {\n      this.inFlight.delete(id);', '    } finally {\n      this.inFlight.delete(id);'],
    ],
    tests: ['test/faults.test.ts'],
    pattern: 'memcached cut inside the store',
  },
  {
    id: 'duplicates-ignored',
    bug: 'worker.ts: the jobs claimFold finds another fold stored are folded anyway (claimed.duplicates ignored)',
    file: 'lib/count/worker.ts',
    edits: [['    if (claimed.duplicates.length > 0) {\n      // Over the same jobs only', '    if (claimed.duplicates.length < 0) {\n      // Over the same jobs only']],
    tests: ['test/faults.test.ts'],
    pattern: 'same job \\(same unique\\) sent again',
  },
  {
    id: 'claims-never-taken',
    bug: 'worker.ts: a fold\'s jobs are never claimed (claimFold skipped: a new fold id, nothing held)',
    file: 'lib/count/worker.ts',
    edits: [[
      '    const claimed = await retry(() => claims.claimFold(uniques, { inFlight: this.inFlight, stopped: () => this.stopped() }), this.retrying(jobs.length));',
      '    const claimed = { fold: claims.newFold(), duplicates: [] as string[], unresolved: [] as string[], uniques };',
    ]],
    tests: ['test/faults.test.ts'],
    pattern: 'same job \\(same unique\\) sent again',
  },
  {
    id: 'flush-leaves-folds-open',
    bug: 'flush.ts: the flush neither aborts nor counts the folds left open in a slice (unfinishedFolds finds none)',
    file: 'lib/flush/flush.ts',
    edits: [['  if (listed.length === 0) return NONE_UNFINISHED;', '  if (listed.length >= 0) return NONE_UNFINISHED;']],
    tests: ['test/faults.test.ts'],
    pattern: 'killed halfway through storing a fold',
  },
  {
    id: 'aborted-fold-acked',
    bug: 'worker.ts: a fold found aborted at its commit is acknowledged as stored, not stored again under a new id',
    file: 'lib/count/worker.ts',
    edits: [['      if (await retry(() => this.claims.commit(id, totals), this.retrying(jobs))) return true;', '      if (await retry(() => this.claims.commit(id, totals), this.retrying(jobs))) return true;\n      return true;']],
    tests: ['test/redo.test.ts'],
    pattern: 'past the flush\'s seal wait',
  },
  {
    id: 'outage-retry-same-fold',
    bug: 'worker.ts: a store broken by an outage is tried again under the same fold id (not aborted, not a new fold), so what it wrote first is counted twice in silence',
    file: 'lib/count/worker.ts',
    edits: [['              if (tries++ > 0) {', '              if (tries++ < 0) {']],
    tests: ['test/faults.test.ts'],
    pattern: 'cut after part of a fold\'s counters',
  },
  {
    id: 'top-stops-on-tie',
    bug: 'top.ts: the threshold algorithm stops when the k-th total only equals the threshold (> became >=)',
    file: 'lib/report/top.ts',
    edits: [['Number(ranked[limit - 1]!.count) > threshold', 'Number(ranked[limit - 1]!.count) >= threshold']],
    tests: ['test/top-weekly.test.ts'],
    pattern: 'tie at the threshold',
  },
  {
    id: 'lost-sums-not-judged',
    bug: 'flush.ts: value sums gone from memcached do not make the slice incomplete',
    file: 'lib/flush/flush.ts',
    edits: [['if (t.valueSumsMade !== null && BigInt(t.valueSumsFound) < t.valueSumsMade) {', 'if (t.valueSumsMade !== null && BigInt(t.valueSumsFound) < t.valueSumsMade && t.counted < t.events) {']],
    tests: ['test/ring.test.ts'],
    pattern: 'evicted value sum',
  },
  {
    id: 'seal-ignores-writers',
    bug: 'ring.ts: the flush\'s seal does not see the writers inside a slice',
    file: 'lib/count/ring.ts',
    edits: [['inside += text === null ? 0 : Number(text);', 'inside += text === null ? 0 : 0;']],
    tests: ['test/ring.test.ts'],
    pattern: 'writer and flush announce themselves',
  },
  {
    id: 'guard-two-behind',
    bug: 'slice.ts: the slice guard lets an event two slices behind into its own slice (the flush may be reading it)',
    file: 'lib/domain/slice.ts',
    edits: [['eventSlice === current || eventSlice === current - 1 ?', 'eventSlice === current || eventSlice >= current - 2 ?']],
    tests: ['test/faults.test.ts'],
    pattern: 'late and future-dated events',
  },
  {
    id: 'drop-newest',
    bug: 'client.ts: past the memory cap, the newest batches are dropped instead of the oldest',
    file: 'lib/send/client.ts',
    edits: [['const oldest = this.queue.findIndex((b) => b.priority === \'normal\');', 'const oldest = this.queue.findLastIndex((b) => b.priority === \'normal\');']],
    tests: ['test/client.test.ts'],
    pattern: 'memory bound',
  },
];

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DIR = join(process.env.OFFLOG_DATA_DIR ?? join(REPO, '.data/test'), 'mutants');
const APPLIED = join(DIR, 'applied.json');
/** One mutant's tests may not take longer than this (a mutant that hangs a test counts as killed, by timeout). */
const RUN_TIMEOUT_MS = 10 * 60_000;

const { values } = parseArgs({ options: { only: { type: 'string' }, list: { type: 'boolean', default: false }, check: { type: 'boolean', default: false } }, strict: true });
if (values.list) {
  for (const m of MUTANTS) process.stdout.write(`${m.id.padEnd(26)} ${m.bug}\n`);
  process.exit(0);
}
const only = values.only?.split(',');
const unknown = only?.filter((id) => !MUTANTS.some((m) => m.id === id)) ?? [];
if (unknown.length > 0) {
  process.stderr.write(`--only: unknown mutant(s) ${unknown.join(', ')}; \`npm run mutants -- --list\` names them\n`);
  process.exit(64);
}
const chosen = MUTANTS.filter((m) => !only || only.includes(m.id));
mkdirSync(DIR, { recursive: true });

/** What is mutated right now, so that a signal (or the next run) can put it back. */
let current: { file: string; original: string } | null = null;
function restore(): void {
  if (current === null) return;
  writeFileSync(join(REPO, current.file), current.original);
  rmSync(APPLIED, { force: true });
  current = null;
}
if (existsSync(APPLIED)) {
  current = JSON.parse(readFileSync(APPLIED, 'utf8')) as { file: string; original: string };
  process.stderr.write(`mutants: an earlier run left ${current.file} mutated; restoring it\n`);
  restore();
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    restore();
    process.stderr.write(`mutants: ${sig}; source restored\n`);
    process.exit(130);
  });
}

/** Runs node's test runner on `files`, only the tests matching `patterns`; resolves to its exit status (null: timed out). */
function runTests(files: string[], patterns: string[], logFile: string): Promise<number | null> {
  const args = ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-timeout=300000', ...patterns.map((p) => `--test-name-pattern=${p}`), ...files];
  return new Promise((done) => {
    const child = spawn(process.execPath, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), RUN_TIMEOUT_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      writeFileSync(logFile, out);
      done(code);
    });
  });
}

/** The mutated text of `m`'s file, or why it cannot be made. */
function mutate(m: Mutant, original: string): string | Error {
  let text = original;
  for (const [from, to] of m.edits) {
    const n = text.split(from).length - 1;
    if (n !== 1) return new Error(`${m.file}: expected the text to change exactly once, found it ${n} time(s): ${JSON.stringify(from.slice(0, 80))}`);
    text = text.replace(from, () => to);
  }
  return text;
}

// Every mutant applies, to a file with no uncommitted changes, before anything runs.
const results: { m: Mutant; outcome: 'killed' | 'killed (timeout)' | 'SURVIVED' | 'not applied'; detail: string }[] = [];
const runnable: Mutant[] = [];
for (const m of chosen) {
  const made = mutate(m, readFileSync(join(REPO, m.file), 'utf8'));
  const dirty = spawnSync('git', ['diff', '--quiet', 'HEAD', '--', m.file], { cwd: REPO }).status !== 0;
  if (made instanceof Error) results.push({ m, outcome: 'not applied', detail: `${made.message} (the code changed: update local/mutants.ts)` });
  else if (dirty) results.push({ m, outcome: 'not applied', detail: `${m.file} has uncommitted changes; commit or stash them first` });
  else runnable.push(m);
}

if (values.check) {
  // Only whether each mutant still applies to the code (no tests run): quick, after changing the code a mutant names.
  for (const m of runnable) process.stdout.write(`${m.id.padEnd(26)} applies\n`);
  for (const r of results) process.stdout.write(`${r.m.id.padEnd(26)} NOT applied: ${r.detail}\n`);
  process.exit(results.length > 0 ? 1 : 0);
}
const started = Date.now();
process.stdout.write(`mutants: baseline (the chosen tests, unmutated)…\n`);
const baselineLog = join(DIR, 'baseline.log');
const baseline = await runTests([...new Set(runnable.flatMap((m) => m.tests))], [...new Set(runnable.map((m) => m.pattern))], baselineLog);
if (runnable.length > 0 && baseline !== 0) {
  process.stderr.write(`mutants: the tests fail without any mutant (exit ${baseline}); see ${baselineLog}\n`);
  process.exit(1);
}
for (const m of runnable) {
  const original = readFileSync(join(REPO, m.file), 'utf8');
  const logFile = join(DIR, `${m.id}.log`);
  const t0 = Date.now();
  let code: number | null;
  try {
    current = { file: m.file, original };
    writeFileSync(APPLIED, JSON.stringify(current));
    writeFileSync(join(REPO, m.file), mutate(m, original) as string);
    code = await runTests(m.tests, [m.pattern], logFile);
  } finally {
    restore();
  }
  const outcome = code === null ? 'killed (timeout)' : code === 0 ? 'SURVIVED' : 'killed';
  results.push({ m, outcome, detail: `${((Date.now() - t0) / 1000).toFixed(0)} s; ${logFile}` });
  process.stdout.write(`mutants: ${m.id}: ${outcome}\n`);
}
if (spawnSync('git', ['diff', '--quiet', 'HEAD', '--', ...new Set(chosen.map((m) => m.file))], { cwd: REPO }).status !== 0) {
  process.stderr.write('mutants: a mutated file differs from HEAD after the run; restore it with git checkout\n');
  process.exit(1);
}

const width = Math.max(...results.map((r) => r.m.id.length));
process.stdout.write(`\n${'mutant'.padEnd(width)}  ${'outcome'.padEnd(16)}  bug — tests; run\n`);
for (const r of results) {
  process.stdout.write(`${r.m.id.padEnd(width)}  ${r.outcome.padEnd(16)}  ${r.m.bug} — ${r.m.tests.join(' ')} /${r.m.pattern}/; ${r.detail}\n`);
}
const bad = results.filter((r) => !r.outcome.startsWith('killed'));
process.stdout.write(`\n${results.length - bad.length} of ${results.length} killed in ${Math.round((Date.now() - started) / 1000)} s${bad.length > 0 ? `; NOT killed: ${bad.map((r) => r.m.id).join(', ')}` : ''}\n`);
process.exit(bad.length > 0 ? 1 : 0);
