#!/usr/bin/env bash
# The bootstrapping test script, as in the original: makes sure what the tests
# need is here, then checks formatting, lints (Rust, and the shipping files
# through scripts/lint.sh, which installs its linters), runs every test on
# SQLite and the integration and engine conformance suites again on a
# private PostgreSQL (scripts/postgres.sh installs and starts one), fuzzes
# the release server's API with schemathesis (scripts/api-fuzz.sh),
# drives the admin page in headless Chromium (scripts/browser-test.sh,
# which installs it), then builds the book, checks its links and runs its
# examples against the release server (scripts/book.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> checking the toolchain (cargo, rustfmt, clippy)"
command -v cargo >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "    installing $component"
        rustup component add "$component"
    fi
done

echo "==> making the data folder ./data (what 'cargo run' serves from)"
mkdir -p data

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "==> scripts/lint.sh (Dockerfile, Kubernetes manifests, workflows, shell scripts)"
./scripts/lint.sh

echo "==> cargo test (SQLite: shard files in temporary data folders)"
log="$(mktemp)"
pgdata=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    rm -f "$log"
    if [ -n "$pgdata" ]; then ./scripts/postgres.sh stop "$pgdata"; fi
}
trap cleanup EXIT
# On files, whatever the calling shell holds: a database URL left in the
# environment would make this run a second PostgreSQL run.
unset EXDAAS_TEST_DATABASE_URL EXDAAS_TEST_PGDATA
cargo test --all-targets 2>&1 | tee "$log"

echo "==> the integration suite and the engine conformance suite again, on a private PostgreSQL (scripts/postgres.sh)"
pg_env="$(./scripts/postgres.sh start)"
eval "$pg_env"
pgdata="$EXDAAS_TEST_PGDATA"
EXDAAS_TEST_DATABASE_URL="$EXDAAS_TEST_DATABASE_URL" cargo test --test api --test engine 2>&1 | tee -a "$log"
unset EXDAAS_TEST_DATABASE_URL

# The release build's code and features without its fat LTO (Cargo.toml's
# `ci` profile): the same program, built in a third of the time.
echo "==> the release binary carries no test-only hooks (cargo build --profile ci)"
cargo build --profile ci --bin exdaas
binary=target/ci/exdaas
if grep -a -q -e "injected fault" -e "injecting a fault" "$binary"; then
    echo "!! $binary holds the fault-injection hooks (feature fault-injection leaked into it)" >&2
    exit 1
fi

echo "==> scripts/api-fuzz.sh: schemathesis against the release server, every check"
fuzz=0
EXDAAS_BIN=$binary ./scripts/api-fuzz.sh 2>&1 | tee -a "$log" || fuzz=$?

echo "==> scripts/browser-test.sh: the admin page in headless Chromium"
browser=0
EXDAAS_BIN=$binary ./scripts/browser-test.sh 2>&1 | tee -a "$log" || browser=$?

# After the browser suite: the book shows the screenshots it takes.
echo "==> scripts/book.sh: the book built, its links checked, its examples run"
book=0
EXDAAS_BIN=$binary ./scripts/book.sh 2>&1 | tee -a "$log" || book=$?

# One closing line for the whole run: cargo prints a summary per test binary,
# pytest one line ("6 passed in 7.1s", or "1 failed, 5 passed in ...").
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     /^Test cases:/ { getline; fuzzed = $1 }
     /^[0-9]+ (passed|failed).* in [0-9.]+s/ {
         for (i = 1; i < NF; i++) { if ($(i + 1) ~ /^passed/) bpassed = $i; if ($(i + 1) ~ /^failed/) bfailed = $i }
     }
     /^book examples:/ { examples = $3; epages = $6; efailed = $9 }
     END { printf "summary: %d passed, %d failed, %d skipped; schemathesis: %d generated requests; browser: %d passed, %d failed; book: %d examples on %d pages, %d failed\n", passed, failed, ignored, fuzzed, bpassed, bfailed, examples, epages, efailed }' "$log"
if ((fuzz != 0)); then exit "$fuzz"; fi
if ((browser != 0)); then exit "$browser"; fi
exit "$book"
