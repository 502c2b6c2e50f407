"""RemoteEngine against a real HTTP server: a small OpenAI-compatible app run by uvicorn.

Only the LLM's text is scripted (per prompt); everything else is real HTTP, so the
tests also check that cancelling a step closes its connection, which is what makes
vLLM abort the request. The first server answers in one JSON body (a server that does
not stream); the second streams server-sent events as vLLM does, with pauses where a
test needs them (the stall detector), and two raw sockets play a stopped server and
a connection reset.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from service.engines import progress
from service.engines.base import ContextExhausted, Engine, EngineError, EngineStalled, SamplingParams, StepRequest
from service.engines.progress import Progress
from service.engines.remote import RemoteEngine, _failure
from tests.support.openai_stub import MODEL, FakeServer, Reply, completion, make_app
from tests.support.servers import serve_in_thread

API_KEY = "sk-test"
STOP = "```output\n"
CODE = "Let me compute.\n```python\nprint(1 + 1)\n```\n"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    state = FakeServer()
    with serve_in_thread(make_app(state), "/v1/models", lifespan="off") as base:
        state.url = f"{base}/v1"
        yield state


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


def step(prompt: str, request_id: str = "req-1", stop: tuple[str, ...] = (STOP,), **params: Any) -> StepRequest:
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
        "stream": True,  # the stall detector sees every token (this server answers in one body all the same)
        "stream_options": {"include_usage": True},
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


# -- streamed steps: the stall detector, mid-stream errors, transport failures ---------------------


@dataclass
class Stream:
    """What the streaming server sends for one prompt: (seconds to wait, event data) pairs, then
    nothing at all until the client leaves when `hang`."""

    events: list[tuple[float, str]]
    hang: bool = False


def chunk(text: str, finish_reason: str | None = None, stop_reason: str | int | None = None) -> str:
    choice = {"index": 0, "text": text, "finish_reason": finish_reason, "stop_reason": stop_reason}
    return json.dumps({"id": "cmpl-s", "object": "text_completion", "choices": [choice]})


USAGE = json.dumps({"id": "cmpl-s", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})


@dataclass
class StreamingServer:
    """An OpenAI-compatible server that streams (text/event-stream) what `streams` scripts per prompt."""

    url: str = ""
    streams: dict[str, Stream] = field(default_factory=dict)
    disconnected: set[str] = field(default_factory=set)

    def app(self) -> Starlette:
        async def models(request: Request) -> Response:
            return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

        async def completions(request: Request) -> Response:
            prompt = (await request.json())["prompt"]
            stream = self.streams[prompt]

            async def events() -> AsyncIterator[str]:
                try:
                    for delay, data in stream.events:
                        await asyncio.sleep(delay)
                        yield f"data: {data}\n\n"
                    if stream.hang:
                        await asyncio.sleep(3600)
                    yield "data: [DONE]\n\n"
                except asyncio.CancelledError:  # Starlette cancels the stream when the client leaves
                    self.disconnected.add(prompt)
                    raise

            return StreamingResponse(events(), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])])


@pytest.fixture(scope="module")
def streaming() -> Iterator[StreamingServer]:
    state = StreamingServer()
    with serve_in_thread(state.app(), "/v1/models", lifespan="off") as base:
        state.url = f"{base}/v1"
        yield state


@pytest.fixture
async def streamed(streaming: StreamingServer) -> AsyncIterator[RemoteEngine]:
    """A remote engine on the streaming server that calls a step stalled after 1 s without a chunk."""
    eng = RemoteEngine(base_url=streaming.url, model=MODEL, timeout_s=30.0, stall_s=1.0)
    await eng.start()
    yield eng
    await eng.close()


async def test_a_streamed_step_joins_its_chunks(streaming: StreamingServer, streamed: RemoteEngine) -> None:
    streaming.streams["joined"] = Stream(
        [(0, chunk("Let me ")), (0, chunk(CODE[7:])), (0, chunk("", "stop", STOP)), (0, USAGE)]
    )
    deltas: list[str] = []
    result = await streamed.complete(replace(step("joined"), on_text=deltas.append))
    assert (result.text, result.finish_reason) == (CODE + STOP, "stop")  # the matched stop string kept
    assert deltas == ["Let me ", CODE[7:]]  # handed on chunk by chunk (the solver adds the stop string)
    assert (result.prompt_tokens, result.completion_tokens) == (5, 3)


async def test_a_step_whose_stream_goes_silent_fails_as_stalled(
    streaming: StreamingServer, streamed: RemoteEngine
) -> None:
    """A frozen server sends nothing and fails nothing: the step fails 1 s after its last chunk."""
    streaming.streams["silent"] = Stream([(0, chunk("Let me")), (0.2, chunk(" think"))], hang=True)
    started = time.monotonic()
    with pytest.raises(EngineStalled, match="^engine stalled: no token for 1 s$"):
        await asyncio.wait_for(streamed.complete(step("silent", request_id="silent-1")), 10)
    assert 1.0 <= time.monotonic() - started < 3.0
    for _ in range(100):  # the server saw the connection close: vLLM aborts the request then
        if "silent" in streaming.disconnected:
            break
        await asyncio.sleep(0.02)
    assert "silent" in streaming.disconnected and "silent-1" not in streamed._in_flight


async def test_a_queued_step_is_not_stalled_while_other_steps_get_tokens(
    streaming: StreamingServer, streamed: RemoteEngine
) -> None:
    """Waiting 2.5 s for its first chunk (a full batch ahead of it) is no stall while the engine streams."""
    streaming.streams["busy"] = Stream([(0.25, chunk("x")) for _ in range(12)] + [(0, chunk("", "length"))])
    streaming.streams["queued"] = Stream([(2.5, chunk("late")), (0, chunk("", "length"))])
    busy, queued = await asyncio.gather(
        streamed.complete(step("busy", request_id="busy")), streamed.complete(step("queued", request_id="queued"))
    )
    assert (busy.text, queued.text) == ("x" * 12, "late")


@pytest.mark.parametrize(
    ("message", "kind"),
    [("the engine died", EngineError), ("This model's maximum context length is 4096 tokens", ContextExhausted)],
)
async def test_an_error_event_mid_stream_is_an_engine_error(
    streaming: StreamingServer, streamed: RemoteEngine, message: str, kind: type[EngineError]
) -> None:
    error = json.dumps({"error": {"object": "error", "message": message, "code": 400}})
    streaming.streams[message] = Stream([(0, chunk("a")), (0, error)])
    with pytest.raises(kind) as failure:
        await streamed.complete(step(message))
    assert type(failure.value) is kind and str(failure.value).endswith(f"failed mid-stream: {message}")


async def test_a_stalled_step_whose_abort_hangs_fails_all_the_same(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The abort of a stalled step goes to a frozen engine: if it does not get through, the step fails anyway."""
    monkeypatch.setattr(progress, "ABORT_WAIT_S", 0.2)
    aborted = asyncio.Event()

    async def step() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(1.0)  # the abort, stuck for a while
            aborted.set()
            raise

    started = time.monotonic()
    with pytest.raises(EngineStalled, match="no token for 0.5 s"):
        await Progress(0.5).guard(step)
    assert time.monotonic() - started < 1.0
    assert "goes on in the background" in caplog.text
    await asyncio.wait_for(aborted.wait(), 5)  # it did, later


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers: a stopped server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()


