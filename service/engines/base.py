"""The Engine protocol: one SC-TIR step for one candidate.

The solver never batches by itself: every candidate step is an independent
engine request, so the engine (vLLM's continuous batching, or a remote
server) is free to schedule them. Abort is by request id so that early
stopping, deadlines and client disconnects free engine capacity at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "abort"]


# Engines answer "are you alive?" within this, so /readyz says "not ready" about a frozen engine in a
# second instead of at a long timeout (a healthy engine answers in milliseconds, even when busy).
READY_TIMEOUT_S = 1.0
# Longest silence (no token for any step in flight) before the steps waiting on an engine fail:
# SCTIR_ENGINE_STALL_S. The longest a step of the demo model waited for the engine's next token was
# 0.38 s (two problems of 48 candidates at once, code executed, on 2 CPU cores shared with other
# work at a load average of 8); a 7B model's longest step on a T4 (a full batch of prefill) takes
# about a second. 20 s is more than an order of magnitude above both, and still fails a frozen
# engine's steps in seconds rather than at the 600 s deadline.
DEFAULT_STALL_S = 20.0


class EngineError(RuntimeError):
    """The engine could not complete a step (server down, bad response, ...)."""


class EngineStalled(EngineError):
    """The engine produced no token for any step in flight for `stall_s` seconds: it is frozen or hung."""

    def __init__(self, stall_s: float) -> None:
        super().__init__(f"engine stalled: no token for {stall_s:g} s")
        self.stall_s = stall_s


class ContextExhausted(EngineError):
    """The prompt leaves no room in the model's context: the step generates nothing.

    The reference's vLLM returned an empty completion for such a prompt, and the candidate
    went on as after any empty step (restarted, or pruned without restarts): the solver does
    the same, where other engine errors fail the candidate.
    """

    MESSAGE = re.compile(r"maximum (?:model|context) length", re.IGNORECASE)

    @classmethod
    def matches(cls, message: str) -> bool:
        """Whether an engine's error message says the prompt is too long (vLLM's two wordings)."""
        return cls.MESSAGE.search(message) is not None


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_p: float = 1.0


@dataclass(frozen=True)
class StepRequest:
    """Continue `prompt` (the chat-formatted problem plus the candidate's text so far).

    `on_text`, when set, is given the text as the engine streams it (deltas that add up to the step's
    text, a matched stop string perhaps excepted); an engine that does not stream may never call it.
    """

    request_id: str
    prompt: str
    params: SamplingParams
    on_text: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class StepResult:
    """The generated continuation; a matched stop string is kept at its end."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    retried: bool = False  # sent again after the engine replica running it died (service.cluster)


@runtime_checkable
class Engine(Protocol):
    async def start(self) -> None:
        """Load the model or connect; raise EngineError with a clear message on failure."""

    async def ready(self) -> bool:
        """Whether the engine can take requests now (for /readyz)."""

    def format_prompt(self, problem: str) -> str:
        """Apply the served model's chat template to a problem statement."""

    async def complete(self, request: StepRequest) -> StepResult:
        """Generate one step. Cancelling the awaiting task must abort the request."""

    async def abort(self, request_id: str) -> None:
        """Abort a running request; a no-op for unknown or finished ids."""

    async def close(self) -> None:
        """Release the engine's resources."""
