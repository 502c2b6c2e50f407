"""Reading server-sent events off a real HTTP response: the events, and the comments between them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx


@dataclass
class Stream:
    """What a streamed response carried: its events (name, JSON data) in order, and its comment lines."""

    events: list[tuple[str, dict]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def named(self, name: str) -> list[dict]:
        return [data for event, data in self.events if event == name]

    def of_candidate(self, index: int) -> list[tuple[str, dict]]:
        return [(event, data) for event, data in self.events if data.get("candidate") == index]


def events_of(lines: Iterator[str], stream: Stream) -> Iterator[tuple[str, dict]]:
    """Parse `lines` of text/event-stream, yielding each event as it completes (comments go to `stream`)."""
    name, data = "message", []
    for line in lines:
        if line.startswith(":"):
            stream.comments.append(line[1:].strip())
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))
        elif not line and data:
            event = (name, json.loads("\n".join(data)))
            stream.events.append(event)
            yield event
            name, data = "message", []


def read_stream(response: httpx.Response) -> Stream:
    """Every event and comment of a streamed response, read to its end."""
    stream = Stream()
    for _ in events_of(response.iter_lines(), stream):
        pass
    return stream
