"""The pool's health checks and what a lost sandbox tells the caller (issue 15, items 2, 3 and 7).

A frozen runner (SIGSTOP of the local runner, `docker pause` of a container) answers nothing, so
only a ping finds it: after a cancelled block whose kill it did not acknowledge, after a late
block, before an idle container is leased, and in ready(). A block that dies with its sandbox
says so in `sandbox_lost`, and the solver puts that in the candidate's `error`. The pool's
background tasks log under no request's id. Real runners throughout (the local one, and Docker
containers where marked: those skip without Docker unless SCTIR_REQUIRE_DOCKER=1); only the
LLM's text is scripted (tests/support/doubles.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from sandbox.backends import LocalBackend
from sandbox.execution import ExecutionStatus
from sandbox.executors import DockerExecutor, LocalExecutor
from sandbox.pool import SandboxPool
from sandbox.slots import FRESH_S
from service.logs import RequestIdFilter, request_id_var
from service.solver import Candidate, CandidateStatus, Solver
from tests.support.docker import IMAGE, LIMITS, containers_of, require_docker
from tests.support.doubles import ScriptedEngine
from tests.support.solving import PROBLEM, boxed, code, config

# The pools' default answer grace: a block unanswered for timeout_s + GRACE_S has hit the no-answer limit,
# which a health check must detect sooner.
GRACE_S = 10.0


FROZEN: list[int] = []  # hubs the test froze: killed at its end (a frozen runner would hold up close())


@pytest.fixture
async def local() -> AsyncIterator[LocalExecutor]:
    executor = LocalExecutor(timeout_s=1.0, concurrency=2)
    await executor.start()
    yield executor
    while FROZEN:
        with contextlib.suppress(ProcessLookupError):
            os.kill(FROZEN.pop(), signal.SIGKILL)
    await executor.close()


def freeze(executor: LocalExecutor) -> int:
    """SIGSTOP the runner's hub (its blocks and zygote run on, but nothing answers); its pid."""
    pid = executor.slots[0].handle.pid
    os.kill(pid, signal.SIGSTOP)
    FROZEN.append(pid)
    return pid


