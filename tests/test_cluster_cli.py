"""`sctir cluster up` and `down` as an operator runs them: real processes, a real Ray on this machine, a real
vLLM-CPU engine replica (the demo model) and solver replica behind Serve's HTTP proxy; then `down` stops the
lot. And `down` aimed where no cluster runs fails within seconds, saying where it looked and what to do.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.exitcodes import ExitCode
from tests.support.servers import free_port
from tests.support.tiny_model import VLLM_CPU_ENV
from training.synthetic import EXAMPLES

RAY_MISSING = "Ray Serve is not installed: pip install 'ray[serve]==2.60.0' (the cluster extra)"
pytest.importorskip("ray.serve", reason=RAY_MISSING, exc_type=ImportError)

SCTIR = [sys.executable, "-m", "service.cli", "cluster"]
ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240.0  # Ray, Serve, the engine replica's vLLM and the solver replica, on two shared cores
STOP_TIMEOUT_S = 60.0
PROBLEM = EXAMPLES[0]  # "What is 2^10 - 1?": the demo model writes code for it, and the vote is 1023


def cluster_env(tmp_ray: Path, marker: str, **settings: str) -> dict[str, str]:
    """A Ray of this test's own: its temp dir, a token of its own (none under the home directory), no usage
    stats; vLLM's CPU settings; `marker` in the environment every process of the run inherits."""
    inherited = {name: value for name, value in os.environ.items() if name not in ("RAY_ADDRESS", "SCTIR_RAY_ADDRESS")}
    return {
        **inherited,
        **VLLM_CPU_ENV,
        "PYTHONPATH": str(ROOT),
        "RAY_TMPDIR": str(tmp_ray),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "SCTIR_TEST_RUN": marker,
        **settings,
    }


def processes_of(marker: str) -> list[int]:
    """Processes whose environment carries `marker` (every process of one run: Ray's daemons and workers too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if f"SCTIR_TEST_RUN={marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours
                continue
    return found


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_ready(url: str, up: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert up.poll() is None, f"sctir cluster up exited with {up.returncode}"
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url}/readyz never answered 200 within {START_TIMEOUT_S} s")


def per_replica(tmp_ray: Path, name: str, timeout_s: float = 60) -> dict[str, float]:
    """Per solver replica (its ReplicaId), the sum of series `name` as the nodes' Ray metrics agents serve
    them: the targets deploy/ray/prometheus.yml scrapes, from the file Ray writes. Waits for a non-zero sum."""
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[str, float] = {}
        listings = tmp_ray.rglob("prom_metrics_service_discovery.json")  # the session's, and a link to it
        groups = [group for listing in listings for group in json.loads(listing.read_text())]
        for target in {target for group in groups for target in group["targets"]}:
            for family in text_string_to_metric_families(httpx.get(f"http://{target}/metrics", timeout=10).text):
                for sample in family.samples:
                    if sample.name == name and sample.labels.get("ReplicaId"):
                        replica = sample.labels["ReplicaId"]
                        found[replica] = found.get(replica, 0) + sample.value
        if any(found.values()) or time.monotonic() > deadline:
            return found


@pytest.fixture
def tmp_ray() -> Iterator[Path]:
    """Short (Ray's socket paths live under it), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_cluster_up_serves_through_serves_proxy_and_down_stops_everything(
    vllm_installed: None, demo_model: Path, tmp_ray: Path, tmp_path: Path
) -> None:
    port, marker = free_port(), secrets.token_hex(8)
    env = cluster_env(
        tmp_ray,
        marker,
        SCTIR_MODEL=str(demo_model),
        SCTIR_PORT=str(port),
        SCTIR_EXECUTOR="local",  # model code as a plain process: this test is about Ray, not the sandbox
        SCTIR_NUM_SAMPLES="4",
        SCTIR_KV_CACHE_MEMORY_BYTES=str(128 * 2**20),
    )
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen([*SCTIR, "up"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, up)
        assert len(processes_of(marker)) > 3  # `up`, Ray's GCS, raylet, replicas...: what must all be gone later
        response = httpx.post(f"{url}/solve", json={"problem": PROBLEM.problem, "seed": 0}, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["answer"] == str(PROBLEM.answer)
        counted = per_replica(tmp_ray, "ray_sctir_candidates_total")  # the solver replica's metrics, via Ray's
        assert list(counted.values()) == [4]  # one solver replica: its N candidates, under its ReplicaId
        assert per_replica(tmp_ray, "ray_sctir_engine_ready") == dict.fromkeys(counted, 1)

        down = subprocess.run([*SCTIR, "down"], env=env, capture_output=True, text=True, timeout=STOP_TIMEOUT_S)
        assert down.returncode == ExitCode.OK, down.stderr
        assert "removed the service" in down.stderr
        assert up.wait(timeout=STOP_TIMEOUT_S) == ExitCode.OK  # `up` saw its application go, and stopped Ray
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while processes_of(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_of(marker) == [], "Ray processes of the run outlived `sctir cluster down`"
        assert not port_open(port)
    except BaseException:
        print(log.read_text(errors="replace")[-6000:], file=sys.stderr)
        raise
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(timeout=STOP_TIMEOUT_S)
        for pid in processes_of(marker):  # only this run's, found by its marker
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("address", ["127.0.0.1:{free}", "192.0.2.1:6379"], ids=["refused", "unreachable"])
def test_cluster_down_where_no_cluster_runs_fails_within_seconds(address: str, tmp_ray: Path) -> None:
    address = address.format(free=free_port())
    env = cluster_env(tmp_ray, secrets.token_hex(8), SCTIR_RAY_ADDRESS=address)
    started = time.monotonic()
    down = subprocess.run([*SCTIR, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30  # ray.init alone waits minutes for an absent head
    assert down.returncode == ExitCode.UNAVAILABLE
    assert f"no Ray head answers at {address}" in down.stderr and "SCTIR_RAY_ADDRESS" in down.stderr


def test_cluster_down_with_no_cluster_on_this_machine_says_so(tmp_ray: Path) -> None:
    down = subprocess.run(
        [*SCTIR, "down"], env=cluster_env(tmp_ray, secrets.token_hex(8)), capture_output=True, text=True, timeout=120
    )
    assert down.returncode == ExitCode.UNAVAILABLE
    assert "no Ray cluster runs on this machine" in down.stderr and "sctir cluster up" in down.stderr
