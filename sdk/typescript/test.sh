#!/usr/bin/env bash
# The TypeScript SDK's checks: npm ci (cached under /var/cache/aetherium/npm-cache), the build, the OpenAPI type
# drift check, the consumer type check, and the tests against a real `aetherium serve` on the Docker backend.
# The aetherium binaries come from AETHERIUM_BIN_DIR (default ../../bin, i.e. `make build` at the repository's root).
# Usage: bash sdk/typescript/test.sh   (AETHERIUM_REQUIRE_SERVICES=1: a missing Docker engine fails instead of skipping)
set -euo pipefail
cd "$(dirname "$0")"
export AETHERIUM_BIN_DIR=$(cd "${AETHERIUM_BIN_DIR:-../../bin}" && pwd)
export npm_config_cache=${npm_config_cache:-/var/cache/aetherium/npm-cache}
mkdir -p "$npm_config_cache"
if [ ! -x "$AETHERIUM_BIN_DIR/aetherium" ] || [ ! -x "$AETHERIUM_BIN_DIR/aetherium-agent" ]; then
  echo "no aetherium binaries in $AETHERIUM_BIN_DIR: run make build, or set AETHERIUM_BIN_DIR" >&2
  exit 1
fi

echo "== npm ci"
npm ci --no-audit --no-fund --prefer-offline --loglevel=error
echo "== build"
npm run --silent build
echo "== types generated from internal/api/openapi.yaml"
npm run --silent check:types
echo "== the published types compile in a consumer's strict project"
npm run --silent check:consumer
echo "== tests"
npm test
