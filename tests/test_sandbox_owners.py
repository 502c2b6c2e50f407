"""Pools reap only leftovers: containers whose owner process is gone, never a live process's.

Real processes, real containers: a pool in a separate live process and one SIGKILLed, both
sharing the pool name with pools started here. The verdicts of `is_leftover` are checked on
real processes too (alive, exited, a zombie, a pid now someone else's). The Docker tests need
the engine and the sandbox image (see tests/test_sandbox_docker.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sandbox.backends.owners import CREATED_GRACE_S, Owner, is_leftover
from sandbox.execution import ExecutionStatus
from sandbox.executors import DockerExecutor
from tests.support.docker import IMAGE, LIMITS, containers_of, make_pool, require_docker

ROOT = Path(__file__).resolve().parents[1]

# A pool in a process of its own: it starts, executes a block as tenant "t" (a leased container
# and a warm one), says which containers it has, then runs each JSON-encoded block it reads on
# stdin as the same tenant and answers with the result. EOF: it closes its pool and exits.
OWNER = """
import asyncio, json, sys
from sandbox.backends import DockerLimits
from sandbox.executors import DockerExecutor

async def main() -> None:
    image, pool_name, limits = sys.argv[1], sys.argv[2], DockerLimits(**json.loads(sys.argv[3]))
    ex = DockerExecutor(image=image, size=1, concurrency=2, timeout_s=5.0, limits=limits, pool_name=pool_name)
    await ex.start()
    loop = asyncio.get_running_loop()

    async def report(code: str) -> None:
        result = await ex.execute(code, tenant="t")
        await ex.warmed()
        containers = sorted(slot.handle["container"].id for slot in ex._live())
        print(json.dumps({"status": result.status, "stdout": result.stdout, "error": result.error,
                          "replaced": ex.stats()["replaced"], "containers": containers}), flush=True)

    await report("1")
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        await report(json.loads(line))
    await ex.close()

asyncio.run(main())
"""


class OwnerProcess:
    """The OWNER program in a subprocess, spoken to over its stdin/stdout."""

    def __init__(self, pool_name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, IMAGE, pool_name, json.dumps(LIMITS.__dict__)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def reply(self) -> dict:
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 120)
        assert line, f"the owner process ended (exit code {self.proc.poll()})"
        return json.loads(line)

    async def execute(self, code: str) -> dict:
        self.proc.stdin.write(json.dumps(code) + "\n")
        self.proc.stdin.flush()
        return await self.reply()

    def end(self) -> int:
        if self.proc.poll() is None:
            self.proc.stdin.close()
        return self.proc.wait(timeout=60)


@pytest.fixture
def name() -> Iterator[str]:
    """A pool name of the test's own; whatever a failed test left under it is removed afterwards."""
    require_docker()
    name = f"sctir-test-{uuid.uuid4().hex[:8]}"
    yield name
    for leftover in containers_of(name):
        leftover.remove(force=True)


@asynccontextmanager
async def started(ex: DockerExecutor) -> AsyncIterator[DockerExecutor]:
    await ex.start()
    try:
        yield ex
    finally:
        await ex.close()


def states(ids: list[str]) -> dict[str, str | None]:
    """Each container's state ("running", "exited", "paused"...), None where it is gone."""
    import docker
    import docker.errors

    client = docker.from_env(version="auto")
    found: dict[str, str | None] = {}
    for container_id in ids:
        try:
            found[container_id] = client.containers.get(container_id).status
        except docker.errors.NotFound:
            found[container_id] = None
    return found


async def works(ex: DockerExecutor) -> None:
    result = await ex.execute("6 * 7", tenant="here")
    assert (result.status, result.stdout) == (ExecutionStatus.OK, "42\n"), result


async def test_a_live_process_sharing_the_pool_name_keeps_its_containers(name: str) -> None:
    other = OwnerProcess(name)
    try:
        first = await other.reply()
        assert first["status"] == "ok" and len(first["containers"]) == 2, first  # leased + warm
        async with started(make_pool(size=1, pool_name=name)) as ours:  # its start looks for leftovers
            await works(ours)
            assert set(states(first["containers"]).values()) == {"running"}
            after = await other.execute("6 * 7")  # on the container it leased before our start
            assert (after["status"], after["stdout"], after["replaced"]) == ("ok", "42\n", 0), after
            assert after["containers"] == first["containers"]
        assert set(states(first["containers"]).values()) == {"running"}  # our close took only ours
    finally:
        assert other.end() == 0
    assert containers_of(name) == []


