#!/usr/bin/env bash
# query.bench.sh: what queries, indexes and schemas cost, on a release build,
# over BENCH_QUERY_DOCS (1,000,000) small documents
# {"city": one of 50, "age": 0-99, "n": i, "name": "..."}:
#   - a query no index fits: refused (422), and how long the refusal takes
#   - the builds of two indexes (by_city: [city]; by_age: [age]): seconds each
#   - an indexed equality query (city = c, pages of 100) and an indexed range
#     query with sort (20 <= age < 30, sort age, pages of 100): p50 and p99 of
#     the first page and of pages followed by cursor, BENCH_QUERIES each
#   - the write-rate cost of the two indexes: wrk anonymous POSTs into a
#     collection with them, and into one without, side by side (the ratio)
#   - validation's cost on the original's write loads: ab POST upserts of
#     /api id=1 (the original's benchmark) and wrk anonymous POST /api, with
#     a schema on `default` and without, side by side
# Prints figures; changes nothing in the repository. Needs python3, curl,
# wrk and ab (installed with apt-get when missing, as bench.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCS=${BENCH_QUERY_DOCS:-1000000} QUERIES=${BENCH_QUERIES:-200} PORT=${BENCH_PORT:-4100}
DUR=${BENCH_DURATION:-10s} N=${BENCH_N:-50000} C=${BENCH_C:-500}
EXDAAS_BIN=${EXDAAS_BIN:-}
URL=http://127.0.0.1:$PORT
[[ $DOCS =~ ^[1-9][0-9]{0,8}$ ]] || { echo "BENCH_QUERY_DOCS=$DOCS: a document count from 1 to 999999999" >&2 && exit 2; }
[[ $QUERIES =~ ^[1-9][0-9]{0,5}$ ]] || { echo "BENCH_QUERIES=$QUERIES: a count from 1 to 999999" >&2 && exit 2; }

need=()
command -v ab >/dev/null || need+=(apache2-utils)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
	echo "== Installing missing tools with apt-get: ${need[*]}"
	sudo=()
	((EUID == 0)) || ! command -v sudo >/dev/null || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${need[@]}"
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

start() {
	env PORT="$PORT" DETS_ROOT="$tmp/data" EXDAAS_LISTEN_ADDR=127.0.0.1 RUST_LOG=warn \
		"$EXDAAS_BIN" >"$tmp/server.log" 2>&1 &
	pid=$!
	for ((i = 0; i < 600; i++)); do
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

echo "== importing $DOCS documents into collection people"
start
python3 - "$URL" "$DOCS" <<-'EOF'
	import json, sys, time, urllib.request
	url, docs = sys.argv[1], int(sys.argv[2])
	began = time.time()
	for chunk in range(0, docs, 10000):
	    lines = "".join(
	        json.dumps({"id": f"p{i:08d}", "data": {"city": f"c{i % 50:02d}", "age": (i * 7919) % 100, "n": i,
	                                                "name": f"person {i}"}}) + "\n"
	        for i in range(chunk, min(chunk + 10000, docs)))
	    req = urllib.request.Request(f"{url}/v1/collections/people/import", data=lines.encode(),
	                                 headers={"content-type": "application/x-ndjson"}, method="POST")
	    report = json.load(urllib.request.urlopen(req))
	    assert report["rejected_count"] == 0, report
	print(f"   {docs} documents in {time.time() - began:.1f} s")
EOF

python3 - "$URL" "$QUERIES" <<-'EOF'
	import json, random, sys, time, urllib.error, urllib.request
	url, queries = sys.argv[1], int(sys.argv[2])

	def call(method, path, body=None):
	    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
	                                 headers={"content-type": "application/json"})
	    try:
	        with urllib.request.urlopen(req) as resp:
	            return resp.status, json.load(resp)
	    except urllib.error.HTTPError as e:
	        return e.code, json.load(e)

	def timed(body):
	    began = time.perf_counter()
	    status, page = call("POST", "/v1/collections/people/query", body)
	    return (time.perf_counter() - began) * 1000, status, page

	def pct(values, p):
	    values = sorted(values)
	    return values[min(len(values) - 1, int(len(values) * p / 100))]

	print("== a query no index fits (city = c07, sort by age)")
	ms, status, page = timed({"filter": {"city": "c07"}, "sort": ["age"], "limit": 100})
	print(f"   {status} in {ms:.1f} ms: {page.get('detail', '')[:160]}")

	for name, fields in (("by_city", ["city"]), ("by_age", ["age"])):
	    began = time.time()
	    status, _ = call("PUT", f"/v1/collections/people/indexes/{name}", {"fields": fields})
	    assert status == 201, status
	    while call("GET", f"/v1/collections/people/indexes/{name}")[1]["state"] != "ready":
	        time.sleep(0.2)
	    print(f"== index {name} {fields}: built in {time.time() - began:.1f} s")

	rng = random.Random(7)
	for title, make in (
	    ("indexed equality: city = c, pages of 100", lambda: {"filter": {"city": f"c{rng.randrange(50):02d}"}, "limit": 100}),
	    ("indexed range with sort: 20 <= age < 30 (then a random window), sort age, pages of 100",
	     lambda: (lambda lo: {"filter": {"age": {"$gte": lo, "$lt": lo + 10}}, "sort": ["age"], "limit": 100})(rng.randrange(90))),
	):
	    first, follow, plans = [], [], set()
	    for _ in range(queries):
	        body = make()
	        body["explain"] = True
	        ms, status, page = timed(body)
	        assert status == 200, (status, page)
	        assert len(page["items"]) == 100, len(page["items"])
	        plans.add(page["explain"]["index"])
	        first.append(ms)
	        body["cursor"] = page["next_cursor"]
	        for _ in range(3):
	            ms, status, page = timed(body)
	            assert status == 200, (status, page)
	            follow.append(ms)
	            body["cursor"] = page["next_cursor"]
	    print(f"== {title}: on index {sorted(plans)}")
	    print(f"   first page p50 {pct(first, 50):.2f} ms  p99 {pct(first, 99):.2f} ms   "
	          f"next pages p50 {pct(follow, 50):.2f} ms  p99 {pct(follow, 99):.2f} ms   ({queries} queries)")
	for name, fields in (("by_city", ["city"]), ("by_age", ["age"])):
	    status, _ = call("PUT", f"/v1/collections/indexed/indexes/{name}", {"fields": fields})
	    assert status == 201, status
