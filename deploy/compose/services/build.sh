#!/usr/bin/env bash
# Builds the PostgreSQL + Redis image the Compose stack uses on hosts that cannot pull images: a Debian bookworm
# root filesystem made by debootstrap from the Debian mirror (with postgresql-15 and redis-server from Debian's
# packages) and imported into the local engine with `docker import`. No registry is needed.
#
# The tag is a hash of the inputs (layout version, the entrypoints, suite, mirror and package list): a rerun with the
# image present takes well under a second; with only the cached root filesystem tarball
# (/var/cache/aetherium/compose) a few seconds; from nothing, debootstrap takes 2-5 minutes.
#
# Usage: build.sh            prints the image reference (aetherium-compose/services:<hash>) on stdout
# Env:   AETHERIUM_DEBIAN_MIRROR (default http://deb.debian.org/debian), AETHERIUM_COMPOSE_CACHE
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
suite=bookworm
mirror=${AETHERIUM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=ca-certificates,postgresql-15,redis-server
cache=${AETHERIUM_COMPOSE_CACHE:-/var/cache/aetherium/compose}
repo=aetherium-compose/services
# layout changes whenever this script lays the root filesystem out differently, so that a new layout gets a new tag.
layout=1

log() { printf '[services-image] %s\n' "$*" >&2; }

tag=$( { printf 'layout=%s\nsuite=%s\nmirror=%s\npackages=%s\n' "$layout" "$suite" "$mirror" "$packages";
         cat "$here/postgres-entrypoint.sh" "$here/redis-entrypoint.sh"; } | sha256sum | cut -c1-16)
ref=$repo:$tag
if docker image inspect "$ref" >/dev/null 2>&1; then
  docker tag "$ref" "$repo:latest"
  log "$ref is there"
  echo "$ref"
  exit 0
fi

tarball=$cache/services-$tag.tar
if [ ! -s "$tarball" ]; then
  [ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; exit 1; }
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  start=$(date +%s)
  log "debootstrap $suite ($packages) from $mirror: a few minutes the first time"
  PATH=$PATH:/usr/sbin /usr/sbin/debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" \
    >"$cache/debootstrap-$tag.log" 2>&1 || { log "debootstrap failed; see $cache/debootstrap-$tag.log"; tail -20 "$cache/debootstrap-$tag.log" >&2; exit 1; }
  # Debian's postinst made a cluster at 15/main; the entrypoint makes its own in the volume instead.
  rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root/debootstrap"
  install -m 0755 "$here/postgres-entrypoint.sh" "$root/usr/local/bin/postgres-entrypoint"
  install -m 0755 "$here/redis-entrypoint.sh" "$root/usr/local/bin/redis-entrypoint"
  # The volumes' mount points, owned by the service users: a fresh named volume takes this ownership.
  install -d -m 0700 -o "$(chroot "$root" id -u postgres)" -g "$(chroot "$root" id -g postgres)" "$root/var/lib/postgresql/data"
  install -d -m 0750 -o "$(chroot "$root" id -u redis)" -g "$(chroot "$root" id -g redis)" "$root/var/lib/redis"
  tar --numeric-owner --sort=name -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  log "root filesystem built in $(( $(date +%s) - start )) s ($(du -h "$tarball" | cut -f1))"
fi
docker import \
  --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.opencontainers.image.title=aetherium-compose-services org.opencontainers.image.description=PostgreSQL-15-and-Redis-from-Debian-$suite" \
  --message "debootstrap $suite $packages" \
  "$tarball" "$ref" >/dev/null
docker tag "$ref" "$repo:latest"
log "imported $ref (also tagged $repo:latest)"
echo "$ref"
