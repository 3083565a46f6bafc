#!/usr/bin/env bash
# local/browser.sh — make sure a headless Chromium is there for the dashboard's browser test.
#
#   local/browser.sh install   apt-get install Debian's `chromium` when it is missing
#   local/browser.sh path      print the executable (exit 1 when there is none)
#
# The test drives it with playwright-core, which never downloads a browser of its own.
# OFFLOG_CHROMIUM points at another Chromium or Chrome executable.
set -euo pipefail

find_chromium() {
  local c
  for c in "${OFFLOG_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    [[ -n $c && -x $c ]] && { echo "$c"; return 0; }
  done
  return 1
}

cmd_install() {
  find_chromium >/dev/null && return 0
  command -v apt-get >/dev/null 2>&1 || { echo "browser: chromium not found and no apt-get; set OFFLOG_CHROMIUM" >&2; exit 1; }
  local sudo=
  if (( EUID != 0 )); then sudo=sudo; fi
  echo "browser: installing Debian's chromium (for the dashboard test)" >&2
  $sudo apt-get update >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-liberation >&2
  find_chromium >/dev/null || { echo "browser: chromium still missing after apt-get install" >&2; exit 1; }
}

case ${1:-} in
  install) cmd_install ;;
  path) find_chromium ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
