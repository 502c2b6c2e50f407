"""SandboxPool: warm runners (sandbox/runner/) behind one Executor (sandbox/execution.py).

A *slot* is one runner and the framed connection to it (sandbox/connection.py),
started by a backend (sandbox/backends/): a hardened Docker container, or a plain
subprocess for the `local` executor (NOT isolated). `SandboxPool` keeps `size`
slots warm (sandbox/slots.py), runs at most `concurrency` executions in each,
pins a session (one candidate's blocks) to one slot, turns every failure a block
causes into an ExecutionResult and raises ExecutorError for its own. The Docker
executor leases each tenant (a /solve request) a slot of its own and destroys it
when the tenant is released, so no container ever runs two requests' code:

- a block that times out, crashes, floods its output or is OOM-killed is the
  runner's business: it answers with a result and stays up;
- a slot whose runner dies (the container was OOM-killed or removed) or stops
  answering fails the executions it was running with KILLED results that say
  so (`sandbox_lost`), and is replaced in the background;
- a slot is trusted again only once it has answered: after a block that ran
  LATE_S past its timeout (the runner kills a block at its timeout and answers
  at once, unless it froze), after a cancelled block whose kill the runner did
  not acknowledge, after a session close it did not acknowledge, and before a
  slot silent for FRESH_S is leased to a request or counted by `ready()`, the
  runner is pinged, and until it answers the slot takes no new block; one
  that does not answer within `health_timeout_s` is replaced. So a frozen
  container (`docker pause`, a stalled host) costs a request seconds, not the
  no-answer limit (`timeout + answer_grace_s`, which stays the bound for a
  runner that answers pings but not the block), and /readyz says when no slot
  answers. A normal execution pings nothing;
- a runner that finds itself damaged (its work root broken, its scratch
  space full) says so and is replaced the same way;
- `start()` removes the leftovers of a pool name's gone owners, never a live
  process's containers (sandbox/backends/owners.py); `close()` every container
  it made.

`stats()` gives the counters for metrics: warm slots, busy executions,
replaced slots and more. The executors (sandbox/executors.py) are pools of
one backend each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

from sandbox.backends import Backend, SandboxUnavailable, Slot
from sandbox.connection import RunnerLost
from sandbox.execution import ExecutionResult, ExecutionStatus, ExecutorError
from sandbox.runner.wire import RESET_NOTE
from sandbox.slots import FRESH_S, KEEPALIVE_S, WarmSlots

LATE_S = 1.0  # a block's result this long past its timeout is late: its runner is pinged


class SandboxPool(WarmSlots):
    """Warm runners behind the Executor protocol (see sandbox/execution.py).

    Each slot runs at most `concurrency` executions at once and keeps that
    many spares forked ahead of demand; a session sticks to the slot of its
    first block (and its live process there) until it is closed or the slot
    dies.

    `isolate_tenants` (the Docker executor): a tenant (one /solve request) is
    leased a slot of its own for its whole life, and `release(tenant)`
    destroys it: no two tenants ever share a container, so nothing one leaves
    behind or breaks (files, processes, inodes, a chmod-ed work root) can
    reach another. `size` slots are kept warm and unleased, started ahead of
    demand, so a lease costs nothing on the critical path; at most
    `max_slots` exist at once (a tenant beyond that waits for a release).
    Without it (the local executor, which isolates nothing anyway), `size`
    slots serve every caller, each execution going to the least busy one.

    `health_timeout_s`: how long a runner has to answer a health check (a
    ping; see the module docstring) before its slot is replaced.
    """

    def __init__(
        self,
        backend: Backend,
        size: int = 2,
        concurrency: int = 4,
        timeout_s: float = 5.0,
        max_output_bytes: int = 64 * 1024,
        start_timeout_s: float = 60.0,
        answer_grace_s: float = 10.0,
        name: str = "sandbox",
        isolate_tenants: bool = False,
        max_slots: int | None = None,
        keepalive_s: float = KEEPALIVE_S,
        health_timeout_s: float = 2.0,
    ) -> None:
        if size < 1 or concurrency < 1 or timeout_s <= 0 or max_output_bytes <= 0 or health_timeout_s <= 0:
            raise ValueError("size, concurrency, timeout_s, max_output_bytes and health_timeout_s must be positive")
        super().__init__(
            backend,
            size=size,
            concurrency=concurrency,
            max_slots=max(max_slots or 4 * size, size + 1) if isolate_tenants else size,
            start_timeout_s=start_timeout_s,
            no_answer_s=timeout_s + answer_grace_s,
            health_timeout_s=health_timeout_s,
            keepalive_s=keepalive_s,
            name=name,
        )
        self.isolate_tenants = isolate_tenants
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self._session_slot: dict[str, Slot] = {}
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._tenant_slot: dict[str, Slot] = {}
        self._picks = itertools.count(1)
        self.counters.update(executions=0, killed_by_slot_loss=0, released=0)

    async def close(self) -> None:
        """Stop every slot, remove everything the backend started and forget every session and lease."""
        await super().close()
        self._session_slot.clear()
        self._session_locks.clear()
        self._tenant_slot.clear()

    def stats(self) -> dict:
        """Counters for metrics: warm slots, busy executions, replaced slots, ..."""
        live = self._live()
        return {
            "size": self.size,
            "warm": len(live),
            "starting": self._starting,
            "busy": sum(slot.inflight for slot in live),
            "capacity": len(live) * self.concurrency,
            "sessions": len(self._session_slot),
            "leased": len(self._tenant_slot),
            "idle": len(self._idle()),
            **self.counters,
        }

    def _forget(self, slot: Slot) -> None:
        """A retired slot's sessions start over elsewhere; its tenant, if any, leases a fresh one next."""
        for session_id in list(slot.sessions):
            if self._session_slot.get(session_id) is slot:
                del self._session_slot[session_id]
        if slot.tenant is not None and self._tenant_slot.get(slot.tenant) is slot:
            del self._tenant_slot[slot.tenant]

    # -- routing: which slot runs a block ---------------------------------------------

    async def _acquire(self, session_id: str | None, tenant: str | None) -> Slot:
        """A live slot with room (the tenant's, the session's own); starts the pool if needed."""
        deadline = time.monotonic() + self.start_timeout_s
        async with self._changed:
            while True:
                if self._closed:
                    raise SandboxUnavailable("the executor is closed")
                slot = self._pick_for_tenant(tenant) if self.isolate_tenants else self._pick(session_id)
                if slot is not None:
                    slot.inflight += 1
                    if session_id is not None and self._session_slot.get(session_id) is not slot:
                        self._session_slot[session_id] = slot
                        slot.sessions.add(session_id)
                    return slot
                if not self._live() and not self._starting:
                    self._changed.release()
                    try:
                        await self.start()  # the first use, or every slot died: start (or fail) now
                    finally:
                        await self._changed.acquire()
                    continue
                self._replenish(delay=0.0)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SandboxUnavailable(f"no sandbox became available within {self.start_timeout_s} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def _pick(self, session_id: str | None) -> Slot | None:
        if session_id is not None:
            slot = self._session_slot.get(session_id)
            if slot is not None:
                if slot.alive:
                    return slot if slot.trusted and slot.inflight < slot.capacity else None
                del self._session_slot[session_id]  # its slot died: the state is gone, start over
        candidates = [slot for slot in self._live() if slot.trusted and slot.inflight < slot.capacity]
        if not candidates:
            return None
        # Among equals, the least recently used: consecutive executions alternate between slots, so
        # each container carries half of the forks and exits that executions leave behind (and its
        # CPU quota is not what a closed loop of single blocks waits on).
        slot = min(candidates, key=lambda slot: (slot.inflight, len(slot.sessions), slot.last_used))
        slot.last_used = next(self._picks)
        return slot

    def _pick_for_tenant(self, tenant: str | None) -> Slot | None:
        """The tenant's own slot, leasing it an idle one first; None while it has no room or none is idle."""
        key = tenant or ""  # no tenant: the one default tenant
        slot = self._tenant_slot.get(key)
        if slot is None or not slot.alive:
            slot = self._lease(key)
            if slot is None:
                return None
        return slot if slot.trusted and slot.inflight < slot.capacity else None

    def _lease(self, key: str) -> Slot | None:
        """Lease an idle slot to tenant `key`; None while none is idle and trusted.

        One silent for FRESH_S is pinged as it is leased (it may have frozen while it waited; a
        millisecond per request otherwise): the tenant's first block waits for the answer, and
        without one the slot is replaced and the tenant leases another. (Leased before the answer,
        not after: the answer itself must settle it, however long this process takes to look.)
        """
        idle = [slot for slot in self._idle() if slot.trusted]
        if not idle:
            return None
        slot = idle[0]  # the longest idle: the containers take turns, and each is checked as it is leased
        slot.tenant = key
        self._tenant_slot[key] = slot
        if slot.silent_s() >= FRESH_S:
            self._verify(slot, f"{slot.silent_s():.1f} s idle")
        self._replenish(delay=0.0)  # another idle slot for the next tenant, ahead of its demand
        return slot

    async def release(self, tenant: str) -> None:
        """The tenant is done: its slot (container) is destroyed, never to serve anyone else."""
        slot = self._tenant_slot.pop(tenant, None)
        if slot is None:
            return
        self.counters["released"] += 1
        self._retire(slot)

    # -- execution -----------------------------------------------------------------

    async def execute(self, code: str, session_id: str | None = None, tenant: str | None = None) -> ExecutionResult:
        """Run a block (see Executor.execute): what it causes is the result; ExecutorError is the pool's own fault."""
        started = time.monotonic()
        self.counters["executions"] += 1
        try:
            if session_id is None:
                return await self._execute(code, None, tenant, started)
            lock = self._session_locks.setdefault(session_id, asyncio.Lock())
            async with lock:  # one block of a session at a time, in order
                return await self._execute(code, session_id, tenant, started)
        except ExecutorError:
            raise
        except Exception as error:  # a bug here is the executor's fault too, never the block's output
            raise ExecutorError(f"the sandbox pool failed: {error!r}") from error

    async def _execute(self, code: str, session_id: str | None, tenant: str | None, started: float) -> ExecutionResult:
        slot = await self._acquire(session_id, tenant)
        try:
            return await self._run(slot, code, session_id, started)
        finally:
            slot.inflight -= 1
            await self._notify()

    async def _run(self, slot: Slot, code: str, session_id: str | None, started: float) -> ExecutionResult:
        """Run the block on `slot`: the runner's result, or a KILLED one if the runner died or froze under it."""
        message = {
            "op": "exec",
            "code": code,
            "session": session_id,
            "timeout": self.timeout_s,
            "cap": self.max_output_bytes,
        }
        try:
            request_id, future = slot.conn.request(message)
        except RunnerLost as error:
            raise ExecutorError(f"the sandbox was lost before the block ran ({error})") from None
        sent = time.monotonic()
        try:
            reply = await self._reply(slot, future)
        except (TimeoutError, RunnerLost) as error:
            slot.conn.pending.pop(request_id, None)
            return await self._lost(slot, error, time.monotonic() - sent, session_id, started)
        except asyncio.CancelledError:
            await self._cancel(slot, request_id, future)
            raise
        status = ExecutionStatus(reply["status"])
        if session_id is not None and status in (ExecutionStatus.TIMEOUT, ExecutionStatus.KILLED):
            if self._session_slot.get(session_id) is slot:
                slot.sessions.discard(session_id)  # the runner dropped the session's process
        return _result(status, reply.get("stdout", ""), reply.get("error", ""), started)

    async def _reply(self, slot: Slot, future: asyncio.Future[dict]) -> dict:
        """The runner's result of a block; RunnerLost if it dies, TimeoutError if it stops answering.

        A runner kills a block at its timeout and answers at once, so a result LATE_S past the
        timeout means the runner may have frozen: it is pinged then, and one that does not answer
        is replaced at once instead of at the no-answer limit (timeout + answer_grace_s).
        """
        sent = time.monotonic()
        limit = self.no_answer_s
        late = min(self.timeout_s + LATE_S, limit)
        try:
            return await asyncio.wait_for(asyncio.shield(future), late)
        except TimeoutError:
            if late >= limit:
                raise
        healthy = await asyncio.shield(self._verify(slot, f"a block ran {LATE_S:g} s past its timeout"))
        if not healthy and not future.done():
            raise TimeoutError
        return await asyncio.wait_for(asyncio.shield(future), max(limit - (time.monotonic() - sent), 0.0))

    async def _lost(
        self, slot: Slot, error: Exception, waited: float, session_id: str | None, started: float
    ) -> ExecutionResult:
        """The KILLED result of a block whose runner died (RunnerLost) or stopped answering; the slot is replaced."""
        self.counters["killed_by_slot_loss"] += 1
        note = f" {RESET_NOTE}" if session_id is not None else ""
        unit = self.backend.unit
        if isinstance(error, RunnerLost):
            reason = await self.backend.death_reason(slot)
            await self._condemn(slot, reason)
            message = f"The sandbox died ({reason}); it is being replaced.{note}"
            lost = f"the {unit} died while the block ran ({reason}); replaced"
        else:
            await self._condemn(slot, f"no answer within {waited:.0f} s")
            message = f"The sandbox stopped answering; it is being replaced.{note}"
            lost = f"the {unit} stopped answering while the block ran (no result within {waited:.0f} s); replaced"
        return _result(ExecutionStatus.KILLED, "", message, started, lost)

    async def _cancel(self, slot: Slot, request_id: int, future: asyncio.Future[dict]) -> None:
        """The block's caller gave up: kill the block, and wait (a little) until it is dead before giving up
        the slot; a kill the runner does not acknowledge makes the slot suspect (it may have frozen under it)."""
        acknowledged = False
        with contextlib.suppress(Exception):
            slot.conn.send({"op": "cancel", "id": request_id})
            await asyncio.wait_for(asyncio.shield(future), self.health_timeout_s)
            acknowledged = True
        slot.conn.pending.pop(request_id, None)
        if not acknowledged and slot.alive:
            self._verify(slot, "a cancelled block's kill was not acknowledged")

    async def close_session(self, session_id: str) -> None:
        """Kill the session's process (a block running in it ends KILLED) and forget it."""
        self._session_locks.pop(session_id, None)
        slot = self._session_slot.pop(session_id, None)
        if slot is None:
            return
        slot.sessions.discard(session_id)
        if slot.alive:
            try:
                await slot.conn.call({"op": "close_session", "session": session_id}, self.health_timeout_s)
            except TimeoutError:  # the runner kills the session's process and says so at once, unless it froze
                self._verify(slot, "a session's close was not acknowledged")
            except RunnerLost:
                pass  # its watcher replaces it


def _result(
    status: ExecutionStatus, stdout: str, error: str, started: float, sandbox_lost: str | None = None
) -> ExecutionResult:
    return ExecutionResult(status, stdout, error, time.monotonic() - started, sandbox_lost)
