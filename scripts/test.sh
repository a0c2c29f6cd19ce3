#!/usr/bin/env bash
# The bootstrapping test script, as in the original: makes sure what the tests
# need is here, then checks formatting, lints (Rust, and the shipping files
# through scripts/lint.sh, which installs its linters), and runs every test.
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

echo "==> cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --all-targets 2>&1 | tee "$log"

# One closing line for the whole run: cargo prints a summary per test binary.
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "summary: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
