"""The hub's event loop: one selector over its file descriptors, timers, and the stream to the host.

`Loop` is the bottom layer of the hub (hub.py: Hub < Runs < Supervisor < Loop). The layers above
provide the hooks: `_start`, `_on_request_data` (the host's stdin is readable), `_on_signal` (a
SIGCHLD arrived), `_after_events` (once per turn of the loop) and `_shutdown`.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import signal
import time

from .wire import encode, write_all


def log(message: str) -> None:
    try:
        os.write(2, f"sctir-runner[{os.getpid()}]: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


class Loop:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.is_init = self.pid == 1
        # Private protocol fds; 0 and 1 become /dev/null, so nothing printed by accident corrupts the stream.
        self.proto_in = os.dup(0)
        self.proto_out = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        os.set_blocking(self.proto_in, False)
        os.set_blocking(self.proto_out, False)
        self.sel = selectors.DefaultSelector()
        self.timers: list[list] = []
        self.timer_seq = itertools.count()
        self.out_buf = bytearray()
        self.out_registered = False
        self.pending_writes: dict[int, bytearray] = {}
        self.stopping = False
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r = wake_r
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        # PID 1 ignores signals it has no handler for (SIGKILL included, from inside): keep it that way.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_wake)
        self.sel.register(self.proto_in, selectors.EVENT_READ, self._on_request_data)

    # -- hooks of the layers above -----------------------------------------------

    def _start(self) -> None:
        raise NotImplementedError

    def _on_request_data(self) -> None:
        raise NotImplementedError

    def _on_signal(self) -> None:
        raise NotImplementedError

    def _after_events(self) -> None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    # -- timers ------------------------------------------------------------------

    def add_timer(self, delay: float, callback) -> list:
        entry = [time.monotonic() + delay, next(self.timer_seq), callback]
        heapq.heappush(self.timers, entry)
        return entry

    @staticmethod
    def cancel_timer(entry: list | None) -> None:
        if entry is not None:
            entry[2] = None

    # -- the stream to the host --------------------------------------------------

    def send(self, message: dict) -> None:
        self.out_buf += encode(message)
        self._flush_out()

    def _flush_out(self, *_: object) -> None:
        while self.out_buf:
            try:
                written = os.write(self.proto_out, self.out_buf)
            except BlockingIOError:
                break
            except OSError:  # the host is gone
                self.out_buf.clear()
                self.stopping = True
                break
            del self.out_buf[:written]
        want = bool(self.out_buf)
        if want and not self.out_registered:
            self.sel.register(self.proto_out, selectors.EVENT_WRITE, self._flush_out)
            self.out_registered = True
        elif not want and self.out_registered:
            self.sel.unregister(self.proto_out)
            self.out_registered = False

    def _flush_blocking(self) -> None:
        """At the end: whatever the host has not been sent yet, waiting for it to read."""
        os.set_blocking(self.proto_out, True)
        try:
            write_all(self.proto_out, bytes(self.out_buf))
        except OSError:
            pass

    # -- children's pipes --------------------------------------------------------

    def write_fd(self, fd: int, data: bytes) -> None:
        """Write to a child's job pipe without blocking the hub (queues the rest)."""
        pending = self.pending_writes.get(fd)
        if pending is not None:
            pending += data
            return
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the child is gone; its reaping reports it
        if written < len(data):
            self.pending_writes[fd] = bytearray(data[written:])
            self.sel.register(fd, selectors.EVENT_WRITE, lambda: self._drain_pending(fd))

    def _drain_pending(self, fd: int) -> None:
        pending = self.pending_writes[fd]
        try:
            del pending[: os.write(fd, pending)]
        except BlockingIOError:
            return
        except OSError:
            pending.clear()
        if not pending:
            del self.pending_writes[fd]
            self.sel.unregister(fd)

    def _close_fd(self, fd: int) -> None:
        if fd < 0:
            return
        if fd in self.pending_writes:
            del self.pending_writes[fd]
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        try:
            os.close(fd)
        except OSError:
            pass

    # -- the loop ----------------------------------------------------------------

    def serve(self) -> int:
        self._start()
        while not (self.stopping and not self.out_buf):
            timeout = None
            while self.timers and self.timers[0][2] is None:
                heapq.heappop(self.timers)
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, _ in self.sel.select(timeout):
                key.data()
            now = time.monotonic()
            while self.timers and (self.timers[0][2] is None or self.timers[0][0] <= now):
                entry = heapq.heappop(self.timers)
                if entry[2] is not None:
                    callback, entry[2] = entry[2], None
                    callback()
            self._after_events()
        self._shutdown()
        return 0

    def _on_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        self._on_signal()
