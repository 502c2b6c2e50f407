"""One solve as the API tells it: admitted, then the solver's events (when streamed), then its result or failure.

Both ways of answering POST /solve (one JSON body, or server-sent events) and the OpenAI-compatible
endpoint go through solve_events, so admission, metrics, the request's log line and the mapping of
failures to statuses are the same whichever a client asked for. Without `progress` the solver gets no
listener: the JSON path builds no event it would not send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.admission import Overloaded
from service.api.state import Collaborators
from service.events import Event, StepText
from service.schemas import SolveResponse
from service.solver import SolveConfig
from service.solving import AllCandidatesFailed, solve_once

log = logging.getLogger(__package__)  # the API's records under one name, whichever of its modules logs
# Retry-After of a 503 the engine caused (not ready, or every candidate failed on it): a stalled or
# restarting engine is back in seconds, or the next 503 says the same again at once.
ENGINE_RETRY_AFTER_S = 5
# A keep-alive comment after this long without an event: proxies and browsers drop idle streams after
# 30-60 s, and a step of a 7B model on a T4 may produce nothing to send for longer (while executing).
KEEPALIVE_S = 15.0
# Events waiting to be sent are sent together at most this often: a candidate's text that arrived
# token by token in the meantime goes as one `step` event, so 48 candidates cost tens of events a
# second, not thousands (vLLM streams a token per candidate per engine step).
FLUSH_S = 0.05


class Started(Event):
    """The problem left the queue and its candidates started."""

    event: ClassVar[str] = "start"
    num_samples: int
    max_steps: int
    seed: int
    answer_mode: str
    queue_s: float


class Result(Event):
    """The solve's answer: the SolveResponse a JSON request gets."""

    event: ClassVar[str] = "result"
    response: SolveResponse

    def payload(self, request_id: str) -> dict[str, Any]:
        return self.response.model_dump(mode="json")


class Failed(Event):
    """What ended the solve without a vote: its status and message are those of the JSON error."""

    event: ClassVar[str] = "error"
    status: int
    message: str
    retry_after_s: int | None = None

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else None


async def solve_events(
    api: Collaborators, problem: str, config: SolveConfig, request_id: str, *, traces: bool, progress: bool = True
) -> AsyncIterator[Event]:
    """Started, the solver's events (with `progress`), then Result or Failed; nothing after either.

    Closing the iterator early (a client gone) cancels the solve, and returns once every candidate
    has let go of its engine request and sandbox.
    """
    events: asyncio.Queue[Event] = asyncio.Queue()
    task = asyncio.create_task(_solve(api, problem, config, request_id, events, traces, progress))
    waiting: asyncio.Future[Event] | None = None
    try:
        while not (task.done() and events.empty()):
            waiting = asyncio.ensure_future(events.get())
            await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                continue
            await asyncio.sleep(FLUSH_S if progress else 0)
            for event in coalesced([waiting.result(), *_drain(events)]):
                yield event
        yield task.result()
    finally:
        if waiting is not None:
            waiting.cancel()
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):  # the stream's own cancellation must not cut this short
                await asyncio.wait({task})


async def _solve(
    api: Collaborators,
    problem: str,
    config: SolveConfig,
    request_id: str,
    events: asyncio.Queue[Event],
    traces: bool,
    progress: bool,
) -> Result | Failed:
    """Queue, solve (events go to `events`), account; the result or the failure, as the client will see it."""
    started = time.monotonic()
    try:
        async with api.admission.slot() as queue_s:
            events.put_nowait(
                Started(
                    num_samples=config.num_samples,
                    max_steps=config.max_steps,
                    seed=config.seed,
                    answer_mode=config.answer_mode,
                    queue_s=queue_s,
                )
            )
            listener = events.put_nowait if progress else None
            result = await solve_once(api.solver, problem, config, request_id, listener)
    except Overloaded as busy:
        return Failed(status=429, message=str(busy), retry_after_s=busy.retry_after_s)
    except AllCandidatesFailed as failure:
        api.metrics.observe_solve(failure.result, time.monotonic() - started, all_failed=True)
        log.error("%s", failure)
        return Failed(
            status=503, message=str(failure), retry_after_s=ENGINE_RETRY_AFTER_S if failure.engine_down else None
        )
    api.metrics.observe_solve(result, time.monotonic() - started, all_failed=False)
    log.info(
        "solved",
        extra={
            "answer": result.answer,
            "agreement": round(result.agreement, 3),
            "candidates": len(result.candidates),
            "total_s": round(result.total_s, 3),
        },
    )
    return Result(response=SolveResponse.from_result(result, config, request_id, queue_s, traces))


def _drain(events: asyncio.Queue[Event]) -> list[Event]:
    drained = []
    while not events.empty():
        drained.append(events.get_nowait())
    return drained


def coalesced(events: Iterable[Event]) -> list[Event]:
    """`events` with each candidate's consecutive texts of one step joined (other events keep their places).

    Only one candidate's order matters to a client; another candidate's events may come between two
    texts that are joined.
    """
    out: list[Event] = []
    open_text: dict[int, int] = {}  # candidate -> index in `out` of its text that may still grow
    for event in events:
        if isinstance(event, StepText):
            at = open_text.get(event.candidate)
            if at is not None and (out[at].step, out[at].attempt) == (event.step, event.attempt):
                out[at] = out[at].model_copy(update={"text": out[at].text + event.text})
                continue
            open_text[event.candidate] = len(out)
        elif (candidate := getattr(event, "candidate", None)) is not None:
            open_text.pop(candidate, None)
        out.append(event)
    return out


def event_stream(events: AsyncIterator[Event], request_id: str, config: SolveConfig) -> EventSourceResponse:
    """`events` as server-sent events, with keep-alive comments; a server shutting down lets the solve finish."""

    async def sse() -> AsyncIterator[ServerSentEvent]:
        async for event in events:
            yield ServerSentEvent(data=_json(event.payload(request_id)), event=event.event)

    return EventSourceResponse(sse(), ping=KEEPALIVE_S, shutdown_grace_period=config.deadline_s)


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
