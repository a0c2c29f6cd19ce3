#!/usr/bin/env bash
# docker.release.sh (the original's name): build the release tarball inside
# Docker, so bin/exdaas is the static musl binary of the Alpine builder. It
# builds docker/Dockerfile's `release` stage, which runs scripts/release.sh, as
# the image exdaas-release; scripts/docker.copy.release.sh then copies
# exdaas.tar.gz out of it.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${RELEASE_IMAGE:-exdaas-release}
echo "== docker build -f docker/Dockerfile --target release -t $image ."
docker build -f docker/Dockerfile --target release -t "$image" .
echo "== Built $image: run scripts/docker.copy.release.sh to copy exdaas.tar.gz out of it."
