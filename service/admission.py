"""Admission control: a bounded number of problems in flight and a bounded queue.

One problem already keeps the engine busy with N candidates, so solving
more at once only stretches every latency; beyond the queue a client is
told to come back later (429 + Retry-After) instead of waiting unboundedly.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Overloaded(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"server busy, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Admission:
    def __init__(self, max_in_flight: int, max_queue: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.in_flight = 0
        self.queued = 0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._mean_solve_s = 10.0  # prior until the first solve finishes

    def retry_after_s(self) -> int:
        """Time until a queue place is likely to free up, from recent solve durations."""
        waves = (self.queued + 1) / self.max_in_flight
        return max(1, math.ceil(self._mean_solve_s * waves))

    def check(self) -> None:
        """Raises Overloaded if a problem asking for a slot now would be refused.

        For a streamed answer, whose status is sent before it queues.
        """
        if self._slots.locked() and self.queued >= self.max_queue:
            raise Overloaded(self.retry_after_s())

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Wait for a solver slot; yields the seconds spent queueing. Raises Overloaded."""
        self.check()
        queued_at = time.monotonic()
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        started = time.monotonic()
        self.in_flight += 1
        try:
            yield started - queued_at
        finally:
            self.in_flight -= 1
            self._slots.release()
            self._mean_solve_s = 0.8 * self._mean_solve_s + 0.2 * (time.monotonic() - started)
