#!/usr/bin/env bash
# Type-checks the Pulumi program: installs the pinned packages of package-lock.json (no install scripts: nothing is
# downloaded besides the npm packages, and no Pulumi plugin is fetched) and runs the TypeScript compiler without
# emitting. Exits non-zero when either fails. npm's cache is kept in AETHERIUM_NPM_CACHE
# (default /var/cache/aetherium/npm-cache), so a rerun installs from it.
set -euo pipefail
cd "$(dirname "$0")"
cache=${AETHERIUM_NPM_CACHE:-/var/cache/aetherium/npm-cache}
mkdir -p "$cache"
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "check.sh: Node.js 20 or newer is needed (found $(node --version))" >&2
  exit 1
fi
npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --cache "$cache" --loglevel=error
npx --no-install tsc --noEmit -p tsconfig.json
echo "deploy/pulumi: npm ci and tsc --noEmit passed"