async def test_the_containers_of_a_killed_process_stop_and_the_next_start_removes_them(name: str) -> None:
    import docker

    async with started(make_pool(size=1, pool_name=name)) as keeper:  # a live owner of the name, here
        await works(keeper)
        await keeper.warmed()
        kept = [slot.handle["container"].id for slot in keeper._live()]
        doomed = OwnerProcess(name)  # its start looks for leftovers too
        try:
            frozen, stopping = (await doomed.reply())["containers"]
            docker.from_env(version="auto").containers.get(frozen).pause()  # it cannot see its owner go
        finally:
            doomed.proc.send_signal(signal.SIGKILL)  # no close(): its containers are left behind
            doomed.proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while states([stopping])[stopping] == "running":  # its owner's stream closed: the runner stops
            assert time.monotonic() < deadline, "a killed owner's container kept running"
            await asyncio.sleep(0.1)
        assert states([frozen, stopping]) == {frozen: "paused", stopping: "exited"}
        async with started(make_pool(size=1, pool_name=name)) as fresh:
            assert states([frozen, stopping]) == {frozen: None, stopping: None}  # the gone owner's: removed
            await works(fresh)
            assert set(states(kept).values()) == {"running"}  # the live owner's: untouched
            await works(keeper)
            assert keeper.stats()["replaced"] == 0
    assert containers_of(name) == []


def start_ticks(pid: int) -> str:
    """A process's start time in clock ticks after boot (/proc/<pid>/stat, field 22)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()[19]


def state_of(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()[0]


def owner_of(pid: int, pid_space: str | None = None) -> Owner:
    return Owner(socket.gethostname(), pid, start_ticks(pid), pid_space or Owner.current().pid_space)


def container(owner: Owner | None, state: str, age_s: float = 0.0) -> dict:
    """What Docker's container list says of a container with `owner`'s labels."""
    labels = {"sctir.sandbox": "1", **(owner.labels() if owner else {})}
    return {"Labels": labels, "State": state, "Created": int(time.time() - age_s)}


RUNNING_STATES = ["running", "paused", "restarting"]
STOPPED_STATES = ["exited", "dead", "created"]


@pytest.mark.parametrize("state", RUNNING_STATES + STOPPED_STATES)
def test_a_live_owners_containers_are_never_leftovers(state: str) -> None:
    """Running, it is in use; stopped, its owner may still ask it why its runner died, then removes it."""
    leftover, why = is_leftover(container(Owner.current(), state))  # this process: another pool of the same name
    assert not leftover and why.endswith("is alive"), why
    with subprocess.Popen(["sleep", "60"]) as other:  # another live process of this host
        try:
            assert not is_leftover(container(owner_of(other.pid), state))[0]
        finally:
            other.kill()


@pytest.mark.parametrize("state", RUNNING_STATES + STOPPED_STATES)
def test_a_gone_owners_containers_are_leftovers(state: str) -> None:
    with subprocess.Popen(["sleep", "60"]) as ended:
        owner = owner_of(ended.pid)
        ended.kill()
    leftover, why = is_leftover(container(owner, state))
    assert leftover and why.endswith("is gone"), why


def test_a_pid_now_someone_elses_is_a_gone_owner() -> None:
    reused = Owner.current()
    reused = Owner(reused.host, reused.pid, str(int(reused.started) - 1), reused.pid_space)  # an earlier process
    assert is_leftover(container(reused, "running"))[0]


def test_a_zombie_owner_is_gone() -> None:
    with subprocess.Popen(["sleep", "60"]) as zombie:
        owner = owner_of(zombie.pid)
        assert not is_leftover(container(owner, "running"))[0]
        os.kill(zombie.pid, signal.SIGKILL)  # dead, and not yet waited for
        deadline = time.monotonic() + 10
        while state_of(zombie.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert is_leftover(container(owner, "running"))[0]


@pytest.mark.parametrize("labels", ["elsewhere", "older"])
def test_an_owner_out_of_sight_loses_only_stopped_containers(labels: str) -> None:
    """Another host or pid namespace (its pids mean nothing here), or labels without an owner process."""
    # This very process, as seen from another pid space: alive or not, it cannot be told from here.
    owner = owner_of(os.getpid(), pid_space="another-boot/pid:[4026531836]") if labels == "elsewhere" else None
    for state in RUNNING_STATES:
        assert not is_leftover(container(owner, state))[0], state
    assert is_leftover(container(owner, "exited"))[0] and is_leftover(container(owner, "dead"))[0]
    assert not is_leftover(container(owner, "created"))[0]  # maybe its owner is about to start it
    assert is_leftover(container(owner, "created", age_s=CREATED_GRACE_S + 5))[0]
