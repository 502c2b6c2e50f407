"""What an execution is: the Executor protocol (run one model-written Python block), its result and its failure.

`last_block` executions (the reference's) run each block alone in a fresh
namespace with the numpy/sympy preamble; `session` executions share the
state of earlier blocks with the same session id (one per candidate).

Two kinds of failure, kept apart because only one is the model's business:

- whatever the block itself causes (an exception, a timeout, its own kill by
  the memory or process limits, a sandbox it crashed) is an ExecutionResult,
  which the model sees in its output block and may fix, so one bad block
  cannot fail a request;
- a block whose sandbox died or froze under it (OOM-killed, killed or removed
  from outside, paused) is one too, KILLED, since the block may have caused
  it; its `sandbox_lost` says what happened to the sandbox, so that the
  caller can tell its user (the service puts it in the candidate's `error`)
  what an output block alone would hide: an answer reached without that
  block's result, and a fault of the machine rather than of the code;
- a fault of the executor (no sandbox can be started, the engine is
  unreachable, the sandbox was lost before the block ran, the executor is
  closed) raises ExecutorError: it says nothing about the code, so showing
  it to the model as the code's output would only mislead it (and hide the
  fault from the operator behind answers that merely look wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class ExecutorError(RuntimeError):
    """The executor itself could not run a block (see the module docstring); the message says why and what to do."""


class ExecutionStatus(StrEnum):
    OK = "ok"
    ERROR = "error"  # the code raised; `error` holds the trimmed traceback
    TIMEOUT = "timeout"  # wall-clock limit reached, the process was killed
    KILLED = "killed"  # died by a signal, a limit or with its sandbox (that the block may have crashed)


@dataclass(frozen=True)
class ExecutionResult:
    status: ExecutionStatus
    stdout: str
    error: str
    duration_s: float
    # The sandbox died or stopped answering while the block ran, and was replaced: what happened
    # (e.g. "the container died while the block ran (it ran out of memory); replaced"); None otherwise.
    sandbox_lost: str | None = None

    @property
    def feedback(self) -> str:
        """What the model sees in its output block (stdout, else the error)."""
        return self.stdout.strip() if self.status is ExecutionStatus.OK else self.error.strip()


@runtime_checkable
class Executor(Protocol):
    async def start(self) -> None:
        """Get ready to run blocks; raises ExecutorError, saying how to fix it, when the executor cannot run."""

    async def ready(self) -> bool: ...

    async def execute(self, code: str, session_id: str | None = None, tenant: str | None = None) -> ExecutionResult:
        """Run `code`; with a session id, in that session's persistent namespace.

        `tenant` names whose code it is (the service: one /solve request). An isolating
        executor never lets one tenant's code reach another's; no tenant is one default tenant.
        Raises ExecutorError when the executor itself cannot run the block (no sandbox could be
        started, the engine is unreachable, the sandbox was lost before the block ran, the
        executor is closed); everything the block causes is the returned result.
        """

    async def close_session(self, session_id: str) -> None:
        """Forget a session's state (its candidate finished)."""

    async def release(self, tenant: str) -> None:
        """The tenant is done: nothing of it may outlive this (an isolating executor destroys its sandbox)."""

    async def close(self) -> None: ...
