"""What a backend is to the pool: it starts and stops runners; a Slot is one of them, as the pool sees it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from sandbox.connection import RunnerConnection
from sandbox.execution import ExecutorError


class SandboxUnavailable(ExecutorError):
    """No runner can be started (no Docker engine, no image, a broken interpreter...); the message says what to do."""


@dataclass(eq=False)
class Slot:
    """One runner, its connection and its load."""

    name: str
    conn: RunnerConnection
    capacity: int
    hello: dict
    handle: object = None  # the backend's: a container, a process
    inflight: int = 0
    sessions: set[str] = field(default_factory=set)
    retired: bool = False  # replaced or closing: takes no new work
    last_used: int = 0  # when it was last picked (a tick of the pool's counter)
    tenant: str | None = None  # the tenant it is leased to (isolate_tenants), for its life
    check: asyncio.Task[bool] | None = None  # a health check in flight: no new block until it passes

    @property
    def alive(self) -> bool:
        return not self.retired and self.conn.lost is None

    @property
    def trusted(self) -> bool:
        """Alive, and not waiting for a health check to pass."""
        return self.alive and self.check is None

    def silent_s(self) -> float:
        return time.monotonic() - self.conn.heard


class Backend:
    """Starts and stops runners; the pool does the rest."""

    name = "backend"
    unit = "runner"  # what a slot is, in messages
    # What to do when a runner starts but is not ready (it cannot import what it preloads): said at start-up.
    remedy = "check the runner's interpreter"

    async def prepare(self) -> None:
        """Check that runners can start (and clean up leftovers); raise SandboxUnavailable, naming the fix, if not."""

    async def launch(self, name: str, spares: int) -> tuple[RunnerConnection, object]:
        raise NotImplementedError

    async def death_reason(self, slot: Slot) -> str:
        return slot.conn.lost or "unknown"

    async def stop(self, slot: Slot) -> None:
        raise NotImplementedError

    async def cleanup(self) -> None:
        """Stop whatever `launch` started that is still around."""
