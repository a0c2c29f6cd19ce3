#!/usr/bin/env bash
# bench.sh: reproduce exdaas' original benchmark (ab, keep-alive POST upserts of
# document 1) plus cached GETs and anonymous writes (wrk), and compare each load
# with a bare poem handler (examples/bare_poem.rs) run the same way in the same
# run, so the ratio shows what the database costs on top of the web stack.
# Results are printed as a table and written to .results.log (see -h).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
	cat <<EOF
Usage: scripts/bench.sh [-c] [-h]
  -c  keep .results.log afterwards (to commit it); without -c a tracked
      .results.log is restored with git checkout after the run
  -h  show this help
Environment: BENCH_ROUNDS (3: loads a-c run this many times, exdaas and bare
  alternating, and each row gives the median), BENCH_N (ab requests, 50000),
  BENCH_C (ab concurrency, 500),
  BENCH_DURATION (each wrk load, 10s), BENCH_PORT (4100), BENCH_SINK_PORT
  (4318: the OTLP sink that load d exports traces to),
  EXDAAS_BIN (target/release/exdaas; when set, only the example is built),
  EXDAAS_READY_PATH (/readyz), EXDAAS_SYNC (for the ab and GET loads only).
EOF
}

keep=0
while getopts ch opt; do
	case $opt in
	c) keep=1 ;;
	h) usage && exit 0 ;;
	*) usage >&2 && exit 2 ;;
	esac
done

