#!/usr/bin/env bash
# Stop the engine that scripts/start-dockerd.sh started (by its pid file); a no-op otherwise.
set -euo pipefail

DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/tmp/sctir-dockerd.pid}
DOCKERD_WAIT_S=${DOCKERD_WAIT_S:-30}

if [ ! -s "$DOCKERD_PIDFILE" ]; then
    echo "no dockerd pid file at $DOCKERD_PIDFILE: nothing to stop"
    exit 0
fi
pid=$(cat "$DOCKERD_PIDFILE")
if ! kill -0 "$pid" 2>/dev/null; then
    echo "dockerd ($pid) is not running"
    rm -f "$DOCKERD_PIDFILE"
    exit 0
fi
echo "stopping dockerd ($pid)"
kill -TERM "$pid"
for _ in $(seq 1 $((DOCKERD_WAIT_S * 2))); do
    kill -0 "$pid" 2>/dev/null || { echo "dockerd stopped"; rm -f "$DOCKERD_PIDFILE"; exit 0; }
    sleep 0.5
done
echo "dockerd did not stop within ${DOCKERD_WAIT_S}s; killing it" >&2
kill -KILL "$pid" 2>/dev/null || true
rm -f "$DOCKERD_PIDFILE"
