#!/bin/sh
# Upstream's entrypoint (Tecnativa/docker-socket-proxy), for Debian's haproxy: the template's
# ${BIND_CONFIG} becomes port 2375 on IPv4 and IPv6, or IPv4 alone with DISABLE_IPV6=1 (a
# container network without IPv6 cannot bind ::), unless BIND_CONFIG is set; then haproxy runs
# in the foreground as PID 1's master (-W: SIGUSR2 reloads it, as upstream).
set -e

# A BIND_CONFIG given is used as is (ours, not upstream's): e.g. a Unix socket in a volume shared with the
# solver alone, "/run/sctir-docker/docker.sock mode 660 uid 10001" (deploy/k8s/rayservice.yaml).
if [ -z "${BIND_CONFIG:-}" ]; then
    case "$(echo "$DISABLE_IPV6" | tr '[:upper:]' '[:lower:]')" in
        1 | true | yes) BIND_CONFIG=":2375" ;;
        *) BIND_CONFIG="[::]:2375 v4v6" ;;
    esac
fi
sed "s|\${BIND_CONFIG}|$BIND_CONFIG|g" /usr/local/etc/haproxy/haproxy.cfg.template > /tmp/haproxy.cfg

if [ "${1#-}" != "$1" ]; then
    set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
