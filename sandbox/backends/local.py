"""The local backend: the runner (sandbox/runner/) as a plain subprocess of this host, NOT isolated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from sandbox.backends.base import Backend, SandboxUnavailable, Slot
from sandbox.connection import RunnerConnection, background

log = logging.getLogger(__name__)

RUNNER_PATH = Path(__file__).parents[1] / "runner"  # the runner's program: a directory (sandbox/runner/__main__.py)


class LocalBackend(Backend):
    """Runners as subprocesses of this process: no isolation at all (see LocalExecutor)."""

    name = "local"
    remedy = "install numpy and sympy into that interpreter, or point SCTIR_PYTHON at one that has them"

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self.processes: set[asyncio.subprocess.Process] = set()

    async def launch(self, name: str, spares: int) -> tuple[RunnerConnection, object]:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                str(RUNNER_PATH),
                "--spares",
                str(spares),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            raise SandboxUnavailable(
                f"cannot run {self.python!r}: {error}: point SCTIR_PYTHON at a Python 3 with numpy and sympy"
            ) from error
        self.processes.add(proc)
        conn = RunnerConnection(proc.stdout, proc.stdin, name=name)
        background(self._drain_stderr(proc, conn), name=f"runner-stderr-{name}")
        return conn, proc

    @staticmethod
    async def _drain_stderr(proc: asyncio.subprocess.Process, conn: RunnerConnection) -> None:
        with contextlib.suppress(Exception):
            while line := await proc.stderr.readline():
                text = line.decode("utf-8", "replace").rstrip("\n")
                conn.stderr_tail.append(text)
                log.info("runner %s: %s", conn.name, text)

    async def death_reason(self, slot: Slot) -> str:
        proc: asyncio.subprocess.Process = slot.handle
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), 1.0)
        rc = proc.returncode
        if rc is None:
            return slot.conn.lost or "it stopped answering"
        return (
            f"killed by {signal.Signals(-rc).name}"
            if rc < 0 and -rc in signal.Signals._value2member_map_
            else f"exit code {rc}"
        )

    async def stop(self, slot: Slot) -> None:
        proc: asyncio.subprocess.Process = slot.handle
        if proc.returncode is None and slot.conn.lost is None:
            with contextlib.suppress(Exception):
                await slot.conn.call({"op": "shutdown"}, timeout=3.0)
        with contextlib.suppress(Exception):
            proc.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), 3.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 3.0)
        await slot.conn.close()
        self.processes.discard(proc)

    async def cleanup(self) -> None:
        for proc in list(self.processes):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        self.processes.clear()
