"""LocalExecutor: the seed's execution, a fresh python3 subprocess per block.

NOT isolated: see the class docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

from sandbox.executor import ExecutionResult, ExecutionStatus
from sandbox.program import (
    PREAMBLE_LINES,
    SESSION_DRIVER,
    seed_program,
    trim_traceback,
    with_auto_print,
)

log = logging.getLogger(__name__)

RESET_NOTE = "The session state was reset."


def _seconds(value: float) -> str:
    """5.0 -> "5", 1.5 -> "1.5" (the seed prints its int timeout)."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group led by `proc` (it was started in a new session).

    Also called after the leader exited, to kill children it left running in
    its group; then the group may be gone already (ProcessLookupError).

    Deliberately not `proc.kill()`: Popen.send_signal() first polls with
    waitpid(), and when the child has just died but asyncio's child watcher
    has not collected it yet, that poll steals its exit status; the watcher
    then reports returncode 255 ("Unknown child process") and a segfault
    would read as "Exited with code 255". The leader is in the group, so
    killpg covers it.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _reap(proc: asyncio.subprocess.Process, grace_s: float = 2.0) -> None:
    """Kill and wait for `proc`, even if our task is being cancelled meanwhile.

    The wait is shielded, so a second cancellation cannot skip it, and
    bounded: up to Python 3.11, Process.wait() also waits for the pipes to
    close, which a grandchild that escaped the group (setsid) could hold
    open forever; then the transport is closed instead. (The process itself
    is reaped by asyncio's child watcher regardless.)
    """
    _kill_group(proc)
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace_s)
    except BaseException:  # timeout or a second cancellation
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()


@dataclass
class _Session:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    proc: asyncio.subprocess.Process | None = None
    stderr_tail: bytearray = field(default_factory=bytearray)
    stderr_task: asyncio.Task | None = None
    workdir: str | None = None  # the driver's cwd, removed with it
    closed: bool = False


