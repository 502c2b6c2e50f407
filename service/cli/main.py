"""`sctir serve | cluster | solve | eval | demo | train`: run the HTTP service (on this machine, or on Ray Serve),
solve one problem, evaluate on a set, build the offline demo model, or run a training stage."""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback

from service import exitcodes
from service.cli import cluster, demo, serve, solve, train
from service.cli import eval as evaluate
from service.cli.errors import CliError
from service.engines.lifetime import adopt_children, die_with_parent_if_spawned
from service.exitcodes import ExitCode
from service.logs import configure_spawned_child

die_with_parent_if_spawned()  # in vLLM's engine core and its worker: not one second longer (service.engines.lifetime)
configure_spawned_child()  # in vLLM's engine core, which re-runs this module first (see service.logs)

EPILOG = f"""\
exit codes:
{exitcodes.table()}

Errors are one line on stderr (sctir: error: what happened; what to do); --debug adds the traceback.
Logs go to stderr: solve and eval show warnings and errors (SCTIR_LOG_LEVEL or --log-level for more),
serve its own records and the warnings of other libraries that matter (--log-level debug: everything).
solve shows its progress on stderr when stderr is a terminal; with --json, stdout is the response alone.
"""

# Each runs with the rest of the command line (serve, cluster: the settings' flags) and returns its exit code.
COMMANDS = {"serve": serve.run, "cluster": cluster.run, "solve": solve.run, "eval": evaluate.run}
TAKE_SETTINGS_FLAGS = ("serve", "cluster")
# training/'s programs: their flags, their errors and their exit are their own.
TOOLS = {"demo": demo.run, "train": train.run}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sctir", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (serve, cluster, demo, train, solve, evaluate):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    adopt_children()  # the engine's processes die with this one, even killed by SIGKILL
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command in TOOLS:
        TOOLS[args.command](rest)
        return
    if rest and args.command not in TAKE_SETTINGS_FLAGS:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    raise SystemExit(run(args, rest))


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """The command's exit code; its failures reported in one line (with the traceback under --debug)."""
    try:
        return COMMANDS[args.command](args, rest)
    except CliError as error:
        return _fail(error.code, str(error), error, args.debug)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("sctir: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as error:
        what = f"unexpected {type(error).__name__}: {error}; this is a bug: --debug shows the traceback to report"
        return _fail(ExitCode.INTERNAL, what, error, args.debug)


def _fail(code: ExitCode, message: str, error: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(error)
    print(f"sctir: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    main()
