"""Faults of the executor itself: raised as ExecutorError naming the way out, never shown to the model as output.

The real executors fail for real (a Docker image that does not exist, an engine that is
not there, an interpreter that does not exist) under the real Solver; only the LLM's
text is scripted (tests/support/doubles.py). The Docker cases need a Docker engine (not the
sandbox image) and skip without one, unless SCTIR_REQUIRE_DOCKER=1.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sandbox.backends import DockerLimits, SandboxUnavailable
from sandbox.execution import Executor, ExecutorError
from sandbox.executors import DockerExecutor, LocalExecutor
from service.solver import CandidateStatus, ExecutionMode, Solver
from tests.support.docker import unavailable
from tests.support.doubles import ScriptedEngine, parse_request_id
from tests.support.solving import PROBLEM, boxed, code, config

ROOT = Path(__file__).resolve().parents[1]
MISSING_IMAGE = f"sctir-sandbox:missing-{uuid.uuid4().hex[:8]}"
IMAGE_FIX = (
    f"the sandbox image {MISSING_IMAGE} is not built: "
    "run `make sandbox-image` (scripts/build-sandbox-image.sh), or set SCTIR_SANDBOX_IMAGE"
)
ENGINE_FIX = (
    ": start Docker (e.g. `sudo systemctl start docker`, or scripts/start-dockerd.sh), "
    "or run code unisolated on this host with SCTIR_EXECUTOR=local"
)


def require_engine() -> None:
    """A Docker engine answers (the sandbox image is not needed here), or the test skips."""
    try:
        import docker

        docker.from_env(version="auto").ping()
    except Exception as error:
        unavailable(
            f"no Docker engine answers ({type(error).__name__}); start one with scripts/start-dockerd.sh",
            "SCTIR_REQUIRE_DOCKER",
        )


def docker_pool(**overrides) -> DockerExecutor:
    options = dict(size=1, concurrency=2, pool_name=f"sctir-test-{uuid.uuid4().hex[:8]}", image=MISSING_IMAGE)
    return DockerExecutor(**(options | overrides))


# -- the start-up messages name the way out --------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "reason"),
    [("unix:///nonexistent/docker.sock", "No such file or directory"), ("tcp://127.0.0.1:1", "Connection refused")],
)
async def test_no_engine_says_where_it_looked_and_the_ways_out(
    monkeypatch: pytest.MonkeyPatch, host: str, reason: str
) -> None:
    monkeypatch.setenv("DOCKER_HOST", host)
    ex = docker_pool()
    expected = f"no Docker engine answers at {host} ({reason}){ENGINE_FIX}"
    with pytest.raises(SandboxUnavailable) as raised:
        await ex.start()
    assert str(raised.value) == expected
    with pytest.raises(ExecutorError) as raised:
        await ex.execute("1")
    assert str(raised.value) == expected
    await ex.close()


def test_a_user_the_engine_refuses_is_told_to_join_the_docker_group() -> None:
    """As root, a child that drops to `nobody` meets the socket's permissions for real."""
    socket_path = Path("/var/run/docker.sock")
    if os.geteuid() != 0 or not shutil.which("setpriv") or not socket_path.is_socket():
        pytest.skip("needs root, setpriv and the engine's socket at /var/run/docker.sock")
    if socket_path.stat().st_mode & stat.S_IWOTH:
        pytest.skip("the engine's socket is open to every user")
    probe = "\n".join(
        [
            "from sandbox.backends import DockerBackend",
            "try:",
            "    DockerBackend()._client()",
            "except Exception as e:",
            "    print(e)",
        ]
    )
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "DOCKER_HOST": f"unix://{socket_path}"}
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", probe]
    output = subprocess.run(command, env=env, cwd="/", capture_output=True, text=True, timeout=60, check=True).stdout
    assert output.strip() == (
        f"the Docker engine at unix://{socket_path} refuses this user (Permission denied): add the user to the "
        "docker group (`sudo usermod -aG docker $USER`, then log in again), "
        "or run code unisolated on this host with SCTIR_EXECUTOR=local"
    )


async def test_a_missing_image_says_how_to_build_it() -> None:
    require_engine()
    ex = docker_pool()
    with pytest.raises(SandboxUnavailable) as raised:
        await ex.start()
    assert str(raised.value) == IMAGE_FIX
    await ex.close()


async def test_a_runtime_the_engine_lacks_says_how_to_get_it() -> None:
    require_engine()
    import docker

    images = docker.from_env(version="auto").images.list()
    if not images:
        pytest.skip("the Docker engine has no image at all")
    ex = docker_pool(image=images[0].id, limits=DockerLimits(runtime="no-such-runtime"))
    with pytest.raises(SandboxUnavailable, match=r"no runtime 'no-such-runtime' .*: register it with the engine") as e:
        await ex.start()
    assert str(e.value).endswith("or unset SCTIR_SANDBOX_RUNTIME")
    await ex.close()


# -- under the solver: a FAILED candidate, not output its model reads -------------------------------------------


def missing_image() -> tuple[Executor, str]:
    require_engine()
    return docker_pool(), IMAGE_FIX


def missing_interpreter() -> tuple[Executor, str]:
    return LocalExecutor(python="/nonexistent/python3"), "cannot run '/nonexistent/python3'"


@pytest.mark.parametrize("mode", list(ExecutionMode))
@pytest.mark.parametrize("broken", [missing_image, missing_interpreter])
async def test_an_executor_fault_fails_the_candidates_and_the_model_never_reads_it(broken, mode: ExecutionMode) -> None:
    executor, fault = broken()
    # Every candidate writes code and, after seeing its output, answers: with the fault shown as
    # output they would all answer 42 over it, so a fault must fail the candidate instead.
    engine = ScriptedEngine(lambda candidate, step, prompt: ([code("6 * 7"), boxed(42)][min(step, 1)], 0.0))
    try:
        result = await Solver(engine, executor).solve(PROBLEM, config(num_samples=3, execution_mode=mode), "r")
    finally:
        await executor.close()
    assert result.answer is None and result.votes == {}
    for candidate in result.candidates:
        assert candidate.status is CandidateStatus.FAILED, candidate
        assert candidate.error is not None and candidate.error.startswith(f"executor: {fault}"), candidate.error
        assert fault not in candidate.text and "executor" not in candidate.text, candidate.text
    assert {parse_request_id(r.request_id)[2] for r in engine.requests} == {0}  # nothing generated after the fault
    assert not any(fault in request.prompt for request in engine.requests)
