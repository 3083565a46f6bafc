'use strict';
/**
 * serverless-offline-aws-eventbridge 2.2.4, as OffLog runs it (serverless.yml
 * lists this file instead of the package). The plugin was written against
 * serverless-offline 12; on 14 (with osls 4) its mock PutEvents endpoint, its
 * pattern matching and its delivery to subscribed functions work unchanged
 * (test/bus-offline.test.ts proves it end to end). What this wrapper changes,
 * and why, without touching the package's files (npm 11 runs no install
 * scripts, so a patch would need a step of its own):
 *
 * - Loopback only. The plugin listens on every interface, for both its
 *   PutEvents endpoint and the MQTT broker it delivers through: anyone on
 *   the network could put events and so run our functions. Here both listen
 *   on serverless-offline's `host` (127.0.0.1 in serverless.yml).
 * - A clean stop. The plugin's stop() runs its init() again (a second broker
 *   on the same port, lambdas built anew) and never closes what it opened.
 * - The functions use this bus. Functions run by serverless-offline get
 *   OFFLOG_EVENTBRIDGE_ENDPOINT pointing here unless it is set already, so
 *   that offline, a flush never publishes to AWS (nor goes looking for AWS
 *   credentials) because one variable was forgotten.
 * - Real event ids. The plugin makes ids from the clock
 *   (`xxxxxxxx-xxxx-xxxx-xxxx-<ms>`), so two events of one millisecond share
 *   one; EventBridge's ids are UUIDs. (OffLog's subscribers deduplicate on
 *   the id inside `detail`, so this is for other subscribers' sake.)
 *
 * Everything else is the plugin's own, configured under
 * `custom.serverless-offline-aws-eventbridge` (port, pubSubPort,
 * throwRetryExhausted…).
 */
const { randomUUID } = require('node:crypto');
const { createServer: createHttpServer } = require('node:http');
const { createServer } = require('node:net');
const { createRequire } = require('node:module');

const upstreamPath = require.resolve('serverless-offline-aws-eventbridge');
const Upstream = require(upstreamPath);
// The broker the plugin uses, from the plugin's own dependencies.
const Aedes = createRequire(upstreamPath)('aedes');

function listen(server, port, host) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(port), host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

class OffLogEventBridgeOffline extends Upstream {
  get host() {
    return this.serverless.service.custom?.['serverless-offline']?.host ?? '127.0.0.1';
  }

  get mock() {
    return this.config && !this.config.localStackConfig.localStackEnabled && this.config.eventBridgeMockServerConfig.shouldMockEventBridgeServer;
  }

  async start() {
    await this.init();
    if (!this.mock) return;
    if (!this.app) throw new Error('serverless-offline-aws-eventbridge: its Express app was not set up');
    const { mockServerPort } = this.config.eventBridgeMockServerConfig;
    this.eventBridgeServer = await listen(createHttpServer(this.app), mockServerPort, this.host);
    const url = `http://${this.host}:${mockServerPort}`;
    const env = (this.serverless.service.provider.environment ??= {});
    if (!env.OFFLOG_EVENTBRIDGE_ENDPOINT) env.OFFLOG_EVENTBRIDGE_ENDPOINT = url;
    this.logNotice(`Mock PutEvents endpoint on ${url}; functions publish to ${env.OFFLOG_EVENTBRIDGE_ENDPOINT}`);
  }

  // Called by the plugin's init(): the same broker, on the loopback address.
  setupMqBroker() {
    if (!this.config.eventBridgeMockServerConfig.shouldMockEventBridgeServer) return;
    const { mockMqttClientPubSubPort } = this.config.eventBridgeMockServerConfig;
    this.mqServer = createServer(Aedes().handle);
    this.mqServer.on('error', (err) => this.logNotice(`MQTT broker on ${this.host}:${mockMqttClientPubSubPort}: ${err.message}`));
    this.mqServer.listen(Number(mockMqttClientPubSubPort), this.host);
  }

  async stop() {
    this.eventBridgeServer?.close();
    this.mqClient?.end(true);
    this.mqServer?.close();
    await this.lambda?.cleanup();
  }

  convertEntryAndInputToEvent(entry, input) {
    return { ...super.convertEntryAndInputToEvent(entry, input), id: randomUUID() };
  }

  generateEventBridgeResponse(entries) {
    return { Entries: entries.map(() => ({ EventId: randomUUID() })), FailedEntryCount: 0 };
  }
}

module.exports = OffLogEventBridgeOffline;
