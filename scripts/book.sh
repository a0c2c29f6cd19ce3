#!/usr/bin/env bash
# book.sh: the book in docs/, built and checked. Builds it with mdBook into
# docs/book, checks every link and anchor in it offline (LinkChecker, which
# does not fetch links that leave it) and the README's links, then
# runs every `console` example of the book and the README against a real
# server (scripts/book-examples.py, with the binary EXDAAS_BIN, default the
# release build, built when missing): an answer that differs from the one
# the book shows fails the run.
#
# The admin page's screenshots come from the browser suite's own run
# (scripts/browser-test.sh writes them to target/screenshots/); the book
# copies them in, so run that first. The first run installs what it needs:
# mdBook with cargo into .lint-tools/mdbook, LinkChecker into
# .lint-tools/book-venv, curl with apt-get when missing.
#
#   ./scripts/book.sh                 # build, check links, run the examples
#   ./scripts/book.sh docs/src/changes.md   # run one page's examples only
set -euo pipefail
cd "$(dirname "$0")/.."

MDBOOK_VERSION=0.5.4
LINKCHECKER=linkchecker==10.6.0
tools=.lint-tools
venv=$tools/book-venv
mdbook=$tools/mdbook/bin/mdbook
sudo=()
((EUID == 0)) || sudo=(sudo)

if ! command -v curl >/dev/null; then
	echo "== installing curl (the book's examples use it)"
	"${sudo[@]}" apt-get update -qq
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi
if [[ "$("$mdbook" --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]]; then
	echo "== installing mdbook $MDBOOK_VERSION into $tools/mdbook"
	cargo install --quiet --locked mdbook --version "$MDBOOK_VERSION" --root "$tools/mdbook" \
		--no-default-features --features search
fi
if [[ ! -x $venv/bin/linkchecker ]] || ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "$LINKCHECKER"; then
	echo "== installing $LINKCHECKER into $venv"
	rm -rf "$venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install --quiet --disable-pip-version-check "$LINKCHECKER"
fi
if [[ -z ${EXDAAS_BIN:-} ]]; then
	echo "== building the release binary"
	cargo build --release --quiet
	export EXDAAS_BIN=target/release/exdaas
fi

if ! compgen -G "target/screenshots/*.png" >/dev/null; then
	echo "!! no screenshots in target/screenshots/: the book shows the browser suite's; run scripts/browser-test.sh first" >&2
	exit 1
fi
rm -rf docs/src/screenshots
mkdir -p docs/src/screenshots
cp target/screenshots/*.png docs/src/screenshots/

echo "== building the book (mdbook $MDBOOK_VERSION) into docs/book"
"$mdbook" build docs

echo "== checking its links and anchors, offline"
# LinkChecker drops root's privileges to nobody's: what it reads must be readable.
chmod -R a+rX docs/book
if ! "$venv/bin/linkchecker" --config scripts/book-links.ini --no-status docs/book/index.html 2>/dev/null; then
	echo "!! broken links in the book (above)" >&2
	exit 1
fi
# The README's links lead to the book's Markdown and LICENSE: files that must
# exist (LinkChecker would read those pages' code blocks as Markdown links).
missing=$(grep -o '](\([^)#:]*\)[)#]' README.md | sed 's/^](//; s/[)#]$//' | sort -u |
	while read -r target; do [[ -e $target ]] || echo "$target"; done)
if [[ -n $missing ]]; then
	echo "!! README.md links to files that do not exist: $missing" >&2
	exit 1
fi
echo "   every link and anchor in the book and the README leads somewhere"

echo "== running the book's examples against $EXDAAS_BIN"
python3 scripts/book-examples.py --bin "$EXDAAS_BIN" "$@"