async def until(condition, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {within_s} s"
        await asyncio.sleep(0.05)


# -- item 2: a frozen runner is found by a ping, not at the no-answer limit ------------------------


async def test_a_runner_frozen_under_a_cancelled_block_is_pinged_and_replaced_before_the_next_block(
    local: LocalExecutor,
) -> None:
    slot = local.slots[0]
    asked: list[str] = []  # what the pool sends the runner
    send = slot.conn.send
    slot.conn.send = lambda message: (asked.append(message["op"]), send(message))[1]
    for _ in range(2):
        assert (await local.execute("1 + 1")).stdout == "2\n"
        await asyncio.sleep(FRESH_S)  # silent between blocks, as while a model generates
    assert asked == ["exec", "exec"]  # the hot path: a block, its result, no ping
    task = asyncio.create_task(local.execute("import time\ntime.sleep(0.5)"))
    await asyncio.sleep(0.2)
    frozen = freeze(local)
    task.cancel()  # an early stop: the kill is never acknowledged
    with pytest.raises(asyncio.CancelledError):
        await task
    started = time.monotonic()
    result = await local.execute("6 * 7")
    took = time.monotonic() - started
    assert (result.status, result.stdout) == (ExecutionStatus.OK, "42\n"), result
    # The next block went to the replacement; the frozen one got a ping (and, being stopped, a shutdown).
    assert [op for op in asked if op != "shutdown"] == ["exec", "exec", "exec", "cancel", "ping"]
    assert took < local.timeout_s + GRACE_S, took  # a ping's wait and a runner's start, not the no-answer limit
    assert local.stats()["replaced"] == 1
    assert frozen not in {slot.handle.pid for slot in local._live()}


async def test_a_runner_frozen_under_a_running_block_is_replaced_once_the_block_is_late(
    local: LocalExecutor,
) -> None:
    task = asyncio.create_task(local.execute("import time\ntime.sleep(0.5)\n'done'"))
    await asyncio.sleep(0.2)
    freeze(local)
    started = time.monotonic()
    result = await task
    took = time.monotonic() - started
    assert result.status is ExecutionStatus.KILLED, result
    assert result.sandbox_lost is not None
    assert result.sandbox_lost.startswith("the runner stopped answering while the block ran (no result within ")
    assert result.sandbox_lost.endswith(" s); replaced")
    assert took < local.timeout_s + 1.0 + local.health_timeout_s + 1.0 < local.timeout_s + GRACE_S, took
    assert (await local.execute("6 * 7")).stdout == "42\n"
    assert local.stats()["replaced"] == 1


async def test_ready_pings_a_silent_runner_and_says_no_while_none_answers(local: LocalExecutor) -> None:
    assert await local.ready()
    freeze(local)
    await asyncio.sleep(FRESH_S)
    assert not await local.ready()  # the ping went unanswered: replaced, and the replacement is starting
    assert local.stats()["replaced"] == 1
    deadline = time.monotonic() + 20
    while not await local.ready():
        assert time.monotonic() < deadline, local.stats()
        await asyncio.sleep(0.1)
    assert (await local.execute("6 * 7")).stdout == "42\n"


async def test_a_busy_event_loop_cannot_keep_a_checked_slot_from_its_lease() -> None:
    """However long this process takes to look after the answer (an engine step on its event loop), the
    answer settles the lease: a lease decided by the silence measured then would ping again, forever."""
    pool = SandboxPool(
        LocalBackend(), size=1, concurrency=2, isolate_tenants=True, start_timeout_s=15, health_timeout_s=5
    )
    hogging = True

    async def hog() -> None:
        while hogging:
            time.sleep(0.8)  # blocking on purpose: the loop does nothing else meanwhile
            await asyncio.sleep(0)

    try:
        await pool.start()
        await asyncio.sleep(FRESH_S)  # the idle slot is pinged as it is leased
        hogger = asyncio.create_task(hog())
        try:
            result = await pool.execute("6 * 7", tenant="request")
        finally:
            hogging = False
            await hogger
        assert (result.status, result.stdout) == (ExecutionStatus.OK, "42\n"), result
        assert pool.stats()["replaced"] == 0
    finally:
        await pool.close()


# -- item 3: a block that dies with its sandbox says so, and the candidate's error carries it -------


async def test_a_candidate_whose_block_died_with_its_sandbox_says_so_and_keeps_its_answer(
    local: LocalExecutor,
) -> None:
    hub = local.slots[0].handle.pid
    engine = ScriptedEngine(lambda candidate, step, prompt: ([code("import time\ntime.sleep(2)"), boxed(7)][step], 0.0))
    solving = asyncio.create_task(Solver(engine, local).solve(PROBLEM, config(num_samples=1), "r"))
    await until(lambda: local.stats()["busy"] == 1, within_s=10)
    os.kill(hub, signal.SIGKILL)  # the sandbox dies under the block (as an OOM kill of its container would do)
    result = await solving
    (candidate,) = result.candidates
    assert candidate.status is CandidateStatus.ANSWERED and candidate.answer == "7"  # what its text earned
    assert candidate.error == "sandbox: the runner died while the block ran (killed by SIGKILL); replaced"
    assert "The sandbox died (killed by SIGKILL); it is being replaced." in candidate.text  # what the model saw


def test_a_lost_sandbox_stays_in_the_error_whatever_the_candidate_ends_as() -> None:
    candidate = Candidate(index=0, seed=1)
    candidate.lost_sandbox("the container died while the block ran (it ran out of memory); replaced")
    candidate.lost_sandbox("a second one")  # the first is the one that tells
    candidate.finish(CandidateStatus.PRUNED, "hallucinated")
    sandbox = "sandbox: the container died while the block ran (it ran out of memory); replaced"
    assert candidate.error == f"hallucinated; {sandbox}"
    candidate.finish(CandidateStatus.ANSWERED)
    assert candidate.error == sandbox


# -- item 7: the pool's background tasks log under no request's id ---------------------------------------


async def test_background_pool_lines_carry_no_request_id_of_a_finished_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO, logger="sandbox.pool")
    executor = LocalExecutor(timeout_s=1.0, concurrency=2)
    token = request_id_var.set("finished-request")
    try:
        assert (await executor.execute("1")).stdout == "1\n"  # the first use starts the pool on its behalf
    finally:
        request_id_var.reset(token)
    try:
        caplog.clear()
        os.kill(executor.slots[0].handle.pid, signal.SIGKILL)  # later, in no request: the pool replaces it
        await until(lambda: executor.stats()["replaced"] == 1 and executor.stats()["warm"] == 1, within_s=20)
        lines = [(r.getMessage(), r.request_id) for r in caplog.records if r.name == "sandbox.pool"]
        assert any("failed" in message for message, _ in lines) and any("ready" in message for message, _ in lines)
        assert [request_id for _, request_id in lines] == [None] * len(lines), lines
    finally:
        await executor.close()


# -- Docker: a container frozen while idle ------------------------------------------------------------------


def docker_pool(**overrides) -> DockerExecutor:
    options = dict(image=IMAGE, size=1, concurrency=2, limits=LIMITS, pool_name=f"sctir-test-{uuid.uuid4().hex[:8]}")
    return DockerExecutor(**(options | overrides))


async def test_a_container_frozen_while_idle_is_replaced_before_a_request_gets_it() -> None:
    """The issue's case: the next request took 15.6 s and its candidates never knew why."""
    require_docker()
    executor = docker_pool()
    try:
        await executor.start()
        (container,) = containers_of(executor.backend.pool_name)
        await asyncio.sleep(FRESH_S)
        container.pause()
        started = time.monotonic()
        result = await executor.execute("6 * 7", tenant="next-request")
        took = time.monotonic() - started
        assert (result.status, result.stdout) == (ExecutionStatus.OK, "42\n"), result
        assert took < executor.timeout_s + GRACE_S, took  # a ping, then a container's start: not the no-answer limit
        assert executor.stats()["replaced"] == 1
        await executor.release("next-request")
    finally:
        await executor.close()
    await until(lambda: not containers_of(executor.backend.pool_name), within_s=10)


async def test_ready_is_false_while_every_container_is_frozen() -> None:
    require_docker()
    executor = docker_pool()
    try:
        await executor.start()
        assert await executor.ready()
        await asyncio.sleep(FRESH_S)
        for container in containers_of(executor.backend.pool_name):
            container.pause()
        assert not await executor.ready()
        assert executor.stats()["replaced"] == 1
        assert await executor.warmed(30) and await executor.ready()
    finally:
        await executor.close()
    await until(lambda: not containers_of(executor.backend.pool_name), within_s=10)
