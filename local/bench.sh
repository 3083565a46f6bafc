#!/usr/bin/env bash
# local/bench.sh — run the benchmark (bench/run.ts) with everything it needs.
#
#   bash local/bench.sh [--quick] [bench/run.ts options…]
#
# bench/run.ts starts (and afterwards stops) its own servers through
# local/services.sh: data in .data/bench, ports 4750/11231/3326 (override with
# OFFLOG_BENCH_DATA_DIR, OFFLOG_BENCH_GEARMAN_PORT, OFFLOG_BENCH_MEMCACHED_PORT,
# OFFLOG_BENCH_MYSQL_PORT, OFFLOG_BENCH_MEMCACHED_MB, OFFLOG_BENCH_STATSD_PORT).
#
# The StatsD comparison uses Etsy's `statsd` daemon, a devDependency.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d node_modules ] || npm install
source local/node.sh
echo "offlog bench: node $offlog_node_version ($(command -v node))" >&2
exec node --import tsx bench/run.ts "$@"
