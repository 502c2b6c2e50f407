"""The hub: the runner's main process, which talks to the host and owns every other process.

It is built in layers, each a class in its own module, each using the ones below:

    Hub         (hub.py)         requests from the host: exec, cancel, close_session, ping, shutdown
    Runs        (runs.py)        executions: their outputs, results and endings
    Supervisor  (supervisor.py)  the zygote and spares, reaping, strays, the container's health
    Loop        (loop.py)        the selector, timers, the stream to the host
"""

from __future__ import annotations

import os
import selectors

from .loop import log
from .records import Proc, Run
from .runs import Runs
from .wire import MAX_REQUEST_BYTES, READ_CHUNK, RESET_NOTE, FrameTooLarge, decode, job_frame, take_frame


class Hub(Runs):
    def __init__(self, opts) -> None:
        super().__init__(opts)
        self.in_buf = bytearray()
        self.executions = 0

    def _after_events(self) -> None:
        self._reap()
        self._pump()
        self._replenish()

    # -- requests from the host ----------------------------------------------

    def _on_request_data(self) -> None:
        try:
            data = os.read(self.proto_in, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the host closed our stdin: stop
            self.sel.unregister(self.proto_in)
            self.stopping = True
            return
        self.in_buf += data
        while True:
            try:
                body = take_frame(self.in_buf, MAX_REQUEST_BYTES)
            except FrameTooLarge as error:
                log(f"request refused ({error}); stopping")
                self.stopping = True
                return
            if body is None:
                break
            try:
                request = decode(body)
            except ValueError:
                log("undecodable request ignored")
                continue
            self._handle(request)

    def _handle(self, request: dict) -> None:
        op = request.get("op")
        if op == "exec":
            self.executions += 1
            self._exec(request)
        elif op == "cancel":
            self._cancel(request["id"])
        elif op == "close_session":
            self._close_session(request)
        elif op == "ping":
            self.send({"type": "pong", "id": request.get("id"), **self.stats()})
        elif op == "shutdown":
            self.send({"type": "bye", "id": request.get("id")})
            self.stopping = True
        else:
            log(f"unknown op {op!r}")

    def stats(self) -> dict:
        return {
            "spares": len(self.spares),
            "running": sum(1 for run in self.runs.values() if run.final is None),
            "queued": len(self.queue),
            "sessions": len(self.sessions),
            "processes": len(self.procs),
            "executions": self.executions,
            "zygote_ready": self.zygote_ready,
            "zygote_restarts": max(self.zygote_restarts, 0),
        }

    def _exec(self, request: dict) -> None:
        key = request.get("session")
        if key is not None and key in self.sessions:
            proc = self.sessions[key]
            if proc.run is not None:
                self.send(self._result(request["id"], "killed", "", "The session is busy with another block.", 0.0))
                return
            self._dispatch(proc, request)
            return
        if self.spares:
            self._dispatch(self.spares.pop(0), request)
        else:
            self.queue.append(request)

    def _adopt(self, proc: Proc) -> None:
        """A new spare: the oldest waiting request's, or kept for the next."""
        if self.queue:
            self._dispatch(proc, self.queue.pop(0))
        else:
            self.spares.append(proc)

    def _pump(self) -> None:
        """Hand queued requests to waiting spares."""
        while self.queue and self.spares and not self.stopping:
            self._exec(self.queue.pop(0))

    def _dispatch(self, proc: Proc, request: dict) -> None:
        run = Run(request, proc)
        self.runs[run.id] = run
        proc.run = run
        key = request.get("session")
        if proc.role == "spare":
            proc.role = "session" if key is not None else "block"
            session = key is not None
            if key is not None:
                proc.session = key
                self.sessions[key] = proc
                # A session writes its output through the result pipe; its fds 1 and 2 are /dev/null.
                self._close_fd(proc.out_r)
                self._close_fd(proc.err_r)
                proc.out_r = proc.err_r = -1
            else:
                self.sel.register(proc.out_r, selectors.EVENT_READ, lambda: self._on_output(proc, "out_r"))
                self.sel.register(proc.err_r, selectors.EVENT_READ, lambda: self._on_output(proc, "err_r"))
            self.sel.register(proc.res_r, selectors.EVENT_READ, lambda: self._on_result_data(proc))
        else:
            session = True
        run.timer = self.add_timer(run.timeout, lambda: self._on_timeout(run))
        code = request["code"] if isinstance(request["code"], str) else str(request["code"])
        self.write_fd(proc.job_w, job_frame(session, run.timeout, run.cap, run.token, code))

    def _cancel(self, run_id: int) -> None:
        for i, request in enumerate(self.queue):
            if request["id"] == run_id:
                del self.queue[i]
                self.send(self._result(run_id, "killed", "", "Cancelled.", 0.0))
                return
        run = self.runs.get(run_id)
        if run is None or run.final is not None:
            return
        note = f" {RESET_NOTE}" if run.mode == "session" else ""
        self._kill_run(run, "killed", f"Cancelled.{note}")

    def _close_session(self, request: dict) -> None:
        proc = self.sessions.pop(request["session"], None)
        if proc is None or proc.status is not None:
            self.send({"type": "closed", "id": request.get("id")})
            return
        proc.acks.append(request.get("id"))
        proc.session = None
        run = proc.run
        if run is not None and run.final is None:
            self._finish(run, "killed", "", "The session was closed.")
        self._kill_proc(proc)
