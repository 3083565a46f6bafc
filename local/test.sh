#!/usr/bin/env bash
# `npm test`: type-check, start a separate set of servers for the tests (own ports,
# own data folder under .data/test), run every test, stop what this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d node_modules ] || npm install
source local/node.sh
echo "offlog tests: node $offlog_node_version ($(command -v node))" >&2
gearman_port=${OFFLOG_TEST_GEARMAN_PORT:-4740}
memcached_port=${OFFLOG_TEST_MEMCACHED_PORT:-11221}
mysql_port=${OFFLOG_TEST_MYSQL_PORT:-3316}
# The tests must not depend on the caller's shell: every OFFLOG_* it exported is dropped here.
for v in $(compgen -e | grep '^OFFLOG_' || true); do unset "$v"; done
export OFFLOG_DATA_DIR="$PWD/.data/test"
export OFFLOG_GEARMAN_PORT=$gearman_port
export OFFLOG_MEMCACHED_PORT=$memcached_port
export OFFLOG_MYSQL_PORT=$mysql_port
export OFFLOG_GEARMAN_SERVERS="127.0.0.1:$OFFLOG_GEARMAN_PORT"
export OFFLOG_MEMCACHED_SERVERS="127.0.0.1:$OFFLOG_MEMCACHED_PORT"
export OFFLOG_MYSQL_URL="mysql://offlog:offlog@127.0.0.1:$OFFLOG_MYSQL_PORT/offlog"
export OFFLOG_LOG_LEVEL=${OFFLOG_LOG_LEVEL:-warn}

npx tsc -p .
# The dashboard test drives a real Chromium (Debian's package, installed like the servers).
bash local/browser.sh install
export OFFLOG_CHROMIUM="$(bash local/browser.sh path)"
started=0
if ! bash local/services.sh status >/dev/null 2>&1; then
  bash local/services.sh up
  started=1
fi
stop() { if [ "$started" = 1 ]; then bash local/services.sh down; fi; }
trap stop EXIT
# `npm run chaos`: the long chaos run (test/chaos/main.ts) on these same servers.
if [ "${1:-}" = --chaos ]; then
  shift
  node --import tsx test/chaos/main.ts "$@"
  exit
fi
# `npm run mutants`: one-line bugs put in one at a time, each against its tests (local/mutants.ts).
if [ "${1:-}" = --mutants ]; then
  shift
  node --import tsx local/mutants.ts "$@"
  exit
fi
if [ $# -eq 0 ]; then set -- test/*.test.ts; fi
# TAP, as Node 20 printed by default: Node 24 would print its spec format instead, and CI reads the TAP summary.
node --import tsx --test --test-reporter=tap --test-concurrency=1 --test-timeout=300000 "$@"
