#!/usr/bin/env bash
# End-to-end test of the Compose stack (deploy/compose/compose.yaml), for real: builds the images (cached), brings
# the stack up with two gateways and two workers on the Docker backend under a project name of its own, waits for
# every health check, runs the README's CLI flow through gateway 1 and gateway 2, creates VMs on both gateways at
# once and checks that they landed on both workers, deletes them, then `down -v` and checks that nothing is left:
# no container, network or volume of the project, no VM container of its workers.
# Exits non-zero on any failure, and cleans up on failure too. Needs root (debootstrap, Docker), a Docker engine,
# docker-compose (Debian's package) or Compose v2, Go at /usr/local/go, and the Debian mirror for the first build.
#
# With the VictoriaLogs binary scripts/setup.sh builds, the "logs" profile runs too, and the servers' logs are
# checked to arrive there.
# Env: AETHERIUM_COMPOSE_VMS (VMs created at once, default 8), AETHERIUM_COMPOSE_KEEP=1 (leave the stack up on
#      failure, to look at it), AETHERIUM_COMPOSE_LOGS (1: the logs profile, 0: not; default 1 when VictoriaLogs
#      is built), COMPOSE (the compose command, default `docker compose` if it works, else
#      docker-compose).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
nvms=${AETHERIUM_COMPOSE_VMS:-8}
project=aect$$
t0=$(date +%s.%N)

