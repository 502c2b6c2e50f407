"""The sandbox pool through the compose stack's Docker socket proxy (deploy/docker-api/haproxy.cfg).

The proxy is Debian's haproxy running the shipped configuration with the compose file's switches
(deploy/docker-api/Dockerfile's defaults, then docker-compose.yml's docker-api environment); only its
idle timeouts are cut from 10 minutes to IDLE_TIMEOUT_S, so that "idle longer than the proxy's
timeouts" takes seconds. The pool reaches the engine only through it (DOCKER_HOST, as the solver
in the stack does): container create, attach, start and remove, and each runner's long-lived
attached stream. Each case fails if the pool loses a runner without noticing: a session's state
must survive idle periods, a killed container or a restarted proxy must fail what ran there (never
hang it, never answer as if nothing happened) and be replaced, and nothing may be left behind.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml

from sandbox.backends.owners import LABEL_POOL
from sandbox.execution import ExecutionStatus, ExecutorError
from sandbox.executors import DockerExecutor
from sandbox.slots import KEEPALIVE_S
from tests.support.docker import IMAGE, LIMITS, require_docker, unavailable
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "docker-api" / "haproxy.cfg"
IDLE_TIMEOUT_S = 15.0  # longer than a runner takes to say hello on a busy machine (the stream is silent before)
ENGINE = "unix:///var/run/docker.sock"


def proxy_environment() -> dict[str, str]:
    """The proxy's switches as the stack sets them: the image's defaults, then the compose file's."""
    dockerfile = (ROOT / "deploy" / "docker-api" / "Dockerfile").read_text()
    env_block = dockerfile.split("\nENV ", 1)[1].split("\n\n", 1)[0]
    switches = dict(re.findall(r"([A-Z_0-9]+)=(\S+)", env_block))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["docker-api"]
    switches |= {name: str(value) for name, value in compose["environment"].items()}
    return switches


class Proxy:
    """Debian's haproxy on the shipped configuration, on a fixed port (so it can be restarted there)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.log = workdir / "haproxy.log"
        config = CONFIG.read_text()
        for line in ("timeout client 10m", "timeout server 10m", "bind ${BIND_CONFIG}", "pidfile /run/haproxy.pid"):
            assert line in config, f"{CONFIG.name} changed: no {line!r}"
        config = re.sub(r"timeout (client|server) 10m", rf"timeout \1 {IDLE_TIMEOUT_S:g}s", config)
        config = config.replace("${BIND_CONFIG}", f"127.0.0.1:{self.port}")
        config = config.replace("pidfile /run/haproxy.pid", f"pidfile {workdir / 'haproxy.pid'}")
        config = config.replace("server-state-file /var/lib/haproxy/server-state", "")
        config = config.replace("load-server-state-from-file global", "")
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(config)
        self.env = {**os.environ, **proxy_environment(), "SOCKET_PATH": "/var/run/docker.sock"}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("haproxy") or "haproxy", "-db", "-f", str(self.config)],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/_ping", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def require_haproxy() -> None:
    if shutil.which("haproxy") is None:
        unavailable("no haproxy (Debian package haproxy; scripts/install-system-deps.sh)", "SCTIR_REQUIRE_DOCKER")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    require_docker()
    require_haproxy()
    proxy = Proxy(tmp_path_factory.mktemp("proxy"))
    proxy.start()
    yield proxy
    proxy.stop()


def engine():
    """A client of the engine itself, not through the proxy: to kill containers behind its back."""
    import docker

    return docker.DockerClient(base_url=ENGINE, version="auto")


def containers_of(pool_name: str) -> list:
    return engine().containers.list(all=True, filters={"label": f"{LABEL_POOL}={pool_name}"})


def leased_container(pool: DockerExecutor, tenant: str) -> str:
    """The id of the container `tenant` is leased."""
    return pool._tenant_slot[tenant].handle["container"].id


@pytest_asyncio.fixture(loop_scope="module")
async def pool_through(proxy: Proxy, monkeypatch: pytest.MonkeyPatch):
    """Pools whose engine is the proxy; each checked, once closed, to have left no container behind."""
    monkeypatch.setenv("DOCKER_HOST", proxy.url)
    pools: list[DockerExecutor] = []

    async def make(keepalive_s: float = 0.5, **overrides) -> DockerExecutor:
        options = dict(image=IMAGE, size=1, concurrency=2, timeout_s=20.0, limits=LIMITS, start_timeout_s=30.0)
        pool = DockerExecutor(pool_name=f"sctir-proxy-{uuid.uuid4().hex[:8]}", **(options | overrides))
        pool.keepalive_s = keepalive_s
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        if proxy.process is None or proxy.process.poll() is not None:
            proxy.start()
        await pool.close()
        assert containers_of(pool.name) == [], f"{pool.name} left containers behind"


def test_the_proxy_passes_what_the_pool_needs_and_nothing_else(proxy: Proxy) -> None:
    """Upstream's filter with the stack's switches: containers, images, info (and ping, version, events)."""
    url = f"http://127.0.0.1:{proxy.port}"
    for path in ("/_ping", "/version", "/v1.41/containers/json", "/images/json", "/info"):
        assert httpx.get(url + path, timeout=5).status_code == 200, path
    for method, path in [
        ("GET", "/volumes"),
        ("GET", "/v1.41/networks"),
        ("POST", "/exec/0123abcd/start"),
        ("GET", "/system/df"),
        ("GET", "/swarm"),
        ("GET", "/plugins"),
        ("POST", "/build"),
    ]:
        assert httpx.request(method, url + path, timeout=5).status_code == 403, (method, path)


def test_the_keepalive_is_well_inside_the_proxy_timeouts() -> None:
    timeouts = re.findall(r"timeout (?:client|server) (\d+)m", CONFIG.read_text())
    assert timeouts and all(KEEPALIVE_S * 5 <= int(minutes) * 60 for minutes in timeouts)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_session_outlives_idle_periods_longer_than_the_proxy_timeouts(pool_through) -> None:
    pool = await pool_through(keepalive_s=IDLE_TIMEOUT_S / 4)
    first = await pool.execute("x = 41\nprint('set')", session_id="s", tenant="t")
    assert first.status is ExecutionStatus.OK, first
    leased = leased_container(pool, "t")
    await asyncio.sleep(2 * IDLE_TIMEOUT_S + 1)
    second = await pool.execute("print(x + 1)", session_id="s", tenant="t")
    assert (second.status, second.stdout.strip()) == (ExecutionStatus.OK, "42"), second
    assert pool.counters["replaced"] == 0
    assert leased_container(pool, "t") == leased


@pytest.mark.asyncio(loop_scope="module")
async def test_without_keepalives_the_proxy_cuts_idle_streams(pool_through) -> None:
    """The premise of the test above: the proxy's idle timeout ends a runner nobody talks to."""
    pool = await pool_through(keepalive_s=3600.0)
    await pool.execute("x = 41", session_id="s", tenant="t")
    await asyncio.sleep(2 * IDLE_TIMEOUT_S + 1)
    assert pool.counters["replaced"] >= 1
    after = await pool.execute("print(x + 1)", session_id="s", tenant="t")
    assert after.stdout.strip() != "42", after


