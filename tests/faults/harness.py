"""The fault-injection tier's tools: the real service as a process, what it leaves behind, a report.

Every scenario runs `sctir serve` as its own process (vLLM on CPU with the shipped demo model,
the real Docker sandbox), injects one fault, and checks three things: what the client gets,
that nothing is left running or held afterwards, and how long the service took to recover.
Each scenario reports its row with tests/support/fault_report.py `record`, which
`python -m bench.faults --write` turns into the table in BENCHMARKS.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import free_port
from tests.support.tiny_model import VLLM_CPU_ENV

ENGINE_REQUEST_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")  # in-process vLLM's own


def demo_service_env(model: Path, pool_name: str, **overrides: str) -> dict[str, str]:
    """The environment of a service on the demo model with a small Docker pool of its own name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCTIR_")} | VLLM_CPU_ENV
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the service's engine core is its own process, as deployed
    return (
        env
        | {
            "SCTIR_ENGINE": "vllm",
            "SCTIR_MODEL": str(model),
            "SCTIR_EXECUTOR": "docker",
            "SCTIR_SANDBOX_POOL_SIZE": "1",
            "SCTIR_SANDBOX_POOL_NAME": pool_name,
            "SCTIR_KV_CACHE_MEMORY_BYTES": str(256 * 2**20),
            "SCTIR_LOG_LEVEL": "debug",
        }
        | overrides
    )


@dataclass
class Service:
    """A running `sctir serve` process."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds until /readyz says ready; fails with the log's tail if the process ends first."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited ({self.process.returncode}):\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready within {timeout_s} s:\n{self.log()[-4000:]}")

    def held(self) -> dict[str, float]:
        """What the service holds for requests: solver slots, the queue, sandbox blocks, sessions and leases,
        engine requests; all 0 once they are over."""
        samples = self.metrics()
        return {
            "in_flight": samples["sctir_requests_in_flight"],
            "queued": samples["sctir_requests_queued"],
            "sandbox_busy": samples["sctir_sandbox_busy"],
            "sandbox_sessions": samples["sctir_sandbox_sessions"],
            "sandbox_leased": samples['sctir_sandbox_containers{state="leased"}'],
            "engine_requests": sum(v for k, v in samples.items() if k.startswith(ENGINE_REQUEST_GAUGES)),
        }

    def nothing_held(self) -> bool:
        return not any(self.held().values())

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, by name and labels (e.g. 'sctir_sandbox_busy' or 'x{a="b"}')."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


@contextmanager
def running_service(env: dict[str, str], log_path: Path, ready_timeout_s: float = 180.0) -> Iterator[Service]:
    """`sctir serve` on a free port, ready; stopped (SIGTERM, then SIGKILL of its group) at the end."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(process, f"http://127.0.0.1:{port}", log_path)
    try:
        service.wait_ready(ready_timeout_s)
        yield service
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left
    except ProcessLookupError:
        pass
    process.wait()


def containers_of(pool_name: str) -> list[str]:
    """Ids of the sandbox containers (any state) labelled with `pool_name`."""
    import docker

    from sandbox.backends.owners import LABEL_POOL

    client = docker.from_env()
    try:
        return [c.id for c in client.containers.list(all=True, filters={"label": f"{LABEL_POOL}={pool_name}"})]
    finally:
        client.close()


def wait_until(condition, timeout_s: float, interval_s: float = 0.1) -> float:
    """Seconds until `condition()` is true; raises AssertionError after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {getattr(condition, '__doc__', None) or condition}")
        time.sleep(interval_s)
    return time.monotonic() - started
