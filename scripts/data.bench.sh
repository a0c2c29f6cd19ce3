#!/usr/bin/env bash
# data.bench.sh: what whole-collection work costs, on a release build:
#   - import of BENCH_DOCS small documents (NDJSON, one request per 10,000 lines)
#   - listing them page by page (limit=1000, following next_cursor)
#   - exporting them as NDJSON, and the server's peak memory growth meanwhile
#   - then, with the folder filled to BENCH_OPS_DOCS documents in all, the time
#     of `exdaas backup` (server running) and `exdaas reshard --to 8` (stopped)
#   - last, scripts/restart.bench.sh: BENCH_RESTART_DOCS (1,000,000) documents,
#     a restart (seconds to ready, resident memory) and the original's load
#     (BENCH_RESTART=0 skips it)
# Prints figures; changes nothing in the repository. Needs python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCS=${BENCH_DOCS:-100000} OPS_DOCS=${BENCH_OPS_DOCS:-1000000} PORT=${BENCH_PORT:-4100}
EXDAAS_BIN=${EXDAAS_BIN:-}
URL=http://127.0.0.1:$PORT
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

start() {
	env PORT="$PORT" DETS_ROOT="$tmp/data" EXDAAS_LISTEN_ADDR=127.0.0.1 RUST_LOG=warn \
		"$EXDAAS_BIN" >"$tmp/server.log" 2>&1 &
	pid=$!
	for ((i = 0; i < 300; i++)); do
		curl -fs -o /dev/null "$URL/readyz" && return 0
		kill -0 "$pid" 2>/dev/null || { tail "$tmp/server.log" >&2 && exit 1; }
		sleep 0.1
	done
	echo "!! not ready" >&2 && exit 1
}
stop() {
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" || true
	pid=""
}
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
hwm_kib() { awk '/^VmHWM/ { print $2 }' "/proc/$pid/status"; }

# import COLLECTION FROM TO: documents {"n": i, "name": "doc-i", "tags": [...]}
import_docs() {
	python3 - "$URL" "$@" <<-'EOF'
		import json, sys, time, urllib.request
		url, collection, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
		began = time.time()
		for chunk in range(start, end, 10000):
		    lines = "".join(
		        json.dumps({"id": f"doc-{i:08d}", "data": {"n": i, "name": f"doc-{i}", "tags": ["a", "b"]}}) + "\n"
		        for i in range(chunk, min(chunk + 10000, end)))
		    req = urllib.request.Request(f"{url}/v1/collections/{collection}/import", data=lines.encode(),
		                                 headers={"content-type": "application/x-ndjson"}, method="POST")
		    report = json.load(urllib.request.urlopen(req))
		    assert report["rejected_count"] == 0, report
		took = time.time() - began
		print(f"   import {end - start} docs into {collection}: {took:.1f} s, {(end - start) / took:,.0f} docs/s")
	EOF
}

echo "== exdaas data benchmark $(date '+%Y-%m-%d %H:%M:%S %z'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), nproc $(nproc)"
mkdir "$tmp/data"
start
import_docs bench 0 "$DOCS"

echo "== list: GET /v1/collections/bench/docs?limit=1000, following next_cursor"
python3 - "$URL" "$DOCS" <<-'EOF'
	import json, sys, time, urllib.request
	url, expected = sys.argv[1], int(sys.argv[2])
	for keys_only in (False, True):
	    began, seen, pages, cursor = time.time(), 0, 0, None
	    while True:
	        q = "limit=1000" + ("&keys_only=true" if keys_only else "") + (f"&cursor={cursor}" if cursor else "")
	        page = json.load(urllib.request.urlopen(f"{url}/v1/collections/bench/docs?{q}"))
	        seen += len(page["items"]); pages += 1
	        cursor = page.get("next_cursor")
	        if not cursor:
	            break
	    took = time.time() - began
	    assert seen == expected, (seen, expected)
	    label = "keys only" if keys_only else "documents"
	    print(f"   list {label}: {seen} in {pages} pages, {took:.2f} s, {seen / took:,.0f} docs/s, {took / pages * 1000:.1f} ms/page")
EOF

echo "== export: GET /v1/collections/bench/export (NDJSON)"
before_rss=$(rss_kib)
before_hwm=$(hwm_kib)
started=$(date +%s.%N)
curl -fsS -o "$tmp/export.ndjson" "$URL/v1/collections/bench/export"
ended=$(date +%s.%N)
after_hwm=$(hwm_kib)
lines=$(wc -l <"$tmp/export.ndjson")
bytes=$(stat -c %s "$tmp/export.ndjson")
awk -v n="$lines" -v b="$bytes" -v s="$started" -v e="$ended" -v r="$before_rss" -v h0="$before_hwm" -v h1="$after_hwm" 'BEGIN {
	t = e - s
	printf "   export: %d docs, %.1f MB in %.2f s: %.0f docs/s, %.1f MB/s\n", n, b / 1e6, t, n / t, b / 1e6 / t
	printf "   server RSS before: %.1f MiB; peak RSS before %.1f MiB, after %.1f MiB (growth %.1f MiB)\n", r / 1024, h0 / 1024, h1 / 1024, (h1 - h0) / 1024
}'
[[ $lines -eq $DOCS ]] || { echo "!! export gave $lines lines, expected $DOCS" >&2 && exit 1; }

if ((OPS_DOCS > DOCS)); then
	echo "== filling the folder to $OPS_DOCS documents"
	import_docs bulk "$DOCS" "$OPS_DOCS"
fi
echo "== backup (server running)"
started=$(date +%s.%N)
DETS_ROOT="$tmp/data" RUST_LOG=warn "$EXDAAS_BIN" backup "$tmp/backup" | tail -n 1
ended=$(date +%s.%N)
awk -v s="$started" -v e="$ended" -v d="$(du -sm "$tmp/backup" | cut -f1)" 'BEGIN { printf "   backup took %.1f s (%s MB)\n", e - s, d }'
stop

echo "== reshard 4 -> 8 (server stopped)"
started=$(date +%s.%N)
DETS_ROOT="$tmp/data" RUST_LOG=warn "$EXDAAS_BIN" reshard --to 8 | tail -n 1
ended=$(date +%s.%N)
awk -v s="$started" -v e="$ended" 'BEGIN { printf "   reshard took %.1f s\n", e - s }'
echo "== check (8 shards)"
started=$(date +%s.%N)
DETS_ROOT="$tmp/data" RUST_LOG=warn "$EXDAAS_BIN" check | tail -n 1
ended=$(date +%s.%N)
awk -v s="$started" -v e="$ended" 'BEGIN { printf "   check took %.1f s\n", e - s }'

if [[ ${BENCH_RESTART:-1} != 0 ]]; then
	rm -rf "$tmp/data" "$tmp/backup" # the server stopped before the reshard
	echo "== restart at size: scripts/restart.bench.sh"
	EXDAAS_BIN=$EXDAAS_BIN BENCH_DOCS=${BENCH_RESTART_DOCS:-1000000} BENCH_PORT=$PORT scripts/restart.bench.sh
fi
