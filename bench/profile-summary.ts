/**
 * Summarises a V8 CPU profile (from `npm run bench -- --profile`, written to
 * .data/bench/profiles/, or any `node --cpu-prof` run): where the time went,
 * by function (self time, and total time including callees) and by origin
 * (a lib/ file, a package, Node's internals, GC, idle).
 *
 *   node --import tsx bench/profile-summary.ts FILE.cpuprofile [--top 25] [--from-ms T]
 *
 * --from-ms skips the first T ms of the profile (e.g. a role's setup before "go").
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

interface CallFrame { functionName: string; url: string; lineNumber: number; columnNumber: number }
interface ProfileNode { id: number; callFrame: CallFrame; children?: number[] }
interface Profile { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] }

const args = process.argv.slice(2);
const file = args.find((a) => !a.startsWith('--'));
const top = Number(args[args.indexOf('--top') + 1] ?? 25) || 25;
const fromMs = args.includes('--from-ms') ? Number(args[args.indexOf('--from-ms') + 1]) : 0;
if (!file) {
  console.error('usage: node --import tsx bench/profile-summary.ts FILE.cpuprofile [--top N] [--from-ms T]');
  process.exit(2);
}

const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

// Our .ts files run transpiled by tsx, so their line numbers are the transpiled
// code's: the file name is shown, not a misleading line.
const PKG = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(.*)$/;
const OURS = /\/(lib|bench|handlers)\/([^/]+\.ts)(\?.*)?$/;
const where = (f: CallFrame): string => {
  const url = f.url.replace(/^file:\/\//, '');
  const pkg = PKG.exec(url);
  if (pkg) return `${pkg[1]}/${basename(pkg[2]!)}:${f.lineNumber + 1}`;
  const ours = OURS.exec(url);
  if (ours) return `${ours[1]}/${ours[2]}`;
  if (url.startsWith('node:')) return url;
  return url || '(native)';
};
const origin = (f: CallFrame): string => {
  const url = f.url;
  if (!url) return f.functionName.startsWith('(') ? f.functionName : '(native / V8 builtins)';
  const pkg = PKG.exec(url);
  if (pkg) return `package ${pkg[1]}`;
  const ours = OURS.exec(url);
  if (ours) return `${ours[1]}/${ours[2]}`;
  if (url.startsWith('node:')) return 'node internals';
  return url;
};
const key = (f: CallFrame): string => `${f.functionName || '(anonymous)'}  ${where(f)}`;

const self = new Map<string, number>();
const total = new Map<string, number>();
const byOrigin = new Map<string, number>();
let t = profile.startTime;
let sampled = 0;
for (let i = 0; i < profile.samples.length; i++) {
  t += profile.timeDeltas[i] ?? 0;
  const dt = profile.timeDeltas[i + 1] ?? 0; // a sample's weight is the time until the next one
  if ((t - profile.startTime) / 1000 < fromMs) continue;
  const node = byId.get(profile.samples[i]!);
  if (!node) continue;
  sampled += dt;
  const k = key(node.callFrame);
  self.set(k, (self.get(k) ?? 0) + dt);
  byOrigin.set(origin(node.callFrame), (byOrigin.get(origin(node.callFrame)) ?? 0) + dt);
  // Total time: each function once per stack, however often it recurses.
  const seen = new Set<string>();
  for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
    const kk = key(byId.get(id)!.callFrame);
    if (seen.has(kk)) continue;
    seen.add(kk);
    total.set(kk, (total.get(kk) ?? 0) + dt);
  }
}

const ms = (us: number): string => (us / 1000).toFixed(0).padStart(7);
const pct = (us: number): string => `${((us / sampled) * 100).toFixed(1)}%`.padStart(6);
const busy = sampled - (self.get(key({ functionName: '(idle)', url: '', lineNumber: -1, columnNumber: -1 })) ?? 0);
console.log(`${file}: ${(sampled / 1000).toFixed(0)} ms sampled${fromMs ? ` (after the first ${fromMs} ms)` : ''}, ${(busy / 1000).toFixed(0)} ms not idle`);
console.log('\nby origin (self time):');
for (const [o, us] of [...byOrigin].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`${ms(us)} ms ${pct(us)}  ${o}`);
console.log(`\ntop ${top} functions by self time:`);
for (const [k, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${ms(us)} ms ${pct(us)}  ${k}`);
console.log(`\ntop ${top} functions in lib/ by total time (self + callees):`);
for (const [k, us] of [...total].filter(([k]) => / lib\/\S+\.ts$/.test(k)).sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${ms(us)} ms ${pct(us)}  ${k}`);
