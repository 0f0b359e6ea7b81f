#!/usr/bin/env bash
# Builds the image of the Compose stack's optional log store (profile "logs"): VictoriaLogs, a Loki-compatible
# server, on the Debian image of build.sh (it is linked against glibc). The binary is the one scripts/setup.sh
# builds from the Go module proxy (VICTORIA_LOGS_BIN, default /var/cache/aetherium/bin/victoria-logs-v1.52.2).
# Tagged by a hash of the binary and the base image: reruns take a second. Prints the image reference.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${VICTORIA_LOGS_BIN:-/var/cache/aetherium/bin/victoria-logs-v1.52.2}
repo=aetherium-compose/victoria-logs
log() { printf '[logs-image] %s\n' "$*" >&2; }
[ -x "$bin" ] || { log "no VictoriaLogs binary at $bin: run scripts/setup.sh services (or set VICTORIA_LOGS_BIN)"; exit 1; }
base=$(bash "$here/build.sh")
tag=$( { sha256sum <"$bin"; echo "$base"; echo layout=1; } | sha256sum | cut -c1-16)
ref=$repo:$tag
if ! docker image inspect "$ref" >/dev/null 2>&1; then
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  install -m 0755 "$bin" "$ctx/victoria-logs"
  mkdir -m 0750 "$ctx/data"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $base
COPY victoria-logs /usr/local/bin/victoria-logs
COPY --chown=65532:65532 data/ /data/
LABEL org.opencontainers.image.title=aetherium-compose-victoria-logs
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/victoria-logs"]
DOCKERFILE
  docker build -q -t "$ref" "$ctx" >/dev/null 2> >(grep -v -i -e deprecated -e buildx -e docs.docker.com -e '^ *$' >&2)
  log "built $ref"
fi
docker tag "$ref" "$repo:latest"
echo "$ref"
