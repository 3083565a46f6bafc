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
  try {
    await import('../dist/local/cli.js');
  } catch (err) {
    // The server side's libraries are optional peers of the package (the client needs none of them).
    const missing = err?.code === 'ERR_MODULE_NOT_FOUND' && /Cannot find package '([^']+)'/.exec(err.message)?.[1];
    if (!missing) throw err;
    process.stderr.write(`offlog: the CLI needs the server side's packages beside offlog (${missing} is missing): npm install mysql2 pino zod commander\n`);
    process.exit(1);
  }
}
