"""The HTTP API over real HTTP (uvicorn on loopback), with the real local executor.

Only the LLM's text is scripted (tests/doubles.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from sandbox.local import LocalExecutor
from service.api import create_app
from service.settings import Settings
from tests.doubles import ScriptedEngine, fails
from tests.servers import serve_in_thread

CODE = "Compute:\n```python\nprint(6*7)\n```\n```output\n"
ANSWER = "\nThe answer is $\\boxed{42}$."  # the model writes the newline after the output block


def quick(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    return [CODE, ANSWER][min(step, 1)], 0.0


def slow(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    return CODE, 30.0


class Switchable:
    """A script the tests can swap while the server runs."""

    def __init__(self) -> None:
        self.script = quick

    def __call__(self, candidate: int, step: int, prompt: str) -> tuple[str, float]:
        return self.script(candidate, step, prompt)


@pytest.fixture(scope="module")
def script() -> Switchable:
    return Switchable()


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
    script.script = quick
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


def test_every_candidate_failing_is_a_503(server: str, script: Switchable) -> None:
    script.script = fails("connection refused by the model server")
    response = solve(server, problem="p", num_samples=2)
    assert response.status_code == 503
    assert "connection refused by the model server" in response.json()["message"]
    script.script = quick
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
    script.script = quick
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
