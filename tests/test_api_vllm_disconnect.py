"""A client that hangs up on POST /solve frees vLLM: over real HTTP, with the in-process engine.

tests/test_api.py checks the disconnect with a scripted engine, tests/test_vllm_engine.py the
cancellation of the real engine's steps through the solver; here the whole path runs for real:
uvicorn notices the closed socket, the API cancels the solve, the solver's cancelled steps abort
their requests in vLLM, and the engine core ends up with nothing running or waiting.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from sandbox.executors import LocalExecutor
from service.api.app import create_app
from service.engines.vllm_local import VllmEngine
from service.settings import Settings
from tests.support.servers import serve_in_thread
from tests.support.tiny_model import tiny_vllm_options

SAMPLES = 4


@pytest.fixture(scope="module")
def served(vllm_installed: None, tiny_model_dir: Path, vllm_cpu_env: None) -> Iterator[tuple[str, VllmEngine]]:
    """(URL, engine): the service's lifespan starts the engine in uvicorn's event loop."""
    engine = VllmEngine(tiny_vllm_options(tiny_model_dir))
    # Noise never writes code, so every candidate restarts until its steps run out: each of its
    # 4 steps generates up to 3000 tokens, tens of seconds in all.
    settings = Settings(num_samples=SAMPLES, max_steps=4, max_new_tokens=3000, early_stop=False, max_in_flight=1)
    app = create_app(settings, engine=engine, executor=LocalExecutor(concurrency=2))
    with serve_in_thread(app, "/healthz", start_timeout_s=180) as url:
        yield url, engine


def engine_core(model_dir: Path, name: str) -> float | None:
    """A gauge of the engine core, as it last reported it."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(f"vllm:{name}", {"model_name": str(model_dir), "engine": "0"})


def steps_finished(model_dir: Path) -> float:
    """Requests vLLM finished for any reason but an abort (it does not count aborted ones)."""
    from prometheus_client import REGISTRY

    return sum(
        sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == "vllm:request_success_total" and sample.labels.get("model_name") == str(model_dir)
    )


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def post_solve(url: str, body: dict) -> socket.socket:
    """Send POST /solve on a raw socket, so the test decides when the client goes away."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    head = f"POST /solve HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(payload)}\r\n\r\n"
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(head.encode() + payload)
    return sock


def received_until(sock: socket.socket, needle: bytes, timeout_s: float) -> bytes:
    """What the server sent on `sock` until `needle` (or the timeout)."""
    sock.settimeout(timeout_s)
    received = b""
    while needle not in received:
        received += sock.recv(65536)
    return received


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_disconnect_aborts_the_engines_requests(
    served: tuple[str, VllmEngine], tiny_model_dir: Path, stream: bool
) -> None:
    url, engine = served

    def running_waiting() -> tuple[float | None, float | None]:
        return engine_core(tiny_model_dir, "num_requests_running"), engine_core(tiny_model_dir, "num_requests_waiting")

    finished_before = steps_finished(tiny_model_dir)
    client = post_solve(url, {"problem": "Think for a long time.", "seed": 1, "stream": stream})
    try:
        # Every candidate's step is generating in the engine core.
        assert wait_for(lambda: running_waiting() == (SAMPLES, 0.0), 60), running_waiting()
        if stream:  # the text is on its way to the client as it is generated
            assert b"event: step" in received_until(client, b"event: step", 30)
        time.sleep(0.3)
        assert engine.num_unfinished_requests() == SAMPLES
    finally:
        client.close()  # the client hangs up mid-generation
    hung_up = time.monotonic()
    assert wait_for(lambda: engine.num_unfinished_requests() == 0 and running_waiting() == (0.0, 0.0), 10), (
        engine.num_unfinished_requests(),
        running_waiting(),
    )
    assert time.monotonic() - hung_up < 10
    # Aborted, not run to the end: that would have finished all 4 steps of every candidate.
    assert steps_finished(tiny_model_dir) - finished_before < SAMPLES * 4
    # The slot is free again: the next request is served.
    response = httpx.post(f"{url}/solve", json={"problem": "Quick.", "max_new_tokens": 4, "max_steps": 1}, timeout=60)
    assert response.status_code == 200, response.text
