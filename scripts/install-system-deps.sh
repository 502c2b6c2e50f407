#!/usr/bin/env bash
# Debian packages the test tiers use: a Prometheus server (observability), Compose v1 (the
# compose file's validation). The Docker engine and mmdebstrap are installed by
# scripts/start-dockerd.sh and scripts/build-sandbox-image.sh. Idempotent; needs root when
# something is missing.
set -euo pipefail
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]}..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
