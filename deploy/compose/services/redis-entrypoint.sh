#!/bin/sh
# Redis for the Compose stack: the password comes from $REDIS_PASSWORD_FILE (a Compose secret) or
# $REDIS_PASSWORD and goes into a config file, never onto the command line (which `ps` shows). Append-only
# persistence in /var/lib/redis (the volume), so queued tasks survive a restart. Runs as the redis user.
set -eu
if [ -n "${REDIS_PASSWORD_FILE:-}" ]; then
  pw=$(cat "$REDIS_PASSWORD_FILE")
else
  pw=${REDIS_PASSWORD:?redis-entrypoint: set REDIS_PASSWORD or REDIS_PASSWORD_FILE}
fi
conf=$(mktemp /tmp/redis.XXXXXX.conf)
chmod 0600 "$conf"
cat >"$conf" <<CONF
bind * -::*
port 6379
protected-mode no
dir /var/lib/redis
appendonly yes
save ""
requirepass $pw
CONF
exec redis-server "$conf"
