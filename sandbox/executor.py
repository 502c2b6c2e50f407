"""The Executor protocol: run one model-written Python block.

`last_block` executions (the reference's) run each block alone in a fresh
namespace with the numpy/sympy preamble; `session` executions share the
state of earlier blocks with the same session id (one per candidate).
Every failure mode of the code itself (exception, timeout, crash) is an
ExecutionResult, never an exception, so one bad block cannot fail a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class ExecutionStatus(StrEnum):
    OK = "ok"
    ERROR = "error"  # the code raised; `error` holds the trimmed traceback
    TIMEOUT = "timeout"  # wall-clock limit reached, the process was killed
    KILLED = "killed"  # died by a signal or the executor itself failed


@dataclass(frozen=True)
class ExecutionResult:
    status: ExecutionStatus
    stdout: str
    error: str
    duration_s: float

    @property
    def feedback(self) -> str:
        """What the model sees in its output block (stdout, else the error)."""
        return self.stdout.strip() if self.status is ExecutionStatus.OK else self.error.strip()


@runtime_checkable
class Executor(Protocol):
    async def start(self) -> None: ...

    async def ready(self) -> bool: ...

    async def execute(self, code: str, session_id: str | None = None, tenant: str | None = None) -> ExecutionResult:
        """Run `code`; with a session id, in that session's persistent namespace.

        `tenant` names whose code it is (the service: one /solve request). An isolating
        executor never lets one tenant's code reach another's; no tenant is one default tenant.
        """

    async def close_session(self, session_id: str) -> None:
        """Forget a session's state (its candidate finished)."""

    async def release(self, tenant: str) -> None:
        """The tenant is done: nothing of it may outlive this (an isolating executor destroys its sandbox)."""

    async def close(self) -> None: ...
