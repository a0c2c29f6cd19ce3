#!/usr/bin/env bash
# archive.zip.sh: archive the data folder (DETS_ROOT, default ./data) as
# exdaas-archive-<time>.zip in the current folder, as the original did. The
# archive is an `exdaas backup`: a consistent snapshot of every shard with a
# manifest, safe to take while the server runs. Restore it with
#   unzip exdaas-archive-<time>.zip && DETS_ROOT=<empty folder> exdaas restore exdaas-archive-<time>
# Uses zip if installed, else Python's zipfile module.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/archive.lib.sh
source "$here/archive.lib.sh"

take_backup
echo "== Packing $name.zip"
out=$PWD/$name.zip
if command -v zip >/dev/null; then
	(cd "$work" && zip -q -r "$out" "$name")
else
	(cd "$work" && python3 -m zipfile -c "$out" "$name")
fi
ls -l "$name.zip"
