#!/usr/bin/env bash
# The full test suite, as CI runs it: sets up the host (scripts/setup.sh), then vet, unit and conformance tests
# against real PostgreSQL, Redis and Docker, short fuzz runs, and the end-to-end tests of the built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
export AETHERIUM_REQUIRE_SERVICES=1   # a missing service fails the run instead of skipping tests

bash scripts/setup.sh services

echo "== gofmt / go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "not gofmt'ed:"; echo "$unformatted"; exit 1; fi
go vet ./...

echo "== build"
make build

echo "== guest kernel (cached by content hash under /var/cache/aetherium: ~1 s when cached, ~20 min on a new machine)"
# The microVM tests boot real QEMU guests with it (internal/vmm/vmmtest finds it in the cache).
AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image kernel build

echo "== tests"
go test -count=1 -timeout 20m -p 2 ./...

echo "== fuzz (short runs of every decoder of untrusted input)"
fuzz() { go test -run '^$' -fuzz "^$1\$" -fuzztime "${FUZZTIME:-10s}" "$2"; }
fuzz FuzzReadFrame ./internal/agent/protocol/
fuzz FuzzPayloads ./internal/agent/protocol/
fuzz FuzzCleanPath ./internal/agent/server/
fuzz FuzzUserDB ./internal/agent/server/
fuzz FuzzParseMountInfo ./internal/agent/guestinit/
