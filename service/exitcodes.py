"""The exit codes of `sctir solve`, `eval` and `serve`: one table, for the code, `sctir --help` and the README."""

from __future__ import annotations

import textwrap
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    NO_ANSWER = 1
    USAGE = 2  # argparse's own code for bad arguments
    UNAVAILABLE = 3
    INTERNAL = 4
    INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C


MEANINGS = {
    ExitCode.OK: "solve: an answer; eval: the run finished and its report is written",
    ExitCode.NO_ANSWER: "solve: no answer (the candidates finished without a valid one)",
    ExitCode.USAGE: "usage: a bad flag, setting (SCTIR_*) or input (problem set, run directory)",
    ExitCode.UNAVAILABLE: "unavailable: the engine, the executor or the service (--url) cannot be reached or "
    "started, or every candidate failed; eval: rerun the same command to resume; serve: it could not start "
    "(the port, the engine or the executor: its log says which)",
    ExitCode.INTERNAL: "an unexpected error (a bug): --debug shows the traceback",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C, SIGTERM); eval: rerun the same command to resume",
}


def table(width: int = 100) -> str:
    """The codes and their meanings, one per entry, for help texts."""
    return "\n".join(
        textwrap.fill(meaning, width, initial_indent=f"  {code.value:<4} ", subsequent_indent=" " * 7)
        for code, meaning in MEANINGS.items()
    )
