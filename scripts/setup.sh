#!/usr/bin/env bash
# Installs and starts what Aetherium needs on a Debian host: QEMU (the microVM backend that runs without KVM), what
# building the guest kernel and Debian templates needs, a Docker engine (a VM backend too, and the source of image
# builds), a static busybox, and, for the test suite, PostgreSQL and Redis when they are down.
# Idempotent: run it as often as you like. Must run as root (it installs packages and starts daemons).
set -euo pipefail

need_services=${1:-}   # "services": also make sure PostgreSQL and Redis run (the tests need them)

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "run as root (it installs Debian packages and starts dockerd)"; exit 1
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
# The base image needs a static busybox: Debian's plain busybox package is dynamically linked.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
command -v mkfs.ext4 >/dev/null 2>&1 && command -v debugfs >/dev/null 2>&1 || missing+=(e2fsprogs)  # aetherium image
# QEMU microVMs (the backend that runs here: these hosts have no Firecracker and no KVM for ordinary guests).
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
# `aetherium image kernel build`: Debian's kernel source and what compiling it needs.
[ -f /usr/src/linux-source-6.1.tar.xz ] || missing+=(linux-source-6.1)
for pkg in bc bison flex libelf-dev libssl-dev make gcc libc6-dev xz-utils; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
# `aetherium image build --from-debian`, and the Compose stack's PostgreSQL/Redis image (deploy/compose).
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
# deploy/compose/test.sh: Debian bookworm ships Compose v1 (docker-compose 1.29); a Compose v2 plugin will do too.
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
# The dashboard's browser test (test/e2e TestDashboard) drives Debian's Chromium with playwright-core.
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || { log "Go is required (expected at /usr/local/go)"; exit 1; }
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Docker engine: start it ourselves (no systemd on these machines).
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 100); do
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && break
    sleep 0.2
  done
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; tail -20 /var/log/dockerd.log >&2; exit 1; }
fi
log "docker engine $(docker version --format '{{.Server.Version}}') is up"

# dockerd sets the FORWARD policy to DROP, which also drops the microVMs' routed traffic: let the Aetherium bridge
# through Docker's hook for user rules (the worker itself never edits other programs' firewall rules).
if command -v iptables >/dev/null 2>&1 && iptables -nL DOCKER-USER >/dev/null 2>&1; then
  for dir in -i -o; do
    iptables -C DOCKER-USER "$dir" aetherium0 -j ACCEPT 2>/dev/null || iptables -I DOCKER-USER "$dir" aetherium0 -j ACCEPT
  done
fi

if [ "$need_services" = "services" ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL is not reachable on 127.0.0.1:5432"; exit 1; }
  if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  redis-cli -h 127.0.0.1 ping >/dev/null || { log "Redis is not reachable on 127.0.0.1:6379"; exit 1; }
  log "PostgreSQL and Redis are up"
  # VictoriaLogs, the Loki-compatible server internal/logs' tests push to (never a dependency of the product): built
  # from the Go module proxy once, into a cache keyed by version: ~3 min on a new 2-core host (1m46s of CPU), ~6 s
  # with a warm Go build cache, nothing once the binary is there.
  vl_version=v1.52.2
  vl_bin=/var/cache/aetherium/bin/victoria-logs-$vl_version
  if [ ! -x "$vl_bin" ]; then
    log "building VictoriaLogs $vl_version (test server for the Loki client)"
    vl_tmp=$(mktemp -d)
    GOBIN=$vl_tmp GOFLAGS= PATH=$PATH:/usr/local/go/bin go install "github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs@$vl_version"
    mkdir -p "$(dirname "$vl_bin")"
    mv "$vl_tmp/victoria-logs" "$vl_bin"
    rm -rf "$vl_tmp"
  fi
  log "VictoriaLogs $vl_version at $vl_bin"
  # helm v4, for deploy/helm/helmtest (lint and template of the chart; it never talks to a cluster): built from the Go
  # module proxy once, like VictoriaLogs, into a cache keyed by version: ~6 min of CPU (25 min on a 2-core host that
  # also builds a kernel), ~1 min with a warm Go build cache, nothing once the binary is there.
  helm_version=v4.3.2
  helm_bin=/var/cache/aetherium/bin/helm-$helm_version
  if [ ! -x "$helm_bin" ]; then
    log "building helm $helm_version (tests of the Helm chart)"
    helm_tmp=$(mktemp -d)
    GOBIN=$helm_tmp GOFLAGS= PATH=$PATH:/usr/local/go/bin go install "helm.sh/helm/v4/cmd/helm@$helm_version"
    mkdir -p "$(dirname "$helm_bin")"
    mv "$helm_tmp/helm" "$helm_bin"
    rm -rf "$helm_tmp"
  fi
  log "helm $helm_version at $helm_bin"
fi
AETHERIUM_TEST_OCTOKIT_DIR=${AETHERIUM_TEST_OCTOKIT_DIR:-/var/cache/aetherium/npm} "$(dirname "$0")/octokit.sh" >/dev/null  # the GitHub tests' npm packages
