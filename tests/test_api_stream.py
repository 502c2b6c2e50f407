"""Streamed /solve (server-sent events) over real HTTP, with the real local executor.

Only the LLM's text is scripted (tests/support/doubles.py); the events are what the solver and the
API really send, read off the wire.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from sandbox.executors import LocalExecutor
from service.api import streaming
from service.api.app import create_app
from service.settings import Settings
from service.tir import OUTPUT_MARKER, output_block
from tests.support.doubles import ScriptedEngine, Switchable, fails
from tests.support.servers import serve_in_thread
from tests.support.solving import boxed, code
from tests.support.sse import Stream, events_of, read_stream


def varied(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    """Candidate 1 writes no code at first (it restarts); candidate 2 answers 41, the others 42."""
    if candidate == 1 and step == 0:
        return "Hmm, let me think.", 0.0
    if OUTPUT_MARKER not in prompt:
        return code("print(6*7)"), 0.0
    return boxed("41" if candidate == 2 else "42"), 0.01 * candidate


def slowly(delay_s: float):
    """`varied`, each step taking `delay_s`."""
    return lambda candidate, step, prompt: (varied(candidate, step, prompt)[0], delay_s)


@pytest.fixture(scope="module")
def script() -> Switchable:
    return Switchable(varied)


@pytest.fixture(scope="module")
def engine(script: Switchable) -> ScriptedEngine:
    return ScriptedEngine(script)


@pytest.fixture(scope="module")
def server(engine: ScriptedEngine) -> Iterator[str]:
    settings = Settings(num_samples=3, max_steps=3, max_in_flight=1, max_queue=1, early_stop=False)
    app = create_app(settings, engine=engine, executor=LocalExecutor(concurrency=2))
    with serve_in_thread(app, "/healthz") as url:
        yield url


@pytest.fixture(autouse=True)
def reset(script: Switchable) -> Iterator[None]:
    yield
    script.reset()


def stream(url: str, **body) -> Stream:
    with httpx.stream("POST", f"{url}/solve", json={"stream": True, **body}, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_stream(response)


def trace_of(events: list[tuple[str, dict]]) -> str:
    """A candidate's text rebuilt from its events: its step texts (a new attempt starts over) and output blocks."""
    text, attempt = "", 0
    for event, data in events:
        if event == "step":
            if data["attempt"] != attempt:
                text, attempt = "", data["attempt"]
            text += data["text"]
        elif event == "execution":
            text += output_block(data["feedback"])
    return text


def test_events_tell_each_candidate_from_start_to_end_and_the_result_is_the_json_one(server: str) -> None:
    streamed = stream(server, problem="What is 6 times 7?", seed=7, return_traces=True)
    names = [event for event, _ in streamed.events]
    assert names[0] == "start" and names[-1] == "result" and names.count("result") == 1
    start = streamed.named("start")[0]
    assert (start["num_samples"], start["max_steps"], start["seed"]) == (3, 3, 7)
    request_id = start["request_id"]
    assert all(data["request_id"] == request_id for _, data in streamed.events)

    result = streamed.named("result")[0]
    for index, candidate in enumerate(result["candidates"]):
        own = streamed.of_candidate(index)
        assert [event for event, _ in own].count("candidate") == 1 and own[-1][0] == "candidate"
        assert trace_of(own) == candidate["text"]
        finished = own[-1][1]
        assert (finished["status"], finished["answer"], finished["steps"]) == (
            candidate["status"],
            candidate["answer"],
            candidate["steps"],
        )
        executions = [data for event, data in own if event == "execution"]
        assert [(e["code"].strip(), e["status"], e["feedback"]) for e in executions] == [("print(6*7)", "ok", "42")]
    restarted = [data["attempt"] for event, data in streamed.of_candidate(1) if event == "step"]
    assert restarted[0] == 0 and restarted[-1] == 1  # candidate 1 wrote no code and started over

    votes = streamed.named("vote")
    assert [v["finished"] for v in votes] == [1, 2, 3] and [v["running"] for v in votes] == [2, 1, 0]
    assert votes[-1]["votes"] == result["votes"] == {"42": 2, "41": 1} and votes[-1]["leader"] == "42"
    assert votes[-1]["decided"] and round(votes[-1]["agreement"], 3) == round(2 / 3, 3)

    plain = httpx.post(
        f"{server}/solve", json={"problem": "What is 6 times 7?", "seed": 7, "return_traces": True}, timeout=60
    ).json()
    for body in (plain, result):
        body.pop("request_id"), body.pop("timings")
    assert result == plain


