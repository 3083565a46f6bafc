/**
 * esbuild plugins for the function bundles (serverless-esbuild's `plugins` option).
 *
 * mysql2 decodes through iconv-lite whatever Buffer cannot (cesu8 in the
 * handshake, say). iconv-lite's double-byte CJK code pages are ~280 KB of
 * tables that a utf8mb4 connection never uses: they are left out, and asking
 * for one fails with iconv-lite's own "Encoding not recognized".
 */
'use strict';

const path = require('node:path');

const withoutCjkCodePages = {
  name: 'offlog-without-cjk-code-pages',
  setup(build) {
    const inIconv = `${path.sep}iconv-lite${path.sep}encodings${path.sep}`;
    build.onResolve({ filter: /^\.\/dbcs-data(\.js)?$/ }, (args) => (args.importer.includes(inIconv) ? { path: 'dbcs-data', namespace: 'offlog-empty' } : undefined));
    build.onLoad({ filter: /.*/, namespace: 'offlog-empty' }, () => ({ contents: 'module.exports = {};', loader: 'js' }));
  },
};

module.exports = [withoutCjkCodePages];
