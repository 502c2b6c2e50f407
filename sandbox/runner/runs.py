"""Executions in the hub: the output of running blocks, their results, and how each one ends.

`Runs` is the layer of the hub above the supervisor (hub.py: Hub < Runs < Supervisor < Loop): it
owns the executions (`runs`), the sessions' processes (`sessions`) and the requests waiting for a
spare (`queue`); the hub above hands it requests (`_dispatch`).
"""

from __future__ import annotations

import os
import signal
import time

from . import program
from .child import remove_workdir
from .health import oom_kills
from .records import Proc, Run
from .supervisor import Supervisor
from .wire import READ_CHUNK, RESET_NOTE, decode, take_frame

MAX_REQUEUES = 3


def _seconds(value: float) -> str:
    """5.0 -> "5", 1.5 -> "1.5" (the reference prints its int timeout)."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Runs(Supervisor):
    def __init__(self, opts) -> None:
        super().__init__(opts)
        self.sessions: dict[str, Proc] = {}
        self.runs: dict[int, Run] = {}
        self.queue: list[dict] = []
        self.oom_seen = oom_kills()

    def _queued(self) -> int:
        return len(self.queue)

    def _running(self) -> bool:
        return any(run.final is None for run in self.runs.values())

    # -- outputs of running blocks -------------------------------------------

    def _read_pipe(self, proc: Proc, attr: str) -> bytes:
        """What the output pipe `attr` ("out_r" or "err_r") of `proc` holds now (b"" if none); closed at EOF."""
        fd = getattr(proc, attr)
        if fd < 0:
            return b""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self._close_fd(fd)
            setattr(proc, attr, -1)
        return data

    def _on_output(self, proc: Proc, attr: str) -> None:
        data = self._read_pipe(proc, attr)
        if data:
            self._take_output(proc, attr, data)

    def _take_output(self, proc: Proc, attr: str, data: bytes) -> None:
        run = proc.run
        if run is None or run.final is not None:
            return  # after the result: discard
        if attr == "out_r":
            run.seen += len(data)
            room = run.cap - len(run.out)
            if room > 0:
                run.out += data[:room]
            if run.seen > 2 * run.cap and not run.flooded:
                run.flooded = True
                stdout = run.out.decode("utf-8", errors="replace")
                self._kill_run(run, "killed", f"Output exceeded {run.cap} bytes; the process was killed.", stdout)
        else:
            run.err += data
            if len(run.err) > run.cap:
                del run.err[: len(run.err) - run.cap]

    def _drain_outputs(self, proc: Proc) -> None:
        """Read what the block's pipes hold right now (their writers may still be alive: do not wait)."""
        for attr in ("out_r", "err_r"):
            while data := self._read_pipe(proc, attr):
                self._take_output(proc, attr, data)
                if proc.run is None or proc.run.final is not None:
                    break

    # -- the result pipe -----------------------------------------------------

    def _on_result_data(self, proc: Proc) -> None:
        if proc.res_r < 0:
            return
        try:
            data = os.read(proc.res_r, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_fd(proc.res_r)
            proc.res_r = -1
            return
        proc.res_buf += data
        # A result holds at most cap characters of stdout and of error (JSON: <= 6 bytes a character).
        limit = 12 * (proc.run.cap if proc.run else 65536) + 4096
        while True:
            try:
                body = take_frame(proc.res_buf, limit)
                if body is None:
                    break
                message = decode(body)
            except ValueError:  # too large, or not JSON
                self._protocol_violation(proc)
                return
            self._on_message(proc, message)

    def _protocol_violation(self, proc: Proc) -> None:
        run = proc.run
        if run is not None and run.final is None:
            note = f" {RESET_NOTE}" if run.mode == "session" else ""
            self._kill_run(run, "killed", f"The block corrupted its result channel.{note}")
        else:
            if proc.session is not None and self.sessions.get(proc.session) is proc:
                del self.sessions[proc.session]  # its next block starts in a fresh process
                proc.session = None
            self._kill_proc(proc)

    def _on_message(self, proc: Proc, message: dict) -> None:
        """One frame on a process's result pipe: only the answer to the job it holds is accepted.

        A frame without the job's token, or any frame of a session between its jobs (a block
        that wrote its own "result" and then the real one arrived), is a forgery: the process
        is killed and the session reset, so no result can be taken for another job.
        """
        run = proc.run
        if run is None or run.final is not None:
            if proc.role == "session" and run is None and proc.status is None:
                self._protocol_violation(proc)
            return
        if "ack" in message:
            run.acked = True
            return
        if message.get("t") != run.token:
            self._protocol_violation(proc)
            return
        if run.mode == "block":
            if "rc" not in message or not isinstance(message["rc"], int):
                self._protocol_violation(proc)
                return
            run.rc = message["rc"]
            self._drain_outputs(proc)
            if run.final is None:
                self._finish_block(run, rc=run.rc)
            # Let it exit once the result is delivered; kill it if it lingers (a forged message).
            self.cancel_timer(run.fallback)
            run.fallback = self.add_timer(self.opts.linger, lambda: self._retire(proc))
        else:
            stdout, error = str(message.get("stdout", "")), str(message.get("error", ""))
            if len(stdout) > run.cap or len(error) > run.cap:  # the session caps both: not its own frame
                self._protocol_violation(proc)
                return
            if message.get("ok"):
                if message.get("truncated"):
                    error = f"stdout truncated to its first {run.cap} characters."
                self._finish(run, "ok", stdout, error)
            else:
                self._finish(run, "error", stdout, error or "The block failed.")
            proc.run = None
            self._kill_leftovers(proc)

    # -- ending runs ------------------------------------------------------------

    @staticmethod
    def _result(run_id: int, status: str, stdout: str, error: str, duration: float) -> dict:
        return {
            "type": "result",
            "id": run_id,
            "status": status,
            "stdout": stdout,
            "error": error,
            "duration": duration,
        }

    def _finish(self, run: Run, status: str, stdout: str, error: str) -> None:
        """Send the result of `run` now."""
        if run.final is not None and run.final.get("sent"):
            return
        self.cancel_timer(run.timer)
        self.cancel_timer(run.fallback)
        run.final = {"sent": True}
        self.runs.pop(run.id, None)
        self.send(self._result(run.id, status, stdout, error, round(time.monotonic() - run.started, 6)))
        self.quiet_until = time.monotonic() + self.opts.linger
        self._check_health()

    def _kill_run(self, run: Run, status: str, error: str, stdout: str = "") -> None:
        """Kill the run's process; its result goes out once the process is reaped (or after 2 s)."""
        if run.final is not None:
            return
        self.cancel_timer(run.timer)
        run.final = {"status": status, "stdout": stdout, "error": error}
        proc = run.proc
        if proc.session is not None:
            self.sessions.pop(proc.session, None)
            proc.session = None
        self._kill_proc(proc)
        run.fallback = self.add_timer(2.0, lambda: self._send_final(run))

    def _send_final(self, run: Run) -> None:
        final = run.final
        if final is None or final.get("sent"):
            return
        self.cancel_timer(run.fallback)
        final["sent"] = True
        self.runs.pop(run.id, None)
        duration = round(time.monotonic() - run.started, 6)
        self.send(self._result(run.id, final["status"], final["stdout"], final["error"], duration))

    def _on_timeout(self, run: Run) -> None:
        run.timer = None
        if run.final is not None:
            return
        if run.mode == "session":
            self._kill_run(run, "timeout", f"Timed out after {_seconds(run.timeout)} seconds. {RESET_NOTE}")
        else:
            self._drain_outputs(run.proc)
            if run.final is None:
                stdout = run.out.decode("utf-8", errors="replace")
                self._kill_run(run, "timeout", f"Timed out after {_seconds(run.timeout)} seconds.", stdout)

    def _finish_block(self, run: Run, rc: int | None = None, status: int | None = None) -> None:
        """The reference's outcome of a process-per-block run (exit code or wait status, stdout, stderr)."""
        stdout = run.out.decode("utf-8", errors="replace")
        cap = run.cap
        if rc is None and status is not None:
            rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        note = f"stdout truncated to its first {cap} bytes of {run.seen}." if run.seen > cap else ""
        if rc == 0:
            self._finish(run, "ok", stdout, note)
            return
        filename = os.path.join(run.proc.workdir, "tmp.py")
        stderr = program.trim_traceback(
            run.err.decode("utf-8", errors="replace"), filename, line_offset=program.PREAMBLE_LINES
        )
        if rc is not None and rc < 0:
            name = _signal_name(-rc)
            if -rc == signal.SIGKILL and self._oom_happened():
                name += " (out of memory)"
            self._finish(run, "killed", stdout, f"Killed by {name}." + (f"\n{stderr}" if stderr else ""))
            return
        self._finish(run, "error", stdout, stderr or f"Exited with code {rc}.")

    def _oom_happened(self) -> bool:
        count = oom_kills()
        happened = count > self.oom_seen >= 0
        self.oom_seen = count
        return happened

    # -- their processes -----------------------------------------------------------

    def _retire(self, proc: Proc) -> None:
        """Tell a finished block's process to exit (EOF on its job pipe); kill it if it does not."""
        if proc.status is not None:
            return
        self._close_fd(proc.job_w)
        proc.job_w = -1
        if proc.run is not None:
            proc.run.fallback = self.add_timer(1.0, lambda: self._kill_proc(proc))

    def _on_proc_exit(self, proc: Proc, status: int) -> None:
        proc.status = status
        self.dead_groups[proc.pid] = 40  # kill what the block left behind in its group
        if proc in self.spares:
            self.spares.remove(proc)
        if proc.session is not None and self.sessions.get(proc.session) is proc:
            del self.sessions[proc.session]
        run = proc.run
        if run is not None and run.final is None:
            self._on_result_data(proc)  # an ack, a "done" or a session's result may be waiting
        if run is not None and run.final is None and not run.acked and run.request.get("requeues", 0) < MAX_REQUEUES:
            # It died before it took the job (e.g. another block's kill(-1)): hand the job on.
            self.cancel_timer(run.timer)
            run.final = {"sent": True}
            self.runs.pop(run.id, None)
            if proc.session is not None and self.sessions.get(proc.session) is proc:
                del self.sessions[proc.session]
            proc.session = None
            run.request["requeues"] = run.request.get("requeues", 0) + 1
            self.queue.insert(0, run.request)
        elif run is not None:
            if run.final is not None:
                self._send_final(run)
            elif run.mode == "block":
                self._on_result_data(proc)  # a "done" message may be waiting
                if run.final is None:
                    self._drain_outputs(proc)
                if run.final is None:
                    self._finish_block(run, status=status)
            else:
                self._on_result_data(proc)
                if run.final is None:
                    if os.WIFSIGNALED(status):
                        signame = _signal_name(os.WTERMSIG(status))
                        if os.WTERMSIG(status) == signal.SIGKILL and self._oom_happened():
                            signame += " (out of memory)"
                        self._finish(run, "killed", "", f"Killed by {signame}. {RESET_NOTE}")
                    else:
                        self._finish(run, "error", "", f"Exited with code {os.WEXITSTATUS(status)}. {RESET_NOTE}")
        for fd in (proc.job_w, proc.res_r, proc.out_r, proc.err_r):
            self._close_fd(fd)
        proc.job_w = proc.res_r = proc.out_r = proc.err_r = -1
        remove_workdir(proc.workdir)
        for ack in proc.acks:
            self.send({"type": "closed", "id": ack})
        proc.acks.clear()
