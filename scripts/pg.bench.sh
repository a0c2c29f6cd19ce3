#!/usr/bin/env bash
# pg.bench.sh: the original's loads on PostgreSQL mode, with one and with two
# replicas on one database, beside SQLite mode, in one run on a release build.
# A private PostgreSQL (scripts/postgres.sh) runs on the same machine, fsync on,
# reached over TLS with verify-full (as a managed database is; the figures
# before 2026-12-08 were plain TCP).
# Loads (wrk, BENCH_SECONDS each, 64 connections; with two replicas, 32 on
# each): anonymous POST /api creates, POST /api upserts of id 1, and GETs of
# id 1. Prints requests per second and each ratio to SQLite (EXDAAS_SYNC=full,
# the durable setting) in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${BENCH_SECONDS:-8}
command -v wrk >/dev/null || {
	echo "== installing wrk (apt-get)"
	apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
}
echo "== cargo build --release"
cargo build --release --quiet
bin=target/release/exdaas

tmp=$(mktemp -d)
pgdata=""
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [[ -n $pgdata ]]; then ./scripts/postgres.sh stop "$pgdata"; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
eval "$(./scripts/postgres.sh start)"
pgdata=$EXDAAS_TEST_PGDATA
database=$EXDAAS_TEST_DATABASE_URL

cat >"$tmp/anon.lua" <<-'LUA'
	wrk.method = "POST"
	wrk.body = '{"id": null, "data": {"color": "blue"}}'
	wrk.headers["Content-Type"] = "application/json"
LUA
cat >"$tmp/upsert.lua" <<-'LUA'
	wrk.method = "POST"
	wrk.body = '{"id": 1, "data": {"color": "blue"}}'
	wrk.headers["Content-Type"] = "application/json"
LUA

# start NAME PORT ENV...: an exdaas in the background, waiting for /readyz.
start() {
	local name=$1 port=$2
	shift 2
	env "$@" PORT="$port" EXDAAS_LISTEN_ADDR=127.0.0.1 RUST_LOG=warn "$bin" >"$tmp/$name.log" 2>&1 &
	pids+=("$!")
	for _ in $(seq 100); do
		curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return
		sleep 0.1
	done
	echo "!! $name did not get ready:" >&2
	cat "$tmp/$name.log" >&2
	exit 1
}

stop_all() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	pids=()
}

# load KIND PORT... : requests per second of one load, split over the ports.
load() {
	local kind=$1
	shift
	local connections=$((64 / $#)) port args=() outs=()
	case $kind in
	anon) args=(-s "$tmp/anon.lua") path=/api ;;
	upsert) args=(-s "$tmp/upsert.lua") path=/api ;;
	get) path="/api?id=1" ;;
	esac
	for port in "$@"; do
		wrk -t1 -c"$connections" -d"$SECONDS_EACH" "${args[@]}" "http://127.0.0.1:$port$path" >"$tmp/wrk.$port" 2>&1 &
		outs+=("$tmp/wrk.$port")
	done
	wait
	awk '/Requests\/sec/ { total += $2 } END { printf "%.0f", total }' "${outs[@]}"
}

declare -A rate
run_setup() {
	local setup=$1
	shift
	# The GETs and upserts need id 1.
	curl -fs -o /dev/null -H 'content-type: application/json' -d '{"id": 1, "data": {"color": "blue"}}' "http://127.0.0.1:$1/api"
	for kind in anon upsert get; do
		rate[$setup.$kind]=$(load "$kind" "$@")
	done
}

echo "== SQLite (EXDAAS_SYNC=full)"
start sqlite 18801 DETS_ROOT="$tmp/data" EXDAAS_SYNC=full
run_setup sqlite 18801
stop_all
echo "== PostgreSQL, one replica"
start pg1 18802 EXDAAS_DATABASE_URL="$database" DETS_ROOT="$tmp/unused"
run_setup pg1 18802
stop_all
echo "== PostgreSQL, two replicas on one database"
start pg2a 18803 EXDAAS_DATABASE_URL="$database" DETS_ROOT="$tmp/unused"
start pg2b 18804 EXDAAS_DATABASE_URL="$database" DETS_ROOT="$tmp/unused"
run_setup pg2 18803 18804
stop_all

printf '\n%-32s %12s %12s %12s\n' "load (req/s, ratio to SQLite)" "SQLite full" "PG 1 replica" "PG 2 replicas"
for kind in anon upsert get; do
	s=${rate[sqlite.$kind]} p1=${rate[pg1.$kind]} p2=${rate[pg2.$kind]}
	awk -v k="$kind" -v s="$s" -v a="$p1" -v b="$p2" \
		'BEGIN { printf "%-32s %12d %7d %4.2f %7d %4.2f\n", k, s, a, a / s, b, b / s }'
done
