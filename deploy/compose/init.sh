#!/usr/bin/env bash
# Makes what the Compose stack reads and the repository must not hold: .env with random PostgreSQL and Redis
# passwords, and secrets/ with the cluster token and the secrets key. Keeps whatever is there already (rerunning
# it changes nothing), so that the secrets key, which seals the owners' secrets, is never replaced by accident.
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
secrets=${AETHERIUM_SECRETS_DIR:-$dir/secrets}
env_file=${AETHERIUM_ENV_FILE:-$dir/.env}
umask 077

if [ ! -e "$env_file" ]; then
  sed -e "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$(openssl rand -hex 24)/" \
      -e "s/^REDIS_PASSWORD=.*/REDIS_PASSWORD=$(openssl rand -hex 24)/" "$dir/.env.example" >"$env_file"
  echo "wrote $env_file" >&2
fi
mkdir -p "$secrets"
chmod 0700 "$secrets"
[ -s "$secrets/cluster_token" ] || { openssl rand -hex 32 >"$secrets/cluster_token"; echo "wrote $secrets/cluster_token" >&2; }
[ -s "$secrets/secrets_key" ] || { openssl rand -base64 32 >"$secrets/secrets_key"; echo "wrote $secrets/secrets_key" >&2; }
# Compose without Swarm bind-mounts secret files as they are, owner and mode included. The gateways run as uid
# 65532 and the workers as root without capabilities (so root cannot read another user's file either), and the
# secrets key must be mode 0600: the gateways get a copy of their own. The cluster token is read through the group.
# The directory stays 0700, so nobody else on the host reads any of them.
chown 0:0 "$secrets/secrets_key"
chmod 0600 "$secrets/secrets_key"
install -m 0600 -o 65532 -g 65532 "$secrets/secrets_key" "$secrets/secrets_key.gateway"
chgrp 65532 "$secrets/cluster_token"
chmod 0640 "$secrets/cluster_token"
