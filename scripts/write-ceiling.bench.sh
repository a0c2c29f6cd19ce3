#!/usr/bin/env bash
# write-ceiling.bench.sh: how fast anonymous writes could be with per-shard
# SQLite files, whatever thread commits them. Builds a throwaway copy of
# exdaas with scripts/write-ceiling.patch applied (an EXDAAS_EXPERIMENT
# setting that exists only there) and runs wrk's anonymous POSTs against:
#   bare     the bare poem handler (examples/bare_poem.rs), the baseline;
#   shipped  exdaas as it ships: each batch's commit through sqlx;
#   inline   the commit on the writer's own thread through raw SQLite
#            (rusqlite), one prepared statement per row, no hop, no JSON;
#   skip     no commit at all: HTTP, handler, writer task and cache only.
# Each round runs them one after the other, in both sync modes; the table
# gives the medians of the rounds' ratios to the bare handler of the same
# round, and the server's CPU per write (from /proc).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
	cat <<EOF
Usage: scripts/write-ceiling.bench.sh [-h]
Environment: BENCH_ROUNDS (3), BENCH_DURATION (each wrk load, 6s),
  BENCH_PORT (4100), CEILING_BASE (the commit to patch: HEAD; the patch was
  written against $PATCH_MADE_ON), CARGO_TARGET_DIR for the throwaway build
  (target/ceiling, kept between runs so the next build is quicker).
EOF
}

PATCH=scripts/write-ceiling.patch PATCH_MADE_ON=1c64eba
while getopts h opt; do
	case $opt in
	h) usage && exit 0 ;;
	*) usage >&2 && exit 2 ;;
	esac
done

ROUNDS=${BENCH_ROUNDS:-3} DUR=${BENCH_DURATION:-6s} PORT=${BENCH_PORT:-4100}
BASE=${CEILING_BASE:-HEAD} TARGET=${CARGO_TARGET_DIR:-target/ceiling}
[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || { echo "BENCH_ROUNDS=$ROUNDS: give a number of rounds from 1 to 99" >&2 && exit 2; }
URL=http://127.0.0.1:$PORT

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
	echo "== Installing missing tools with apt-get: ${need[*]}"
	sudo=()
	((EUID == 0)) || ! command -v sudo >/dev/null || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${need[@]}"
fi

repo=$PWD tmp=$(mktemp -d) pid=""
cleanup() {
	[[ -z $pid ]] || kill -KILL "$pid" 2>/dev/null || true
	git -C "$repo" worktree remove --force "$tmp/tree" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

echo "== A throwaway tree of $BASE with $PATCH applied"
git worktree add --quiet --detach "$tmp/tree" "$BASE"
if ! git -C "$tmp/tree" apply "$repo/$PATCH"; then
	echo "!! $PATCH does not apply to $BASE; it was written against $PATCH_MADE_ON:" >&2
	echo "   CEILING_BASE=$PATCH_MADE_ON $0" >&2
	exit 1
fi
[[ $TARGET == /* ]] || TARGET=$repo/$TARGET
echo "== Building it: cargo build --release --bin exdaas --example bare_poem (into $TARGET)"
(cd "$tmp/tree" && CARGO_TARGET_DIR=$TARGET cargo build --release --bin exdaas --example bare_poem)
EXDAAS=$TARGET/release/exdaas BARE=$TARGET/release/examples/bare_poem
cat >"$tmp/anon.lua" <<-'EOF'
	wrk.method = "POST"
	wrk.body = '{"id": null, "data": {"color": "blue"}}'
	wrk.headers["Content-Type"] = "application/json"
EOF

# cpu_ticks: the server's user + system clock ticks so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }

# measure KEY BIN [VAR=value...]: start BIN on a fresh folder, warm it up,
# then record KEY's writes/s and server CPU microseconds per write.
declare -A RPS CPU
measure() {
	local key=$1 bin=$2 ticks0 ticks1 out requests
	shift 2
	rm -rf "$tmp/data" && mkdir "$tmp/data"
	env PORT="$PORT" DETS_ROOT="$tmp/data" EXDAAS_LISTEN_ADDR=127.0.0.1 RUST_LOG=warn "$@" "$bin" \
		>"$tmp/server.log" 2>&1 &
	pid=$!
	for ((i = 0; i < 100; i++)); do
		curl -s -o /dev/null --max-time 1 "$URL/api" && break
		kill -0 "$pid" 2>/dev/null || { echo "!! $key exited:" >&2 && tail -n 20 "$tmp/server.log" >&2 && exit 1; }
		sleep 0.1
	done
	wrk -t2 -c64 -d2s -s "$tmp/anon.lua" "$URL/api" >/dev/null
	ticks0=$(cpu_ticks)
	out=$(wrk -t2 -c64 -d"$DUR" -s "$tmp/anon.lua" "$URL/api")
	ticks1=$(cpu_ticks)
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	pid=""
	RPS[$key]=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
	requests=$(awk '/requests in/ { print $1 }' <<<"$out")
	if grep -q 'Non-2xx' <<<"$out"; then echo "!! $key answered errors: $(grep 'Non-2xx' <<<"$out")" >&2 && exit 1; fi
	CPU[$key]=$(awk -v t=$((ticks1 - ticks0)) -v n="$requests" -v hz="$(getconf CLK_TCK)" \
		'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
	printf '   %-16s %10s writes/s  %6s us of server CPU per write\n' "$key" "${RPS[$key]}" "${CPU[$key]}"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

VARIANTS=("normal shipped" "normal inline" "normal skip" "full shipped" "full inline")
for ((r = 1; r <= ROUNDS; r++)); do
	echo "== round $r of $ROUNDS: wrk -t2 -c64 -d$DUR anonymous POSTs"
	measure "bare.$r" "$BARE"
	for v in "${VARIANTS[@]}"; do
		read -r sync how <<<"$v"
		measure "$sync-$how.$r" "$EXDAAS" EXDAAS_SYNC="$sync" EXDAAS_EXPERIMENT="$how"
	done
done

echo "== Results: medians of $ROUNDS rounds (ratio = writes/s / the bare handler's in the same round)"
printf '%-16s %10s %8s  %-22s %s\n' variant "writes/s" ratio "rounds" "server CPU per write"
bare_rps=() bare_cpu=()
for ((r = 1; r <= ROUNDS; r++)); do bare_rps+=("${RPS[bare.$r]}") bare_cpu+=("${CPU[bare.$r]}"); done
printf '%-16s %10s %8s  %-22s %s us\n' bare "$(median "${bare_rps[@]}")" 1 "" "$(median "${bare_cpu[@]}")"
for v in "${VARIANTS[@]}"; do
	read -r sync how <<<"$v"
	rps=() ratios=() cpu=()
	for ((r = 1; r <= ROUNDS; r++)); do
		rps+=("${RPS[$sync-$how.$r]}")
		cpu+=("${CPU[$sync-$how.$r]}")
		ratios+=("$(awk -v a="${RPS[$sync-$how.$r]}" -v b="${RPS[bare.$r]}" 'BEGIN { printf "%.2f", a / b }')")
	done
	printf '%-16s %10s %8s  %-22s %s us\n' "$sync $how" "$(median "${rps[@]}")" "$(median "${ratios[@]}")" \
		"${ratios[*]}" "$(median "${cpu[@]}")"
done
