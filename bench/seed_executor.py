"""The seed's executor, verbatim: a fresh `python3 tmp.py` per block, the baseline of bench/sandbox.py.

This is the `last_block` path of sandbox/local.py's LocalExecutor before the
local executor moved onto the runner (sandbox/runner.py), kept unchanged so
that the benchmark and the fidelity tests compare against exactly what the
seed (the winning notebook's PythonREPL) does: write PREAMBLE + the block to
a temp file, run a new interpreter on it (which imports numpy and sympy every
time), capture stdout, trim the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time

from sandbox.executor import ExecutionResult, ExecutionStatus
from sandbox.program import PREAMBLE_LINES, block_program, trim_traceback


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


class SeedExecutor:
    """Runs each block in a fresh python3 subprocess, exactly like the seed (last_block only)."""

    def __init__(
        self,
        python: str = sys.executable,
        timeout_s: float = 5.0,
        concurrency: int | None = None,
        max_output_bytes: int = 64 * 1024,
    ) -> None:
        self.python = python
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self._semaphore = asyncio.Semaphore(concurrency or os.cpu_count() or 1)
        self._running: set[asyncio.subprocess.Process] = set()

    async def start(self) -> None:
        pass

    async def ready(self) -> bool:
        return True

    async def close_session(self, session_id: str) -> None:
        pass

    async def release(self, tenant: str) -> None:
        pass  # a fresh process and directory per block: nothing of a tenant outlives its block

    async def close(self) -> None:
        for proc in list(self._running):
            _kill_group(proc)

    async def execute(self, code: str, session_id: str | None = None, tenant: str | None = None) -> ExecutionResult:
        async with self._semaphore:
            return await self._run_block(code)

    async def _run_block(self, code: str) -> ExecutionResult:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="sctir-", ignore_cleanup_errors=True) as workdir:
            path = os.path.join(workdir, "tmp.py")
            # surrogatepass: a lone surrogate becomes Python's own decode error, not ours.
            with open(path, "w", encoding="utf-8", errors="surrogatepass") as file:
                file.write(block_program(code))
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
