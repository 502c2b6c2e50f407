#!/usr/bin/env bash
# Start a Docker engine in the background for the sandbox tests (CI, a dev VM without systemd).
#
# Idempotent: if `docker info` already answers (this script's engine or any other), it does nothing.
# Otherwise it installs Debian's engine when missing (docker.io, plus runsc for the optional gVisor
# runtime), starts `dockerd` detached with its log in $DOCKERD_LOG, and polls `docker info` for at
# most $DOCKERD_WAIT_S seconds. Stop it with scripts/stop-dockerd.sh.
#
# The engine gets no bridge network and leaves iptables alone: sandbox containers run with
# network_mode=none and the image builds with --network=none, so nothing here needs one.
# Set DOCKERD_EXTRA_ARGS to change that (e.g. DOCKERD_EXTRA_ARGS="" keeps the defaults below plus nothing).
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/tmp/sctir-dockerd.log}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/tmp/sctir-dockerd.pid}
DOCKERD_WAIT_S=${DOCKERD_WAIT_S:-60}
DOCKERD_EXTRA_ARGS=${DOCKERD_EXTRA_ARGS:---bridge=none --iptables=false --ip-masq=false}

if docker info >/dev/null 2>&1; then
    echo "docker engine already running: $(docker info --format '{{.ServerVersion}}' 2>/dev/null)"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "dockerd is not installed and this is not root: install docker.io first" >&2
        exit 1
    fi
    echo "installing Debian's docker.io (and runsc for gVisor)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi
# gVisor: the tenant-isolation suite runs under runsc too. Installed even where dockerd came with the
# machine (then docker.io above was skipped).
if ! command -v runsc >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's runsc (gVisor)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq runsc >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq runsc >/dev/null; } \
        || echo "runsc (gVisor) not installable; the runsc runtime stays unavailable"
fi

args=(--host=unix:///var/run/docker.sock --pidfile="$DOCKERD_PIDFILE")
if command -v runsc >/dev/null 2>&1; then
    # gVisor as the optional `runsc` runtime. Sandbox containers have no network, and runsc's own
    # network stack refuses to start in this kind of netns, so it runs with --network=none.
    config=${DOCKERD_CONFIG:-/tmp/sctir-dockerd.json}
    printf '{"runtimes": {"runsc": {"path": "%s", "runtimeArgs": ["--network=none"]}}}\n' "$(command -v runsc)" >"$config"
    args+=(--config-file "$config")
fi
# shellcheck disable=SC2206  # word splitting of the extra args is intended
args+=($DOCKERD_EXTRA_ARGS)

echo "starting dockerd (log: $DOCKERD_LOG)"
# setsid + nohup: the engine outlives this shell and is not in its process group.
setsid nohup dockerd "${args[@]}" >>"$DOCKERD_LOG" 2>&1 </dev/null &

started=$(date +%s)
until docker info >/dev/null 2>&1; do
    if [ $(( $(date +%s) - started )) -ge "$DOCKERD_WAIT_S" ]; then
        echo "dockerd did not become ready within ${DOCKERD_WAIT_S}s; last log lines:" >&2
        tail -n 30 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
    sleep 0.5
done
echo "docker engine ready after $(( $(date +%s) - started ))s: $(docker info --format '{{.ServerVersion}} runtimes={{range $k, $v := .Runtimes}}{{$k}} {{end}}')"