class LocalExecutor:
    """Runs model code in python3 subprocesses on this host, exactly like the seed.

    NOT ISOLATED. The model's code runs as the service's own user, with the
    service's network access, files, environment variables and credentials;
    only a timeout, an output cap and a process-group kill bound it. Use it
    on hosts without Docker (Kaggle, Colab, a laptop) where you accept that,
    and as the reference behaviour of the seed; anything serving untrusted
    requests needs an isolating executor.

    `last_block` (no session id): each block runs as its own program,
    `PREAMBLE + with_auto_print(code)`, in a fresh `python tmp.py` process
    whose cwd is a new temp dir. The timeout covers the whole process
    (interpreter start and the numpy/sympy imports included, as in the
    seed). On exit the process group is killed, so background children the
    block started do not outlive it.

    `session` (a session id): one long-lived driver process per id (see
    `sandbox.program.session_driver_main`) runs the blocks of that id in one
    namespace, like notebook cells. A timeout, a crash or `close_session`
    kills the driver; the next block of that id starts a fresh one. The
    timeout covers the block only (a driver's start, which imports numpy and
    sympy, is bounded by `session_start_timeout_s`), and stdout is capped in
    characters rather than bytes. Output written around sys.stdout (to fd 1
    directly, by child processes) is discarded in sessions.

    At most `concurrency` blocks execute at once (idle sessions do not
    count). Every failure of the code is an ExecutionResult; failures of the
    executor itself (e.g. a missing interpreter) are KILLED results.
    """

    def __init__(
        self,
        python: str = sys.executable,
        timeout_s: float = 5.0,
        concurrency: int | None = None,
        max_output_bytes: int = 64 * 1024,
        session_start_timeout_s: float = 60.0,
    ) -> None:
        if timeout_s <= 0 or max_output_bytes <= 0:
            raise ValueError("timeout_s and max_output_bytes must be positive")
        self.python = python
        self.timeout_s = timeout_s
        self.concurrency = concurrency or os.cpu_count() or 1
        self.max_output_bytes = max_output_bytes
        self.session_start_timeout_s = session_start_timeout_s
        self._semaphore = asyncio.Semaphore(self.concurrency)
        self._sessions: dict[str, _Session] = {}
        self._running: set[asyncio.subprocess.Process] = set()
        self._ready = False
        self.start_error: str | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Check that the interpreter runs and imports numpy and sympy.

        Raises RuntimeError if not (and `ready()` stays False).
        """
        self._ready = False
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-c",
                "import math, numpy, sympy",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            self.start_error = f"cannot run {self.python!r}: {error}"
            raise RuntimeError(self.start_error) from error
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), self.session_start_timeout_s)
        except TimeoutError:
            self.start_error = f"{self.python!r} did not import numpy and sympy within {self.session_start_timeout_s} s"
            raise RuntimeError(self.start_error) from None
        finally:
            await _reap(proc)
        if proc.returncode != 0:
            last = stderr.decode("utf-8", "replace").strip().split("\n")[-1]
            self.start_error = f"{self.python!r} cannot import numpy and sympy: {last}"
            raise RuntimeError(self.start_error)
        self.start_error = None
        self._ready = True

    async def ready(self) -> bool:
        return self._ready

    async def close_session(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            await self._stop_session(session)

    async def close(self) -> None:
        """Kill every session and every block still running."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for proc in list(self._running):
            _kill_group(proc)
        for session in sessions:
            session.closed = True
            if session.proc is not None:
                _kill_group(session.proc)
        await asyncio.gather(*(self._stop_session(s) for s in sessions), *(_reap(p) for p in list(self._running)))
        self._ready = False

    # -- execution ---------------------------------------------------------

    async def execute(self, code: str, session_id: str | None = None) -> ExecutionResult:
        started = time.monotonic()
        try:
            if session_id is None:
                async with self._semaphore:
                    return await self._run_block(code)
            session = self._sessions.get(session_id)
            if session is None:
                session = self._sessions[session_id] = _Session()
            async with session.lock:  # queue per session first, then take a slot
                async with self._semaphore:
                    return await self._run_in_session(session, code)
        except Exception as error:  # a bug or an OS failure here must not fail the request
            log.exception("local executor failed")
            return self._result(ExecutionStatus.KILLED, "", f"executor failed: {error!r}", started)

    async def _run_block(self, code: str) -> ExecutionResult:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="sctir-", ignore_cleanup_errors=True) as workdir:
            path = os.path.join(workdir, "tmp.py")
            # surrogatepass: a lone surrogate becomes Python's own decode error, not ours.
            with open(path, "w", encoding="utf-8", errors="surrogatepass") as file:
                file.write(seed_program(code))
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.python,
                    path,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=workdir,
                    start_new_session=True,
                )
            except OSError as error:
                return self._result(ExecutionStatus.KILLED, "", f"executor failed: {error}", started)
            self._running.add(proc)
            flooded = False

            def on_flood() -> None:
                nonlocal flooded
                flooded = True
                _kill_group(proc)

            cap = self.max_output_bytes
            stdout_task = asyncio.create_task(_read_head(proc.stdout, cap, on_flood, flood_limit=2 * cap))
            stderr_task = asyncio.create_task(_read_tail(proc.stderr, cap))
            try:
                try:
                    # In 3.11 Process.wait() returns once the pipes are closed
                    # too, so this also waits for the readers' EOF.
                    await asyncio.wait_for(proc.wait(), self.timeout_s)
                    timed_out = False
                except TimeoutError:
                    timed_out = True
                await _reap(proc)  # the timeout kill, or stragglers left in the group
                done, _ = await asyncio.wait({stdout_task, stderr_task}, timeout=1.0)
            finally:
                if proc.returncode is None:  # cancelled (or failed) while waiting
                    await _reap(proc)
                stdout_task.cancel()
                stderr_task.cancel()
                self._running.discard(proc)
            stdout_bytes, seen = stdout_task.result() if stdout_task in done else (b"", 0)
            stderr_bytes = stderr_task.result() if stderr_task in done else b""

        stdout = stdout_bytes.decode("utf-8", errors="replace")
        rc = proc.returncode
        if timed_out:
            return self._result(
                ExecutionStatus.TIMEOUT, stdout, f"Timed out after {_seconds(self.timeout_s)} seconds.", started
            )
        if flooded:
            error = f"Output exceeded {cap} bytes; the process was killed."
            return self._result(ExecutionStatus.KILLED, stdout, error, started)
        note = f"stdout truncated to its first {cap} bytes of {seen}." if seen > cap else ""
        if rc == 0:
            return self._result(ExecutionStatus.OK, stdout, note, started)
        stderr = trim_traceback(stderr_bytes.decode("utf-8", errors="replace"), path, line_offset=PREAMBLE_LINES)
        if rc is not None and rc < 0:
            error = f"Killed by {_signal_name(-rc)}." + (f"\n{stderr}" if stderr else "")
            return self._result(ExecutionStatus.KILLED, stdout, error, started)
        return self._result(ExecutionStatus.ERROR, stdout, stderr or f"Exited with code {rc}.", started)

    async def _run_in_session(self, session: _Session, code: str) -> ExecutionResult:
        started = time.monotonic()
        if session.closed:
            return self._result(ExecutionStatus.KILLED, "", "The session was closed.", started)
        if session.proc is None or session.proc.returncode is not None:
            failure = await self._start_session(session)
            if failure is not None:
                return self._result(ExecutionStatus.KILLED, "", failure, started)
        proc = session.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        finished = False
        try:
            request = json.dumps({"code": with_auto_print(code)}) + "\n"
            try:
                proc.stdin.write(request.encode("utf-8"))
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), self.timeout_s)
            except TimeoutError:
                await self._reset_session(session)
                finished = True
                error = f"Timed out after {_seconds(self.timeout_s)} seconds. {RESET_NOTE}"
                return self._result(ExecutionStatus.TIMEOUT, "", error, started)
            except (ConnectionError, ValueError, asyncio.LimitOverrunError) as error:
                line = b""  # the driver died, or a response past the reader's limit
                log.warning("session protocol failure: %r", error)
            if not line:  # EOF: the driver died during the block
                await self._reset_session(session)
                finished = True
                return self._died_result(session, proc, started)
            finished = True
        finally:
            if not finished:  # cancelled: the driver is mid-block, out of step
                await self._reset_session(session)
        try:
            response = json.loads(line)
        except ValueError:
            await self._reset_session(session)
            return self._result(
                ExecutionStatus.KILLED, "", f"Bad response from the session driver. {RESET_NOTE}", started
            )
        stdout = response.get("stdout", "")
        error = response.get("error", "")
        if response.get("ok"):
            if response.get("truncated"):
                error = f"stdout truncated to its first {self.max_output_bytes} characters."
            return self._result(ExecutionStatus.OK, stdout, error, started)
        return self._result(ExecutionStatus.ERROR, stdout, error or "The block failed.", started)

    async def _start_session(self, session: _Session) -> str | None:
        """Spawn the session's driver; an error text, or None once it is ready."""
        cap = self.max_output_bytes
        session.workdir = tempfile.mkdtemp(prefix="sctir-session-")
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-u",
                "-c",
                SESSION_DRIVER,
                str(cap),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=session.workdir,
                start_new_session=True,
                # A response line is JSON with ensure_ascii: up to 12 bytes per
                # captured character (an escaped surrogate pair) plus the error.
                limit=12 * cap + (1 << 20),
            )
        except OSError as error:
            await self._reset_session(session)
            return f"executor failed: {error}"
        session.proc = proc
        session.stderr_tail = bytearray()
        session.stderr_task = asyncio.create_task(_drain_tail(proc.stderr, session.stderr_tail, 8192))
        ok = False
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), self.session_start_timeout_s)
            hello = json.loads(line) if line else {"ready": False, "error": "the driver exited"}
            ok = bool(hello.get("ready"))
        except TimeoutError:
            hello = {"error": f"the driver did not start within {self.session_start_timeout_s} s"}
        except ValueError as error:
            hello = {"error": f"bad handshake: {error}"}
        finally:
            if not ok:
                await self._reset_session(session)
        if ok:
            return None
        tail = session.stderr_tail.decode("utf-8", "replace").strip().split("\n")[-1]
        return f"Session failed to start: {hello.get('error') or tail}"

    def _died_result(self, session: _Session, proc: asyncio.subprocess.Process, started: float) -> ExecutionResult:
        rc = proc.returncode
        if session.closed:
            return self._result(ExecutionStatus.KILLED, "", "The session was closed.", started)
        if rc is not None and rc < 0:
            return self._result(ExecutionStatus.KILLED, "", f"Killed by {_signal_name(-rc)}. {RESET_NOTE}", started)
        return self._result(ExecutionStatus.ERROR, "", f"Exited with code {rc}. {RESET_NOTE}", started)

    async def _reset_session(self, session: _Session) -> None:
        """Kill the session's driver; the next block starts a fresh one."""
        proc, session.proc = session.proc, None
        if proc is not None:
            await _reap(proc)
        if session.workdir is not None:
            shutil.rmtree(session.workdir, ignore_errors=True)
            session.workdir = None
        if session.stderr_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(session.stderr_task), 1.0)
            session.stderr_task.cancel()
            session.stderr_task = None

    async def _stop_session(self, session: _Session) -> None:
        session.closed = True
        proc = session.proc
        if proc is not None:
            await _reap(proc)  # at once: a block running in it ends now (KILLED)
        if session.stderr_task is not None:
            session.stderr_task.cancel()
        if session.workdir is not None:
            shutil.rmtree(session.workdir, ignore_errors=True)

    @staticmethod
    def _result(status: ExecutionStatus, stdout: str, error: str, started: float) -> ExecutionResult:
        return ExecutionResult(status=status, stdout=stdout, error=error, duration_s=time.monotonic() - started)


async def _read_head(stream: asyncio.StreamReader, cap: int, on_flood, flood_limit: int) -> tuple[bytes, int]:
    """Keep the first `cap` bytes of `stream`; call `on_flood` once past `flood_limit`.

    Returns (kept bytes, bytes seen). Reading goes on (discarding) until EOF,
    so the writer never blocks on a full pipe.
    """
    kept = bytearray()
    seen = 0
    flooded = False
    while chunk := await stream.read(65536):
        seen += len(chunk)
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
        if seen > flood_limit and not flooded:
            flooded = True
            on_flood()
    return bytes(kept), seen


async def _read_tail(stream: asyncio.StreamReader, cap: int) -> bytes:
    """Keep the last `cap` bytes of `stream` (a traceback's end matters most)."""
    tail = bytearray()
    await _drain_tail(stream, tail, cap)
    return bytes(tail)


async def _drain_tail(stream: asyncio.StreamReader, tail: bytearray, cap: int) -> None:
    while chunk := await stream.read(65536):
        tail += chunk
        if len(tail) > cap:
            del tail[: len(tail) - cap]
