#!/usr/bin/env node
// Installed from the package: the compiled CLI in dist/. In a clone (the TypeScript source is
// there): tsx runs the source, so no build step stands between an edit and `npx offlog`.
import { existsSync } from 'node:fs';

const source = new URL('../local/cli.ts', import.meta.url);
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import(source.href);
} else {
  await import('../dist/local/cli.js');
}
