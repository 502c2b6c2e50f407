"""`sctir serve`: the HTTP service, configured by SCTIR_* and the flags of every setting."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Any

from service.cli.errors import CliError
from service.cli.options import add_common, configure_logs, load_settings
from service.exitcodes import ExitCode
from service.settings import Settings

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    """Its flags are the settings' (pydantic-settings parses them): argparse leaves them to run()."""
    add_common(
        sub.add_parser("serve", help="run the HTTP service (flags: sctir serve --help)", add_help=False),
        log_level=False,
    )


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the port on this machine (a name other than localhost is not trusted to)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve /solve beyond loopback with no API keys unless told to: it runs code on request.

    Checked before anything starts (the engine takes minutes), so the refusal is the first thing said.
    """
    if settings.api_keys or is_loopback(settings.host):
        return
    if not settings.allow_unauthenticated_public:
        raise CliError(
            ExitCode.USAGE,
            f"refusing to serve on {settings.host} without API keys (whoever reaches it could make it run code)",
            "set SCTIR_API_KEYS (--api-keys), or SCTIR_ALLOW_UNAUTHENTICATED_PUBLIC=true "
            "(--allow-unauthenticated-public) to serve it open on purpose",
        )
    log.warning(
        "serving on %s:%d without API keys (SCTIR_ALLOW_UNAUTHENTICATED_PUBLIC=true): whoever reaches this port "
        "can make it run code",
        settings.host,
        settings.port,
    )


def run(args: argparse.Namespace, rest: list[str]) -> int:
    import uvicorn

    from service.api.app import create_app

    settings = load_settings(rest)
    configure_logs(settings)
    check_exposure(settings)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)
    except SystemExit as stopped:  # uvicorn's, once it logged why: the port, the engine or the executor
        if stopped.code:
            return ExitCode.UNAVAILABLE
        raise
    return ExitCode.OK
