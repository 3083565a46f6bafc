// The SDK's CommonJS build, for `require('offlog')` (run by `npm run build` after tsc):
//  - dist/cjs/client.cjs: lib/client.ts bundled by esbuild; it holds only OffLog's own code (the
//    entry imports nothing but node builtins), so it needs no dependency at run time;
//  - dist/cjs/**/*.d.cts: the declarations tsc wrote for that entry's modules, as CommonJS types
//    (each .d.ts copied, its relative imports pointed at the .d.cts files beside it).
import { build } from 'esbuild';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const esm = join(root, 'dist', 'lib');
const cjs = join(root, 'dist', 'cjs');

const result = await build({
  entryPoints: [join(root, 'lib', 'client.ts')],
  outfile: join(cjs, 'client.cjs'),
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  metafile: true,
  logLevel: 'warning',
});
const bundled = Object.keys(result.metafile.inputs);
const foreign = bundled.filter((f) => f.includes('node_modules'));
if (foreign.length > 0) throw new Error(`the client entry must not bundle packages, but pulls ${foreign.join(', ')}`);

// Declarations: follow the relative imports from client.d.ts, copying each file once.
const seen = new Set();
const queue = ['client.d.ts'];
while (queue.length > 0) {
  const rel = queue.shift();
  if (seen.has(rel)) continue;
  seen.add(rel);
  const text = readFileSync(join(esm, rel), 'utf8').replace(/(from\s+|import\()(['"])(\.{1,2}\/[^'"]+)\.[jt]s\2/g, (_m, lead, q, spec) => {
    queue.push(relative(esm, join(esm, dirname(rel), `${spec}.d.ts`)));
    return `${lead}${q}${spec}.cjs${q}`;
  });
  const out = join(cjs, rel.replace(/\.d\.ts$/, '.d.cts'));
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, text);
}
process.stdout.write(`dist/cjs: client.cjs (${bundled.length} modules) and ${seen.size} .d.cts files\n`);
