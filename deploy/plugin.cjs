/**
 * OffLog's serverless plugin:
 * - refuses to package or deploy a stage that is not ready (ingest or the
 *   reports open by accident, a token in plain text, servers left at their
 *   loopback defaults); the rules and their messages are in ./settings.cjs;
 * - ends `osls invoke local` once the handler has answered. A handler keeps
 *   its connections open for the next invocation, as a Lambda container
 *   should, so the one-shot CLI would otherwise wait on them for ever.
 */
'use strict';

const { problems } = require('./settings.cjs');

class OffLogPlugin {
  constructor(serverless, options) {
    this.serverless = serverless;
    this.options = options;
    const check = () => this.check();
    this.hooks = {
      'before:package:initialize': check,
      'before:deploy:deploy': check,
      'after:invoke:local:invoke': () => {
        // After the other plugins' after-hooks (serverless-esbuild disposes its build contexts there).
        setImmediate(() => process.exit());
      },
    };
  }

  check() {
    const stage = this.serverless.service.provider.stage;
    const command = (this.serverless.processedInput?.commands ?? []).join(' ');
    const found = problems(stage, command);
    if (found.length > 0) {
      throw new this.serverless.classes.Error(`offlog: stage "${stage}" is not ready to ${command || 'package'}:\n  - ${found.join('\n  - ')}`);
    }
  }
}

module.exports = OffLogPlugin;
