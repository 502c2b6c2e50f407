"""A small OpenAI-compatible completions server whose text is scripted per prompt.

A test double for the LLM's text only: the HTTP, the request bodies and the
client disconnects it records are real.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MODEL = "AI-MO/NuminaMath-7B-TIR"
SLOW_S = 20.0  # how long a "slow" request waits for the client to go away


@dataclass
class Reply:
    """What the server answers to one prompt."""

    status: int = 200
    json: Any = None
    raw: str | None = None  # sent as-is instead of json (malformed JSON)
    slow: bool = False  # never answer; wait for the client to disconnect


def completion(text: str, finish_reason: str = "stop", usage: dict[str, int] | None = None, **choice: Any) -> Reply:
    """An OpenAI completions response; extra keyword args go into the choice (e.g. stop_reason)."""
    body: dict[str, Any] = {
        "id": "cmpl-test",
        "object": "text_completion",
        "model": MODEL,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, **choice}],
    }
    if usage is not None:
        body["usage"] = usage
    return Reply(json=body)


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeServer:
    """State shared between the tests (event loop of the test) and the server thread."""

    url: str = ""
    replies: dict[str, Reply] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    disconnected: set[str] = field(default_factory=set)  # prompts whose client went away

    def script(self, prompt: str, reply: Reply) -> str:
        self.replies[prompt] = reply
        return prompt

    def last(self, prompt: str) -> Received:
        return [r for r in self.received if r.body.get("prompt") == prompt][-1]

    async def wait_for(self, what: str, prompt: str, timeout_s: float = 5.0) -> bool:
        """Poll (bounded) until the prompt was received or its client disconnected."""
        for _ in range(int(timeout_s / 0.02)):
            seen = {r.body.get("prompt") for r in self.received} if what == "received" else self.disconnected
            if prompt in seen:
                return True
            await asyncio.sleep(0.02)
        return False


def make_app(state: FakeServer) -> Starlette:
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(request: Request) -> Response:
        body = await request.json()
        state.received.append(Received(body=body, headers=dict(request.headers)))
        prompt = body.get("prompt")
        reply = state.replies.get(prompt)
        if reply is None:
            return JSONResponse({"error": {"message": f"no reply scripted for {prompt!r}"}}, status_code=400)
        if reply.slow:
            # Like vLLM's listen_for_disconnect: the body is read, so receive() only
            # reports the client going away.
            try:
                with anyio.fail_after(SLOW_S):
                    while (await request.receive())["type"] != "http.disconnect":
                        pass
                state.disconnected.add(prompt)
            except TimeoutError:
                pass
            return JSONResponse({"error": {"message": "slow reply timed out"}}, status_code=504)
        if reply.raw is not None:
            return Response(reply.raw, status_code=reply.status, media_type="application/json")
        return JSONResponse(reply.json, status_code=reply.status)

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])])
