#!/usr/bin/env bash
# Debian packages the test tiers use: a Prometheus server (observability), Compose v1 (the
# compose stack's tests), haproxy (the sandbox pool through the socket proxy's configuration),
# Chromium (the web page's browser test; Playwright drives it, as its own browser download cannot work here). The
# Docker engine and mmdebstrap are installed by scripts/start-dockerd.sh and the image build scripts.
# Idempotent; needs root when something is missing.
set -euo pipefail
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]}..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
