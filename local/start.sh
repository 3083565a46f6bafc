#!/usr/bin/env bash
# `npm start`: servers up, migrations, a long-lived worker, and serverless-offline
# serving POST /events, the Lambda invoke endpoint and the schedules. Ctrl-C stops it all
# (the servers keep running: `npx offlog services down` stops them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash local/services.sh up
node bin/offlog.js migrate
node bin/offlog.js worker &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT INT TERM
cat >&2 <<MSG

OffLog is running.
  curl -s -XPOST localhost:${OFFLOG_HTTP_PORT:-3000}/events -d '{"userId": 42, "actionId": 1}'
  npx offlog flush --now "\$(date -u -d '+30 min' +%FT%TZ)"     # flush finished slices as if it were later
  npx offlog status

MSG
npx osls offline start
