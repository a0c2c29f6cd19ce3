#!/usr/bin/env bash
# feed.bench.sh: what the change feed delivers and what it costs the writes
# (examples/feed_bench.rs). In one run, on a release build: the original's
# write load (keep-alive POST /api upserts, over 10,000 ids) with no
# subscriber, with 1 and with 50 event-stream subscribers of GET /v1/changes;
# for each, writes per second and their ratio to the run without
# subscribers, changes per second each subscriber received, and the delay
# from commit to arrival (p50, p99).
# BENCH_SECONDS (10 per phase), BENCH_WRITERS (64), BENCH_SUBSCRIBERS (50),
# SHARD_LIMIT (4) and EXDAAS_SYNC (normal) change the run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo build --release --example feed_bench"
cargo build --release --quiet --example feed_bench
RUST_LOG=${RUST_LOG:-warn} target/release/examples/feed_bench
