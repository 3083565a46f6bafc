#!/usr/bin/env bash
# local/bench.sh — run a benchmark on Node 24 with everything it needs.
#
#   bash local/bench.sh [--quick] [bench/run.ts options…]     npm run bench
#   bash local/bench.sh bench/php.ts [options…]              npm run bench:php
#   bash local/bench.sh bench/reports.ts [options…]          npm run bench:reports
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
script=bench/run.ts
if [[ ${1:-} == bench/*.ts ]]; then script=$1; shift; fi
exec node --import tsx "$script" "$@"
