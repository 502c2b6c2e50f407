"""`sctir serve` and `sctir solve` as real processes, against an OpenAI-compatible server.

The completions server scripts the LLM's text per prompt (tests/openai_stub.py);
the service, its remote engine, the local executor and HTTP are real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.openai_stub import MODEL, FakeServer, completion, make_app
from tests.servers import free_port, serve_in_thread, wait_until_up

PROBLEM = "What is 6 times 7?"
PROMPT = f"### Problem: {PROBLEM}\n### Solution: "
CODE = "We compute.\n```python\n6 * 7\n```\n"
STOP = "```output\n"
ANSWER = "Hence the answer is $\\boxed{42}$."
SCTIR = [sys.executable, "-m", "service.cli"]


@pytest.fixture(scope="module")
def model_server() -> Iterator[FakeServer]:
    state = FakeServer()
    state.script(PROMPT, completion(CODE, stop_reason=STOP, usage={"prompt_tokens": 9, "completion_tokens": 12}))
    state.script(PROMPT + CODE + STOP + "42\n```", completion("\n" + ANSWER, stop_reason=None))
    with serve_in_thread(make_app(state), "/v1/models", lifespan="off") as base:
        state.url = f"{base}/v1"
        yield state


def engine_env(model_server: FakeServer, **extra: str) -> dict[str, str]:
    return os.environ | {"SCTIR_REMOTE_URL": model_server.url, "SCTIR_MODEL": MODEL, "SCTIR_EXECUTOR": "local", **extra}


@pytest.fixture(scope="module")
def service(model_server: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*SCTIR, "serve", "--port", str(port), "--num-samples", "3", "--no-early-stop"],
            env=engine_env(model_server),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/healthz", timeout_s=60)
        yield url, log_path
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete." in log_path.read_text()


def test_serve_is_ready_with_the_remote_engine(service) -> None:
    url, _ = service
    assert httpx.get(f"{url}/readyz").json() == {"ready": True, "engine": True, "executor": True}


def test_solve_against_the_server_prints_answer_votes_and_timings(service) -> None:
    url, _ = service
    run = subprocess.run([*SCTIR, "solve", PROBLEM, "--url", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "answer: 42" in run.stdout and "agreement 100%" in run.stdout
    assert "3 answered" in run.stdout and "s generation" in run.stdout


def test_serve_logs_json_lines_carrying_the_request_id(service) -> None:
    url, log_path = service
    response = httpx.post(f"{url}/solve", json={"problem": PROBLEM}, headers={"X-Request-ID": "trace-77"}, timeout=60)
    assert response.status_code == 200 and response.json()["votes"] == {"42": 3}
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    solved = [r for r in records if r.get("message") == "solved" and r.get("request_id") == "trace-77"]
    assert solved and solved[0]["answer"] == "42" and solved[0]["level"] == "INFO"
    assert any("NOT isolated" in r["message"] for r in records)  # the local executor says so at startup


def test_solve_in_process_prints_json(model_server: FakeServer) -> None:
    run = subprocess.run(
        [*SCTIR, "solve", PROBLEM, "--num-samples", "2", "--seed", "5", "--json"],
        env=engine_env(model_server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    assert body["answer"] == "42" and body["seed"] == 5 and len(body["candidates"]) == 2


def test_solve_reports_bad_arguments_and_unreachable_servers(model_server: FakeServer) -> None:
    bad = subprocess.run([*SCTIR, "solve", PROBLEM, "--num-samples", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "num_samples" in bad.stderr
    down = subprocess.run(
        [*SCTIR, "solve", PROBLEM, "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode != 0 and "cannot reach" in down.stderr


def test_serve_help_lists_every_setting() -> None:
    run = subprocess.run([*SCTIR, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    for flag in ("--num-samples", "--max-steps", "--remote-url", "--api-keys", "--max-in-flight", "--answer-mode"):
        assert flag in run.stdout