ROUNDS=${BENCH_ROUNDS:-3} N=${BENCH_N:-50000} C=${BENCH_C:-500} DUR=${BENCH_DURATION:-10s} PORT=${BENCH_PORT:-4100}
[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || { echo "BENCH_ROUNDS=$ROUNDS: give a number of rounds from 1 to 99" >&2 && exit 2; }
EXDAAS_BIN=${EXDAAS_BIN:-} READY_PATH=${EXDAAS_READY_PATH:-/readyz}
BARE_BIN=target/release/examples/bare_poem RESULTS=.results.log URL=http://127.0.0.1:$PORT

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

build=(--example bare_poem)
[[ -n $EXDAAS_BIN ]] || build+=(--bin exdaas)
echo "== Building release binaries: cargo build --release ${build[*]}"
cargo build --release "${build[@]}"
EXDAAS_BIN=${EXDAAS_BIN:-target/release/exdaas}

tmp=$(mktemp -d)
pid=""
declare -A RPS PCT ERR

# Stop the running server with SIGTERM (SIGKILL after 10 s) and wait for it.
stop() {
	[[ -n $pid ]] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	pid=""
	rm -rf "$tmp/data"
}
trap 'rm -rf "$tmp"' EXIT

# start NAME BIN READY_PATH [VAR=value...]: start a server on a fresh data folder.
start() {
	local name=$1 bin=$2 ready=$3
	shift 3
	if curl -s -o /dev/null --max-time 1 "$URL/"; then
		echo "!! port $PORT is already in use; set BENCH_PORT" >&2 && exit 1
	fi
	mkdir "$tmp/data"
	echo "-- starting $name ($bin${*:+ $*})"
	env PORT="$PORT" DETS_ROOT="$tmp/data" EXDAAS_LISTEN_ADDR=127.0.0.1 RUST_LOG=warn "$@" \
		"$bin" >"$tmp/server.log" 2>&1 &
	pid=$!
	for ((i = 0; i < 300; i++)); do
		curl -fs -o /dev/null --max-time 1 "$URL$ready" && return 0
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "!! $name exited before getting ready:" >&2 && tail -n 20 "$tmp/server.log" >&2 && exit 1
		fi
		sleep 0.1
	done
	echo "!! $name not ready on $URL$ready after 30 s:" >&2 && tail -n 20 "$tmp/server.log" >&2 && exit 1
}

# record KEY TOOL: parse $tmp/KEY.out into RPS/PCT/ERR.
record() {
	local key=$1 tool=$2 line
	line=$(awk -v tool="$tool" '
		NF && last !~ /apr_|refused|reset|rror/ { last = $0 } # keep the first error line
		tool == "ab" && /^Requests per second:/ { rps = $4 }
		tool == "ab" && /^Failed requests:/ { if ($3 > 0) { e = e $3 " failed "; getline; gsub(/^ +| +$/, ""); e = e $0 " " } }
		tool == "ab" && /^Non-2xx responses:/ { e = e $3 " non-2xx " }
		tool == "ab" && /^ +(50|90|99)%/ { p[$1] = $2 "ms" }
		tool == "wrk" && /^Requests\/sec:/ { rps = $2 }
		tool == "wrk" && /^ +(50|90|99)%/ { p[$1] = $2 }
		tool == "wrk" && /Non-2xx or 3xx responses:/ { e = e $NF " non-2xx " }
		tool == "wrk" && /Socket errors:/ { sub(/.*Socket errors: /, ""); e = e "socket errors: " $0 " " }
		END {
			if (rps == "") { rps = 0; e = e tool " produced no result: " last }
			sub(/ +$/, "", e)
			pct = p["50%"] == "" ? "-" : p["50%"] "/" p["90%"] "/" p["99%"]
			printf "%s|%s|%s\n", rps, pct, e
		}' "$tmp/$key.out")
	IFS='|' read -r "RPS[$key]" "PCT[$key]" "ERR[$key]" <<<"$line"
	printf '   %-16s %10s req/s  p50/p90/p99 %s%s\n' "$key" "${RPS[$key]}" "${PCT[$key]}" \
		"${ERR[$key]:+  !! ${ERR[$key]}}"
}

load_ab() { # KEY
	echo "   ab -n $N -c $C -k POST $URL/api {\"id\": 1, ...}"
	ab -n "$N" -c "$C" -k -T application/json -p "$tmp/upsert.json" "$URL/api" >"$tmp/$1.out" 2>&1 || true
	record "$1" ab
}
load_wrk() { # KEY [wrk args...]
	local key=$1
	shift
	echo "   wrk -t2 -c64 -d$DUR --latency $*"
	wrk -t2 -c64 -d"$DUR" --latency "$@" >"$tmp/$key.out" 2>&1 || true
	record "$key" wrk
}

# median VALUES...: the middle value (the lower of the two middle ones).
median() {
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# row LABEL EXDAAS_KEY BARE_KEY: the median of each side's req/s and
# of the rounds' ratios (each round's exdaas and bare ran one after the other,
# so the ratio of a round is the figure a noisy machine moves least), with
# every round's ratio and the last round's latencies.
row() {
	local label=$1 ex=$2 bare=$3 rounds=$ROUNDS r note="" ratio
	local -a ex_rps=() bare_rps=() ratios=()
	for ((r = 1; r <= rounds; r++)); do
		local ek=$ex.$r bk=$bare.$r
		ex_rps+=("${RPS[$ek]}")
		bare_rps+=("${RPS[$bk]}")
		ratios+=("$(awk -v a="${RPS[$ek]}" -v b="${RPS[$bk]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "0" }')")
		[[ -z ${ERR[$ek]} ]] || note+="!!! EXDAAS ERRORS (round $r): ${ERR[$ek]} "
		[[ -z ${ERR[$bk]} ]] || note+="(bare errors, round $r: ${ERR[$bk]}) "
	done
	ratio=$(median "${ratios[@]}")
	((rounds == 1)) || note="rounds ${ratios[*]}${note:+; $note}"
	printf '%-28s %13s %12s %6s  %-22s %-22s %s\n' "$label" "$(median "${ex_rps[@]}")" \
		"$(median "${bare_rps[@]}")" "$ratio" "${PCT[$ek]}" "${PCT[$bk]}" "$note" | sed 's/ *$//'
}

run() {
	trap stop EXIT # run() is a subshell (piped into tee): it stops its own server
	echo '{"id": 1, "data": {"color": "blue"}}' >"$tmp/upsert.json"
	cat >"$tmp/anon.lua" <<-'EOF'
		wrk.method = "POST"
		wrk.body = '{"id": null, "data": {"color": "blue"}}'
		wrk.headers["Content-Type"] = "application/json"
	EOF
	ulimit -n 65536 2>/dev/null || ulimit -n 4096 2>/dev/null || true
	local commit
	commit=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
	[[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || commit+=" (dirty)"
	echo "== exdaas benchmark $(date '+%Y-%m-%d %H:%M:%S %z')"
	echo "commit: $commit   nproc: $(nproc)   cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "exdaas: $EXDAAS_BIN   bare: $BARE_BIN   ab -n $N -c $C   wrk -t2 -c64 -d$DUR"
	echo "EXDAAS_SYNC for ab/GET loads: ${EXDAAS_SYNC:-server default}   ulimit -n: $(ulimit -n)"

	local r
	for ((r = 1; r <= ROUNDS; r++)); do
		echo "== round $r of $ROUNDS"
		echo "== a+b: ab POST upserts, then wrk cached GETs of id=1 (exdaas, then bare)"
		start exdaas "$EXDAAS_BIN" "$READY_PATH"
		load_ab "ex_ab.$r"
		load_wrk "ex_get.$r" "$URL/api?id=1"
		stop
		start bare "$BARE_BIN" /api
		load_ab "bare_ab.$r"
		load_wrk "bare_get.$r" "$URL/api?id=1"
		stop

		echo "== c: wrk anonymous writes (exdaas sync=normal, bare, exdaas sync=full)"
		start exdaas "$EXDAAS_BIN" "$READY_PATH" EXDAAS_SYNC=normal
		load_wrk "ex_anon_normal.$r" -s "$tmp/anon.lua" "$URL/api"
		stop
		start bare "$BARE_BIN" /api
		load_wrk "bare_anon.$r" -s "$tmp/anon.lua" "$URL/api"
		stop
		start exdaas "$EXDAAS_BIN" "$READY_PATH" EXDAAS_SYNC=full
		load_wrk "ex_anon_full.$r" -s "$tmp/anon.lua" "$URL/api"
		stop
	done

	echo "== d: ab POST upserts again, with traces exported over OTLP/HTTP to a local sink"
	start_sink
	start exdaas "$EXDAAS_BIN" "$READY_PATH" OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT"
	load_ab ex_ab_traced
	stop # SIGTERM flushes the spans still buffered
	stop_sink

	echo "== Results: medians of $ROUNDS rounds (ratio = exdaas req/s / bare req/s of the same round;"
	echo "   latencies p50/p90/p99 of the last round)"
	printf '%-28s %13s %12s %6s  %-22s %-22s %s\n' load "exdaas req/s" "bare req/s" ratio \
		"exdaas p50/p90/p99" "bare p50/p90/p99" notes
	row "a. ab POST upsert id=1" ex_ab bare_ab
	row "b. wrk GET id=1 (cached)" ex_get bare_get
	row "c. wrk POST anon sync=normal" ex_anon_normal bare_anon
	row "c. wrk POST anon sync=full" ex_anon_full bare_anon
	local -a untraced=()
	for ((r = 1; r <= ROUNDS; r++)); do untraced+=("${RPS[ex_ab.$r]}"); done
	RPS[ex_ab]=$(median "${untraced[@]}")
	awk -v on="${RPS[ex_ab_traced]}" -v off="${RPS[ex_ab]}" -v sink="$SINK_REPORT" 'BEGIN {
		if (off > 0) printf "d. traces on / off (a): %.2f (%s / %s req/s)   the sink received %s\n", on / off, on, off, sink }'
	[[ -z ${ERR[ex_ab_traced]} ]] || echo "!!! EXDAAS ERRORS with traces exported: ${ERR[ex_ab_traced]}"
}

# A stand-in for an OpenTelemetry collector: accepts OTLP/HTTP posts, counts
# them and their bytes.
SINK_PORT=${BENCH_SINK_PORT:-4318} SINK_REPORT="" sink_pid=""
start_sink() {
	python3 - "$SINK_PORT" >"$tmp/sink.out" 2>/dev/null <<-'EOF' &
		import http.server, signal, sys
		posts = bytes_in = 0
		class Sink(http.server.BaseHTTPRequestHandler):
		    def do_POST(self):
		        global posts, bytes_in
		        body = self.rfile.read(int(self.headers.get("content-length", 0)))
		        posts += 1; bytes_in += len(body)
		        self.send_response(200)
		        self.send_header("content-type", "application/x-protobuf")
		        self.send_header("content-length", "0")
		        self.end_headers()
		    def log_message(self, *args):
		        pass
		def report(*_):
		    print(f"{posts} OTLP posts, {bytes_in / 1e6:.1f} MB of spans", flush=True)
		    sys.exit(0)
		signal.signal(signal.SIGTERM, report)
		http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
	EOF
	sink_pid=$!
	for ((i = 0; i < 50; i++)); do
		curl -s -o /dev/null --max-time 1 -X POST "http://127.0.0.1:$SINK_PORT/" && return 0
		sleep 0.1
	done
	echo "!! the OTLP sink did not start on port $SINK_PORT; set BENCH_SINK_PORT" >&2 && exit 1
}
stop_sink() {
	kill -TERM "$sink_pid" 2>/dev/null || true
	wait "$sink_pid" 2>/dev/null || true
	SINK_REPORT=$(cat "$tmp/sink.out")
}

rc=0
run 2>&1 | tee "$RESULTS" || rc=$?
if ((keep)); then
	echo "== Kept $RESULTS: commit it to record these results."
elif git ls-files --error-unmatch "$RESULTS" >/dev/null 2>&1; then
	git checkout -- "$RESULTS" 2>/dev/null || true
	echo "== Restored the committed $RESULTS (run with -c to keep this run's results)."
fi
exit "$rc"
