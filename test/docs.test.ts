/**
 * The documentation holds together: every relative link in README.md,
 * CHANGELOG.md and docs/ reaches a file (and a heading, when it names one);
 * every OFFLOG_* variable the code reads, and every one lib/base/config.ts
 * parses, is in docs/configuration.md; the exit-code table in
 * docs/operations.md is the CLI's; the README fits on a few screens.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { test } from 'node:test';
import { EXIT_TABLE } from '../local/cli-errors.ts';
import { REPO } from './osls.ts';

const DOCS = ['README.md', 'CHANGELOG.md', ...readdirSync(join(REPO, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
/** Where the code reads its settings (serverless.yml and the shell scripts included). */
const CODE_DIRS = ['lib', 'handlers', 'local', 'bin', 'deploy'];
const CODE_FILES = ['serverless.yml'];

const read = (rel: string): string => readFileSync(join(REPO, rel), 'utf8');

/** Markdown outside fenced code blocks (a link-looking text in code is not a link). */
const prose = (text: string): string => text.replace(/^```[\s\S]*?^```/gm, '').replace(/`[^`\n]*`/g, '');

/** GitHub's anchor for a heading. */
const slug = (heading: string): string => heading.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-');
const anchors = (text: string): Set<string> => new Set([...prose(text).matchAll(/^#{1,6} (.+)$/gm)].map((m) => slug(m[1]!)));

function walk(dir: string): string[] {
  return readdirSync(join(REPO, dir)).flatMap((name) => {
    const rel = join(dir, name);
    if (name === 'node_modules' || name === 'dist') return [];
    return statSync(join(REPO, rel)).isDirectory() ? walk(rel) : [rel];
  });
}

test('every relative link in README.md, CHANGELOG.md and docs/ resolves, to a heading when it names one', () => {
  const missing = new Map<string, string[]>();
  const badAnchors: string[] = [];
  let links = 0;
  for (const doc of DOCS) {
    for (const m of prose(read(doc)).matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!;
      if (/^[a-z]+:/i.test(target)) continue; // http:, https:, mailto:
      links++;
      const [path, anchor] = target.split('#') as [string, string | undefined];
      const file = path === '' ? doc : normalize(join(dirname(doc), path));
      if (!existsSync(join(REPO, file))) {
        missing.set(file, [...(missing.get(file) ?? []), doc]);
        continue;
      }
      if (anchor !== undefined && file.endsWith('.md') && !anchors(read(file)).has(anchor)) badAnchors.push(`${doc} → ${target}`);
    }
  }
  assert.ok(links > 30, `only ${links} links found: the scan is broken`);
  assert.deepEqual(badAnchors, [], 'links to headings that do not exist');
  // Until every branch of issue 17 is merged, the pages other helpers write are listed here as missing.
  const lines = [...missing].map(([file, from]) => `  ${file} (linked from ${[...new Set(from)].join(', ')})`);
  assert.deepEqual(lines, [], `links to files that do not exist:\n${lines.join('\n')}`);
});

test('every OFFLOG_* variable the code reads, and every one config.ts parses, is documented in docs/configuration.md', () => {
  const files = [...CODE_DIRS.flatMap(walk), ...CODE_FILES].filter((f) => /\.(ts|cjs|mjs|js|sh|yml)$/.test(f) && !f.includes(`${'dashboard'}/`));
  const read_ = new Map<string, string>();
  for (const f of files) for (const m of read(f).matchAll(/\bOFFLOG_[A-Z0-9]+(?:_[A-Z0-9]+)*\b/g)) if (!read_.has(m[0])) read_.set(m[0], relative(REPO, join(REPO, f)));
  const config = new Set([...read('lib/base/config.ts').matchAll(/^\s+(OFFLOG_[A-Z0-9_]+): /gm)].map((m) => m[1]!));
  assert.ok(read_.size > 40 && config.size > 15, `${read_.size} variables in the code, ${config.size} in config.ts: the scan is broken`);
  const documented = new Set([...read('docs/configuration.md').matchAll(/`(OFFLOG_[A-Z0-9_]+)/g)].map((m) => m[1]!));
  const undocumented = [...read_].filter(([v]) => !documented.has(v)).map(([v, f]) => `${v} (read in ${f})`);
  assert.deepEqual(undocumented, [], 'read by the code but not in docs/configuration.md');
  assert.deepEqual([...config].filter((v) => !documented.has(v)), [], 'parsed by lib/base/config.ts but not in docs/configuration.md');
});

test('the exit-code table in docs/operations.md is the CLI\'s own', () => {
  const section = read('docs/operations.md').split('### Exit codes')[1]!.split('\n### ')[0]!;
  const rows = [...section.matchAll(/^\| (\d+) \| (.+) \|$/gm)].map((m) => [Number(m[1]), m[2]!] as const);
  assert.deepEqual(rows, EXIT_TABLE.map(([code, text]) => [code, text]));
});

test('the README is a front door: what it is first, the two commands, at most about 200 lines', () => {
  const readme = read('README.md');
  const lines = readme.split('\n');
  assert.ok(lines.length <= 200, `${lines.length} lines`);
  assert.match(lines.slice(1, 6).join(' '), /counts how often each user does each thing/);
  const firstBlock = readme.split('```sh\n')[1]!.split('```')[0]!;
  assert.match(firstBlock, /^npm install && npm start\b/m);
  assert.match(firstBlock, /^npm test\b/m);
  // CI runs the README's test command.
  assert.match(read('.ci/run'), /^npm test$/m);
});
