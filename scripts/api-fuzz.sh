#!/usr/bin/env bash
# api-fuzz.sh: runs schemathesis, the fuzzer that generates requests from
# /openapi.json, with every check, against a freshly started release server
# (API keys configured, a fresh data folder), for FUZZ_SECONDS (default 150).
# It passes only if schemathesis finds no failure and the server is still up
# and stops cleanly afterwards. The first run installs schemathesis into
# .lint-tools/fuzz-venv (python3 with venv, from apt-get when missing).
#
#   ./scripts/api-fuzz.sh                    # builds the release binary if needed
#   FUZZ_SECONDS=60 ./scripts/api-fuzz.sh
#   EXDAAS_BIN=target/ci/exdaas ./scripts/api-fuzz.sh   # a binary already built
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS=schemathesis==4.32.5
seconds=${FUZZ_SECONDS:-150}
binary=${EXDAAS_BIN:-}
venv=.lint-tools/fuzz-venv
key=fuzz-admin-key-0123456789
sudo=()
((EUID == 0)) || sudo=(sudo)

if [[ ! -x $venv/bin/st ]] || [[ $($venv/bin/st --version 2>/dev/null) != *"${SCHEMATHESIS#*==}"* ]]; then
	echo "== installing $SCHEMATHESIS into $venv"
	if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
		"${sudo[@]}" apt-get update -qq
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
	fi
	rm -rf "$venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install --quiet --disable-pip-version-check "$SCHEMATHESIS"
fi

if [[ -z $binary ]]; then
	echo "== building the release binary"
	cargo build --release --quiet
	binary=target/release/exdaas
fi

tmp=$(mktemp -d)
server=
# On any exit: a server still running is killed, the folder removed.
trap '[[ -z $server ]] || kill -KILL "$server" 2>/dev/null; rm -rf "$tmp"' EXIT

echo "== starting $binary over a fresh data folder, with an admin key"
# Backups over HTTP are on, and their count is not what the fuzzer tests: at
# the default of 8 a long run takes them all and the ninth gets 507, the
# operator's bound working, which schemathesis counts as a server error.
DETS_ROOT=$tmp/data EXDAAS_BACKUP_DIR=$tmp/backups EXDAAS_BACKUP_MAX_COUNT=100000 PORT=0 EXDAAS_LISTEN_ADDR=127.0.0.1 \
	EXDAAS_API_KEYS="admin:$key" EXDAAS_SYNC=normal EXDAAS_LOG_FORMAT=json RUST_LOG=warn,exdaas::app=info \
	"$binary" 2>"$tmp/server.log" &
server=$!
port=
for _ in $(seq 1 100); do
	port=$(sed -n 's/.*"message":"exdaas listening".*"port":\([0-9]*\).*/\1/p' "$tmp/server.log" | head -n 1)
	[[ -n $port ]] && break
	kill -0 "$server" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
	sleep 0.1
done
[[ -n $port ]] || { echo "the server did not start:" >&2; cat "$tmp/server.log" >&2; exit 1; }

echo "== schemathesis ($SCHEMATHESIS), every check, ${seconds} s, against http://127.0.0.1:$port"
mkdir -p target/schemathesis
status=0
EXDAAS_FUZZ_KEY=$key "$venv/bin/st" --config-file scripts/schemathesis/schemathesis.toml run \
	"http://127.0.0.1:$port/openapi.json" \
	--checks all --max-time "$seconds" --workers 2 --no-color \
	--report junit --report-junit-path target/schemathesis/junit.xml || status=$?

echo "== stopping the server (it must still be up and stop cleanly)"
if ! kill -0 "$server" 2>/dev/null; then
	echo "!! the server died during the run; its last log lines:" >&2
	tail -n 20 "$tmp/server.log" >&2
	exit 1
fi
kill -TERM "$server"
code=0
wait "$server" || code=$?
server=
if ((code != 0)); then
	echo "!! the server exited with $code; its last log lines:" >&2
	tail -n 20 "$tmp/server.log" >&2
	exit 1
fi
if grep -q '"level":"ERROR"' "$tmp/server.log"; then
	echo "== the server logged errors during the run (each answered with an error id):"
	grep '"level":"ERROR"' "$tmp/server.log" | head -n 10
fi
exit "$status"
