"""A client that leaves cancels its work: queued or solving, its candidates stop and free the engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is already read, so receive() waits)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(work: Awaitable[T], request: Request) -> T:
    """Run `work`; if the client disconnects first, cancel it (and so its candidates) and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGone
    return task.result()
