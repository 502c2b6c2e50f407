"""A real multi-node Ray cluster simulated on this machine, with Serve's HTTP proxy, for tests and benchmarks.

`simulated_cluster()` starts a head (Serve's controller and HTTP proxy, no replicas) and worker nodes that
each offer one engine and one solver slot (the custom resources "engine" and "solver", which the options of
`placed()` ask for), with token auth on under a token and temp dir of its own (never one under the home
directory) and vLLM's CPU settings in every replica's environment. Everything it started is stopped and
removed on the way out, even when the cluster fails to start. tests/test_cluster.py and the bench/cluster_*
scripts use it; only one such cluster fits on this machine at a time (take /tmp/ray-cluster.lock).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import ray
from ray import serve
from ray._private.authentication_test_utils import reset_auth_token_state
from ray.cluster_utils import Cluster
from ray.serve import Application

from service.cluster.app import SOLVER
from service.cluster.ledger import ProblemRecord
from tests.support.servers import free_port
from tests.support.tiny_model import VLLM_CPU_ENV

APP = "sctir"
READY_TIMEOUT_S = 600.0


@dataclass
class SimulatedCluster:
    nodes: Cluster
    url: str  # Serve's HTTP proxy

    def deploy(self, app: Application) -> None:
        """Run `app` as the application APP at the proxy's root; returns once its /readyz says ready."""
        serve.run(app, name=APP, route_prefix="/")
        wait_ready(self.url)

    def remove(self) -> None:
        """Delete the application (its replicas stop: a later deploy starts fresh engines, cold caches)."""
        serve.delete(APP)

    def ledgers(self, solvers: int) -> dict[str, ProblemRecord]:
        """Every solver replica's ledger (which engine replicas served each problem), merged."""
        ledgers = self.solver_ledgers(solvers).values()
        return {problem: record for ledger in ledgers for problem, record in ledger.items()}

    def solver_ledgers(self, solvers: int) -> dict[str, dict[str, ProblemRecord]]:
        """Each solver replica's ledger by its id: a handle call reaches one replica, so call until all
        `solvers` answered."""
        handle = serve.get_deployment_handle(SOLVER, APP)
        seen: dict[str, dict[str, ProblemRecord]] = {}
        for _ in range(100 * solvers):
            replica, ledger = handle.ledger.remote().result(timeout_s=60)
            seen[replica] = ledger
            if len(seen) == solvers:
                return seen
        raise AssertionError(f"only solver replicas {sorted(seen)} answered")

    def metrics(self) -> str:
        """The Prometheus text of every live node's metrics agent (Ray's and the replicas' own metrics)."""
        ports = {node["MetricsExportPort"] for node in ray.nodes() if node["Alive"]}
        return "\n".join(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text for port in sorted(ports))


def placed(replicas: int | None, slot: str, **options: Any) -> dict[str, Any]:
    """Deployment options putting each of `replicas` replicas on a worker's `slot` ("engine" or "solver"),
    with vLLM's CPU settings in its environment; `options` add to them (None replicas: an autoscaling_config
    in `options` decides)."""
    actor = {"num_cpus": 0, "resources": {slot: 1}, "runtime_env": {"env_vars": VLLM_CPU_ENV}}
    count = {} if replicas is None else {"num_replicas": replicas}
    return count | {"ray_actor_options": actor} | options


@contextlib.contextmanager
def simulated_cluster(workers: int = 2, env_vars: dict[str, str] | None = None) -> Iterator[SimulatedCluster]:
    """Head + `workers` worker nodes (one CPU each, one engine and one solver slot each), Serve started;
    `env_vars` in the environment of every Ray process (e.g. Serve's RAY_SERVE_* knobs)."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    with contextlib.ExitStack() as cleanup, pytest.MonkeyPatch.context() as env:
        cleanup.callback(reset_auth_token_state)  # last, once the environment is restored: Ray forgets this token
        cleanup.callback(shutil.rmtree, temp, ignore_errors=True)
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        env.setenv("RAY_TMPDIR", temp)
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        for name, value in (VLLM_CPU_ENV | (env_vars or {})).items():
            env.setenv(name, value)
        reset_auth_token_state()  # Ray read the authentication settings when it was imported: read them again
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            for _ in range(workers):
                nodes.add_node(num_cpus=1, resources={"engine": 1, "solver": 1})
            nodes.connect()
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
            yield SimulatedCluster(nodes, f"http://127.0.0.1:{port}")
        finally:
            serve.shutdown()
            ray.shutdown()
            nodes.shutdown()


def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll `url`/readyz until it answers 200 (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never became ready")
