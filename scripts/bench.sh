#!/usr/bin/env bash
# Runs the benchmarks that the issues name targets for, COUNT times each, and prints the median of every metric
# (these machines are noisy: compare medians, not single runs). Needs the services of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
COUNT=${COUNT:-5}
bash scripts/setup.sh services >/dev/null
raw=$(mktemp)
tlog=$(mktemp)
trap 'rm -f "$raw" "$tlog"' EXIT
# The guest kernel and the default template, as scripts/test.sh makes them (in the same cache, so a machine that
# ran the tests reuses both): the QEMU benchmarks boot the kernel, the agent-run benchmark the template.
go build -o bin/aetherium ./cmd/aetherium
AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image kernel build >&2
AETHERIUM_DATA_DIR=/var/cache/aetherium/ci-data bin/aetherium image build --from-debian \
  --tools git,node,npm,bun,claude-code,curl --name default >"$tlog" 2>&1 || { cat "$tlog" >&2; exit 1; }
AETHERIUM_TEST_TOOLS_TEMPLATE=$(grep -o '/var/cache/aetherium/ci-data/images/default/[^ ]*/rootfs.ext4' "$tlog" | tail -1)
[ -f "$AETHERIUM_TEST_TOOLS_TEMPLATE" ] || { echo "bench: the default template was not built:" >&2; cat "$tlog" >&2; exit 1; }
export AETHERIUM_TEST_TOOLS_TEMPLATE
# A benchmark that cannot run must say so, not vanish from the table.
export AETHERIUM_REQUIRE_SERVICES=1
run() { go test -run '^$' -bench "$1" -benchtime "$2" -count "$COUNT" "${@:3}" 2>&1 | tee -a "$raw" | grep -E '^(Benchmark|FAIL|panic)' >&2 || true; }
run 'Pickup' 200x ./internal/queue/...
run 'Health$' 2000x ./internal/agent/server/
run 'ExecTrue' 300x ./internal/agent/server/
run 'StreamCat100MB' 2x ./internal/agent/server/
run 'CreateToReady' 10x ./internal/vmm/docker/
run 'ExecTrue' 300x ./internal/vmm/docker/
run 'RawBoot|CreateToReady' 10x ./internal/vmm/qemu/
run 'ExecTrue' 100x ./internal/vmm/qemu/
run 'APIExecWait$' 300x ./test/e2e/
run 'APIExecWaitMetrics' 300x ./test/e2e/
run 'APIExecWaitObservability' 300x ./test/e2e/
run 'Record' 1s ./internal/metrics/
run 'APICreateToReady' 10x ./test/e2e/
run 'AttachDetach' 100x ./internal/network/
run 'GuestToGatewayTCP' 1x ./internal/network/
run 'Stream' 2s ./internal/credproxy/
# One run of 5 agent runs (each boots a VM and starts claude-code: about a minute under TCG); its own p50 metrics.
COUNT=1 run 'RunToFirstModelRequest' 5x ./test/e2e/
echo
echo "median of $COUNT runs:"
awk '/^pkg: / { pkg = $2; sub(/^github.com\/aetherium\/aetherium\//, "", pkg) }
/^Benchmark/ {
  name=$1; sub(/-[0-9]+$/, "", name); name = pkg "." name
  for (i = 3; i < NF; i += 2) { key = name " " $(i+1); vals[key] = vals[key] " " $i; if (!(key in seen)) { seen[key]=1; order[++n]=key } }
}
END {
  for (k = 1; k <= n; k++) {
    key = order[k]; m = split(substr(vals[key], 2), a, " ")
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    printf "  %-80s %14s\n", key, med
  }
}' "$raw"
