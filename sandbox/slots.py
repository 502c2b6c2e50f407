"""A pool's slots, kept warm and healthy: starting runners ahead of demand and replacing the ones that fail.

`WarmSlots` keeps `size` idle slots of a backend's runners (sandbox/backends/), at
most `max_slots` in all, and takes a slot out of service (retires it), starting a
replacement in the background, when
- its runner dies (the container was OOM-killed or removed, the process killed):
  a watcher per slot asks the backend why and logs it;
- its runner says it is damaged (its work root broken, its scratch space full);
- it fails a health check: a slot under a check (`_verify`, a ping) takes no new
  block until its runner answers, and one that does not answer within
  `health_timeout_s` is replaced. `ready()` pings the slots silent for FRESH_S,
  so that a container frozen while idle (`docker pause`, a stalled host) is found
  before a request meets it; SandboxPool (sandbox/pool.py, the subclass) checks
  slots whose blocks or kills go unanswered, and slots it leases.

Every runner's stream also carries a ping each `keepalive_s` (see KEEPALIVE_S). The
background tasks run in a context of their own (see sandbox.connection.background).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid

from sandbox.backends import Backend, SandboxUnavailable, Slot
from sandbox.connection import RunnerLost, background

# The pool's log: a slot starting, failing or being replaced is what operators (and the fault tier) follow there.
log = logging.getLogger("sandbox.pool")

# Every runner's stream carries a ping at least this often: a proxy between the pool and the Docker
# engine closes idle streams (the compose stack's docker-api, HAProxy: after 10 minutes), which would
# end the runner (its stdin closes) and with it the sessions it holds.
KEEPALIVE_S = 60.0
FRESH_S = 1.0  # a runner heard from this recently needs no ping to be leased or counted ready


class WarmSlots:
    """Slots of `backend`'s runners, each running at most `concurrency` blocks; `size` of them idle and warm.

    `max_slots`: at most this many exist at once. `no_answer_s`: the longest a block's result
    may take (a retired slot's executions get as long to end before it is stopped anyway).
    `health_timeout_s`: how long a runner has to answer a health check before its slot is
    replaced. What a retired slot leaves behind is the subclass's (`_forget`).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        size: int,
        concurrency: int,
        max_slots: int,
        start_timeout_s: float,
        no_answer_s: float,
        health_timeout_s: float,
        keepalive_s: float,
        name: str,
    ) -> None:
        self.backend = backend
        self.size = size
        self.concurrency = concurrency
        self.max_slots = max_slots
        self.start_timeout_s = start_timeout_s
        self.no_answer_s = no_answer_s
        self.health_timeout_s = health_timeout_s
        self.keepalive_s = keepalive_s
        self.name = name
        self.slots: list[Slot] = []
        self.start_error: str | None = None
        self.counters = {"replaced": 0, "slot_failures": 0}
        self._prepared = False
        self._closed = False
        self._changed = asyncio.Condition()  # notified whenever a slot starts, ends, frees room or passes a check
        self._starting = 0
        self._tasks: set[asyncio.Task] = set()
        self._replenishing = False
        self._launches = itertools.count(1)
        self._start_lock = asyncio.Lock()
        self._keeping_alive = False

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start `size` warm slots; raises SandboxUnavailable if none can start (and ready() stays False)."""
        async with self._start_lock:
            self._closed = False
            try:
                if not self._prepared:
                    await self.backend.prepare()
                    self._prepared = True
            except Exception as error:
                self.start_error = str(error)
                raise SandboxUnavailable(self.start_error) from error
            missing = self.size - len(self._idle()) - self._starting
            results = await asyncio.gather(*(self._add_slot() for _ in range(missing)), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors and not self._live():
                self.start_error = str(errors[0])
                raise SandboxUnavailable(self.start_error) from errors[0]
            for error in errors:  # some started: retry the others in the background
                log.warning("a sandbox slot failed to start: %s", error)
            if errors:
                self._replenish(delay=0.5)
            self.start_error = None
            if not self._keeping_alive:
                self._keeping_alive = True
                self._spawn_task(self._keep_alive())

    async def ready(self) -> bool:
        """Whether a block can run now: a slot is trusted and was heard from within FRESH_S, or answers a ping.

        The pings (at most `health_timeout_s`) find slots that froze while idle: they are replaced, and
        until a replacement is up the pool is not ready.
        """
        live = self._live()
        if any(slot.trusted and slot.silent_s() < FRESH_S for slot in live):
            return True
        checks = [self._verify(slot, "a readiness probe") for slot in live]
        return any(await asyncio.gather(*(asyncio.shield(check) for check in checks)))

    async def close(self) -> None:
        """Stop every slot and remove everything the backend started."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        slots, self.slots = self.slots, []
        for slot in slots:
            slot.retired = True
        await asyncio.gather(*(self.backend.stop(slot) for slot in slots), return_exceptions=True)
        await self.backend.cleanup()
        await self._notify()

    async def warmed(self, timeout_s: float = 90.0) -> bool:
        """Wait until `size` slots are idle and none is starting (the steady state); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self._idle()) < self.size or self._starting:
            if self._closed or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _live(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.alive]

    def _idle(self) -> list[Slot]:
        """Live slots leased to no tenant (every live slot, where nothing is leased)."""
        return [slot for slot in self._live() if slot.tenant is None]

    def _short(self) -> bool:
        """Whether a slot should be started: fewer than `size` idle, and room under `max_slots`."""
        return len(self._idle()) + self._starting < self.size and len(self._live()) + self._starting < self.max_slots

    def _spawn_task(self, coroutine) -> asyncio.Task:
        """A background task of the pool's (in a clean context, see `background`), cancelled by close()."""
        task = background(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- health ------------------------------------------------------------------

    def _verify(self, slot: Slot, why: str) -> asyncio.Task[bool]:
        """Ping `slot` (one check at a time), which takes no new block until it answers; True if it did."""
        if slot.check is None:
            slot.check = self._spawn_task(self._check(slot, why))
        return slot.check

    async def _check(self, slot: Slot, why: str) -> bool:
        """One health check: a runner that does not answer a ping within `health_timeout_s` is replaced."""
        try:
            await slot.conn.call({"op": "ping"}, self.health_timeout_s)
            healthy = True
        except TimeoutError:
            healthy = False
            await self._condemn(slot, f"no answer to a health check within {self.health_timeout_s:g} s after {why}")
        except RunnerLost:
            healthy = False  # dead, not frozen: its watcher replaces it, saying why it died
        finally:
            slot.check = None
        await self._notify()
        return healthy

    async def _keep_alive(self) -> None:
        """Ping every live runner each `keepalive_s` (see KEEPALIVE_S): traffic both ways on its stream."""
        try:
            while not self._closed:
                await asyncio.sleep(self.keepalive_s)
                await asyncio.gather(*(self._ping(slot) for slot in self._live()))
        finally:
            self._keeping_alive = False

    async def _ping(self, slot: Slot) -> None:
        # Only the traffic matters here: a runner that died or froze is its watcher's and the health checks' business.
        with contextlib.suppress(TimeoutError, RunnerLost):
            await slot.conn.call({"op": "ping"}, self.keepalive_s)

    # -- starting and replacing slots ------------------------------------------------

    async def _add_slot(self) -> Slot:
        """Start a slot and put it in service, watched."""
        self._starting += 1
        name = f"{self.name}-{uuid.uuid4().hex[:8]}-{next(self._launches)}"
        try:
            slot = await self._launch(name)
            slot.conn.on_unhealthy = lambda reason: self._spawn_task(self._condemn(slot, f"unhealthy: {reason}"))
            if self._closed:
                await self.backend.stop(slot)
                raise SandboxUnavailable("the pool is closed")
            self.slots.append(slot)
            self._spawn_task(self._watch(slot))
            log.info(
                "sandbox slot %s ready (%s backend, zygote import %.2f s)",
                name,
                self.backend.name,
                slot.hello.get("import_s", 0),
            )
            return slot
        finally:
            self._starting -= 1
            await self._notify()

    async def _launch(self, name: str) -> Slot:
        """A runner the backend launched, once it said hello; stopped, and SandboxUnavailable, if it is not ready."""
        conn, handle = await self.backend.launch(name, self.concurrency)
        slot = Slot(name=name, conn=conn, capacity=self.concurrency, hello={}, handle=handle)
        try:
            hello = await asyncio.wait_for(asyncio.shield(conn.hello), self.start_timeout_s)
        except (TimeoutError, RunnerLost) as error:
            reason = "it did not say hello in time" if isinstance(error, TimeoutError) else str(error)
            tail = "; ".join(conn.stderr_tail)
            await self.backend.stop(slot)
            detail = f"the runner failed to start: {reason}" + (f" ({tail})" if tail else "")
            raise SandboxUnavailable(detail) from None
        except BaseException:
            await self.backend.stop(slot)
            raise
        if not hello.get("ready"):
            await self.backend.stop(slot)
            raise SandboxUnavailable(f"the runner is not ready: {hello.get('error')}: {self.backend.remedy}")
        slot.hello = hello
        return slot

    async def _watch(self, slot: Slot) -> None:
        """Replace `slot` once its runner is gone."""
        await slot.conn.closed.wait()
        if slot.retired or self._closed:
            return
        await self._condemn(slot, await self.backend.death_reason(slot))

    async def _condemn(self, slot: Slot, reason: str) -> None:
        """Take `slot` out of service and start a replacement in the background."""
        if slot.retired or self._closed:
            return
        self.counters["slot_failures"] += 1
        log.warning("sandbox slot %s failed (%s); replacing it", slot.name, reason)
        self._retire(slot)
        self.counters["replaced"] += 1

    def _retire(self, slot: Slot) -> None:
        """Take `slot` out of service (see `_forget`); stop it in the background."""
        slot.retired = True
        self._forget(slot)
        self._spawn_task(self._stop(slot))
        self._replenish(delay=0.0)

    def _forget(self, slot: Slot) -> None:
        """Drop whatever routes work to `slot`, which was just retired (the subclass's sessions and leases)."""

    async def _stop(self, slot: Slot) -> None:
        """Stop a retired slot once its executions are over (a dead runner fails them at once)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: slot.inflight == 0 or slot.conn.lost is not None),
                    self.no_answer_s,
                )
        with contextlib.suppress(Exception):
            await self.backend.stop(slot)
        with contextlib.suppress(ValueError):
            self.slots.remove(slot)
        await self._notify()

    def _replenish(self, delay: float) -> None:
        """Start slots in the background while the pool is short of them (one task at a time)."""
        if not self._replenishing and not self._closed and self._short():
            self._replenishing = True
            self._spawn_task(self._replenish_loop(delay))

    async def _replenish_loop(self, delay: float) -> None:
        try:
            while not self._closed and self._short():
                await asyncio.sleep(delay)
                try:
                    await self._add_slot()
                    delay = 0.0
                except Exception as error:
                    self.start_error = str(error)
                    delay = min(max(delay * 2, 0.5), 30.0)
                    log.warning("sandbox slot failed to start (%s); retrying in %.1f s", error, delay)
        finally:
            self._replenishing = False
