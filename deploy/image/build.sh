#!/usr/bin/env bash
# Builds the gateway and worker images from this repository alone (`make images-oci`): static binaries
# (CGO_ENABLED=0; the SQLite driver is pure Go), a build context with fixed modification times, and `docker build`
# of deploy/image/Dockerfile, whose stages are FROM scratch, so nothing is pulled.
#
# Reproducible: the layers depend on the sources, the Go toolchain, the host's CA bundle and busybox only (check
# with `docker image inspect -f '{{.RootFS.Layers}}'`); the image's created time and labels come from
# SOURCE_DATE_EPOCH (default: the last commit's time). Reruns are seconds: Go's and Docker's build caches.
#
# Env: IMAGE_PREFIX (default aetherium), VERSION (default git describe), IMAGE_SOURCE, SOURCE_DATE_EPOCH,
#      CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt), BUSYBOX (default /bin/busybox, Debian's busybox-static).
# Prints the two image references on stdout.
set -euo pipefail
export PATH=$PATH:/usr/local/go/bin

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
prefix=${IMAGE_PREFIX:-aetherium}
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
source=${IMAGE_SOURCE:-https://github.com/aetherium/aetherium}
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
busybox=${BUSYBOX:-/bin/busybox}

log() { printf '[images] %s\n' "$*" >&2; }
[ -s "$ca" ] || { log "no CA bundle at $ca (apt-get install ca-certificates, or set CA_BUNDLE)"; exit 1; }
[ -x "$busybox" ] || { log "no static busybox at $busybox (apt-get install busybox-static, or set BUSYBOX)"; exit 1; }
if file -L "$busybox" 2>/dev/null | grep -q 'dynamically linked'; then
  log "$busybox is dynamically linked: install Debian's busybox-static"; exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
start=$(date +%s)
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$ctx/data/data" "$ctx/busybox/usr/libexec/aetherium"
ldflags="-s -w -X main.version=$version -buildid="
CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$root/usr/local/bin/aetherium" ./cmd/aetherium
CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$root/usr/local/bin/aetherium-agent" ./cmd/aetherium-agent
for b in aetherium aetherium-agent; do
  if file "$root/usr/local/bin/$b" | grep -q 'dynamically linked'; then log "$b is not static"; exit 1; fi
done
install -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0755 "$busybox" "$ctx/busybox/usr/libexec/aetherium/busybox"
printf 'root:x:0:0:root:/data:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 0750 "$ctx/data/data"
chmod 1777 "$root/tmp"
find "$ctx" -exec touch -h -d "@$epoch" {} +
cp deploy/image/Dockerfile "$ctx/Dockerfile"

for target in worker gateway; do
  ref=$prefix-$target:$version
  docker build -q --target "$target" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
    --build-arg SOURCE="$source" -t "$ref" -t "$prefix-$target:latest" "$ctx" >/dev/null
  log "built $ref ($(docker image inspect -f '{{.Size}}' "$ref" | numfmt --to=iec))"
  echo "$ref"
done
log "images built in $(( $(date +%s) - start )) s"