@pytest.mark.asyncio(loop_scope="module")
async def test_a_container_killed_behind_the_proxy_fails_its_block_and_is_replaced(pool_through) -> None:
    pool = await pool_through()
    block = asyncio.create_task(pool.execute("import time\ntime.sleep(15)\nprint('finished')", tenant="t"))
    while pool.stats()["busy"] == 0:
        await asyncio.sleep(0.05)
    leased = leased_container(pool, "t")
    engine().containers.get(leased).kill()
    result = await asyncio.wait_for(block, timeout=10)  # not the block's 15 s: the loss is noticed at once
    assert result.status is ExecutionStatus.KILLED and result.sandbox_lost, result
    assert pool.counters["replaced"] >= 1
    again = await pool.execute("print(6 * 7)", tenant="t")
    assert (again.status, again.stdout.strip()) == (ExecutionStatus.OK, "42"), again
    assert leased_container(pool, "t") != leased


@pytest.mark.asyncio(loop_scope="module")
async def test_a_proxy_restart_fails_the_running_block_and_the_pool_recovers_through_it(pool_through, proxy) -> None:
    pool = await pool_through()
    block = asyncio.create_task(pool.execute("import time\ntime.sleep(15)\nprint('finished')", tenant="t"))
    while pool.stats()["busy"] == 0:
        await asyncio.sleep(0.05)
    proxy.stop()
    result = await asyncio.wait_for(block, timeout=10)
    assert result.status is ExecutionStatus.KILLED and result.sandbox_lost, result
    # While the proxy is down the engine is unreachable: a block fails at once, saying so (ExecutorError).
    with pytest.raises(ExecutorError, match="no Docker engine answers"):
        await asyncio.wait_for(pool.execute("print(1)", tenant="u"), timeout=10)
    proxy.start()
    after = await asyncio.wait_for(pool.execute("print(6 * 7)", tenant="v"), timeout=60)
    assert (after.status, after.stdout.strip()) == (ExecutionStatus.OK, "42"), after
    assert pool.counters["replaced"] >= 1