EOF

cat >"$tmp/anon.lua" <<-'EOF'
	wrk.method = "POST"
	wrk.body = '{"city": "c01", "age": 42, "name": "someone"}'
	wrk.headers["Content-Type"] = "application/json"
EOF
rate() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }

echo "== write rate: wrk -t2 -c64 -d$DUR anonymous POSTs, two indexes against none"
wrk -t2 -c64 -d"$DUR" -s "$tmp/anon.lua" "$URL/v1/collections/plain/docs" >"$tmp/plain.out" 2>&1
wrk -t2 -c64 -d"$DUR" -s "$tmp/anon.lua" "$URL/v1/collections/indexed/docs" >"$tmp/indexed.out" 2>&1
plain=$(rate "$tmp/plain.out") indexed=$(rate "$tmp/indexed.out")
echo "   no index: $plain/s   two indexes: $indexed/s   ratio $(ratio "$indexed" "$plain")"

echo "== validation on the original's write loads, a schema on default against none, side by side"
cat >"$tmp/anon_api.lua" <<-'EOF'
	wrk.method = "POST"
	wrk.body = '{"id": null, "data": {"city": "c01", "age": 42, "name": "someone"}}'
	wrk.headers["Content-Type"] = "application/json"
EOF
printf '{"id": 1, "data": {"city": "c01", "age": 42, "name": "someone"}}' >"$tmp/upsert.json"
abrate() { awk '/^Requests per second:/ { print $4 }' "$1"; }
failed() { awk '/^(Failed requests|Non-2xx responses):/ { n += $NF } END { print n + 0 }' "$1"; }
schema='{"type": "object", "required": ["city", "age"], "properties": {"city": {"type": "string"}, "age": {"type": "integer", "minimum": 0}, "name": {"type": "string", "maxLength": 200}}}'
for with in none schema; do
	if [[ $with == schema ]]; then
		curl -fs -o /dev/null -X PUT -H 'content-type: application/json' "$URL/v1/collections/default/schema" -d "$schema"
	fi
	ab -n "$N" -c "$C" -k -T application/json -p "$tmp/upsert.json" "$URL/api" >"$tmp/ab_$with.out" 2>&1 || true
	wrk -t2 -c64 -d"$DUR" -s "$tmp/anon_api.lua" "$URL/api" >"$tmp/anon_$with.out" 2>&1
done
echo "   ab -n $N -c $C -k POST /api upserts of id=1 (each after the first leaves the document unchanged: nothing to check):"
echo "     no schema: $(abrate "$tmp/ab_none.out")/s ($(failed "$tmp/ab_none.out") failed)   schema: $(abrate "$tmp/ab_schema.out")/s ($(failed "$tmp/ab_schema.out") failed)   ratio $(ratio "$(abrate "$tmp/ab_schema.out")" "$(abrate "$tmp/ab_none.out")")"
echo "   wrk -t2 -c64 -d$DUR anonymous POST /api (every write a new document, checked):"
echo "     no schema: $(rate "$tmp/anon_none.out")/s   schema: $(rate "$tmp/anon_schema.out")/s   ratio $(ratio "$(rate "$tmp/anon_schema.out")" "$(rate "$tmp/anon_none.out")")"
stop
