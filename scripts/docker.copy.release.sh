#!/usr/bin/env bash
# docker.copy.release.sh (the original's name): copy exdaas.tar.gz out of the
# image scripts/docker.release.sh built, into the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${RELEASE_IMAGE:-exdaas-release}
echo "== Copying /app/exdaas.tar.gz out of $image"
# A stopped container is enough for docker cp; the command is never run.
container=$(docker create "$image" true)
trap 'docker rm "$container" >/dev/null' EXIT
docker cp "$container:/app/exdaas.tar.gz" exdaas.tar.gz
ls -l exdaas.tar.gz
