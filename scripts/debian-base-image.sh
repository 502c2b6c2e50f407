#!/usr/bin/env bash
# A Debian base image with some packages, built with no container registry: `mmdebstrap ... |
# docker import` from Debian's own archive (the base of the sandbox image, scripts/build-sandbox-image.sh,
# and of the compose stack's images, scripts/build-compose-images.sh).
#
#   scripts/debian-base-image.sh [--exclude PATTERN]... NAME PACKAGES_FILE...
#       prints the image's tag (NAME:<hash>) on stdout
#
# PACKAGES_FILE: Debian packages, one or more a line; comments and blank lines are ignored. Several
# files make one base with all their packages (images that share it cost one bootstrap).
# --exclude PATTERN: files that dpkg does not even unpack (a path-exclude glob), besides documentation
# and locales.
# Idempotent: the tag is a hash of the package list and the bootstrap options; when it exists nothing
# is done. Progress goes to stderr. Environment: SUITE (default bookworm), MIRROR (default
# http://deb.debian.org/debian).
set -euo pipefail

usage="usage: debian-base-image.sh [--exclude PATTERN]... NAME PACKAGES_FILE..."
# Documentation and locales are never read in these images: not even unpacked.
EXCLUDES=('/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*')
while [ "${1:-}" = --exclude ]; do
    EXCLUDES+=("${2:?$usage}")
    shift 2
done
NAME=${1:?$usage}
shift
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
started=$(date +%s)
packages=$(cat "$@" | grep -v '^\s*#' | tr -s ' \n' '\n' | grep -v '^$' | sort -u | paste -sd, -)
hash=$( { echo "$SUITE $MIRROR $packages"; printf '%s\n' "${EXCLUDES[@]}"; } | sha256sum | cut -c1-12)
TAG="$NAME:$hash"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base $TAG exists" >&2
    echo "$TAG"
    exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "installing mmdebstrap..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
fi
echo "bootstrapping $TAG from Debian $SUITE: $packages" >&2
dpkgopts=()
for pattern in "${EXCLUDES[@]}"; do dpkgopts+=(--dpkgopt="path-exclude=$pattern"); done
log=$(mktemp /tmp/sctir-mmdebstrap.XXXXXX.log)
# shellcheck disable=SC2024
if ! mmdebstrap --variant=minbase --aptopt='APT::Install-Recommends "false"' \
    --include="$packages" "${dpkgopts[@]}" "$SUITE" - \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb ${MIRROR%/debian}/debian-security $SUITE-security main" 2>"$log" \
    | docker import --message "mmdebstrap $SUITE: $packages" - "$TAG" >/dev/null; then
    tail -n 30 "$log" >&2
    docker image rm -f "$TAG" >/dev/null 2>&1 || true  # an import of a cut stream
    echo "the bootstrap of $TAG failed (log: $log)" >&2
    exit 1
fi
rm -f "$log"
echo "base $TAG imported after $(( $(date +%s) - started )) s" >&2
echo "$TAG"
