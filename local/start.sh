#!/usr/bin/env bash
# `npm start`: servers up, migrations, a long-lived worker and watched drain, and serverless-offline
# serving POST /events, the Lambda invoke endpoint, the schedules and the local bus (a mock
# EventBridge that delivers SliceFlushed to the rollup function). Ctrl-C stops it all
# (the servers keep running: `npx offlog services down` stops them).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d node_modules ] || npm install
source local/node.sh
# The local bus: the functions, the worker and the drain below all publish to the mock PutEvents endpoint.
export OFFLOG_EVENTBRIDGE_PORT=${OFFLOG_EVENTBRIDGE_PORT:-4010}
export OFFLOG_EVENT_BUS=${OFFLOG_EVENT_BUS:-offlog-local}
export OFFLOG_EVENTBRIDGE_ENDPOINT=${OFFLOG_EVENTBRIDGE_ENDPOINT:-http://127.0.0.1:$OFFLOG_EVENTBRIDGE_PORT}
# OFFLOG_SERVICES=docker: the same three servers from local/docker-compose.yml instead of apt + services.sh.
case "${OFFLOG_SERVICES:-native}" in
  native) bash local/services.sh up ;;
  docker) docker compose -f local/docker-compose.yml up -d --wait ;;
  *) echo "start: OFFLOG_SERVICES must be native or docker, got \"$OFFLOG_SERVICES\"" >&2; exit 2 ;;
esac
node bin/offlog.js migrate
node bin/offlog.js worker &
worker=$!
node bin/offlog.js watched &
watched=$!
# The agent PHP logs through (docs/php.md), on a socket under the data dir.
export OFFLOG_AGENT_SOCKET=${OFFLOG_AGENT_SOCKET:-$PWD/.data/agent/agent.sock}
node bin/offlog.js agent --socket "$OFFLOG_AGENT_SOCKET" &
agent=$!
trap 'kill $worker $watched $agent 2>/dev/null; wait $worker $watched $agent 2>/dev/null' EXIT INT TERM
cat >&2 <<MSG

OffLog is running.
  curl -s -XPOST localhost:${OFFLOG_HTTP_PORT:-3000}/events -d '{"userId": 42, "actionId": 1}'
  npx offlog flush --now "\$(date -u -d '+30 min' +%FT%TZ)" --force   # counts now, as if 30 min later (publishes on the local bus)
  npx offlog status
  php -r 'require "clients/php/autoload.php"; \$c = new OffLog\\Client(["agentSocket" => "$OFFLOG_AGENT_SOCKET"]); \$c->log(42, 1);'   # PHP via the agent; then: npx offlog status
  open http://localhost:${OFFLOG_HTTP_PORT:-3000}/                     # the dashboard
Stop: Ctrl-C here, then \`npx offlog services down\` for the servers (Docker: \`docker compose -f local/docker-compose.yml down\`).

MSG
npx osls offline start
