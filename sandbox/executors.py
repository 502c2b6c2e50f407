"""The executors: a SandboxPool (sandbox/pool.py) of one backend each, with the service's defaults.

- `DockerExecutor`, the service's default: warm, hardened sandbox containers, a
  container of its own leased to each tenant;
- `LocalExecutor`: the same runner as a plain subprocess of this host, for hosts
  without Docker (Kaggle, Colab, a laptop). NOT isolated.
"""

from __future__ import annotations

import os
import sys

from sandbox.backends import DockerBackend, DockerLimits, LocalBackend
from sandbox.pool import SandboxPool


class DockerExecutor(SandboxPool):
    """The service's default executor: warm, hardened sandbox containers (see DockerBackend)."""

    def __init__(
        self,
        image: str = "sctir-sandbox:latest",
        size: int = 2,
        concurrency: int = 4,
        timeout_s: float = 5.0,
        max_output_bytes: int = 64 * 1024,
        limits: DockerLimits | None = None,
        pool_name: str = "sctir",
        environment: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
        answer_grace_s: float = 10.0,
        runner_args: list[str] | None = None,
        max_containers: int | None = None,
        confine: bool = True,
        health_timeout_s: float = 2.0,
    ) -> None:
        backend = DockerBackend(
            image=image,
            pool_name=pool_name,
            limits=limits,
            environment=environment,
            runner_args=runner_args,
            confine=confine,
        )
        super().__init__(
            backend,
            size=size,
            concurrency=concurrency,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            start_timeout_s=start_timeout_s,
            answer_grace_s=answer_grace_s,
            name=pool_name,
            isolate_tenants=True,
            max_slots=max_containers,
            health_timeout_s=health_timeout_s,
        )


class LocalExecutor(SandboxPool):
    """Runs model code in the runner's forked processes on this host.

    NOT ISOLATED. The model's code runs as the service's own user, with the
    service's network access, files, environment variables and credentials;
    only a timeout, an output cap and process-group kills bound it. Use it on
    hosts without Docker (Kaggle, Colab, a laptop) where you accept that;
    anything serving untrusted requests needs the Docker executor.

    One runner process (`python sandbox/runner`) serves every block: it imports
    numpy and sympy once in a zygote process and forks a spare per execution
    ahead of demand, so a block costs milliseconds instead of a fresh
    interpreter's 0.4-0.7 s, with the same outputs as in the sandbox
    containers. `last_block` (no session id): each block runs in a
    fresh forked interpreter exactly as the reference's `python tmp.py` would
    (the preamble, auto-print, stdout/stderr, the trimmed traceback, the exit
    status) in a new temp dir; when it ends, its process group and any
    process it left behind are killed. `session` (a session id): the first
    block's process stays alive and runs that id's later blocks in the same
    namespace, like notebook cells; a timeout, a crash or `close_session`
    kills it and the next block of that id starts fresh. Output written
    around sys.stdout (to fd 1 directly, by child processes) is discarded in
    sessions.

    The timeout covers the block itself (not an interpreter start, which no
    longer happens per block). At most `concurrency` blocks execute at once.
    Every failure of the code is an ExecutionResult; failures of the executor
    itself (e.g. a missing interpreter, a runner that cannot import numpy)
    raise ExecutorError (see sandbox/execution.py).
    """

    def __init__(
        self,
        python: str = sys.executable,
        timeout_s: float = 5.0,
        concurrency: int | None = None,
        max_output_bytes: int = 64 * 1024,
        session_start_timeout_s: float = 60.0,
    ) -> None:
        self.python = python
        super().__init__(
            LocalBackend(python),
            size=1,
            concurrency=concurrency or os.cpu_count() or 1,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            start_timeout_s=session_start_timeout_s,
            name="local",
        )
