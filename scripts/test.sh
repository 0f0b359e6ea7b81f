#!/usr/bin/env bash
# The full test suite, as CI runs it: sets up the host (scripts/setup.sh), then vet, unit and conformance tests
# against real PostgreSQL, Redis and Docker, short fuzz runs, and the end-to-end tests of the built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
export AETHERIUM_REQUIRE_SERVICES=1   # a missing service fails the run instead of skipping tests
# Reference inputs outside the repository (../shared: Firecracker's API spec) are optional for a user's clone, whose
# tests skip loudly without them; CI has them, and there a test that would skip for their lack fails.
if [ -n "${CI:-}" ]; then export AETHERIUM_REQUIRE_REFERENCE=1; fi
if [ -z "${AETHERIUM_FIRECRACKER_SPEC:-}" ] && [ ! -f ../shared/reference/firecracker/firecracker-api.yaml ]; then
  echo "NOTE: SKIPPING the Firecracker backend suite: Firecracker's API spec (firecracker-api.yaml) is not beside"
  echo "      this clone (../shared/reference/firecracker); set AETHERIUM_FIRECRACKER_SPEC to a copy to run it."
fi

bash scripts/setup.sh services
export AETHERIUM_TEST_VICTORIALOGS_BIN=/var/cache/aetherium/bin/victoria-logs-v1.52.2   # built by setup.sh (internal/logs)

echo "== gofmt / go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "not gofmt'ed:"; echo "$unformatted"; exit 1; fi
go vet ./...

echo "== build"
make build

echo "== guest kernel (cached by content hash under /var/cache/aetherium: ~1 s when cached, ~20 min on a new machine)"
# The microVM tests boot real QEMU guests with it (internal/vmm/vmmtest finds it in the cache).
AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image kernel build

echo "== default template with tools (Debian + git, node, npm, bun, claude-code; downloads cached in ci-data)"
build_log=$(mktemp)
AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image build --from-debian \
  --tools git,node,npm,bun,claude-code,curl --name default 2>&1 | tee "$build_log" | grep -v '^ *debootstrap' || true
template=$(grep -o '/var/cache/aetherium/ci-data/images/default/[^ ]*/rootfs.ext4' "$build_log" | tail -1)
rm -f "$build_log"
if [ -z "$template" ] || [ ! -f "$template" ]; then echo "the default template was not built"; exit 1; fi
export AETHERIUM_TEST_TOOLS_TEMPLATE=$template
# Old versions of the CI template (a new agent makes a new one every run) are removed, keeping the newest two.
AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image list 2>/dev/null | awk '$1 == "default" { print $1 "@" $2 }' \
  | tail -n +3 | xargs -r -n1 env AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image rm >/dev/null || true

echo "== tests"
# The GitHub integration's tests read real webhook payloads and GitHub's OpenAPI description from npm packages.
export AETHERIUM_TEST_OCTOKIT_DIR=${AETHERIUM_TEST_OCTOKIT_DIR:-/var/cache/aetherium/npm}
AETHERIUM_TEST_OCTOKIT_DIR=$(scripts/octokit.sh)
export AETHERIUM_TEST_OCTOKIT_DIR
go test -count=1 -timeout 30m -p 2 ./...

echo "== fuzz (short runs of every decoder of untrusted input)"
# A count of executions, not a duration: with -fuzztime=10s the Go fuzzer's coordinator can fail a clean run with
# "context deadline exceeded" when a worker is slow to stop at the deadline (seen here under load).
fuzz() { go test -run '^$' -fuzz "^$1\$" -fuzztime "${FUZZTIME:-${3:-300000x}}" "$2"; }
fuzz FuzzReadFrame ./internal/agent/protocol/
fuzz FuzzPayloads ./internal/agent/protocol/
fuzz FuzzCleanPath ./internal/agent/server/
fuzz FuzzStrictDecode ./internal/api/
fuzz FuzzRequestDecoders ./internal/api/
fuzz FuzzUserDB ./internal/agent/server/
fuzz FuzzParseMountInfo ./internal/agent/guestinit/
fuzz FuzzReceivePackCommands ./internal/credproxy/ 50000x # about 1,000 executions a second: its inputs are whole pushes
