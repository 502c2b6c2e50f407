"""`sctir cluster up | down`: the service on Ray Serve (engine and solver replicas), from SCTIR_* and the
settings' flags.

Ray is imported only when the command runs (service.cluster, the one package that imports it): the other
subcommands, and hosts without the cluster extra, never load it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from service.cli.errors import CliError
from service.cli.options import add_common, configure_logs, load_settings
from service.cli.serve import check_exposure
from service.exitcodes import ExitCode

NO_RAY = "Ray Serve is not installed", "pip install 'sctir[cluster]' (ray[serve]==2.60.0)"


def add_parser(sub: Any) -> None:
    """`up` and `down`; the settings' flags (sctir serve --help lists them) are left to pydantic-settings."""
    parser = sub.add_parser(
        "cluster",
        help="start the service on Ray Serve (up) or remove it (down); flags: the settings' (sctir serve --help)",
        add_help=False,
    )
    parser.add_argument("action", choices=["up", "down"])
    add_common(parser, log_level=False)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    settings = load_settings(rest)
    configure_logs(settings)
    try:
        from service.cluster import launch
    except ImportError as missing:
        raise CliError(ExitCode.UNAVAILABLE, *NO_RAY) from missing
    if args.action == "down":
        return _down(launch, settings)
    check_exposure(settings)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def started(address: str) -> None:
        where = "until Ctrl-C or `sctir cluster down`" if not settings.ray_address else "on the cluster"
        print(f"serving http://{settings.host}:{settings.port} (Ray at {address}) {where}", file=sys.stderr)

    try:
        launch.up(settings, started=started, stopping=stop.is_set)
    except ConnectionError as error:  # it names the address and what to do (launch.connect)
        raise CliError(ExitCode.UNAVAILABLE, str(error)) from error
    return ExitCode.INTERRUPTED if stop.is_set() else ExitCode.OK


def _down(launch: Any, settings: Any) -> int:
    where = settings.ray_address or "this machine"
    try:
        deployed = launch.down(settings)
    except ConnectionError as error:  # it names the address and what to do (launch.connect)
        raise CliError(ExitCode.UNAVAILABLE, str(error)) from error
    if not deployed:
        raise CliError(ExitCode.UNAVAILABLE, f"the service is not deployed on the Ray cluster at {where}")
    print(f"removed the service from the Ray cluster at {where}", file=sys.stderr)
    return ExitCode.OK
