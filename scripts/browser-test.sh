#!/usr/bin/env bash
# browser-test.sh: the admin page (/admin) in a real browser. Runs
# tests/browser/ with pytest and Playwright, driving Debian's headless
# Chromium against the real exdaas binary (EXDAAS_BIN, default the release
# build, built when missing). The first run installs what it needs:
# chromium with apt-get, Playwright and pytest into .lint-tools/browser-venv
# (Playwright drives the system Chromium: it downloads no browser).
# Screenshots of the main views are written to target/screenshots/.
#
#   ./scripts/browser-test.sh
#   EXDAAS_BIN=target/debug/exdaas ./scripts/browser-test.sh -k conflict
set -euo pipefail
cd "$(dirname "$0")/.."

PLAYWRIGHT=playwright==1.65.2
PYTEST=pytest==9.2.0
venv=.lint-tools/browser-venv
sudo=()
((EUID == 0)) || sudo=(sudo)

if ! command -v chromium >/dev/null; then
	echo "== installing Debian's chromium"
	"${sudo[@]}" apt-get update -qq
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [[ ! -x $venv/bin/pytest ]] || ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "$PLAYWRIGHT"; then
	echo "== installing $PLAYWRIGHT and $PYTEST into $venv"
	if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
		"${sudo[@]}" apt-get update -qq
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
	fi
	rm -rf "$venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install --quiet --disable-pip-version-check "$PLAYWRIGHT" "$PYTEST"
fi

if [[ -z ${EXDAAS_BIN:-} ]]; then
	echo "== building the release binary"
	cargo build --release --quiet
	export EXDAAS_BIN=target/release/exdaas
fi

echo "== the admin page in headless $(chromium --version 2>/dev/null || echo chromium), with $EXDAAS_BIN"
rm -rf target/screenshots
"$venv/bin/pytest" tests/browser -p no:cacheprovider -q "$@"
echo "== screenshots: $(find target/screenshots -name '*.png' 2>/dev/null | sort | tr '\n' ' ')"
