"""Engine steps in flight by request id, so that abort(id) stops exactly that step.

Each step runs as its own task: cancelling it (abort) ends the engine request (vLLM aborts
on cancellation, a remote server on the closed connection) while the caller gets an "abort"
result; cancelling the caller instead propagates as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from service.engines.base import EngineError, StepResult

ABORTED = StepResult(text="", finish_reason="abort", prompt_tokens=0, completion_tokens=0)


class InFlight:
    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Task[StepResult]] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._calls

    async def run(self, request_id: str, step: Coroutine[Any, Any, StepResult]) -> StepResult:
        """Await `step`; ABORTED when abort(request_id) stopped it."""
        if request_id in self._calls:
            step.close()
            # A second step with the id would make abort(request_id) ambiguous.
            raise EngineError(f"request id {request_id!r} is already in flight")
        call = asyncio.create_task(step)
        self._calls[request_id] = call
        try:
            return await call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if call.cancelled() and current is not None and current.cancelling() == 0:
                return ABORTED  # only the step was cancelled: abort(request_id) stopped it
            raise
        finally:
            del self._calls[request_id]

    async def abort(self, request_id: str) -> None:
        """Cancel the step and wait until it is gone; a no-op for unknown or finished ids."""
        call = self._calls.get(request_id)
        if call is not None:
            call.cancel()
            await asyncio.wait([call])

    async def abort_all(self) -> None:
        calls = list(self._calls.values())
        for call in calls:
            call.cancel()
        if calls:
            await asyncio.wait(calls)
