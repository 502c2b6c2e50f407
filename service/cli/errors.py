"""The failure every subcommand reports the same way: one line on stderr and an exit code."""

from __future__ import annotations

from service.exitcodes import ExitCode


class CliError(Exception):
    """A failure the user can act on: reported as `sctir: error: <what happened>; <what to do>`
    (no `todo` where `what` is a message that already names the way out)."""

    def __init__(self, code: ExitCode, what: str, todo: str | None = None) -> None:
        super().__init__(f"{what}; {todo}" if todo else what)
        self.code = code
