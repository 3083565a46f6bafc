/**
 * A StatsD backend (Etsy statsd's plugin interface) that only counts what
 * reaches a flush: at every flush it sums the counters whose name starts with
 * `offlogBench.prefix` and reports the running total to the benchmark over IPC
 * (statsd runs as a forked child of bench/run.ts). Whatever the sender sent
 * and never shows up here was lost: UDP packets the kernel dropped because
 * statsd's socket buffer was full, or that statsd could not read in time.
 *
 * CommonJS because statsd loads backends with require().
 */
'use strict';

exports.init = function init(startupTime, config, events, logger) {
  const prefix = (config.offlogBench && config.offlogBench.prefix) || 'offlog.';
  let counted = 0;
  let flushes = 0;
  let metricsReceived = 0;
  let packetsReceived = 0;
  events.on('flush', (timestamp, metrics) => {
    flushes++;
    let thisFlush = 0;
    let keys = 0;
    for (const name in metrics.counters) {
      if (name.startsWith(prefix)) {
        thisFlush += metrics.counters[name];
        keys++;
      }
    }
    counted += thisFlush;
    // statsd's own counters for the interval: what it read off the socket.
    metricsReceived += metrics.counters['statsd.metrics_received'] || 0;
    packetsReceived += metrics.counters['statsd.packets_received'] || 0;
    if (process.send) {
      process.send({ type: 'statsd-flush', timestamp, flushes, thisFlush, keys, counted, metricsReceived, packetsReceived });
    }
  });
  // Lets the benchmark start a new measurement without restarting statsd.
  process.on('message', (m) => {
    if (m && m.type === 'reset') {
      counted = 0;
      metricsReceived = 0;
      packetsReceived = 0;
    }
  });
  logger.log('offlog bench backend counting counters under ' + prefix);
  return true;
};
