#!/usr/bin/env bash
# archive.tar.sh: archive the data folder (DETS_ROOT, default ./data) as
# exdaas-archive-<time>.tar.gz in the current folder, as the original did.
# The archive is an `exdaas backup`: a consistent snapshot of every shard with
# a manifest, safe to take while the server runs. Restore it with
#   tar -xzf exdaas-archive-<time>.tar.gz && DETS_ROOT=<empty folder> exdaas restore exdaas-archive-<time>
# EXDAAS_BIN names the exdaas binary (default: exdaas on PATH, else
# target/release/exdaas, else cargo run --release).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/archive.lib.sh
source "$here/archive.lib.sh"

take_backup
echo "== Packing $name.tar.gz"
tar -czf "$name.tar.gz" -C "$work" "$name"
ls -l "$name.tar.gz"
