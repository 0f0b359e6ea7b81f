#!/bin/sh
# Installs the npm packages the GitHub integration's tests read (real webhook payloads and GitHub's OpenAPI
# description) into a cache outside the repository, pinned and idempotently. Prints the directory; tests find it
# in AETHERIUM_TEST_OCTOKIT_DIR (scripts/test.sh exports it).
set -eu
dir=${AETHERIUM_TEST_OCTOKIT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aetherium/octokit}
examples=7.6.1
openapi=23.0.2
want="$examples $openapi"
if [ "$(cat "$dir/.versions" 2>/dev/null)" != "$want" ]; then
	mkdir -p "$dir"
	npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error \
		"@octokit/webhooks-examples@$examples" "@octokit/openapi@$openapi" >&2
	echo "$want" >"$dir/.versions"
fi
echo "$dir"
