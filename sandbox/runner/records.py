"""The hub's records: a child process of the zygote it adopted (Proc), and an execution (Run)."""

from __future__ import annotations

import os
import time


class Proc:
    """A spare the hub adopted; later a running block, or a session."""

    __slots__ = (
        "pid",
        "job_w",
        "res_r",
        "out_r",
        "err_r",
        "workdir",
        "role",
        "run",
        "session",
        "res_buf",
        "status",
        "acks",
    )

    def __init__(self, pid: int, fds: list[int], workdir: str) -> None:
        self.pid = pid
        self.job_w, self.res_r, self.out_r, self.err_r = fds
        self.workdir = workdir
        self.role = "spare"  # spare | block | session
        self.run: Run | None = None
        self.session: str | None = None
        self.res_buf = bytearray()
        self.status: int | None = None  # wait status once reaped
        self.acks: list[int] = []  # close_session requests answered once it is reaped


class Run:
    """One execution request, from its dispatch to a process until its result is sent."""

    __slots__ = (
        "id",
        "proc",
        "mode",
        "cap",
        "timeout",
        "started",
        "timer",
        "out",
        "seen",
        "err",
        "rc",
        "flooded",
        "final",
        "fallback",
        "request",
        "acked",
        "token",
    )

    def __init__(self, request: dict, proc: Proc) -> None:
        self.request = request
        self.token = int.from_bytes(os.urandom(8), "big")  # what its result must carry (see wire.job_frame)
        self.acked = proc.role != "spare"  # a session's later blocks go to a process already running
        self.id = request["id"]
        self.proc = proc
        self.mode = "session" if request.get("session") is not None else "block"
        self.cap = int(request.get("cap", 65536))
        self.timeout = float(request.get("timeout", 5.0))
        self.started = time.monotonic()
        self.timer: list | None = None
        self.out = bytearray()
        self.seen = 0
        self.err = bytearray()
        self.rc: int | None = None  # from the block's own "done" message
        self.flooded = False
        self.final: dict | None = None  # the result to send once the process is reaped (after a kill)
        self.fallback: list | None = None
