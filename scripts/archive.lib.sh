# shellcheck shell=bash
# archive.lib.sh: what archive.tar.sh and archive.zip.sh share (sourced, not
# run): find the exdaas binary and take a backup of DETS_ROOT into $work/$name.
# The sourcing script sets $here to the scripts folder.

: "${here:?archive.lib.sh is sourced by a script that sets here}"
export DETS_ROOT=${DETS_ROOT:-./data}
name=exdaas-archive-$(date -u +%Y%m%dT%H%M%SZ)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# exdaas_bin: the command that runs exdaas, as an array in $exdaas.
exdaas_bin() {
	if [[ -n ${EXDAAS_BIN:-} ]]; then
		exdaas=("$EXDAAS_BIN")
	elif command -v exdaas >/dev/null; then
		exdaas=(exdaas)
	elif [[ -x $here/../target/release/exdaas ]]; then
		exdaas=("$here/../target/release/exdaas")
	else
		exdaas=(cargo run --release --quiet --manifest-path "$here/../Cargo.toml" --)
	fi
}

take_backup() {
	exdaas_bin
	echo "== ${exdaas[*]} backup (DETS_ROOT=$DETS_ROOT)"
	"${exdaas[@]}" backup "$work/$name"
}
