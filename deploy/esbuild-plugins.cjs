/**
 * esbuild plugins for the function bundles (serverless-esbuild's `plugins` option).
 *
 * mysql2 decodes through iconv-lite whatever Buffer cannot (cesu8 in the
 * handshake, say). iconv-lite's double-byte CJK code pages are ~280 KB of
 * tables that a utf8mb4 connection never uses: they are left out, and asking
 * for one fails with iconv-lite's own "Encoding not recognized".
 */
'use strict';

const { execFileSync } = require('node:child_process');
const path = require('node:path');

const withoutCjkCodePages = {
  name: 'offlog-without-cjk-code-pages',
  setup(build) {
    const inIconv = `${path.sep}iconv-lite${path.sep}encodings${path.sep}`;
    build.onResolve({ filter: /^\.\/dbcs-data(\.js)?$/ }, (args) => (args.importer.includes(inIconv) ? { path: 'dbcs-data', namespace: 'offlog-empty' } : undefined));
    build.onLoad({ filter: /.*/, namespace: 'offlog-empty' }, () => ({ contents: 'module.exports = {};', loader: 'js' }));
  },
};

/**
 * The dashboard (lib/report/page.ts) is assembled from files read at run time,
 * which a one-file bundle does not carry. At build time the page is built once,
 * by page.ts itself (one source of truth), and the bundle gets a module that
 * returns it as a string.
 */
const dashboardInlined = {
  name: 'offlog-dashboard-inlined',
  setup(build) {
    build.onLoad({ filter: /[\\/]lib[\\/]report[\\/]page\.ts$/ }, (args) => {
      const root = path.resolve(path.dirname(args.path), '..', '..');
      const html = execFileSync(process.execPath, ['--import', 'tsx', '-e', "import('./lib/report/page.ts').then((m) => process.stdout.write(m.dashboardPage()))"], {
        cwd: root, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024,
      });
      return { contents: `export function dashboardPage() { return ${JSON.stringify(html)}; }`, loader: 'js' };
    });
  },
};

module.exports = [withoutCjkCodePages, dashboardInlined];
