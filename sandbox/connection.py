"""The host's connection to one runner (sandbox/runner/): framed JSON requests and replies over its stdin/stdout.

The frames are the runner's own (sandbox/runner/wire.py, imported from there). A reply
carries the id of its request; a runner also speaks unasked: `hello` once it is up, `unhealthy`
when it finds itself damaged. The connection's tasks run in a context of their own (see
`background`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable

from sandbox.runner.wire import FrameTooLarge, decode, encode, take_frame

log = logging.getLogger(__name__)


class RunnerLost(ConnectionError):
    """The connection to a runner ended (the process or container died)."""


def background(coroutine, name: str | None = None) -> asyncio.Task:
    """A task in a clean context: nobody's request, whoever starts it.

    A task copies the context of the code that creates it, and one started on a request's behalf
    (a runner's reader, a pool's replenishing or health checks) would log under that request's id
    (service/logs.py) long after it ended.
    """
    return asyncio.create_task(coroutine, name=name, context=contextvars.Context())


class RunnerConnection:
    """Requests and replies over a runner's stdin/stdout (framed JSON, see sandbox/runner/wire.py).

    `multiplexed`: the stream is Docker's attach stream of a container without
    a TTY, where stdout and stderr arrive in frames of an 8-byte header (stream
    number, length) and a payload; stderr lines are logged.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str,
        multiplexed: bool = False,
        max_frame: int = 64 << 20,
    ) -> None:
        self.name = name
        self.reader = reader
        self.writer = writer
        self.multiplexed = multiplexed
        self.max_frame = max_frame
        self.lost: str | None = None
        self.closed = asyncio.Event()
        self.hello: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, asyncio.Future[dict]] = {}
        self.ids = itertools.count(1)
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.on_unhealthy: Callable[[str], None] | None = None  # the runner found itself unfit (runner/health.py)
        self.heard = time.monotonic()  # when the runner last said something: it was alive then
        self._stderr_buf = bytearray()
        self._task = background(self._read_loop(), name=f"runner-reader-{name}")

    # -- sending ---------------------------------------------------------------

    def send(self, message: dict) -> None:
        if self.lost is not None:
            raise RunnerLost(self.lost)
        self.writer.write(encode(message))

    def request(self, message: dict) -> tuple[int, asyncio.Future[dict]]:
        """Send `message` with a fresh id; the future resolves with the runner's reply."""
        request_id = next(self.ids)
        future: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            self.send({**message, "id": request_id})
        except RunnerLost:
            self.pending.pop(request_id, None)
            raise
        return request_id, future

    async def call(self, message: dict, timeout: float) -> dict:
        request_id, future = self.request(message)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(request_id, None)

    # -- receiving -------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the runner closed its output"
        buffer = bytearray()
        try:
            while True:
                if self.multiplexed:
                    header = await self.reader.readexactly(8)
                    stream, size = header[0], int.from_bytes(header[4:8], "big")
                    payload = await self.reader.readexactly(size)
                    if stream == 2:
                        self._on_stderr(payload)
                        continue
                    buffer += payload
                else:
                    chunk = await self.reader.read(1 << 16)
                    if not chunk:
                        break
                    buffer += chunk
                try:
                    while (body := take_frame(buffer, self.max_frame)) is not None:
                        self._on_message(decode(body))
                except FrameTooLarge as error:
                    raise RunnerLost(f"{error} (the limit is {self.max_frame})") from None
        except asyncio.IncompleteReadError:
            pass
        except asyncio.CancelledError:
            reason = "the connection was closed"
            raise
        except (OSError, ValueError, RunnerLost) as error:
            reason = f"the connection failed: {error}"
        finally:
            self._lose(reason)

    def _on_message(self, message: dict) -> None:
        self.heard = time.monotonic()
        if message.get("type") == "hello":
            if not self.hello.done():
                self.hello.set_result(message)
            return
        if message.get("type") == "unhealthy":
            if self.on_unhealthy is not None:
                self.on_unhealthy(str(message.get("reason")))
            return
        future = self.pending.pop(message.get("id"), None)
        if future is not None and not future.done():
            future.set_result(message)

    def _on_stderr(self, data: bytes) -> None:
        self._stderr_buf += data
        while b"\n" in self._stderr_buf:
            line, _, rest = bytes(self._stderr_buf).partition(b"\n")
            self._stderr_buf = bytearray(rest)
            text = line.decode("utf-8", "replace")
            self.stderr_tail.append(text)
            log.info("sandbox %s: %s", self.name, text)

    def _lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        error = RunnerLost(self.lost)
        if not self.hello.done():
            self.hello.set_exception(error)
            self.hello.exception()  # retrieved: no "never retrieved" warning if nobody waits
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()
        self.pending.clear()
        self.closed.set()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        with contextlib.suppress(Exception):
            self.writer.close()
