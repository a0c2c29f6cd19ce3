#!/usr/bin/env bash
# restart.bench.sh: exdaas at size, on a release build, with the default
# settings (EXDAAS_CACHE_MIB 256 unless set):
#   - BENCH_DOCS (1,000,000) small documents written into the original API's
#     collection (NDJSON imports of 10,000, ids 1..N, {"color", "size", "n"})
#   - a restart: seconds from the process's start to /readyz answering 200
#     (the cache warmed: ready means back to normal speed), the cache's own
#     figures, and the resident memory then
#   - the original's load on it (ab upserts of id 1, then GETs of ids spread
#     over the whole set) and the resident memory after, beside the cache
#     setting: the promise is RSS <= EXDAAS_CACHE_MIB + 64 MiB.
# Prints figures; changes nothing in the repository. Needs python3, curl, ab
# and wrk (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCS=${BENCH_DOCS:-1000000} PORT=${BENCH_PORT:-4100} CACHE_MIB=${EXDAAS_CACHE_MIB:-256}
EXDAAS_BIN=${EXDAAS_BIN:-}
URL=http://127.0.0.1:$PORT
need=()
command -v ab >/dev/null || need+=(apache2-utils)
command -v wrk >/dev/null || need+=(wrk)
if ((${#need[@]})); then
	echo "== installing ${need[*]} (apt-get)"
	apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
if [[ -z $EXDAAS_BIN ]]; then
	echo "== cargo build --release --bin exdaas"
	cargo build --release --bin exdaas
	EXDAAS_BIN=target/release/exdaas
fi
tmp=$(mktemp -d)
pid=""
cleanup() {
	[[ -z $pid ]] || kill -KILL "$pid" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

# start: the server over $tmp/data; sets ready to the seconds until /readyz
# answered 200.
ready=""
start() {
	local began
	began=$(date +%s.%N)
	env PORT="$PORT" DETS_ROOT="$tmp/data" EXDAAS_LISTEN_ADDR=127.0.0.1 EXDAAS_CACHE_MIB="$CACHE_MIB" \
		EXDAAS_LOG_FORMAT=json RUST_LOG=info "$EXDAAS_BIN" >"$tmp/server.log" 2>&1 &
	pid=$!
	for ((i = 0; i < 6000; i++)); do
		if curl -fs -o /dev/null "$URL/readyz"; then
			ready=$(awk -v s="$began" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || { tail "$tmp/server.log" >&2 && exit 1; }
		sleep 0.01
	done
	echo "!! not ready after 60 s" >&2 && exit 1
}
stop() {
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" || true
	pid=""
}
rss_mib() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status"; }
metric() { curl -fs "$URL/metrics" | awk -v m="$1" '$1 == m { printf "%.0f", $2 }'; }

echo "== exdaas restart benchmark $(date '+%Y-%m-%d %H:%M:%S %z'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), nproc $(nproc), EXDAAS_CACHE_MIB=$CACHE_MIB"
mkdir "$tmp/data"
start
python3 - "$URL" "$DOCS" <<-'EOF'
	import json, sys, time, urllib.request
	url, docs = sys.argv[1], int(sys.argv[2])
	began = time.time()
	for chunk in range(1, docs + 1, 10000):
	    lines = "".join(
	        json.dumps({"id": i, "data": {"color": "blue", "size": "L", "n": i}}) + "\n"
	        for i in range(chunk, min(chunk + 10000, docs + 1)))
	    req = urllib.request.Request(f"{url}/v1/collections/default/import", data=lines.encode(),
	                                 headers={"content-type": "application/x-ndjson"}, method="POST")
	    report = json.load(urllib.request.urlopen(req))
	    assert report["rejected_count"] == 0, report
	print(f"   wrote {docs:,} documents in {time.time() - began:.1f} s")
EOF
stop

echo "== restart over $DOCS documents"
start
entries=$(metric exdaas_cache_entries)
bytes=$(metric exdaas_cache_bytes)
warm=$(grep -o '"elapsed_ms":[0-9]*' "$tmp/server.log" | head -n 1 | cut -d: -f2)
echo "   /readyz 200 after ${ready} s (cache warm-up ${warm:-?} ms); the cache holds ${entries} documents, $((bytes / 1048576)) MiB by its weigher"
after_start=$(rss_mib)
echo "   resident: ${after_start} MiB after the restart"

echo "== the original's load"
printf '{"id": 1, "data": {"color": "blue"}}' >"$tmp/upsert.json"
ab -q -n 50000 -c 500 -k -p "$tmp/upsert.json" -T application/json "$URL/api" | awk '/Requests per second/ { print "   ab upserts of id 1: " $4 " req/s" }'
cat >"$tmp/get.lua" <<-LUA
	math.randomseed(7)
	request = function() return wrk.format("GET", "/api?id=" .. math.random(1, $DOCS)) end
LUA
wrk -t2 -c64 -d10s -s "$tmp/get.lua" "$URL" | awk '/Requests\/sec/ { print "   wrk GETs of random ids: " $2 " req/s" }'
after_load=$(rss_mib)
hits=$(metric exdaas_cache_hits_total)
misses=$(metric exdaas_cache_misses_total)
echo "   cache hits ${hits}, misses ${misses}"
echo "   resident: ${after_load} MiB after the load; the promise: at most $((CACHE_MIB + 64)) MiB (EXDAAS_CACHE_MIB + 64)"
stop
printf '\n%-44s %s\n' "restart over $DOCS documents: ready (s)" "$ready"
printf '%-44s %s / %s\n' "RSS after restart / after load (MiB)" "$after_start" "$after_load"
printf '%-44s %s\n' "limit (EXDAAS_CACHE_MIB + 64, MiB)" "$((CACHE_MIB + 64))"
