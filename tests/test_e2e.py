"""End to end: `sctir serve` with vLLM in-process on the trained demo model and the real Docker
sandbox. The model really writes code; the sandbox's output appears in the trace, the model
continues after it, and the vote counts the answer it copied from the output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, wait_until_up
from tests.test_sandbox_docker import require_docker
from tests.test_training import demo_model  # noqa: F401 (the session fixture)
from tests.tiny_model import VLLM_CPU_ENV, require_vllm
from training.demo import heldout_problems


@pytest.fixture(scope="module")
def service(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    require_vllm()
    require_docker()
    port = free_port()
    env = (
        os.environ
        | VLLM_CPU_ENV
        | {
            "SCTIR_ENGINE": "vllm",
            "SCTIR_MODEL": str(demo_model),
            "SCTIR_DTYPE": "float32",
            "SCTIR_MAX_MODEL_LEN": "1024",
            "SCTIR_ENFORCE_EAGER": "true",
            "SCTIR_KV_CACHE_MEMORY_BYTES": str(256 * 2**20),
            "SCTIR_EXECUTOR": "docker",
            "SCTIR_SANDBOX_POOL_SIZE": "1",
            "SCTIR_SANDBOX_POOL_NAME": "sctir-e2e",
            "SCTIR_ANSWER_MODE": "integer",
        }
    )
    log_path = tmp_path_factory.mktemp("e2e") / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/healthz", timeout_s=120)
        for _ in range(120):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
            process.poll()
            assert process.returncode is None, log_path.read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("the service never became ready:\n" + log_path.read_text()[-3000:])
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_the_model_writes_code_the_sandbox_runs_it_and_the_vote_counts_it(service: str) -> None:
    problem = heldout_problems(3)[2]
    response = httpx.post(
        f"{service}/solve",
        json={"problem": problem.problem, "num_samples": 4, "seed": 3, "return_traces": True},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = str(problem.answer)
    assert body["answer"] == expected and body["votes"][expected] >= 1
    answered = [c for c in body["candidates"] if c["status"] == "answered"]
    assert answered and all(c["executions"] >= 1 for c in answered)
    for candidate in answered:
        text = candidate["text"]
        assert "```python" in text
        executed = text.split("```output\n", 1)[1]
        output, continuation = executed.split("\n```\n", 1)
        assert output.strip() == expected  # printed by the sandbox, not by the model
        assert f"\\boxed{{{expected}}}" in continuation  # generated after the output block