async def test_ready_says_no_within_a_second_or_so_when_the_server_does_not_answer(silent_url: str) -> None:
    eng = RemoteEngine(base_url=silent_url, model=MODEL)
    eng._client = httpx.AsyncClient()  # started: start() itself would wait for the answer
    try:
        started = time.monotonic()
        assert await eng.ready() is False
        assert time.monotonic() - started < 2.0  # READY_TIMEOUT_S, not httpx's 5 s default
    finally:
        await eng.close()


@pytest.fixture
def resetting_url() -> Iterator[str]:
    """A server that reads the request, then resets the connection (SO_LINGER 0): httpx raises ReadError()."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    listener.close()


async def test_a_reset_connection_is_an_engine_error_that_says_what_happened(resetting_url: str) -> None:
    eng = RemoteEngine(base_url=resetting_url, model=MODEL)
    eng._client = httpx.AsyncClient()
    try:
        with pytest.raises(EngineError) as failure:
            await eng.complete(step("anything"))
    finally:
        await eng.close()
    message = str(failure.value)
    assert message.startswith(f"POST {resetting_url}/completions failed: ReadError: ")
    assert message.removeprefix(f"POST {resetting_url}/completions failed: ReadError: ").strip()  # it was empty


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (httpx.ReadError(""), "the connection broke while reading the response"),
        (httpx.RemoteProtocolError(""), "the server closed the connection mid-response"),
        (httpx.ConnectError(""), "could not connect"),
    ],
)
def test_a_transport_error_without_any_message_still_says_what_happened(error: httpx.HTTPError, detail: str) -> None:
    """When nothing down the exception's chain has a message (a peer that closed at the wrong moment)."""
    message = _failure("POST", "http://127.0.0.1:8000/v1/completions", error)
    assert message == f"POST http://127.0.0.1:8000/v1/completions failed: {type(error).__name__}: {detail}"