log() { printf "[compose-test %6.1fs] %s\n" "$(awk -v a="$(date +%s.%N)" -v b="$t0" "BEGIN{print a-b}")" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
phase_start=$t0
phase() { # phase NAME: prints how long the previous phase took
  local now; now=$(date +%s.%N)
  [ -z "${phase_name:-}" ] || timings+=("$(printf '%-28s %6.1f s' "$phase_name" "$(awk -v a="$now" -v b="$phase_start" "BEGIN{print a-b}")")")
  phase_name=$1 phase_start=$now
  log "== $1"
}
timings=()

if [ -z "${COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
command -v ${COMPOSE%% *} >/dev/null || fail "no compose: apt-get install docker-compose (or run scripts/setup.sh services)"

# Short: the workers' data directories are mounted at the same path, and agent socket paths must fit in 107 bytes.
work=$(mktemp -d /tmp/aect.XXXXXX)
env_file=$work/env
vl_bin=${VICTORIA_LOGS_BIN:-/var/cache/aetherium/bin/victoria-logs-v1.52.2}
logs=${AETHERIUM_COMPOSE_LOGS:-$([ -x "$vl_bin" ] && echo 1 || echo 0)}
profile=()
[ "$logs" = 1 ] && profile=(--profile logs)
compose() { $COMPOSE -p "$project" -f "$here/compose.yaml" --env-file "$env_file" "${profile[@]}" "$@"; }
installations=()
# The container of a service, by the labels Compose puts on it (much faster than `compose ps -q` with Compose v1).
cid() { docker ps -aq --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=$1"; }

cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ]; then
    log "failed (exit $rc): logs of the stack"
    compose ps >&2
    for s in gateway-1 gateway-2 worker-1 worker-2 postgres redis; do
      echo "--- $s" >&2; compose logs --no-color --tail=30 "$s" >&2 2>&1
    done
    if [ "${AETHERIUM_COMPOSE_KEEP:-}" = 1 ]; then
      log "AETHERIUM_COMPOSE_KEEP=1: the stack stays up: $COMPOSE -p $project -f $here/compose.yaml --env-file $env_file down -v"
      return
    fi
  fi
  if [ -f "$env_file" ]; then
    for w in worker-1 worker-2; do
      [ -s "$work/data/$w/installation-id" ] && installations+=("$(cat "$work/data/$w/installation-id")")
    done
    compose down -v --remove-orphans >/dev/null 2>&1
    for id in "${installations[@]}"; do
      docker ps -aq --filter "label=aetherium.installation-id=$id" | xargs -r docker rm -f >/dev/null
    done
  fi
  rm -rf "$work"
  [ $rc -eq 0 ] || log "cleaned up after the failure"
}
trap cleanup EXIT

phase "build images"
images=$(bash "$repo/deploy/image/build.sh" 2> >(grep -v -i -e deprecated -e buildx -e docs.docker.com -e '^ *$' >&2))
tag=${images##*:}
services=$(bash "$here/services/build.sh")
[ "$logs" = 1 ] && logs_image=$(bash "$here/services/build-logs.sh")
for role in gateway worker; do
  docker image inspect "aetherium-$role:$tag" >/dev/null || fail "image aetherium-$role:$tag was not built"
done
[ "$(docker image inspect -f '{{.Config.User}}' "aetherium-gateway:$tag")" = 65532:65532 ] || fail "the gateway image does not run as 65532"
for l in source version revision created; do
  v=$(docker image inspect -f "{{index .Config.Labels \"org.opencontainers.image.$l\"}}" "aetherium-gateway:$tag")
  [ -n "$v" ] || fail "the gateway image has no org.opencontainers.image.$l label"
done
if docker run --rm --entrypoint /bin/sh "aetherium-gateway:$tag" -c true >/dev/null 2>&1; then
  fail "the gateway image has a shell: it should be FROM scratch"
fi

phase "configure"
AETHERIUM_SECRETS_DIR=$work/secrets AETHERIUM_ENV_FILE=$env_file "$here/init.sh" 2>/dev/null
cat >>"$env_file" <<ENV
AETHERIUM_SECRETS_DIR=$work/secrets
AETHERIUM_HOST_DATA=$work/data
AETHERIUM_IMAGE_TAG=$tag
AETHERIUM_SERVICES_IMAGE=$services
AETHERIUM_GATEWAY_1_PORT=127.0.0.1:
AETHERIUM_GATEWAY_2_PORT=127.0.0.1:
AETHERIUM_LOGS_PORT=127.0.0.1:
ENV
if [ "$logs" = 1 ]; then
  printf 'AETHERIUM_LOGS_IMAGE=%s\nAETHERIUM_LOKI_URL=http://victoria-logs:9428/insert\n' "$logs_image" >>"$env_file"
fi
compose config -q || fail "compose config"

phase "compose up"
compose up -d >&2 2>&1 || fail "compose up"

phase "wait for health"
deadline=$((SECONDS + 180))
svcs=(postgres redis gateway-1 gateway-2 worker-1 worker-2)
[ "$logs" = 1 ] && svcs+=(victoria-logs)
for s in "${svcs[@]}"; do
  while :; do
    c=$(cid "$s")
    h=$(docker inspect -f '{{.State.Health.Status}}' "$c" 2>/dev/null || echo missing)
    [ "$h" = healthy ] && break
    [ $SECONDS -lt $deadline ] || fail "$s is $h after 180 s"
    sleep 1
  done
  log "$s is healthy"
done

phase "cli flow"
cli=$work/aetherium
c=$(docker create "aetherium-gateway:$tag")
docker cp "$c:/usr/local/bin/aetherium" "$cli" >/dev/null
docker rm "$c" >/dev/null
gw1=http://$(docker port "$(cid gateway-1)" 8080/tcp | head -1)
gw2=http://$(docker port "$(cid gateway-2)" 8080/tcp | head -1)
# What the README says to run (`compose exec -T gateway-1 aetherium apikey create`), through the engine directly.
AETHERIUM_API_KEY=$(docker exec "$(cid gateway-1)" aetherium apikey create --name compose-test 2>/dev/null)
export AETHERIUM_API_KEY
[ -n "$AETHERIUM_API_KEY" ] || fail "apikey create printed no key"
a1() { AETHERIUM_SERVER=$gw1 "$cli" "$@"; }
a2() { AETHERIUM_SERVER=$gw2 "$cli" "$@"; }
a1 vm create demo >/dev/null || fail "vm create demo (gateway 1)"
out=$(a1 vm exec demo -- echo hello) || fail "vm exec demo -- echo hello (gateway 1)"
[ "$out" = hello ] || fail "vm exec printed '$out', want hello"
out=$(a2 vm exec demo -- echo hello) || fail "vm exec through gateway 2"
[ "$out" = hello ] || fail "vm exec through gateway 2 printed '$out'"
set +e; a2 vm exec demo -- sh -c 'exit 3'; rc=$?; set -e
[ $rc -eq 3 ] || fail "vm exec -- sh -c 'exit 3' exited $rc, want 3"
echo "from the host $$" >"$work/note.txt"
a2 vm cp "$work/note.txt" demo:/tmp/note.txt || fail "vm cp to the VM through gateway 2 (worker API)"
out=$(a1 vm exec demo -- cat /tmp/note.txt) || fail "read the copied file"
[ "$out" = "from the host $$" ] || fail "the copied file holds '$out'"
log "create, exec (both gateways), exit codes and cp work"

phase "vms on both workers"
created=(demo)
spread() {
  a1 vm list --json | python3 -c '
import collections, json, sys
c = collections.Counter(v.get("worker_id", "") for v in json.load(sys.stdin)["vms"] if v["status"] == "running")
print(" ".join("%s=%d" % kv for kv in sorted(c.items())))'
}
for batch in 1 2 3; do
  pids=()
  for i in $(seq 1 "$nvms"); do
    name=b$batch-vm$i
    created+=("$name")
    if [ $((i % 2)) -eq 0 ]; then a2 vm create "$name" >/dev/null & else a1 vm create "$name" >/dev/null & fi
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fail "a parallel vm create failed"; done
  dist=$(spread)
  log "batch $batch: $nvms VMs created at once on both gateways; running VMs per worker: $dist"
  case "$dist" in *worker-1=*worker-2=*) break ;; esac
  # Placement today is first come, first served on the queue: a batch can land on one worker by chance.
  [ $batch -lt 3 ] || fail "after 3 batches every VM is on one worker: $dist"
done

if [ "$logs" = 1 ]; then
  phase "logs in victoria-logs"
  vl=http://$(docker port "$(cid victoria-logs)" 9428/tcp | head -1)
  deadline=$((SECONDS + 60))
  for w in worker-1 worker-2; do
    # The workers' own "vm running" lines, pushed over Loki's protocol.
    until n=$(curl -fsS "$vl/select/logsql/query" --data-urlencode "query=\"vm running\" AND \"$w\"" | grep -c .) && [ "$n" -gt 0 ]; do
      [ $SECONDS -lt $deadline ] || fail "no \"vm running\" log line of $w reached VictoriaLogs in 60 s"
      sleep 2
    done
    log "$n \"vm running\" log lines of $w are in VictoriaLogs"
  done
fi

phase "delete vms"
pids=()
for name in "${created[@]}"; do a1 vm delete "$name" >/dev/null & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || fail "a vm delete failed"; done
left=$(a1 vm list --json | python3 -c 'import json,sys; print(" ".join(v["name"] + ":" + v["status"] for v in json.load(sys.stdin)["vms"] if v["status"] != "deleted"))')
[ -z "$left" ] || fail "VMs not deleted after deleting them all: $left"
for w in worker-1 worker-2; do installations+=("$(cat "$work/data/$w/installation-id")"); done
for id in "${installations[@]}"; do
  n=$(docker ps -aq --filter "label=aetherium.installation-id=$id" | wc -l)
  [ "$n" -eq 0 ] || fail "$n VM containers of installation $id are left after deleting every VM"
done

phase "compose down"
compose down -v >&2 2>&1 || fail "compose down -v"
for kind in "ps -a" "network ls" "volume ls"; do
  left=$(docker $kind -q --filter "label=com.docker.compose.project=$project")
  [ -z "$left" ] || fail "docker $kind: left after down -v: $left"
done
phase "done"
log "PASS: timings:"
printf '  %s\n' "${timings[@]}" >&2
printf 'compose test: 1 passed, 0 failed\n'
