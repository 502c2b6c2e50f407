"""`sctir serve` and `sctir solve` as real processes, against an OpenAI-compatible server.

The completions server scripts the LLM's text per prompt (tests/support/openai_stub.py);
the service, its remote engine, the local executor and HTTP are real. Exit codes
are service.exitcodes'; tests/test_cli_vllm.py runs the CLI with vLLM in process.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.exitcodes import ExitCode
from service.tir import format_prompt
from tests.support.cli import SCTIR, default_env
from tests.support.openai_stub import MODEL, FakeServer, completion, make_app
from tests.support.servers import free_port, serve_in_thread, wait_until_up

PROBLEM = "What is 6 times 7?"
PROMPT = format_prompt(PROBLEM)
CODE = "We compute.\n```python\n6 * 7\n```\n"
STOP = "```output\n"
ANSWER = "Hence the answer is $\\boxed{42}$."
NO_ANSWER_PROBLEM = "What is the colour of seven?"
NO_ANSWER = "I cannot say.\n"  # no code, no answer: restarted until the steps run out
UNSCRIPTED_PROBLEM = "A problem the server has no reply for"  # 400: every candidate fails
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: ")


@pytest.fixture(scope="module")
def model_server() -> Iterator[FakeServer]:
    state = FakeServer()
    state.script(PROMPT, completion(CODE, stop_reason=STOP, usage={"prompt_tokens": 9, "completion_tokens": 12}))
    state.script(PROMPT + CODE + STOP + "42\n```", completion("\n" + ANSWER, stop_reason=None))
    state.script(format_prompt(NO_ANSWER_PROBLEM), completion(NO_ANSWER, stop_reason=None))
    with serve_in_thread(make_app(state), "/v1/models", lifespan="off") as base:
        state.url = f"{base}/v1"
        yield state


def engine_env(model_server: FakeServer, **extra: str) -> dict[str, str]:
    return default_env() | {
        "SCTIR_ENGINE": "remote",
        "SCTIR_REMOTE_URL": model_server.url,
        "SCTIR_MODEL": MODEL,
        "SCTIR_EXECUTOR": "local",
        **extra,
    }


def sctir(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCTIR, *args], env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("sctir: error:")]


@contextmanager
def serving(env: dict[str, str], log_path: Path, *flags: str) -> Iterator[str]:
    """`sctir serve` on a free port, its stdout and stderr in `log_path`; yields its URL, stops it after."""
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*SCTIR, "serve", "--port", str(port), "--num-samples", "3", "--no-early-stop", *flags],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/healthz", timeout_s=60)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete." in log_path.read_text()


@pytest.fixture(scope="module")
def service(model_server: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with serving(engine_env(model_server), log_path) as url:
        yield url, log_path


def test_serve_is_ready_with_the_remote_engine(service) -> None:
    url, _ = service
    assert httpx.get(f"{url}/readyz").json() == {"ready": True, "engine": True, "executor": True}


def test_solve_against_the_server_prints_answer_votes_and_timings(service) -> None:
    url, _ = service
    run = subprocess.run([*SCTIR, "solve", PROBLEM, "--url", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "answer: 42" in run.stdout and "agreement 100%" in run.stdout
    assert "3 answered" in run.stdout and "s generation" in run.stdout


def test_serve_logs_a_text_line_per_record_request_lines_carrying_the_request_id(service) -> None:
    url, log_path = service
    response = httpx.post(f"{url}/solve", json={"problem": PROBLEM}, headers={"X-Request-ID": "trace-77"}, timeout=60)
    assert response.status_code == 200 and response.json()["votes"] == {"42": 3}
    lines = log_path.read_text().splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines  # one record a line, nothing else
    solved = [line for line in lines if "service.api: solved " in line and "request_id=trace-77" in line]
    assert solved and "answer=42" in solved[0] and " INFO " in solved[0]
    assert any('"POST /solve HTTP/1.1" 200 request_id=trace-77' in line for line in lines)
    assert any("WARNING service.components: code execution is NOT isolated" in line for line in lines)
    # quiet: no health probes, no other library's INFO (httpx's one line per engine step)
    assert not [line for line in lines if "/healthz" in line or "/readyz" in line or " httpx: " in line]


def test_serve_logs_every_record_as_json_at_the_debug_level(model_server: FakeServer, tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    with serving(engine_env(model_server, SCTIR_LOG_FORMAT="json"), log_path, "--log-level", "debug") as url:
        httpx.post(f"{url}/solve", json={"problem": PROBLEM}, headers={"X-Request-ID": "trace-78"}, timeout=60)
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    solved = [r for r in records if r["message"] == "solved" and r["request_id"] == "trace-78"]
    assert solved and solved[0]["answer"] == "42" and solved[0]["level"] == "INFO"
    loggers = {r["logger"] for r in records}
    assert {"httpx", "uvicorn.access"} <= loggers and any(r["level"] == "DEBUG" for r in records)
    assert any("/healthz" in r["message"] for r in records)


def test_solve_in_process_prints_json(model_server: FakeServer) -> None:
    run = sctir("solve", PROBLEM, "--num-samples", "2", "--seed", "5", "--json", env=engine_env(model_server))
    assert run.returncode == ExitCode.OK, run.stderr
    body = json.loads(run.stdout)  # the whole of stdout: one JSON document
    assert body["answer"] == "42" and body["seed"] == 5 and len(body["candidates"]) == 2


def test_solve_json_with_the_engine_unreachable_is_one_error_line(model_server: FakeServer) -> None:
    env = engine_env(model_server, SCTIR_REMOTE_URL="http://127.0.0.1:9/v1")  # nothing listens on port 9
    run = sctir("solve", PROBLEM, "--json", env=env)
    assert run.returncode == ExitCode.UNAVAILABLE and run.stdout == ""
    [error] = error_lines(run.stderr)
    assert "the engine did not start" in error and "127.0.0.1:9" in error and "SCTIR_REMOTE_URL" in error
    assert "Traceback" not in run.stderr
    assert all(LOG_LINE.match(line) for line in run.stderr.splitlines() if line != error)  # the rest: log records

    debug = sctir("--debug", "solve", PROBLEM, "--json", env=env)
    assert debug.returncode == ExitCode.UNAVAILABLE and debug.stdout == ""
    assert "Traceback (most recent call last)" in debug.stderr and "EngineError" in debug.stderr
    assert error_lines(debug.stderr) == [error]
    after = sctir("solve", PROBLEM, "--json", "--debug", env=env)  # also after the command
    assert "Traceback" in after.stderr and after.returncode == ExitCode.UNAVAILABLE


def test_solve_exit_codes_say_no_answer_and_all_failed(model_server: FakeServer) -> None:
    flags = ("--num-samples", "2", "--max-steps", "2", "--json")
    none = sctir("solve", NO_ANSWER_PROBLEM, *flags, env=engine_env(model_server))
    assert none.returncode == ExitCode.NO_ANSWER, none.stderr
    body = json.loads(none.stdout)
    assert body["answer"] is None and {c["status"] for c in body["candidates"]} == {"restarted"}
    assert "sctir: no answer" in none.stderr

    failed = sctir("solve", UNSCRIPTED_PROBLEM, *flags, env=engine_env(model_server))
    assert failed.returncode == ExitCode.UNAVAILABLE and failed.stdout == ""
    [error] = error_lines(failed.stderr)
    assert "every candidate failed" in error and "no reply scripted" in error


def test_solve_reports_bad_arguments_and_unreachable_servers(model_server: FakeServer) -> None:
    bad = sctir("solve", PROBLEM, "--num-samples", "0", env=default_env(), timeout=60)
    assert bad.returncode == ExitCode.USAGE and "num_samples" in bad.stderr
    down = sctir("solve", PROBLEM, "--url", f"http://127.0.0.1:{free_port()}", env=default_env(), timeout=60)
    assert down.returncode == ExitCode.UNAVAILABLE and down.stdout == ""
    assert error_lines(down.stderr) == down.stderr.splitlines() and "cannot reach" in down.stderr
    settings = sctir("solve", PROBLEM, env=default_env() | {"SCTIR_NUM_SAMPLES": "none"}, timeout=60)
    assert settings.returncode == ExitCode.USAGE and "SCTIR_NUM_SAMPLES" in error_lines(settings.stderr)[0]


def test_solve_against_the_server_answers_in_json(service) -> None:
    url, _ = service
    run = sctir("solve", PROBLEM, "--url", url, "--json", env=default_env())
    assert run.returncode == ExitCode.OK and json.loads(run.stdout)["votes"] == {"42": 3}
    refused = sctir("solve", PROBLEM, "--url", url + "/nowhere", env=default_env())
    assert refused.returncode == ExitCode.USAGE and "404" in error_lines(refused.stderr)[0]


def run_with_stderr_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Runs `args` with stderr on a pseudo-terminal (stdout a pipe): exit code, stdout, what the terminal got."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    received = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                return
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stdout, _ = process.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(controller)
    return process.returncode, stdout, received.decode(errors="replace")


def test_solve_shows_progress_on_a_terminal_only(model_server: FakeServer) -> None:
    env = engine_env(model_server, SCTIR_EARLY_STOP="false")  # both candidates finish
    code, stdout, terminal = run_with_stderr_on_a_terminal([*SCTIR, "solve", PROBLEM, "--num-samples", "2"], env)
    assert code == ExitCode.OK and "answer: 42" in stdout
    assert "starting the engine" in terminal and "2/2 candidates, leader 42 (2 votes)" in terminal
    piped = sctir("solve", PROBLEM, "--num-samples", "2", env=env)
    assert "candidates" not in piped.stderr and "starting the engine" not in piped.stderr


def test_solve_against_the_server_shows_its_progress_on_a_terminal(service) -> None:
    """Streamed from the service (POST /solve with `stream`): the same bar as in-process, the same answer."""
    url, _ = service
    code, stdout, terminal = run_with_stderr_on_a_terminal([*SCTIR, "solve", PROBLEM, "--url", url], default_env())
    assert code == ExitCode.OK and "answer: 42" in stdout
    assert re.search(r"[1-3]/3 candidates, leader 42 \([1-3] votes?\)", terminal), terminal
    code, stdout, terminal = run_with_stderr_on_a_terminal(
        [*SCTIR, "solve", PROBLEM, "--url", url + "/x"], default_env()
    )
    assert code == ExitCode.USAGE and stdout == "" and "404" in terminal


def test_help_lists_the_exit_codes() -> None:
    run = sctir("--help", env=default_env(), timeout=60)
    assert run.returncode == 0 and "exit codes" in run.stdout
    for code in ExitCode:
        assert re.search(rf"^  {code.value} ", run.stdout, re.MULTILINE), code


def test_serve_that_cannot_bind_its_port_says_so_and_exits_unavailable(model_server: FakeServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        run = sctir("serve", "--port", port, env=engine_env(model_server), timeout=60)
    assert run.returncode == ExitCode.UNAVAILABLE and "Traceback" not in run.stderr
    [error] = [line for line in run.stderr.splitlines() if " ERROR " in line]
    assert "address already in use" in error and LOG_LINE.match(error)


def test_serve_help_lists_every_setting() -> None:
    run = subprocess.run([*SCTIR, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    for flag in ("--num-samples", "--max-steps", "--remote-url", "--api-keys", "--max-in-flight", "--answer-mode"):
        assert flag in run.stdout
