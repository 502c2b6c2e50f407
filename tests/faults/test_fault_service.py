"""Faults from the client's and the operator's side: disconnects (queued, solving) and SIGTERM.

The service runs as its own process on the demo model with one solver slot, so a second request
queues. SLOW_PROBLEM makes the model write a block that runs until the execution timeout (5 s: the
demo model copies the expression into Python, and 9**9**9 has 369 million digits), so a request is
reliably still solving when the fault comes; `deadline_s` bounds every request.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.harness import Service, containers_of, demo_service_env, running_service, wait_until
from tests.support.docker import require_docker
from tests.support.fault_report import record
from tests.support.tiny_model import require_vllm

SLOW_PROBLEM = "What is 9^9^9?"
QUICK_PROBLEM, QUICK_ANSWER = "What is 2^10 - 1?", "1023"
SLOW_REQUEST = {"problem": SLOW_PROBLEM, "num_samples": 4, "max_steps": 2, "deadline_s": 8, "seed": 1}
POOL = "sctir-fault-service"


def service_env(model: Path, pool: str = POOL) -> dict[str, str]:
    return demo_service_env(model, pool, SCTIR_MAX_IN_FLIGHT="1", SCTIR_MAX_QUEUE="4", SCTIR_NUM_SAMPLES="4")


def answers_correctly(service: Service) -> bool:
    response = httpx.post(
        f"{service.url}/solve", json={"problem": QUICK_PROBLEM, "num_samples": 4, "seed": 2}, timeout=120
    )
    return response.status_code == 200 and response.json()["answer"] == QUICK_ANSWER


@pytest.fixture(scope="module")
def service(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    require_vllm()
    require_docker()
    with running_service(service_env(demo_model), tmp_path_factory.mktemp("faults") / "serve.log") as running:
        yield running


def post_in_background(url: str, body: dict, read_timeout_s: float) -> tuple[threading.Thread, list]:
    """POST /solve from a thread; the list gets the response or the exception."""
    outcome: list = []

    def post() -> None:
        try:
            outcome.append(httpx.post(f"{url}/solve", json=body, timeout=httpx.Timeout(10, read=read_timeout_s)))
        except httpx.HTTPError as error:
            outcome.append(error)

    thread = threading.Thread(target=post)
    thread.start()
    return thread, outcome


def test_a_client_that_leaves_while_solving_frees_everything_it_held(service: Service) -> None:
    thread, outcome = post_in_background(service.url, SLOW_REQUEST, read_timeout_s=2)
    wait_until(lambda: service.held()["sandbox_busy"] >= 1, timeout_s=10)  # solving: its code runs
    thread.join(timeout=15)
    assert isinstance(outcome[0], httpx.ReadTimeout)  # the client gave up and closed the connection
    gone = time.monotonic()
    wait_until(lambda: service.nothing_held(), timeout_s=10)
    freed_s = time.monotonic() - gone
    assert answers_correctly(service)
    recovered_s = time.monotonic() - gone
    assert "client disconnected" in service.log()
    record(
        "client disconnects while solving",
        client_gets="(gone); the server logs 499 and cancels its candidates",
        left_behind=f"nothing: slots, sandbox executions and leases, engine requests at 0 after {freed_s:.2f} s",
        recovery_s=recovered_s,
    )


def test_a_client_that_leaves_while_queued_leaves_the_queue_and_the_solving_one_answers(service: Service) -> None:
    first, first_outcome = post_in_background(service.url, SLOW_REQUEST, read_timeout_s=60)
    wait_until(lambda: service.held()["in_flight"] == 1, timeout_s=10)
    second, second_outcome = post_in_background(service.url, {**SLOW_REQUEST, "seed": 3}, read_timeout_s=1)
    second.join(timeout=10)
    assert isinstance(second_outcome[0], httpx.ReadTimeout)
    gone = time.monotonic()
    wait_until(lambda: service.held()["queued"] == 0, timeout_s=5)
    left_queue_s = time.monotonic() - gone
    assert service.held()["in_flight"] == 1  # the first is untouched
    first.join(timeout=60)
    assert first_outcome[0].status_code == 200, first_outcome[0].text
    wait_until(lambda: service.nothing_held(), timeout_s=10)
    record(
        "client disconnects while queued",
        client_gets="(gone); the request solving beside it: 200",
        left_behind=f"nothing: the queue was empty {left_queue_s:.2f} s after the disconnect",
        recovery_s=left_queue_s,
    )


def test_sigterm_finishes_the_requests_in_flight_and_queued_then_leaves_nothing(
    demo_model: Path, tmp_path: Path
) -> None:
    require_vllm()
    require_docker()
    pool = f"{POOL}-sigterm"
    with running_service(service_env(demo_model, pool), tmp_path / "serve.log") as service:
        posts = [
            post_in_background(service.url, {**SLOW_REQUEST, "seed": seed}, read_timeout_s=90) for seed in range(3)
        ]
        wait_until(lambda: service.held()["in_flight"] == 1 and service.held()["queued"] == 2, timeout_s=10)
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        for thread, _ in posts:
            thread.join(timeout=90)
        statuses = [outcome[0].status_code for _, outcome in posts]
        assert statuses == [200, 200, 200], [getattr(o[0], "text", o[0]) for _, o in posts]
        # uvicorn re-raises the SIGTERM once it has shut down gracefully: the exit a process manager expects
        assert service.process.wait(timeout=60) in (0, -signal.SIGTERM)
        exited_s = time.monotonic() - signalled
        wait_until(lambda: not containers_of(pool), timeout_s=10)
    record(
        "SIGTERM with 1 request solving and 2 queued",
        client_gets="200 for all three (solved before the exit)",
        left_behind="nothing: the process exited (by its SIGTERM, after the shutdown), no sandbox container",
        recovery_s=exited_s,
    )
