"""`sctir serve` refuses to start, with one line saying why, when a component it cannot do without fails.

Real processes: the service as an operator starts it, with the settings that break it. (A remote
engine that is not up yet keeps the service serving: tests/test_api.py, test_startup_failure_surfaces_in_readyz.)
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.servers import free_port

SERVE = [sys.executable, "-m", "service.cli", "serve"]
MISSING_IMAGE = "sctir-no-such-image:missing"


def docker_answers() -> bool:
    try:
        import docker

        return bool(docker.from_env(version="auto").ping())
    except Exception:
        return False


def serve_until_it_exits(*flags: str, timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `sctir serve` on a free port; fails the test if it is still running after `timeout_s`."""
    port = str(free_port())
    return subprocess.run(
        [*SERVE, "--port", port, *flags],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def error_lines(stderr: str) -> list[str]:
    """The ERROR records (in the text or the JSON log format), each one line."""
    return [line for line in stderr.splitlines() if "ERROR" in line]


def test_a_sandbox_image_that_does_not_exist_stops_the_service() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/v1"  # a remote engine not up: no reason to stop by itself
    run = serve_until_it_exits(
        SCTIR_EXECUTOR="docker", SCTIR_SANDBOX_IMAGE=MISSING_IMAGE, SCTIR_ENGINE="remote", SCTIR_REMOTE_URL=nowhere
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "Application startup complete" not in run.stderr
    reason, exiting = error_lines(run.stderr)
    assert "executor failed to start: " in reason and (MISSING_IMAGE if docker_answers() else "Docker") in reason
    assert "Application startup failed. Exiting." in exiting


def test_an_in_process_engine_that_cannot_load_stops_the_service() -> None:
    run = serve_until_it_exits("--engine", "vllm", "--model", "/models/missing", SCTIR_EXECUTOR="local")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    reason, exiting = error_lines(run.stderr)
    assert "engine failed to start: model path '/models/missing' not found" in reason
    assert "Application startup failed. Exiting." in exiting
