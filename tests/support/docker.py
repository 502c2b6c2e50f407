"""The Docker sandbox in tests: the image, small pools, and a skip (or, in CI, a failure) without Docker.

`require_docker` skips a test where no Docker engine or sandbox image is there, naming what is
missing; with SCTIR_REQUIRE_DOCKER=1 (CI) it fails instead, so a CI run cannot pass by skipping.
"""

from __future__ import annotations

import os
import uuid

import pytest

from sandbox.backends import DockerLimits
from sandbox.backends.owners import LABEL_POOL
from sandbox.executors import DockerExecutor

IMAGE = os.environ.get("SCTIR_DOCKER_IMAGE", "sctir-sandbox:latest")


LIMITS = DockerLimits(memory="512m", pids=128, cpus=1.0, tmpfs_size="32m")


def docker_problem(image: str = IMAGE) -> str | None:
    """Why the Docker tests cannot run here, or None."""
    try:
        import docker
        import docker.errors
    except ImportError:
        return "the Docker SDK is not installed (pip install docker)"
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except Exception as error:
        return f"no Docker daemon answers ({type(error).__name__}); start one with scripts/start-dockerd.sh"
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return f"the sandbox image {image} is not built; run `make sandbox-image` (scripts/build-sandbox-image.sh)"
    return None


def unavailable(problem: str, required_by: str) -> None:
    """Skip, naming what is missing; fail instead where the environment variable `required_by` is 1 (CI)."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {problem}", pytrace=False)
    pytest.skip(problem)


def require_docker(image: str = IMAGE) -> None:
    problem = docker_problem(image)
    if problem is not None:
        unavailable(problem, "SCTIR_REQUIRE_DOCKER")


GVISOR_LIMITS = DockerLimits(**{**LIMITS.__dict__, "runtime": "runsc"})


def require_gvisor() -> None:
    """The engine has gVisor's runsc runtime, or the test skips (fails with SCTIR_REQUIRE_GVISOR=1)."""
    import docker

    if "runsc" not in docker.from_env(version="auto").info().get("Runtimes", {}):
        problem = (
            "the Docker engine has no runsc runtime (gVisor): apt-get install runsc, then scripts/start-dockerd.sh"
        )
        unavailable(problem, "SCTIR_REQUIRE_GVISOR")


async def start_gvisor_pool(ex: DockerExecutor) -> None:
    try:
        await ex.start()
    except RuntimeError as error:
        await ex.close()
        unavailable(f"runsc is registered but cannot run containers on this host: {error}", "SCTIR_REQUIRE_GVISOR")


def containers_of(pool_name: str) -> list:
    import docker

    client = docker.from_env(version="auto")
    return client.containers.list(all=True, filters={"label": [f"{LABEL_POOL}={pool_name}"]})


def make_pool(**overrides) -> DockerExecutor:
    options = dict(
        image=IMAGE,
        size=2,
        concurrency=3,
        timeout_s=3.0,
        limits=LIMITS,
        pool_name=f"sctir-test-{uuid.uuid4().hex[:8]}",
        answer_grace_s=10.0,
    )
    options.update(overrides)
    return DockerExecutor(**options)
