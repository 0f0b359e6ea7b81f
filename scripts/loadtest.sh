#!/usr/bin/env bash
# Load test of one gateway on PostgreSQL and Redis (issue 10 item 6): EXECS concurrent
# `POST /api/v1/vms/{id}/execute?wait=60s` (sleep 2) while STREAMS SSE streams follow another execution, and the
# gateway's Redis connections and goroutines before, during and after (test/load, build tag loadtest).
#
# It makes everything it uses and removes it at the end, whatever happens: a fresh database aeth_load_<pid>, Redis
# database LOAD_REDIS_DB (default 13; flushed before and after: keep it for this test), a data directory, one
# gateway (debug_listen on, for the goroutine count) and one worker on the Docker backend, one VM. Everything
# listens on and talks to 127.0.0.1 only; the run is bounded by TIMEOUT.
#
#   scripts/loadtest.sh                     # 500 execs, 200 streams, worker concurrency 100
#   EXECS=100 STREAMS=50 CONCURRENCY=20 scripts/loadtest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
EXECS=${EXECS:-500}
STREAMS=${STREAMS:-200}
CONCURRENCY=${CONCURRENCY:-100}
TIMEOUT=${TIMEOUT:-480}
LOAD_REDIS_DB=${LOAD_REDIS_DB:-13}
PGHOST=127.0.0.1
REDIS_ADDR=127.0.0.1:6379

work=$(mktemp -d /tmp/aetherium-load.XXXXXX)
db=aeth_load_$$
worker_id=load-w-$$
pids=()
cleanup() {
	set +e
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do
		for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	ids=$(docker ps -aq --filter "label=aetherium.worker-id=$worker_id" 2>/dev/null)
	[ -n "$ids" ] && docker rm -f $ids >/dev/null
	dropdb -h "$PGHOST" -U postgres --if-exists "$db" 2>/dev/null
	redis-cli -h 127.0.0.1 -p 6379 -n "$LOAD_REDIS_DB" flushdb >/dev/null 2>&1
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "== building into $work"
go build -o "$work/aetherium" ./cmd/aetherium
CGO_ENABLED=0 go build -o "$work/aetherium-agent" ./cmd/aetherium-agent
go build -tags loadtest -o "$work/load" ./test/load

createdb -h "$PGHOST" -U postgres "$db"
redis-cli -h 127.0.0.1 -p 6379 -n "$LOAD_REDIS_DB" flushdb >/dev/null
api_port=$(free_port)
debug_port=$(free_port)
gw_metrics_port=$(free_port)
worker_metrics_port=$(free_port)
export AETHERIUM_DATABASE_URL="postgres://postgres@$PGHOST:5432/$db?sslmode=disable"
export AETHERIUM_REDIS_URL="redis://$REDIS_ADDR/$LOAD_REDIS_DB"
export AETHERIUM_CLUSTER_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export AETHERIUM_AGENT_BINARY=$work/aetherium-agent AETHERIUM_LOG_LEVEL=warn AETHERIUM_BACKEND=docker
export AETHERIUM_NETWORK=off
AETHERIUM_DATA_DIR=$work/cli "$work/aetherium" migrate >/dev/null
key=$(AETHERIUM_DATA_DIR=$work/cli "$work/aetherium" apikey create --name load 2>/dev/null)

# 700 client connections here and as many on the gateway: raise the soft descriptor limit to the hard one.
ulimit -Sn "$(ulimit -Hn)"
AETHERIUM_DATA_DIR=$work/gw AETHERIUM_LISTEN=127.0.0.1:$api_port AETHERIUM_DEBUG_LISTEN=127.0.0.1:$debug_port \
	AETHERIUM_METRICS_LISTEN=127.0.0.1:$gw_metrics_port "$work/aetherium" gateway >"$work/gateway.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
AETHERIUM_DATA_DIR=$work/w AETHERIUM_WORKER_ID=$worker_id AETHERIUM_CONCURRENCY=$CONCURRENCY \
	AETHERIUM_WORKER_API_LISTEN=127.0.0.1:0 AETHERIUM_METRICS_LISTEN=127.0.0.1:$worker_metrics_port "$work/aetherium" worker >"$work/worker.log" 2>&1 &
pids+=("$!")

echo "== gateway pid $gw_pid on 127.0.0.1:$api_port (pprof 127.0.0.1:$debug_port, metrics 127.0.0.1:$gw_metrics_port), worker $worker_id (docker, concurrency $CONCURRENCY, metrics 127.0.0.1:$worker_metrics_port)"
status=0
timeout "$TIMEOUT" "$work/load" -api "http://127.0.0.1:$api_port" -key "$key" -debug "127.0.0.1:$debug_port" \
	-redis "$REDIS_ADDR" -gateway-pid "$gw_pid" -execs "$EXECS" -streams "$STREAMS" || status=$?
if [ "$status" -ne 0 ]; then
	echo "== load test failed ($status); last lines of the logs:"
	tail -n 20 "$work/gateway.log" "$work/worker.log"
fi
exit "$status"
