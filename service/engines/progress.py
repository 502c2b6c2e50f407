"""The stall detector: steps fail once their engine has produced no token for `stall_s` seconds.

A frozen engine (a stopped or wedged process, a hung GPU, a server whose engine core hangs)
neither answers nor fails: without this each of its steps would wait for the request's deadline
(600 s by default) or the remote read timeout. A step may wait for its first token legitimately, though:
queued behind the others of a full batch, it gets none while they do. So the clock is the
engine's, not the step's: a step has stalled when no step of its engine made progress (a token,
a streamed chunk) for `stall_s` seconds since it started.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from service.engines.base import READY_TIMEOUT_S, EngineStalled

log = logging.getLogger(__name__)
T = TypeVar("T")

# A stalled step's engine request is aborted before the step fails; an abort that cannot get
# through (the engine is frozen, after all) must not hold the candidate: it is left to finish.
ABORT_WAIT_S = 5.0


class Progress:
    """When the engine last made progress on any step, and the guard that fails a step on a stall."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._last = -math.inf

    def tick(self) -> None:
        """A step made progress (call it for every token or chunk the engine hands over)."""
        self._last = time.monotonic()

    def quiet_s(self) -> float:
        """Seconds since the engine last made progress (inf: never)."""
        return time.monotonic() - self._last

    async def alive(self, ping: Callable[[], Awaitable[bool]]) -> bool:
        """Tokens flowed within READY_TIMEOUT_S, or `ping()` answers True within it; False on any error.

        The ping's wait is bounded: a stopped engine (or server) accepts it and never answers.
        """
        if self.quiet_s() < READY_TIMEOUT_S:
            return True
        try:
            return await asyncio.wait_for(ping(), READY_TIMEOUT_S)
        except Exception:
            return False

    async def guard(self, step: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of `step()`, or EngineStalled once the engine has been silent for stall_s since it began.

        A stalled step is cancelled first, which aborts its engine request; cancelling the
        caller cancels the step as usual. (A function, not a coroutine: a guard that never runs
        leaves no coroutine behind never awaited.)
        """
        started = time.monotonic()
        task = asyncio.ensure_future(step())
        try:
            while (remaining := max(self._last, started) + self.stall_s - time.monotonic()) > 0:
                await asyncio.wait([task], timeout=remaining)
                if task.done():
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=ABORT_WAIT_S)
        if not task.done():
            log.warning("a stalled step's abort did not end within %s s; it goes on in the background", ABORT_WAIT_S)
        raise EngineStalled(self.stall_s)
