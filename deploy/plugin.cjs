/**
 * OffLog's serverless plugin:
 * - refuses to package or deploy a stage that is not ready (ingest or the
 *   reports open by accident, a token in plain text, servers left at their
 *   loopback defaults); the rules and their messages are in ./settings.cjs;
 * - at deploy, refuses reservations the account's concurrency quota cannot
 *   hold (a new account's quota is 10), before CloudFormation fails on them;
 * - ends `osls invoke local` once the handler has answered. A handler keeps
 *   its connections open for the next invocation, as a Lambda container
 *   should, so the one-shot CLI would otherwise wait on them for ever.
 */
'use strict';

const { concurrencyProblem, problems } = require('./settings.cjs');

class OffLogPlugin {
  constructor(serverless, options) {
    this.serverless = serverless;
    this.options = options;
    const check = () => this.check();
    this.hooks = {
      'before:package:initialize': check,
      'before:deploy:deploy': async () => {
        check();
        await this.checkQuota();
      },
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

  async checkQuota() {
    const resources = this.serverless.service.provider.compiledCloudFormationTemplate?.Resources ?? {};
    const reserved = Object.values(resources).reduce((sum, r) => sum + (r.Type === 'AWS::Lambda::Function' ? (r.Properties.ReservedConcurrentExecutions ?? 0) : 0), 0);
    if (reserved === 0) return;
    let limit;
    try {
      const { LambdaClient, GetAccountSettingsCommand } = require('@aws-sdk/client-lambda');
      const client = new LambdaClient(await this.serverless.getProvider('aws').getAwsSdkV3Config());
      try {
        limit = (await client.send(new GetAccountSettingsCommand({}))).AccountLimit.ConcurrentExecutions;
      } finally {
        client.destroy();
      }
    } catch (err) {
      // No permission to read it, say: CloudFormation will tell if it does not fit.
      process.stderr.write(`offlog: could not read the account's Lambda concurrency quota (${err.message}); deploying anyway\n`);
      return;
    }
    const problem = concurrencyProblem(limit, reserved);
    if (problem) throw new this.serverless.classes.Error(`offlog: ${problem}`);
  }
}

module.exports = OffLogPlugin;
