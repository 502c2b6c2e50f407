"""The HTTP API over real HTTP (uvicorn on loopback), with the real local executor.

Only the LLM's text is scripted (tests/support/doubles.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandbox.executors import LocalExecutor
from service.api.app import create_app
from service.api.middleware import MAX_BODY_BYTES
from service.settings import Settings
from tests.support.doubles import ScriptedEngine, Switchable, fails
from tests.support.servers import serve_in_thread

CODE = "Compute:\n```python\nprint(6*7)\n```\n```output\n"
ANSWER = "\nThe answer is $\\boxed{42}$."  # the model writes the newline after the output block


def quick(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    return [CODE, ANSWER][min(step, 1)], 0.0


def slow(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    return CODE, 30.0


@pytest.fixture(scope="module")
def script() -> Switchable:
    return Switchable(quick)


@pytest.fixture(scope="module")
def engine(script: Switchable) -> ScriptedEngine:
    return ScriptedEngine(script)


@pytest.fixture(scope="module")
def server(engine: ScriptedEngine) -> Iterator[str]:
    settings = Settings(
        num_samples=2, max_steps=3, max_in_flight=1, max_queue=1, execution_concurrency=2, early_stop=False
    )
    app = create_app(settings, engine=engine, executor=LocalExecutor(concurrency=2))
    with serve_in_thread(app, "/healthz") as url:
        yield url


@pytest.fixture(autouse=True)
def reset(script: Switchable, engine: ScriptedEngine) -> Iterator[None]:
    yield
    script.reset()
    engine.is_ready = True


def solve(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/solve", json=body, timeout=60)


def test_health_and_readiness(server: str, engine: ScriptedEngine) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "engine": True, "executor": True}
    engine.is_ready = False
    not_ready = httpx.get(f"{server}/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["engine"] is False


def test_solve_returns_the_vote_and_its_accounting(server: str) -> None:
    response = solve(server, problem="What is 6 times 7?", num_samples=3, seed=11)
    assert response.status_code == 200
    body = response.json()
    assert body["answer"] == "42" and body["votes"] == {"42": 3} and body["agreement"] == 1.0
    assert body["seed"] == 11 and body["answer_mode"] == "expression"
    assert not body["stopped_early"] and not body["deadline_hit"]  # 3 of 3 agree only at the end
    assert [c["status"] for c in body["candidates"]] == ["answered"] * 3
    assert all(c["steps"] == 2 and c["executions"] == 1 and c["text"] is None for c in body["candidates"])
    assert body["usage"]["completion_tokens"] == sum(c["completion_tokens"] for c in body["candidates"]) > 0
    timings = body["timings"]
    assert timings["total_s"] >= timings["queue_s"] >= 0 and timings["execution_s"] > 0
    assert response.headers["x-request-id"] == body["request_id"]


def test_traces_and_a_client_request_id(server: str) -> None:
    response = httpx.post(
        f"{server}/solve",
        json={"problem": "6*7?", "num_samples": 1, "return_traces": True},
        headers={"X-Request-ID": "my-trace-1"},
        timeout=60,
    )
    body = response.json()
    assert body["request_id"] == "my-trace-1" == response.headers["x-request-id"]
    assert body["candidates"][0]["text"] == CODE + "42\n```" + ANSWER


def test_openapi_docs(server: str) -> None:
    assert httpx.get(f"{server}/docs").status_code == 200
    schema = httpx.get(f"{server}/openapi.json").json()
    assert "/solve" in schema["paths"] and "SolveRequest" in schema["components"]["schemas"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "problem"),
        ({"problem": ""}, "problem"),
        ({"problem": " \n\t "}, "problem"),
        ({"problem": "x" * (32 * 1024 + 1)}, "problem"),
        ({"problem": "é" * (16 * 1024 + 1)}, "problem"),  # 32 KiB + 2 bytes of UTF-8
        ({"problem": 5}, "problem"),
        ({"problem": "p", "num_samples": 0}, "num_samples"),
        ({"problem": "p", "num_samples": 257}, "num_samples"),
        ({"problem": "p", "num_samples": "5"}, "num_samples"),
        ({"problem": "p", "num_samples": 2.5}, "num_samples"),
        ({"problem": "p", "num_samples": True}, "num_samples"),
        ({"problem": "p", "max_steps": 0}, "max_steps"),
        ({"problem": "p", "max_steps": 17}, "max_steps"),
        ({"problem": "p", "temperature": -0.1}, "temperature"),
        ({"problem": "p", "temperature": 2.01}, "temperature"),
        ({"problem": "p", "max_new_tokens": 0}, "max_new_tokens"),
        ({"problem": "p", "answer_mode": "roman"}, "answer_mode"),
        ({"problem": "p", "execution_mode": "all"}, "execution_mode"),
        ({"problem": "p", "deadline_s": 0}, "deadline_s"),
        ({"problem": "p", "deadline_s": 1e9}, "deadline_s"),
        ({"problem": "p", "seed": -1}, "seed"),
        ({"problem": "p", "return_traces": "yes"}, "return_traces"),
        ({"problem": "p", "temprature": 0.5}, "temprature"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(server: str, body: dict, field: str) -> None:
    response = solve(server, **body)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(f"{field}:") or f"{field}:" in response.json()["message"]
    assert response.json()["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        (b"{not json", 422, "JSON"),
        (b"[1, 2]", 422, "body"),
        (b'"just a string"', 422, "body"),
        (b"", 422, "body"),
        (json.dumps({"problem": "x" * 70_000}).encode(), 413, "body"),
    ],
)
def test_malformed_bodies(server: str, content: bytes, status: int, needle: str) -> None:
    response = httpx.post(f"{server}/solve", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    assert needle in response.json()["message"]


def test_a_chunked_body_over_the_limit_is_a_413_quoting_none_of_it(server: str) -> None:
    """No Content-Length to check up front: the bytes are counted as they arrive."""
    problem = json.dumps({"problem": "x" * 1_000_000}).encode()
    chunks = (problem[i : i + 16384] for i in range(0, len(problem), 16384))
    response = httpx.post(f"{server}/solve", content=chunks, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413, response.text[:300]
    assert response.json()["message"] == f"body: larger than {MAX_BODY_BYTES} bytes"
    assert len(response.content) < 500 and response.json()["request_id"] == response.headers["x-request-id"]


async def test_the_body_limit_stops_reading_an_endless_body() -> None:
    """At the ASGI level: the app pulls no more chunks than the limit takes, then answers 413."""
    app = create_app(Settings(), engine=ScriptedEngine(quick), executor=LocalExecutor())
    chunk, pulled, sent = b"x" * 16384, 0, []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < 10_000}  # 160 MB at most

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/solve",
        "raw_path": b"/solve",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert pulled == MAX_BODY_BYTES // len(chunk) + 1  # the first chunk past the limit, and no more


@pytest.mark.parametrize(
    "body",
    [
        {"problem": "x" * 40_000},  # too long: pydantic quotes the input
        {"problem": "p", "k" * 40_000: 1},  # an unknown key: quoted in the message and the location
        {"problem": ["y" * 20_000, "z" * 20_000]},  # not a string: the whole list quoted
    ],
)
def test_errors_quote_at_most_a_few_hundred_characters_of_the_input(server: str, body: dict) -> None:
    response = solve(server, **body)
    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < 2000
    error = response.json()
    assert "cut: 400" in json.dumps(error)  # what was cut says so, and how long it was
    assert error["message"].split(":")[0] in ("problem", "k" * 200 + "... (cut")


def test_many_errors_are_listed_up_to_twenty(server: str) -> None:
    body = {"problem": "p", **{f"extra{i}": i for i in range(500)}}
    response = solve(server, **body)
    assert response.status_code == 422 and len(response.json()["detail"]) == 20
    assert response.json()["message"].endswith("; and 480 more errors")


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b'{\n  "problem": "p"\n  "seed": 1\n}', "line 3, column 3: Expecting ',' delimiter"),
        (b"{not json", "line 1, column 2: Expecting property name enclosed in double quotes"),
        ('{"problem": "éé" 1}'.encode(), "line 1, column 18: Expecting ',' delimiter"),  # characters, not bytes
    ],
)
def test_a_json_syntax_error_says_what_and_where(server: str, content: bytes, where: str) -> None:
    response = httpx.post(f"{server}/solve", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 422
    assert response.json()["message"] == f"body: invalid JSON at {where}"
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_a_body_not_declared_json_is_a_415_naming_the_header(server: str) -> None:
    content = json.dumps({"problem": "What is 6 times 7?", "num_samples": 1}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):  # None: curl -d without -H
        headers = {"content-type": content_type} if content_type else {}
        response = httpx.post(f"{server}/solve", content=content, headers=headers, timeout=30)
        assert response.status_code == 415, response.text
        assert response.json()["message"].startswith("content-type:")
        assert "Content-Type: application/json" in response.json()["message"]
    for content_type in ("application/json; charset=utf-8", "application/problem+json"):  # JSON all the same
        response = httpx.post(f"{server}/solve", content=content, headers={"content-type": content_type}, timeout=60)
        assert response.status_code == 200, response.text


def metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_candidate_failing_is_counted_in_the_metrics(server: str, script: Switchable) -> None:
    before = metric_samples(server)
    script.script = fails("connection refused by the model server")
    assert solve(server, problem="p", num_samples=3).status_code == 503
    after = metric_samples(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("sctir_candidates_total", status="failed") == 3
    assert delta("sctir_candidate_steps_count") == 3
    assert delta("sctir_solve_duration_seconds_count", outcome="error") == 1
    assert delta("sctir_solve_duration_seconds_count", outcome="no_answer") == 0


def test_every_candidate_failing_is_a_503(server: str, script: Switchable) -> None:
    script.script = fails("connection refused by the model server")
    response = solve(server, problem="p", num_samples=2)
    assert response.status_code == 503
    assert "connection refused by the model server" in response.json()["message"]
    script.reset()
    assert solve(server, problem="p", num_samples=1).status_code == 200  # still serving


def test_admission_queue_overflow_is_a_429_with_retry_after(server: str, script: Switchable) -> None:
    """One slot and one queue place: the third concurrent problem is refused."""
    script.script = lambda c, s, p: ([CODE, ANSWER][min(s, 1)], 1.0)
    results: list[httpx.Response] = []

    def post() -> None:
        results.append(solve(server, problem="p", num_samples=1))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)  # the first takes the slot, the second the queue place
    refused = solve(server, problem="p", num_samples=1)
    for thread in threads:
        thread.join()
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "busy" in refused.json()["message"]
    assert sorted(r.status_code for r in results) == [200, 200]


def test_client_disconnect_cancels_the_candidates(server: str, script: Switchable, engine: ScriptedEngine) -> None:
    script.script = slow
    aborted_before = len(engine.aborted)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/solve", json={"problem": "p", "num_samples": 2}, timeout=1.0)
    for _ in range(100):  # bounded wait for the server to notice
        if len(engine.aborted) - aborted_before == 2 and not engine.running:
            break
        time.sleep(0.05)
    assert len(engine.aborted) - aborted_before == 2 and not engine.running
    script.reset()
    assert solve(server, problem="p", num_samples=1).status_code == 200  # the slot was freed


def test_api_keys() -> None:
    settings = Settings(api_keys=["key-one", "key-two"], num_samples=1)
    app = create_app(settings, engine=ScriptedEngine(quick), executor=LocalExecutor())
    with serve_in_thread(app, "/healthz") as url:
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes stay open
        missing = solve(url, problem="p")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "authorization" in missing.json()["message"]
        wrong = httpx.post(f"{url}/solve", json={"problem": "p"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        for key in ("key-one", "key-two"):
            ok = httpx.post(
                f"{url}/solve", json={"problem": "p"}, headers={"Authorization": f"Bearer {key}"}, timeout=60
            )
            assert ok.status_code == 200 and ok.json()["answer"] == "42"


def test_deadline_over_http(server: str, script: Switchable) -> None:
    def script_(candidate: int, step: int, prompt: str) -> tuple[str, float]:
        return [CODE, ANSWER][min(step, 1)], 30.0 if candidate == 1 and step == 1 else 0.0

    script.script = script_
    body = solve(server, problem="p", num_samples=2, deadline_s=3).json()
    assert body["deadline_hit"] and body["answer"] == "42" and body["votes"] == {"42": 1}
    assert [c["status"] for c in body["candidates"]] == ["answered", "cancelled"]


async def test_startup_failure_surfaces_in_readyz() -> None:
    class BrokenEngine(ScriptedEngine):
        async def start(self) -> None:
            raise RuntimeError("model weights not found at /models/x")

        async def ready(self) -> bool:
            return False

    app = create_app(Settings(), engine=BrokenEngine(quick), executor=LocalExecutor())
    with serve_in_thread(app, "/healthz") as url:
        response = await asyncio.to_thread(httpx.get, f"{url}/readyz")
    assert response.status_code == 503
    assert response.json()["errors"] == {"engine": "model weights not found at /models/x"}


def test_an_engine_outage_503_says_when_to_retry(server: str, script: Switchable) -> None:
    """Every candidate failed on the engine (down, stalled): the client may come back in a few seconds."""
    script.script = fails("engine stalled: no token for 20 s")
    response = solve(server, problem="p", num_samples=2)
    assert response.status_code == 503
    assert (
        response.json()["message"] == "every candidate failed; first error: engine: engine stalled: no token for 20 s"
    )
    assert 1 <= int(response.headers["retry-after"]) <= 10


def test_a_not_ready_engine_503_says_when_to_retry(server: str, engine: ScriptedEngine) -> None:
    engine.is_ready = False
    response = httpx.get(f"{server}/readyz")
    assert response.status_code == 503 and response.json()["engine"] is False
    assert 1 <= int(response.headers["retry-after"]) <= 10


async def test_readyz_answers_in_seconds_when_the_engine_check_hangs() -> None:
    """An engine that does not answer its liveness check (a frozen process) is not ready, and /readyz says so
    in about two seconds, not at the engine's own timeout."""

    class FrozenEngine(ScriptedEngine):
        async def ready(self) -> bool:
            await asyncio.sleep(600)
            return True

    app = create_app(Settings(), engine=FrozenEngine(quick), executor=LocalExecutor())
    with serve_in_thread(app, "/healthz") as url:
        started = time.monotonic()
        response = await asyncio.to_thread(httpx.get, f"{url}/readyz", timeout=30)
        elapsed = time.monotonic() - started
    assert response.status_code == 503 and response.json()["engine"] is False
    assert elapsed < 4.0
