"""RemoteEngine against a real HTTP server: a small OpenAI-compatible app run by uvicorn.

Only the LLM's text is scripted (per prompt); everything else is real HTTP, so the
tests also check that cancelling a step closes its connection, which is what makes
vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.engines.base import Engine, EngineError, SamplingParams, StepRequest
from service.engines.remote import RemoteEngine

MODEL = "AI-MO/NuminaMath-7B-TIR"
API_KEY = "sk-test"
STOP = "```output\n"
CODE = "Let me compute.\n```python\nprint(1 + 1)\n```\n"
SLOW_S = 20.0  # how long a "slow" request waits for the client to go away


@dataclass
class Reply:
    """What the server answers to one prompt."""

    status: int = 200
    json: Any = None
    raw: str | None = None  # sent as-is instead of json (malformed JSON)
    slow: bool = False  # never answer; wait for the client to disconnect


def completion(
    text: str, finish_reason: str = "stop", usage: dict[str, int] | None = None, **choice: Any
) -> Reply:
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

    return Starlette(
        routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])]
    )


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    state = FakeServer()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    state.url = f"http://127.0.0.1:{port}/v1"
    config = uvicorn.Config(
        make_app(state), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(250):
        try:
            if httpx.get(f"{state.url}/models", timeout=1.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    else:
        pytest.fail("test server did not come up")
    yield state
    uv.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture
async def engine(server: FakeServer) -> AsyncIterator[RemoteEngine]:
    eng = RemoteEngine(base_url=server.url, model=MODEL, api_key=API_KEY, timeout_s=30.0)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A port that is bound but not listening, so connecting is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()


def step(
    prompt: str, request_id: str = "req-1", stop: tuple[str, ...] = (STOP,), **params: Any
) -> StepRequest:
    sampling = SamplingParams(
        temperature=params.pop("temperature", 0.8),
        max_new_tokens=params.pop("max_new_tokens", 64),
        stop=stop,
        seed=params.pop("seed", 7),
        top_p=params.pop("top_p", 0.95),
    )
    return StepRequest(request_id=request_id, prompt=prompt, params=sampling)


async def test_is_an_engine(engine: RemoteEngine) -> None:
    assert isinstance(engine, Engine)
    assert await engine.ready()


async def test_request_body_and_headers(server: FakeServer, engine: RemoteEngine) -> None:
    prompt = server.script("body", completion("x", stop_reason=None))
    request = step(prompt, request_id="cand-3-step-1", temperature=0.7, top_p=0.9, seed=42, max_new_tokens=128)
    await engine.complete(request)
    received = server.last(prompt)
    assert received.body == {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 128,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": [STOP],
        "seed": 42,
        "n": 1,
        "include_stop_str_in_output": True,
    }
    assert received.headers["authorization"] == f"Bearer {API_KEY}"
    assert received.headers["x-request-id"] == "cand-3-step-1"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(completion(CODE, stop_reason=STOP), id="server-strips-stop-reports-it"),
        pytest.param(completion(CODE + STOP, stop_reason=STOP), id="vllm-include-stop-str"),
        pytest.param(completion(CODE), id="openai-strips-no-stop-reason"),
    ],
)
async def test_stop_string_kept_once(server: FakeServer, engine: RemoteEngine, reply: Reply) -> None:
    prompt = server.script("stop-kept", reply)
    result = await engine.complete(step(prompt))
    assert result.finish_reason == "stop"
    assert result.text == CODE + STOP


@pytest.mark.parametrize(
    ("reply", "stop"),
    [
        pytest.param(completion("\\boxed{2}", stop_reason=None), (STOP,), id="vllm-eos"),
        pytest.param(completion("\\boxed{2}", stop_reason=32021), (STOP,), id="vllm-stop-token"),
        pytest.param(completion("\\boxed{2}"), (STOP, "</s>"), id="unknown-which-of-several"),
    ],
)
async def test_nothing_appended_without_a_known_stop_string(
    server: FakeServer, engine: RemoteEngine, reply: Reply, stop: tuple[str, ...]
) -> None:
    prompt = server.script("no-stop-string", reply)
    result = await engine.complete(step(prompt, stop=stop))
    assert (result.text, result.finish_reason) == ("\\boxed{2}", "stop")


async def test_length_and_usage_propagate(server: FakeServer, engine: RemoteEngine) -> None:
    usage = {"prompt_tokens": 17, "completion_tokens": 64, "total_tokens": 81}
    prompt = server.script("length", completion("a long way", "length", usage=usage, stop_reason=None))
    result = await engine.complete(step(prompt))
    assert (result.text, result.finish_reason) == ("a long way", "length")
    assert (result.prompt_tokens, result.completion_tokens) == (17, 64)


async def test_missing_usage_counts_zero_and_other_finish_reasons_are_length(
    server: FakeServer, engine: RemoteEngine
) -> None:
    prompt = server.script("filtered", completion("cut", "content_filter"))
    result = await engine.complete(step(prompt))
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("length", 0, 0)


async def test_server_abort_is_an_error(server: FakeServer, engine: RemoteEngine) -> None:
    prompt = server.script("server-abort", completion("", "abort", stop_reason=None))
    with pytest.raises(EngineError, match="aborted"):
        await engine.complete(step(prompt))


async def test_http_500_carries_the_server_message(server: FakeServer, engine: RemoteEngine) -> None:
    message = "CUDA out of memory. " + "x" * 2000
    prompt = server.script("500", Reply(status=500, json={"object": "error", "message": message}))
    with pytest.raises(EngineError) as info:
        await engine.complete(step(prompt))
    text = str(info.value)
    assert "500" in text and "CUDA out of memory." in text
    assert len(text) < 800  # truncated


async def test_openai_style_error_body(server: FakeServer, engine: RemoteEngine) -> None:
    message = "maximum context length is 4096 tokens"
    body = {"error": {"message": message, "type": "BadRequestError", "code": 400}}
    prompt = server.script("400", Reply(status=400, json=body))
    with pytest.raises(EngineError, match="HTTP 400: maximum context length is 4096 tokens"):
        await engine.complete(step(prompt))


@pytest.mark.parametrize("raw", ['{"choices": [', '{"choices": []}', "[1, 2]"])
async def test_malformed_json(server: FakeServer, engine: RemoteEngine, raw: str) -> None:
    prompt = server.script(f"malformed {raw}", Reply(raw=raw))
    with pytest.raises(EngineError):
        await engine.complete(step(prompt))


async def test_connection_refused(refused_url: str) -> None:
    eng = RemoteEngine(base_url=refused_url, model=MODEL)
    try:
        with pytest.raises(EngineError) as info:
            await eng.start()
        assert refused_url in str(info.value) and MODEL in str(info.value)
        with pytest.raises(EngineError, match="ConnectError"):
            await eng.complete(step("anything"))
        assert await eng.ready() is False
    finally:
        await eng.close()


async def test_complete_before_start_is_an_error(server: FakeServer) -> None:
    eng = RemoteEngine(base_url=server.url, model=MODEL)
    with pytest.raises(EngineError, match="not started"):
        await eng.complete(step("anything"))
    assert await eng.ready() is False


async def test_unknown_model(server: FakeServer) -> None:
    eng = RemoteEngine(base_url=server.url, model="no/such-model")
    try:
        with pytest.raises(EngineError) as info:
            await eng.start()
        assert "no/such-model" in str(info.value) and MODEL in str(info.value)
        assert await eng.ready() is False
    finally:
        await eng.close()


def test_format_prompt_keeps_braces() -> None:
    eng = RemoteEngine(base_url="http://unused/v1", model=MODEL)
    problem = "Find $x$ such that $f(\\{x\\}) = {x}^2$ and {problem}."
    assert eng.format_prompt(problem) == f"### Problem: {problem}\n### Solution: "
    template = "<|user|>{problem}<|assistant|>"
    custom = RemoteEngine(base_url="http://unused/v1", model=MODEL, prompt_template=template)
    assert custom.format_prompt("{x}") == "<|user|>{x}<|assistant|>"


async def test_cancelling_the_task_disconnects(server: FakeServer, engine: RemoteEngine) -> None:
    prompt = server.script("slow-cancel", Reply(slow=True))
    task = asyncio.create_task(engine.complete(step(prompt, request_id="cancel-me")))
    assert await server.wait_for("received", prompt)
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await server.wait_for("disconnected", prompt)
    assert "cancel-me" not in engine._in_flight


async def test_abort_returns_abort_and_disconnects(server: FakeServer, engine: RemoteEngine) -> None:
    prompt = server.script("slow-abort", Reply(slow=True))
    task = asyncio.create_task(engine.complete(step(prompt, request_id="abort-me")))
    assert await server.wait_for("received", prompt)
    await engine.abort("abort-me")
    result = await asyncio.wait_for(task, timeout=5)
    assert (result.text, result.finish_reason) == ("", "abort")
    assert (result.prompt_tokens, result.completion_tokens) == (0, 0)
    assert await server.wait_for("disconnected", prompt)
    # The id is free again for the candidate's next step.
    again = server.script("after-abort", completion("ok", stop_reason=None))
    assert (await engine.complete(step(again, request_id="abort-me"))).text == "ok"


async def test_duplicate_in_flight_id_is_rejected(server: FakeServer, engine: RemoteEngine) -> None:
    prompt = server.script("slow-dup", Reply(slow=True))
    task = asyncio.create_task(engine.complete(step(prompt, request_id="dup")))
    assert await server.wait_for("received", prompt)
    with pytest.raises(EngineError, match="already in flight"):
        await engine.complete(step(prompt, request_id="dup"))
    await engine.abort("dup")
    assert (await asyncio.wait_for(task, timeout=5)).finish_reason == "abort"


async def test_abort_unknown_id_is_a_noop(server: FakeServer, engine: RemoteEngine) -> None:
    await engine.abort("never-seen")
    prompt = server.script("after-noop", completion("fine", stop_reason=None))
    await engine.complete(step(prompt, request_id="done"))
    await engine.abort("done")  # finished
    assert await engine.ready()
