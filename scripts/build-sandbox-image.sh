#!/usr/bin/env bash
# Build the sandbox image (sandbox/image/Dockerfile) on a host with no container registry.
#
# 1. Bootstrap a Debian base that already holds python3 and the math packages
#    (sandbox/image/debian-packages.txt): `mmdebstrap ... | docker import`, from Debian's own
#    package archive, no registry involved (scripts/debian-base-image.sh).
# 2. `docker build` the Dockerfile on it (--build-arg BASE_IMAGE=<that base>, --network=none).
#
# Idempotent: the base is tagged by a hash of its package list and bootstrap options
# (scripts/debian-base-image.sh), the image by a hash of everything that goes into it (sandbox/image/*,
# the runner's package sandbox/runner/, the base); when that tag exists nothing is rebuilt, and
# $IMAGE:latest is pointed at it.
#
# Environment:
#   IMAGE        image name (default sctir-sandbox); the service's SCTIR_DOCKER_IMAGE is $IMAGE:latest
#   SUITE        Debian suite of the base (default bookworm: Python 3.11)
#   MIRROR       Debian mirror (default http://deb.debian.org/debian)
#   BASE_IMAGE   skip the bootstrap and build FROM this image instead (e.g. python:3.11-slim on a
#                host with a registry; then pip installs requirements.txt, with the network)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-sctir-sandbox}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
started=$(date +%s.%N)

elapsed() { awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

if ! docker info >/dev/null 2>&1; then
    echo "no Docker engine answers (docker info failed): start one, e.g. scripts/start-dockerd.sh" >&2
    exit 1
fi

# Without mmdebstrap and the rights to install it (apt as root), a host that reaches a registry
# builds on the official Python image instead (the Dockerfile then pip-installs its requirements).
if [ -z "${BASE_IMAGE:-}" ] && ! command -v mmdebstrap >/dev/null 2>&1 && [ "$(id -u)" != 0 ]; then
    if docker pull -q python:3.11-slim >/dev/null 2>&1; then
        BASE_IMAGE=python:3.11-slim
    else
        echo "cannot build the sandbox base: mmdebstrap is missing (sudo apt-get install mmdebstrap, then" \
            "rerun as root) and no registry gives python:3.11-slim" >&2
        exit 1
    fi
fi

if [ -z "${BASE_IMAGE:-}" ]; then
    # Debian's python3 packages pull compilers and headers through Recommends and python3-scipy's
    # dependency on pythran; none of that is needed at run time, so it is not even unpacked.
    excludes=()
    for pattern in '/usr/include/*' '/usr/lib/gcc/*' '/usr/libexec/gcc/*' '/usr/bin/*lto-dump*' \
        '/usr/lib/x86_64-linux-gnu/*.a' '/usr/lib/aarch64-linux-gnu/*.a' '/usr/lib/python3.*/config-*/*.a'; do
        excludes+=(--exclude "$pattern")
    done
    BASE_IMAGE=$(SUITE=$SUITE MIRROR=$MIRROR scripts/debian-base-image.sh "${excludes[@]}" "$IMAGE-base" \
        sandbox/image/debian-packages.txt)
    network=none
else
    echo "building FROM $BASE_IMAGE (no bootstrap)"
    network=default
fi

base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || echo "$BASE_IMAGE")
inputs_hash=$( { echo "$base_id"; cat sandbox/image/* sandbox/runner/*.py; } \
    | sha256sum | cut -c1-12)
TAG="$IMAGE:$inputs_hash"
if docker image inspect "$TAG" >/dev/null 2>&1; then
    docker tag "$TAG" "$IMAGE:latest"
    echo "$TAG is up to date (tagged $IMAGE:latest); nothing to build ($(elapsed) s)"
    exit 0
fi

echo "building $TAG on $BASE_IMAGE"
# The context holds only what the Dockerfile copies, at the paths it has in the repository
# (whose root is the context in docker-compose.yml). The classic builder: this engine may have
# no BuildKit/buildx, and the Dockerfile needs neither.
context=$(mktemp -d /tmp/sctir-sandbox-context.XXXXXX)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/sandbox/image"
cp sandbox/image/* "$context/sandbox/image/"
mkdir -p "$context/sandbox/runner"
cp sandbox/runner/*.py "$context/sandbox/runner/"
if ! output=$(DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --network="$network" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --label "sctir.sandbox.inputs=$inputs_hash" \
    -f "$context/sandbox/image/Dockerfile" -t "$TAG" -t "$IMAGE:latest" "$context" 2>&1); then
    echo "$output" | tail -n 40 >&2
    echo "docker build failed" >&2
    exit 1
fi
# Older builds of this script's images are superseded: untag them (their layers go with them).
for old in $(docker images "$IMAGE" --format '{{.Tag}}'); do
    if [ "$old" != latest ] && [ "$old" != "$inputs_hash" ]; then
        docker image rm "$IMAGE:$old" >/dev/null 2>&1 || true
    fi
done
size=$(docker image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')
echo "built $TAG (= $IMAGE:latest, $size) in $(elapsed) s"
