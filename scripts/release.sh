#!/usr/bin/env bash
# release.sh: build the release binary and pack exdaas.tar.gz at the repository
# root, holding bin/exdaas, README.md and LICENSE, like the original's release
# tarball: unpack it anywhere and run `bin/exdaas` (or `bin/exdaas foreground`).
# scripts/docker.release.sh runs this inside the Docker builder for a static
# musl binary.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo build --release --locked --bin exdaas"
cargo build --release --locked --bin exdaas

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/bin"
cp target/release/exdaas "$stage/bin/exdaas"
cp README.md LICENSE "$stage/"

echo "== Packing exdaas.tar.gz (bin/exdaas, README.md, LICENSE)"
tar -czf exdaas.tar.gz -C "$stage" bin README.md LICENSE
ls -l exdaas.tar.gz
