#!/usr/bin/env bash
# console.bench.sh: the original's in-process benchmark, without HTTP: 20,001
# upserts cold (new ids), the same 20,001 warm (equal data), then anonymous
# creates, straight into the store (examples/console_bench.rs).
# SHARD_LIMIT, EXDAAS_SYNC, BENCH_OPS and BENCH_CONCURRENCY change the run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo run --release --example console_bench (SHARD_LIMIT=${SHARD_LIMIT:-4})"
RUST_LOG=${RUST_LOG:-warn} cargo run --release --quiet --example console_bench
