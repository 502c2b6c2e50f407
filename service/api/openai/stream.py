"""A chat completion streamed: OpenAI's chat.completion.chunk events, and SC-TIR's progress as SSE comments.

The message is the winning candidate's solution, which exists only once the vote is decided, so its
content chunks come at the end, after the role chunk. While the candidates run, the stream carries
their progress as SSE comment lines (": candidate 3 answered 42; leader 42 3/4 votes"), which OpenAI
clients skip, and keep-alive comments while nothing happens. Then the solution line by line (joined,
exactly the non-streamed message), a last chunk with finish_reason "stop" and the `sctir` vote, the
usage chunk when asked for, and `data: [DONE]`. A failure ends the stream with an OpenAI error object
(`data: {"error": {...}}`), which the `openai` client raises.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from service.api import streaming
from service.api.openai.answer import completion_id, solution, summary, usage
from service.api.openai.errors import failure
from service.api.openai.schemas import ChatCompletionChunk, ChunkChoice, Delta
from service.api.streaming import Failed, Result, Started
from service.events import CandidateFinished, Event, Executed, VoteTally
from service.solver import SolveConfig


def started(event: Started) -> str:
    return f"solving: {event.num_samples} candidates, up to {event.max_steps} steps each, seed {event.seed}"


def executed(event: Executed) -> str:
    return f"candidate {event.candidate} step {event.step}: code ran ({event.status}, {event.duration_s:.2f} s)"


def finished(event: CandidateFinished) -> str:
    said = f" {event.answer}" if event.answer is not None else ""
    why = f" ({event.error})" if event.error and event.status != "answered" else ""
    return f"candidate {event.candidate} {event.status}{said}{why}"


def tally(event: VoteTally) -> str:
    if event.leader is None:
        return f"no answer yet; {event.running} running"
    valid = sum(event.votes.values())
    decided = ", decided" if event.decided else ""
    return f"leader {event.leader} {event.votes[event.leader]}/{valid} votes; {event.running} running{decided}"


class ProgressComments:
    """The solve's events as comment lines; a finished candidate and the tally it moved share one line."""

    def __init__(self) -> None:
        self.pending: str | None = None  # a finished candidate, waiting for its tally

    def lines(self, event: Event) -> list[str]:
        if isinstance(event, VoteTally):
            line = tally(event) if self.pending is None else f"{self.pending}; {tally(event)}"
            self.pending = None
            return [line]
        lines = self.flush()
        if isinstance(event, CandidateFinished):
            self.pending = finished(event)
        elif isinstance(event, Executed):
            lines.append(executed(event))
        elif isinstance(event, Started):
            lines.append(started(event))
        return lines  # a step's text is not progress worth a line: the executions and ends are

    def flush(self) -> list[str]:
        """The finished candidate still waiting for a tally (a cancelled one gets none)."""
        pending, self.pending = self.pending, None
        return [pending] if pending else []


def pieces(content: str) -> list[str]:
    """The message in content chunks, a line each; joined, exactly `content`."""
    return content.splitlines(keepends=True) or [content]


def data(payload: dict[str, Any] | str) -> ServerSentEvent:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return ServerSentEvent(data=text)


def chunk_events(
    events: AsyncIterator[Event], model: str, created: int, request_id: str, include_usage: bool
) -> AsyncIterator[ServerSentEvent]:
    """The SSE stream of one chat completion from the solve's events; closing it closes `events` (the solve)."""

    def chunk(delta: Delta | None, **fields: Any) -> ServerSentEvent:
        """A chunk in OpenAI's form: a delta's unset fields left out, `usage` null only where it was asked for."""
        finish_reason = fields.pop("finish_reason", None)
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish_reason)]
        message = ChatCompletionChunk(id=completion_id(request_id), created=created, model=model, choices=choices)
        payload = message.model_copy(update=fields).model_dump(mode="json")
        for choice in payload["choices"]:
            choice["delta"] = {name: value for name, value in choice["delta"].items() if value is not None}
        if payload["sctir"] is None:
            del payload["sctir"]
        if payload["usage"] is None and not include_usage:
            del payload["usage"]
        return data(payload)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async with aclosing(events):  # a client gone closes this stream, which cancels the solve
            yield chunk(Delta(role="assistant", content=""))
            progress = ProgressComments()
            async for event in events:
                if isinstance(event, Failed):
                    yield data({"error": failure(event).detail.model_dump()})
                    return
                if not isinstance(event, Result):
                    for line in progress.lines(event):
                        yield ServerSentEvent(comment=line)
                    continue
                for line in progress.flush():
                    yield ServerSentEvent(comment=line)
                response = event.response
                for piece in pieces(solution(response)):
                    yield chunk(Delta(content=piece))
                yield chunk(Delta(), finish_reason="stop", sctir=summary(response))
                if include_usage:
                    yield chunk(None, usage=usage(response))
                yield data("[DONE]")

    return stream()


def chunk_stream(
    events: AsyncIterator[Event], model: str, created: int, request_id: str, config: SolveConfig, include_usage: bool
) -> EventSourceResponse:
    """The response: keep-alive comments while nothing happens; a server shutting down lets the solve finish."""
    stream = chunk_events(events, model, created, request_id, include_usage)
    return EventSourceResponse(stream, ping=streaming.KEEPALIVE_S, shutdown_grace_period=config.deadline_s)
