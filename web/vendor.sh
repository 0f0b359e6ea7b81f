#!/usr/bin/env bash
# Reproduces web/static/vendor from the npm packages pinned in web/vendor/package-lock.json: the dashboard's
# third-party files (xterm.js and its fit addon) are committed, embedded in the binary and never fetched at run time.
#   web/vendor.sh          copy them again (after changing web/vendor/package.json: npm install there first)
#   web/vendor.sh --check  fail when the committed files differ from what the pinned packages give
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-}
npm ci --ignore-scripts --no-audit --no-fund --prefix vendor >/dev/null
out=static/vendor
if [ "$mode" = "--check" ]; then
  out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
m=vendor/node_modules/@xterm
# The source map comments are dropped: the maps are not shipped.
sed '/^\/\/# sourceMappingURL=/d' "$m/xterm/lib/xterm.mjs" >"$out/xterm.mjs"
sed '/^\/\/# sourceMappingURL=/d' "$m/addon-fit/lib/addon-fit.mjs" >"$out/addon-fit.mjs"
cp "$m/xterm/css/xterm.css" "$out/xterm.css"
cp "$m/xterm/LICENSE" "$out/LICENSE.xterm"
{
  echo "@xterm/xterm $(node -p "require('./$m/xterm/package.json').version") (MIT, LICENSE.xterm)"
  echo "@xterm/addon-fit $(node -p "require('./$m/addon-fit/package.json').version") (MIT, same authors)"
} >"$out/VERSIONS"
(cd "$out" && sha256sum LICENSE.xterm VERSIONS addon-fit.mjs xterm.css xterm.mjs >SHA256SUMS)
if [ "$mode" = "--check" ]; then
  diff -r "$out" static/vendor && echo "web/static/vendor matches web/vendor/package-lock.json"
fi
