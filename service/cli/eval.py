"""`sctir eval`: the evaluation's command (service.evaluation.command) with the CLI's settings and errors."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli.errors import CliError
from service.cli.options import add_common, configure_logs, load_settings, quiet_level
from service.evaluation import command
from service.exitcodes import ExitCode


def add_parser(sub: Any) -> None:
    add_common(command.add_parser(sub))


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from service.machine import NoModel

    settings = load_settings()
    configure_logs(settings, args.log_level or quiet_level(settings))
    try:
        return command.run(args)
    except NoModel as error:  # in-process, nothing to serve: its message says which setting to give
        raise CliError(ExitCode.USAGE, str(error)) from error
