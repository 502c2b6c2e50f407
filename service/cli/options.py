"""What the subcommands share before they run: the settings, the log level and the common flags."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from service.cli.errors import CliError
from service.exitcodes import ExitCode
from service.logs import configure_logging
from service.settings import Settings


def load_settings(cli_args: list[str] | None = None) -> Settings:
    """The settings from SCTIR_* (and `sctir serve`'s flags); a bad value is a usage error."""
    try:
        return Settings() if cli_args is None else Settings(_cli_parse_args=cli_args)
    except ValidationError as exc:
        bad = "; ".join(
            f"SCTIR_{str(e['loc'][0]).upper()} (--{str(e['loc'][0]).replace('_', '-')}): {e['msg']}"
            for e in exc.errors()
        )
        raise CliError(ExitCode.USAGE, f"invalid setting: {bad}", "fix it (sctir serve --help lists them)") from exc


def configure_logs(settings: Settings, level: str | None = None) -> None:
    configure_logging(level or settings.log_level, settings.log_format)


def quiet_level(settings: Settings) -> str:
    """solve and eval print their own results: log warnings and errors, unless SCTIR_LOG_LEVEL says otherwise."""
    return settings.log_level if "log_level" in settings.model_fields_set else "warning"


def add_common(parser: argparse.ArgumentParser, *, log_level: bool = True) -> argparse.ArgumentParser:
    """--debug on every command (its default is the top-level parser's), --log-level on solve and eval."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    if log_level:
        parser.add_argument(
            "--log-level",
            type=str.lower,
            choices=["debug", "info", "warning", "error"],
            help="log level (default: warning, or SCTIR_LOG_LEVEL); debug: every library's records",
        )
    return parser
