#!/usr/bin/env bash
# soak.sh: the crash test of the suite, for longer: the real server killed
# with SIGKILL at random moments for SOAK_ROUNDS rounds (default 40) in each
# sync mode, every acknowledged write checked after each restart.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${SOAK_ROUNDS:-40}
echo "== cargo test --release --test api crash:: ($rounds kill rounds per sync mode)"
EXDAAS_CRASH_ROUNDS=$rounds cargo test --release --test api crash:: -- --nocapture