def test_an_accept_header_asks_for_the_stream_too(server: str) -> None:
    headers = {"Accept": "text/event-stream"}
    with httpx.stream("POST", f"{server}/solve", json={"problem": "p"}, headers=headers, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert [event for event, _ in read_stream(response).events][-1] == "result"


def test_every_candidate_failing_ends_the_stream_with_the_json_error(server: str, script: Switchable) -> None:
    script.script = fails("the engine fell over")
    streamed = stream(server, problem="p")
    plain = httpx.post(f"{server}/solve", json={"problem": "p"}, timeout=60)
    assert [event for event, _ in streamed.events][-1] == "error"
    error = streamed.named("error")[0]
    assert error["status"] == plain.status_code == 503
    assert error["message"] == plain.json()["message"] and "the engine fell over" in error["message"]
    assert [c["status"] for c in streamed.named("candidate")] == ["failed"] * 3


def test_a_full_queue_is_a_429_before_any_event(server: str, script: Switchable) -> None:
    script.script = slowly(1.0)
    post = {"json": {"problem": "p"}, "timeout": 60}
    threads = [threading.Thread(target=httpx.post, args=(f"{server}/solve",), kwargs=post) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)  # the first takes the slot, the second the queue place
    refused = httpx.post(f"{server}/solve", json={"problem": "p", "stream": True}, timeout=60)
    for thread in threads:
        thread.join()
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"] == "application/json" and "busy" in refused.json()["message"]


def test_a_client_that_leaves_mid_stream_cancels_its_candidates(
    server: str, script: Switchable, engine: ScriptedEngine
) -> None:
    script.script = lambda c, s, p: (code("print(1)") if s == 0 else boxed("1"), 0.0 if s == 0 else 30.0)
    aborted_before = len(engine.aborted)
    seen = Stream()
    with httpx.stream("POST", f"{server}/solve", json={"problem": "p", "stream": True}, timeout=60) as response:
        for event, _ in events_of(response.iter_lines(), seen):
            if event == "execution":  # the candidates are in their second, 30 s step now
                break
    for _ in range(100):  # bounded wait for the server to notice
        if len(engine.aborted) - aborted_before == 3 and not engine.running:
            break
        time.sleep(0.05)
    assert len(engine.aborted) - aborted_before == 3 and not engine.running
    script.reset()
    assert stream(server, problem="p").named("result")  # the slot was freed


def test_keep_alive_comments_while_nothing_happens(
    server: str, script: Switchable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming, "KEEPALIVE_S", 0.2)
    script.script = slowly(1.5)
    streamed = stream(server, problem="p", num_samples=1)
    assert len(streamed.comments) >= 3 and streamed.named("result")[0]["answer"] == "42"


def test_api_keys_guard_the_stream_as_the_json_path() -> None:
    settings = Settings(api_keys=["key-one"], num_samples=1)
    app = create_app(settings, engine=ScriptedEngine(varied), executor=LocalExecutor())
    with serve_in_thread(app, "/healthz") as url:
        missing = httpx.post(f"{url}/solve", json={"problem": "p", "stream": True})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "authorization" in missing.json()["message"]
        headers = {"Authorization": "Bearer key-one"}
        body = {"problem": "p", "stream": True}
        with httpx.stream("POST", f"{url}/solve", json=body, headers=headers, timeout=60) as response:
            assert read_stream(response).named("result")[0]["answer"] == "42"


def test_invalid_input_is_a_422_naming_the_field_before_any_event(server: str) -> None:
    refused = httpx.post(f"{server}/solve", json={"problem": "p", "stream": "yes"})
    assert refused.status_code == 422 and "stream" in refused.json()["message"]
