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

# The guest kernel (~20 min on a new machine, ~1 s when cached) and the default template (~2 min) are built in the
# background while the tests that boot no guest run; the guest tests run once both are there. GUEST_PACKAGES boot
# QEMU guests in all their tests; in test/e2e, GUEST_TESTS names the tests that do (requireGuestPhase fails a guest
# test that is missing from it, so the split cannot silently drift).
GUEST_PACKAGES="./internal/network/ ./internal/tools/ ./internal/vmm/qemu/"
GUEST_TESTS='^(TestMicroVM|TestResync|TestWorkerRestart|TestJobAffinity|TestRunAgent)'
# internal/image boots nothing, but TestRealKernel checks the kernel the background build makes: it runs after it.
KERNEL_TESTS='^TestRealKernel$'
images=$(mktemp -d)
# An early exit stops the background builds (the kernel build stops its make) and removes their logs.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$images"' EXIT
echo "== guest kernel and default template: building in the background (logs: $images)"
# The microVM tests boot real QEMU guests with the kernel (internal/vmm/vmmtest finds it in the cache).
( AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image kernel build >"$images/kernel.log" 2>&1
  echo $? >"$images/kernel.rc" ) &
kernel_pid=$!
# The template: Debian + git, node, npm, bun, claude-code (downloads cached in ci-data; reused while its inputs,
# the agent among them, are unchanged).
( AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image build --from-debian \
    --tools git,node,npm,bun,claude-code,curl --name default >"$images/template.log" 2>&1
  echo $? >"$images/template.rc" ) &
template_pid=$!

echo "== tests that boot no guest"
# The GitHub integration's tests read real webhook payloads and GitHub's OpenAPI description from npm packages.
export AETHERIUM_TEST_OCTOKIT_DIR=${AETHERIUM_TEST_OCTOKIT_DIR:-/var/cache/aetherium/npm}
AETHERIUM_TEST_OCTOKIT_DIR=$(scripts/octokit.sh)
export AETHERIUM_TEST_OCTOKIT_DIR
status=0
# The dashboard: its vendored files are what the pinned npm packages give, and its browser test (test/e2e
# TestDashboard, Debian's chromium) has playwright-core from web/test/package-lock.json.
bash web/vendor.sh --check >/dev/null || { echo "web/static/vendor differs from web/vendor/package-lock.json: run web/vendor.sh"; status=1; }
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error --prefix web/test >/dev/null
skip_pkgs=$(for p in $GUEST_PACKAGES ./test/e2e/; do printf '%s\n' "github.com/aetherium/aetherium/${p#./}" | sed 's#/$##'; done)
mapfile -t plain_pkgs < <(go list ./... | grep -vxF "$skip_pkgs")
# test/e2e's tests that boot no guest run beside the other packages (most of their time is spent waiting on
# servers and containers); -skip "$GUEST_TESTS" names test/e2e's tests only, so it is given to that package alone,
# and the other packages skip only KERNEL_TESTS.
export AETHERIUM_TEST_GUESTS=0
go test -count=1 -timeout 30m -skip "$GUEST_TESTS" ./test/e2e/ & e2e_pid=$!
go test -count=1 -timeout 30m -p 2 -skip "$KERNEL_TESTS" "${plain_pkgs[@]}" || status=1
wait $e2e_pid || status=1
unset AETHERIUM_TEST_GUESTS

echo "== clients in other languages, against a real serve (Docker backend)"
AETHERIUM_BIN_DIR=$PWD/bin bash sdk/python/test.sh || status=1
AETHERIUM_BIN_DIR=$PWD/bin bash sdk/typescript/test.sh || status=1

echo "== deployments: the Pulumi program type-checks; the Compose stack (images built here, 2 gateways, 2 workers) runs"
bash deploy/pulumi/check.sh || status=1
bash deploy/compose/test.sh || status=1

echo "== fuzz (short runs of every decoder of untrusted input)"
# A count of executions, not a duration: with -fuzztime=10s the Go fuzzer's coordinator can fail a clean run with
# "context deadline exceeded" when a worker is slow to stop at the deadline (seen here under load).
fuzz() { go test -run '^$' -fuzz "^$1\$" -fuzztime "${FUZZTIME:-${3:-300000x}}" "$2" || status=1; }
fuzz FuzzReadFrame ./internal/agent/protocol/
fuzz FuzzPayloads ./internal/agent/protocol/
fuzz FuzzCleanPath ./internal/agent/server/
fuzz FuzzStrictDecode ./internal/api/
fuzz FuzzRequestDecoders ./internal/api/
fuzz FuzzUserDB ./internal/agent/server/
fuzz FuzzParseMountInfo ./internal/agent/guestinit/
fuzz FuzzReceivePackCommands ./internal/credproxy/ 50000x # about 1,000 executions a second: its inputs are whole pushes
fuzz FuzzParseCommand ./internal/integrations/
# The webhook fuzzers sign every input and run it through Verify, Accept and Handle: counts of about 20 s each.
fuzz FuzzGitHubWebhook ./internal/integrations/github/ 250000x
fuzz FuzzSlackWebhook ./internal/integrations/slack/ 100000x
fuzz FuzzDiscordInteraction ./internal/integrations/discord/ 60000x

# wait_image NAME PID: wait for a background image build, showing its progress, and fail the run if it failed.
wait_image() {
  echo "== waiting for the $1 build"
  tail -n +1 --pid="$2" -f "$images/$1.log" | grep -v '^ *debootstrap' || true
  wait "$2" || true
  if [ "$(cat "$images/$1.rc" 2>/dev/null)" != 0 ]; then echo "the $1 build failed"; exit 1; fi
}
wait_image kernel "$kernel_pid"
wait_image template "$template_pid"
template=$(grep -o '/var/cache/aetherium/ci-data/images/default/[^ ]*/rootfs.ext4' "$images/template.log" | tail -1)
if [ -z "$template" ] || [ ! -f "$template" ]; then echo "the default template was not built"; exit 1; fi
export AETHERIUM_TEST_TOOLS_TEMPLATE=$template
# Old versions of the CI template (a new agent makes a new one every run) are removed, keeping the newest two.
AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image list 2>/dev/null | awk '$1 == "default" { print $1 "@" $2 }' \
  | tail -n +3 | xargs -r -n1 env AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image rm >/dev/null || true

echo "== tests that boot QEMU guests"
go test -count=1 -timeout 5m -run "$KERNEL_TESTS" ./internal/image/ || status=1
go test -count=1 -timeout 30m -run "$GUEST_TESTS" ./test/e2e/ & e2e_pid=$!
go test -count=1 -timeout 30m -p 1 $GUEST_PACKAGES || status=1
wait $e2e_pid || status=1

exit $status
