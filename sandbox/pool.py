"""The host side of the sandbox: warm runners (Docker containers, or local processes) behind one Executor.

A *slot* is one runner (sandbox/runner.py) and the framed connection to it:
a hardened Docker container attached over its stdin/stdout (`DockerBackend`),
or a plain subprocess for the `local` executor (`LocalBackend`, NOT
isolated). `SandboxPool` keeps `size` slots warm, runs at most `concurrency`
executions in each, pins a session (one candidate's blocks) to one slot,
turns every failure a block causes into an ExecutionResult and raises
ExecutorError for its own (see sandbox/executor.py). The Docker executor leases each
tenant (a /solve request) a slot of its own and destroys it when the tenant
is released, so no container ever runs two requests' code (see SandboxPool):

- a block that times out, crashes, floods its output or is OOM-killed is the
  runner's business: it answers with a result and stays up;
- a slot whose runner dies (the container was OOM-killed or removed) or stops
  answering fails the executions it was running with KILLED results that say
  so (`sandbox_lost`), and is replaced in the background;
- a slot is trusted again only once it has answered: after a block that ran
  LATE_S past its timeout (the runner kills a block at its timeout and answers
  at once, unless it froze), after a cancelled block whose kill the runner did
  not acknowledge, after a session close it did not acknowledge, and before a
  slot silent for FRESH_S is leased to a request or counted by `ready()`, the
  runner is pinged, and until it answers the slot takes no new block; one
  that does not answer within `health_timeout_s` is replaced. So a frozen
  container (`docker pause`, a stalled host) costs a request seconds, not the
  no-answer limit (`timeout + answer_grace_s`, which stays the bound for a
  runner that answers pings but not the block), and /readyz says when no slot
  answers. A normal execution pings nothing;
- a runner that finds itself damaged (its work root broken, its scratch
  space full) says so and is replaced the same way;
- every container carries labels naming its pool and its owner process;
  `start()` removes the pool's leftovers (containers whose owner is gone,
  see `is_leftover`) and never a live process's, `close()` every container
  it made.

`stats()` gives the counters for metrics: warm slots, busy executions,
replaced slots and more.

The pool's background tasks (replenishing, stopping, health checks, reading a
runner's output) run in a context of their own: a task copies the context of
the code that creates it, and one started on a request's behalf would log
under that request's id (service/logs.py) long after it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.executor import ExecutionResult, ExecutionStatus, ExecutorError

log = logging.getLogger(__name__)

RUNNER_PATH = Path(__file__).with_name("runner")  # the runner's program: a directory (sandbox/runner/__main__.py)
HEADER = struct.Struct(">I")
LABEL = "sctir.sandbox"
LABEL_POOL = "sctir.sandbox.pool"
LABEL_OWNER = "sctir.sandbox.owner"  # hostname:pid, for people
LABEL_OWNER_PID = "sctir.sandbox.owner.pid"
LABEL_OWNER_STARTED = "sctir.sandbox.owner.started"  # clock ticks after boot (/proc/<pid>/stat): no pid reuse
LABEL_OWNER_PIDSPACE = "sctir.sandbox.owner.pidspace"  # boot id and pid namespace: where that pid names the owner
CREATED_GRACE_S = 60.0  # a never-started container of an owner out of our sight: maybe its launch in progress
GVISOR_MIN_PIDS = 1024
WORKROOT = "/run/sctir"  # the runner's per-execution directories, in a container: a tmpfs of its own
RESET_NOTE = "The session state was reset."
# Every runner's stream carries a ping at least this often: a proxy between the pool and the Docker
# engine closes idle streams (the compose stack's docker-api, HAProxy: after 10 minutes), which would
# end the runner (its stdin closes) and with it the sessions it holds.
KEEPALIVE_S = 60.0
LATE_S = 1.0  # a block's result this long past its timeout is late: its runner is pinged
FRESH_S = 1.0  # a runner heard from this recently needs no ping to be leased or counted ready


class SandboxUnavailable(ExecutorError):
    """No runner can be started (no Docker engine, no image, a broken interpreter...); the message says what to do."""


class RunnerLost(ConnectionError):
    """The connection to a runner ended (the process or container died)."""


def encode(message: dict) -> bytes:
    data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return HEADER.pack(len(data)) + data


# ---------------------------------------------------------------------------
# One runner connection


def background(coroutine, name: str | None = None) -> asyncio.Task:
    """A task in a clean context: nobody's request (see the module docstring), whoever starts it."""
    return asyncio.create_task(coroutine, name=name, context=contextvars.Context())


class RunnerConnection:
    """Requests and replies over a runner's stdin/stdout (framed JSON, see runner.py).

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
        self.on_unhealthy: Callable[[str], None] | None = None  # the runner found itself unfit (see runner.py)
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
                while len(buffer) >= HEADER.size:
                    (size,) = HEADER.unpack_from(buffer)
                    if size > self.max_frame:
                        raise RunnerLost(f"a reply of {size} bytes (the limit is {self.max_frame})")
                    if len(buffer) < HEADER.size + size:
                        break
                    body = bytes(buffer[HEADER.size : HEADER.size + size])
                    del buffer[: HEADER.size + size]
                    self._on_message(json.loads(body.decode("utf-8", "surrogatepass")))
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


# ---------------------------------------------------------------------------
# Slots and backends


@dataclass(eq=False)
class Slot:
    """One runner, its connection and its load."""

    name: str
    conn: RunnerConnection
    capacity: int
    hello: dict
    handle: object = None  # the backend's: a container, a process
    inflight: int = 0
    sessions: set[str] = field(default_factory=set)
    retired: bool = False  # replaced or closing: takes no new work
    last_used: int = 0  # when it was last picked (a tick of the pool's counter)
    tenant: str | None = None  # the tenant it is leased to (isolate_tenants), for its life
    check: asyncio.Task[bool] | None = None  # a health check in flight: no new block until it passes

    @property
    def alive(self) -> bool:
        return not self.retired and self.conn.lost is None

    @property
    def trusted(self) -> bool:
        """Alive, and not waiting for a health check to pass."""
        return self.alive and self.check is None

    def silent_s(self) -> float:
        return time.monotonic() - self.conn.heard


class Backend:
    """Starts and stops runners; the pool does the rest."""

    name = "backend"
    unit = "runner"  # what a slot is, in messages
    # What to do when a runner starts but is not ready (it cannot import what it preloads): said at start-up.
    remedy = "check the runner's interpreter"

    async def prepare(self) -> None:
        """Check that runners can start (and clean up leftovers); raise SandboxUnavailable, naming the fix, if not."""

    async def launch(self, name: str, spares: int) -> tuple[RunnerConnection, object]:
        raise NotImplementedError

    async def death_reason(self, slot: Slot) -> str:
        return slot.conn.lost or "unknown"

    async def stop(self, slot: Slot) -> None:
        raise NotImplementedError

    async def cleanup(self) -> None:
        """Stop whatever `launch` started that is still around."""


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


@dataclass
class DockerLimits:
    """How every sandbox container is confined (the defaults suit a 2-core, 8+ GiB host)."""

    memory: str = "1g"  # also the memory+swap limit: no swap
    pids: int = 256
    cpus: float = 1.0
    tmpfs_size: str = "64m"  # /tmp; the runner's work root (WORKROOT) gets as much
    inodes: int = 16384  # files and directories in each of them (tmpfs nr_inodes): no inode flood
    runtime: str | None = None  # e.g. "runsc" for gVisor
    user: str = "10001:10001"
    shm_size: str = "16m"
    nofile: int = 1024

    @property
    def host_pids(self) -> int:
        """The cgroup's pids limit. Under gVisor it counts the sandbox kernel's own host threads (the
        sandboxed processes are its tasks, bound by the memory limit): below ~1024 the kernel itself
        fails to start threads under load and the container dies."""
        return max(self.pids, GVISOR_MIN_PIDS) if self.runtime == "runsc" else self.pids


def _process_stat(pid: int | str) -> tuple[str, str] | None:
    """A process's state letter and start time (clock ticks after boot) from /proc, or None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or hidden (hidepid), or no /proc
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after the command name, which may hold anything
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _pid_space() -> str:
    """Where a pid names one process: this boot of the kernel and this pid namespace; "" if unknown.

    Two services in containers of one host share the boot id but not the pid namespace, so
    neither may judge the other's pids. A namespace's inode is reused only after it is gone,
    so a live owner's pid space is never mistaken for another's.
    """
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot_id}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


@dataclass(frozen=True)
class Owner:
    """The process that made a container, and holds its attach stream, told apart from any later one.

    Its labels say where it ran (`pid_space`) and when it started, so a later start, in
    this process or another, can tell a crashed owner's leftovers from a live one's containers.
    """

    host: str
    pid: int
    started: str  # its start time in clock ticks after boot; "" where /proc is unreadable
    pid_space: str

    @classmethod
    def current(cls) -> Owner:
        stat = _process_stat("self")
        return cls(socket.gethostname(), os.getpid(), stat[1] if stat else "", _pid_space())

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Owner | None:
        """The owner a container's labels name; None for labels of no owner (or of an older version)."""
        try:
            pid = int(labels[LABEL_OWNER_PID])
            return cls(labels.get(LABEL_OWNER, "?"), pid, labels[LABEL_OWNER_STARTED], labels[LABEL_OWNER_PIDSPACE])
        except (KeyError, ValueError):
            return None

    def labels(self) -> dict[str, str]:
        return {
            LABEL_OWNER: f"{self.host}:{self.pid}",
            LABEL_OWNER_PID: str(self.pid),
            LABEL_OWNER_STARTED: self.started,
            LABEL_OWNER_PIDSPACE: self.pid_space,
        }

    def alive(self) -> bool | None:
        """True or False where that is provable from this process; None for an owner out of sight."""
        if not self.pid_space or not self.started or self.pid_space != _pid_space():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists (another user's)
        stat = _process_stat(self.pid)
        if stat is None:  # it exists, but /proc hides it (hidepid): not provably gone
            return None
        state, started = stat
        return started == self.started and state not in ("Z", "X")  # a zombie's streams are closed


def is_leftover(attrs: dict, now: float | None = None) -> tuple[bool, str]:
    """Whether a container (the attrs of Docker's container list) is a leftover to remove, and why.

    A runner stops when its owner's attach stream closes (the owner ends, however it ends), so
    a running container of a live owner is in use, and an owner's stopped container may be
    inspected by it for the reason its runner died. Hence: a container of an owner provably
    gone is a leftover; of a live owner, never; of an owner out of sight (another host, another
    pid namespace, an older label), only once it has stopped (or, never started, is older than
    CREATED_GRACE_S: the owner may be between creating and starting it).
    """
    labels = attrs.get("Labels") or {}
    state = attrs.get("State", "")
    owner = Owner.from_labels(labels)
    who = labels.get(LABEL_OWNER, "no owner label")
    alive = owner.alive() if owner is not None else None
    if alive is not None:
        return (not alive, f"its owner {who} is {'alive' if alive else 'gone'}")
    if state in ("exited", "dead"):
        return True, f"it has stopped and its owner ({who}) is out of sight"
    age = (time.time() if now is None else now) - float(attrs.get("Created", 0))
    if state == "created" and age > CREATED_GRACE_S:
        return True, f"it was never started ({age:.0f} s) and its owner ({who}) is out of sight"
    return False, f"it is {state} and its owner ({who}) is out of sight"


UNISOLATED = "or run code unisolated on this host with SCTIR_EXECUTOR=local"


def _no_engine(error: BaseException) -> SandboxUnavailable:
    """The engine cannot be reached: where it was looked for, the system's reason, and the ways out."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    cause = error
    while cause.__cause__ or cause.__context__:  # the OSError at the bottom says why (no socket, refused...)
        cause = cause.__cause__ or cause.__context__
    reason = f" ({cause.strerror})" if isinstance(cause, OSError) and cause.strerror else ""
    if isinstance(cause, PermissionError):
        return SandboxUnavailable(
            f"the Docker engine at {where} refuses this user{reason}: add the user to the docker group "
            f"(`sudo usermod -aG docker $USER`, then log in again), {UNISOLATED}"
        )
    return SandboxUnavailable(
        f"no Docker engine answers at {where}{reason}: start Docker (e.g. `sudo systemctl start docker`, "
        f"or scripts/start-dockerd.sh), {UNISOLATED}"
    )


class DockerBackend(Backend):
    """Runners in hardened containers of the sandbox image, over the Docker SDK.

    Every container: network_mode=none, read-only root, a size-limited noexec
    tmpfs on /tmp, memory (= memory+swap), pids and CPU limits, all
    capabilities dropped, no-new-privileges, a non-root user, no core files,
    the `none` log driver (the protocol never lands on disk), optionally
    another runtime such as runsc; labelled with the pool name and its owner
    process (see Owner), so a later start removes only a gone owner's leftovers.
    """

    name = "docker"
    unit = "container"
    remedy = "rebuild the sandbox image: `make sandbox-image` (scripts/build-sandbox-image.sh)"

    def __init__(
        self,
        image: str = "sctir-sandbox:latest",
        pool_name: str = "sctir",
        limits: DockerLimits | None = None,
        environment: dict[str, str] | None = None,
        client=None,
        runner_args: list[str] | None = None,
        confine: bool = True,
    ) -> None:
        self.image = image
        self.confine = confine  # Landlock file rules per execution; off only to measure what they cost
        self.pool_name = pool_name
        self.limits = limits or DockerLimits()
        self.environment = dict(environment or {})
        self.client = client
        self.runner_args = list(runner_args or [])
        self.created: set[str] = set()  # names of the containers made and not known to be removed
        self.closing = False  # set by cleanup(): a container created after it removes itself

    def _client(self):
        if self.client is None:
            try:
                import docker
            except ImportError:
                raise SandboxUnavailable(
                    f"the Docker SDK is not installed: `pip install docker`, {UNISOLATED}"
                ) from None
            try:
                self.client = docker.from_env(version="auto")
                self.client.ping()
            except Exception as error:
                self.client = None
                raise _no_engine(error) from error
        return self.client

    def _image_missing(self) -> SandboxUnavailable:
        return SandboxUnavailable(
            f"the sandbox image {self.image} is not built: run `make sandbox-image` (scripts/build-sandbox-image.sh), "
            "or set SCTIR_SANDBOX_IMAGE"
        )

    def _fault(self, error: Exception) -> SandboxUnavailable:
        """What a failed container launch means, in the words of the start-up checks where it is one of theirs."""
        import docker.errors
        import requests.exceptions

        if isinstance(error, SandboxUnavailable):
            return error
        if isinstance(error, docker.errors.ImageNotFound):
            return self._image_missing()
        if isinstance(error, requests.exceptions.ConnectionError):
            return _no_engine(error)
        return SandboxUnavailable(f"the Docker engine could not start a sandbox container: {error}")

    async def prepare(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        import docker.errors

        self.closing = False
        client = self._client()
        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise self._image_missing() from None
        if self.limits.runtime:
            runtimes = client.info().get("Runtimes", {})
            if self.limits.runtime not in runtimes:
                known = ", ".join(sorted(runtimes))
                raise SandboxUnavailable(
                    f"the Docker engine has no runtime {self.limits.runtime!r} (it has: {known}): register it with "
                    "the engine (for gVisor's runsc, scripts/start-dockerd.sh installs and registers it), "
                    "or unset SCTIR_SANDBOX_RUNTIME"
                )
        reaped = self._reap()
        if reaped:
            log.warning("removed %d leftover sandbox container(s) of pool %r", reaped, self.pool_name)

    def _reap(self) -> int:
        """Remove this pool name's leftovers: the containers of owners that are gone (see is_leftover).

        Never every container of the name: another process sharing it (a running service, an
        in-process `sctir solve`) is using its containers.
        """
        client = self._client()
        containers = client.containers.list(
            all=True, sparse=True, filters={"label": [f"{LABEL_POOL}={self.pool_name}"]}
        )
        reaped = 0
        now = time.time()
        for container in containers:
            leftover, why = is_leftover(container.attrs, now)
            name = container.short_id
            if not leftover:
                log.debug("sandbox container %s of pool %r left alone: %s", name, self.pool_name, why)
                continue
            try:
                container.remove(force=True)
            except Exception as error:  # already gone (its owner removed it), or the engine refused
                log.debug("leftover sandbox container %s not removed: %s", name, error)
                continue
            log.info("removed leftover sandbox container %s of pool %r: %s", name, self.pool_name, why)
            reaped += 1
        return reaped

    async def launch(self, name: str, spares: int) -> tuple[RunnerConnection, object]:
        try:
            container, sock = await asyncio.to_thread(self._create, name, spares)
        except Exception as error:
            raise self._fault(error) from error
        # Our own dup of the attach socket, for asyncio; the SDK's objects stay referenced in the handle.
        raw = getattr(sock, "_sock", sock)
        ours = socket.socket(fileno=os.dup(raw.fileno()))
        ours.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=ours, limit=1 << 20)
        conn = RunnerConnection(reader, writer, name=name, multiplexed=True)
        handle = {"container": container, "sock": sock}
        try:
            await asyncio.to_thread(container.start)
        except Exception as error:
            await conn.close()
            await asyncio.to_thread(self._remove, container)
            raise self._fault(error) from error
        return conn, handle

    def _create(self, name: str, spares: int):
        import docker.types

        client = self._client()
        api = client.api
        limits = self.limits
        host_config = api.create_host_config(
            network_mode="none",
            read_only=True,
            # Owned by root, mode 1777: the sandbox user can neither chmod nor remove the mount roots.
            tmpfs={
                path: f"rw,nosuid,nodev,noexec,size={limits.tmpfs_size},nr_inodes={limits.inodes},mode=1777"
                for path in ("/tmp", WORKROOT)
            },
            mem_limit=limits.memory,
            memswap_limit=limits.memory,
            pids_limit=limits.host_pids,
            nano_cpus=int(limits.cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            log_config=docker.types.LogConfig(type="none"),
            ulimits=[
                docker.types.Ulimit(name="core", soft=0, hard=0),
                docker.types.Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile),
            ],
            shm_size=limits.shm_size,
            runtime=limits.runtime or None,
        )
        # Listed by name before the engine answers: a container whose creation answer is lost (a proxy
        # restarting) exists all the same, and cleanup() removes it.
        self.created.add(name)
        created = api.create_container(
            self.image,
            command=[
                "--purge-tmp",
                *(["--confine"] if self.confine else []),
                *("--workroot", WORKROOT, "--spares", str(spares)),
                *self.runner_args,
            ],
            name=name,
            hostname="sandbox",
            user=limits.user,
            environment=self.environment,
            labels={LABEL: "1", LABEL_POOL: self.pool_name, **Owner.current().labels()},
            # Not detached, stdin open: attached stdin/stdout/stderr and StdinOnce, so when our
            # connection ends the runner reads EOF and the container stops.
            detach=False,
            stdin_open=True,
            tty=False,
            network_disabled=True,
            host_config=host_config,
        )
        container = client.containers.get(created["Id"])
        if self.closing:  # cleanup() ran while this thread was creating it (its task was cancelled)
            self._remove(container)
            raise SandboxUnavailable("the pool is closed")
        try:
            sock = api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        except Exception:
            self._remove(container)
            raise
        return container, sock

    def _remove(self, container) -> None:
        """Remove `container`; one the engine could not be asked to remove (unreachable: a proxy restarting)
        stays in `created`, so cleanup() tries again and nothing is left behind."""
        import docker.errors

        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except Exception as error:
            log.debug("sandbox container %s not removed yet: %s", container.short_id, error)
            return
        self.created.discard(container.name)

    async def death_reason(self, slot: Slot) -> str:
        container = slot.handle["container"]

        def inspect() -> str:
            try:
                container.reload()
            except Exception as error:
                return f"the container is gone ({error.__class__.__name__})"
            state = container.attrs.get("State", {})
            if state.get("OOMKilled"):
                return f"the container ran out of memory (exit code {state.get('ExitCode')})"
            if state.get("Running"):
                return slot.conn.lost or "it stopped answering"
            return f"the container exited (exit code {state.get('ExitCode')})"

        return await asyncio.to_thread(inspect)

    async def stop(self, slot: Slot) -> None:
        handle = slot.handle
        if slot.conn.lost is None:
            with contextlib.suppress(Exception):
                slot.conn.send({"op": "shutdown", "id": 0})
        await slot.conn.close()
        with contextlib.suppress(Exception):
            handle["sock"].close()
        await asyncio.to_thread(self._remove, handle["container"])

    async def cleanup(self) -> None:
        self.closing = True
        if not self.created or self.client is None:
            return

        def remove_all() -> None:
            for name in list(self.created):
                with contextlib.suppress(Exception):
                    self.client.containers.get(name).remove(force=True)
                self.created.discard(name)

        await asyncio.to_thread(remove_all)


# ---------------------------------------------------------------------------
# The pool (an Executor)


class SandboxPool:
    """Warm runners behind the Executor protocol (see sandbox/executor.py).

    Each slot runs at most `concurrency` executions at once and keeps that
    many spares forked ahead of demand; a session sticks to the slot of its
    first block (and its live process there) until it is closed or the slot
    dies.

    `isolate_tenants` (the Docker executor): a tenant (one /solve request) is
    leased a slot of its own for its whole life, and `release(tenant)`
    destroys it: no two tenants ever share a container, so nothing one leaves
    behind or breaks (files, processes, inodes, a chmod-ed work root) can
    reach another. `size` slots are kept warm and unleased, started ahead of
    demand, so a lease costs nothing on the critical path; at most
    `max_slots` exist at once (a tenant beyond that waits for a release).
    Without it (the local executor, which isolates nothing anyway), `size`
    slots serve every caller, each execution going to the least busy one.

    `health_timeout_s`: how long a runner has to answer a health check (a
    ping; see the module docstring) before its slot is replaced.
    """

    def __init__(
        self,
        backend: Backend,
        size: int = 2,
        concurrency: int = 4,
        timeout_s: float = 5.0,
        max_output_bytes: int = 64 * 1024,
        start_timeout_s: float = 60.0,
        answer_grace_s: float = 10.0,
        name: str = "sandbox",
        isolate_tenants: bool = False,
        max_slots: int | None = None,
        keepalive_s: float = KEEPALIVE_S,
        health_timeout_s: float = 2.0,
    ) -> None:
        if size < 1 or concurrency < 1 or timeout_s <= 0 or max_output_bytes <= 0 or health_timeout_s <= 0:
            raise ValueError("size, concurrency, timeout_s, max_output_bytes and health_timeout_s must be positive")
        self.backend = backend
        self.isolate_tenants = isolate_tenants
        self.max_slots = max(max_slots or 4 * size, size + 1) if isolate_tenants else size
        self.size = size
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self.start_timeout_s = start_timeout_s
        self.answer_grace_s = answer_grace_s
        self.health_timeout_s = health_timeout_s
        self.name = name
        self.slots: list[Slot] = []
        self.start_error: str | None = None
        self._prepared = False
        self._closed = False
        self._changed = asyncio.Condition()
        self._starting = 0
        self._tasks: set[asyncio.Task] = set()
        self._session_slot: dict[str, Slot] = {}
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._tenant_slot: dict[str, Slot] = {}
        self._replenishing = False
        self._launches = itertools.count(1)
        self._picks = itertools.count(1)
        self._start_lock = asyncio.Lock()
        self.keepalive_s = keepalive_s
        self._keeping_alive = False
        self.counters = {"executions": 0, "replaced": 0, "slot_failures": 0, "killed_by_slot_loss": 0, "released": 0}

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start `size` warm slots; raises SandboxUnavailable if none can start (and ready() stays False)."""
        async with self._start_lock:
            self._closed = False
            try:
                if not self._prepared:
                    await self.backend.prepare()
                    self._prepared = True
            except Exception as error:
                self.start_error = str(error)
                raise SandboxUnavailable(self.start_error) from error
            missing = self.size - len(self._idle()) - self._starting
            results = await asyncio.gather(*(self._add_slot() for _ in range(missing)), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors and not self._live():
                self.start_error = str(errors[0])
                raise SandboxUnavailable(self.start_error) from errors[0]
            for error in errors:  # some started: retry the others in the background
                log.warning("a sandbox slot failed to start: %s", error)
            if errors:
                self._replenish(delay=0.5)
            self.start_error = None
            if not self._keeping_alive:
                self._keeping_alive = True
                self._spawn_task(self._keep_alive())

    async def ready(self) -> bool:
        """Whether a block can run now: a slot is trusted and was heard from within FRESH_S, or answers a ping.

        The pings (at most `health_timeout_s`) find slots that froze while idle: they are replaced, and
        until a replacement is up the pool is not ready.
        """
        live = self._live()
        if any(slot.trusted and slot.silent_s() < FRESH_S for slot in live):
            return True
        checks = [self._verify(slot, "a readiness probe") for slot in live]
        return any(await asyncio.gather(*(asyncio.shield(check) for check in checks)))

    async def close(self) -> None:
        """Stop every slot and remove everything the backend started."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        slots, self.slots = self.slots, []
        for slot in slots:
            slot.retired = True
        await asyncio.gather(*(self.backend.stop(slot) for slot in slots), return_exceptions=True)
        await self.backend.cleanup()
        self._session_slot.clear()
        self._session_locks.clear()
        self._tenant_slot.clear()
        async with self._changed:
            self._changed.notify_all()

    def stats(self) -> dict:
        """Counters for metrics: warm slots, busy executions, replaced slots, ..."""
        live = self._live()
        return {
            "size": self.size,
            "warm": len(live),
            "starting": self._starting,
            "busy": sum(slot.inflight for slot in live),
            "capacity": len(live) * self.concurrency,
            "sessions": len(self._session_slot),
            "leased": len(self._tenant_slot),
            "idle": len(self._idle()),
            **self.counters,
        }

    async def warmed(self, timeout_s: float = 90.0) -> bool:
        """Wait until `size` slots are idle and none is starting (the steady state); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self._idle()) < self.size or self._starting:
            if self._closed or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _live(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.alive]

    def _idle(self) -> list[Slot]:
        """Live slots leased to no tenant (with isolate_tenants; otherwise every live slot)."""
        return [slot for slot in self._live() if slot.tenant is None]

    def _short(self) -> bool:
        """Whether a slot should be started: fewer than `size` idle, and room under `max_slots`."""
        return len(self._idle()) + self._starting < self.size and len(self._live()) + self._starting < self.max_slots

    def _spawn_task(self, coroutine) -> asyncio.Task:
        """A background task of the pool's (in a clean context, see `background`), cancelled by close()."""
        task = background(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _verify(self, slot: Slot, why: str) -> asyncio.Task[bool]:
        """Ping `slot` (one check at a time), which takes no new block until it answers; True if it did."""
        if slot.check is None:
            slot.check = self._spawn_task(self._check(slot, why))
        return slot.check

    async def _check(self, slot: Slot, why: str) -> bool:
        """One health check: a runner that does not answer a ping within `health_timeout_s` is replaced."""
        try:
            await slot.conn.call({"op": "ping"}, self.health_timeout_s)
            healthy = True
        except TimeoutError:
            healthy = False
            await self._condemn(slot, f"no answer to a health check within {self.health_timeout_s:g} s after {why}")
        except RunnerLost:
            healthy = False  # dead, not frozen: its watcher replaces it, saying why it died
        finally:
            slot.check = None
        async with self._changed:
            self._changed.notify_all()
        return healthy

    async def _add_slot(self) -> Slot:
        self._starting += 1
        name = f"{self.name}-{uuid.uuid4().hex[:8]}-{next(self._launches)}"
        try:
            conn, handle = await self.backend.launch(name, self.concurrency)
            slot = Slot(name=name, conn=conn, capacity=self.concurrency, hello={}, handle=handle)
            try:
                hello = await asyncio.wait_for(asyncio.shield(conn.hello), self.start_timeout_s)
            except (TimeoutError, RunnerLost) as error:
                reason = "it did not say hello in time" if isinstance(error, TimeoutError) else str(error)
                tail = "; ".join(conn.stderr_tail)
                await self.backend.stop(slot)
                detail = f"the runner failed to start: {reason}" + (f" ({tail})" if tail else "")
                raise SandboxUnavailable(detail) from None
            except BaseException:
                await self.backend.stop(slot)
                raise
            if not hello.get("ready"):
                await self.backend.stop(slot)
                raise SandboxUnavailable(f"the runner is not ready: {hello.get('error')}: {self.backend.remedy}")
            slot.hello = hello
            conn.on_unhealthy = lambda reason: self._spawn_task(self._condemn(slot, f"unhealthy: {reason}"))
            if self._closed:
                await self.backend.stop(slot)
                raise SandboxUnavailable("the pool is closed")
            self.slots.append(slot)
            self._spawn_task(self._watch(slot))
            log.info(
                "sandbox slot %s ready (%s backend, zygote import %.2f s)",
                name,
                self.backend.name,
                hello.get("import_s", 0),
            )
            return slot
        finally:
            self._starting -= 1
            async with self._changed:
                self._changed.notify_all()

    async def _keep_alive(self) -> None:
        """Ping every live runner each `keepalive_s` (see KEEPALIVE_S): traffic both ways on its stream."""
        try:
            while not self._closed:
                await asyncio.sleep(self.keepalive_s)
                await asyncio.gather(*(self._ping(slot) for slot in self._live()))
        finally:
            self._keeping_alive = False

    async def _ping(self, slot: Slot) -> None:
        # Only the traffic matters here: a runner that died or froze is its watcher's and the health checks' business.
        with contextlib.suppress(TimeoutError, RunnerLost):
            await slot.conn.call({"op": "ping"}, self.keepalive_s)

    async def _watch(self, slot: Slot) -> None:
        """Replace `slot` once its runner is gone."""
        await slot.conn.closed.wait()
        if slot.retired or self._closed:
            return
        await self._condemn(slot, await self.backend.death_reason(slot))

    async def _condemn(self, slot: Slot, reason: str) -> None:
        """Take `slot` out of service and start a replacement in the background."""
        if slot.retired or self._closed:
            return
        self.counters["slot_failures"] += 1
        log.warning("sandbox slot %s failed (%s); replacing it", slot.name, reason)
        self._retire(slot)
        self.counters["replaced"] += 1

    def _retire(self, slot: Slot) -> None:
        """Take `slot` out of service (its tenant, if any, gets a fresh one next); stop it in the background."""
        slot.retired = True
        for session_id in list(slot.sessions):
            if self._session_slot.get(session_id) is slot:
                del self._session_slot[session_id]
        if slot.tenant is not None and self._tenant_slot.get(slot.tenant) is slot:
            del self._tenant_slot[slot.tenant]
        self._spawn_task(self._stop(slot))
        self._replenish(delay=0.0)

    async def _stop(self, slot: Slot) -> None:
        """Stop a retired slot once its executions are over (a dead runner fails them at once)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: slot.inflight == 0 or slot.conn.lost is not None),
                    self.timeout_s + self.answer_grace_s,
                )
        with contextlib.suppress(Exception):
            await self.backend.stop(slot)
        with contextlib.suppress(ValueError):
            self.slots.remove(slot)
        async with self._changed:
            self._changed.notify_all()

    def _replenish(self, delay: float) -> None:
        """Start slots in the background while the pool is short of them (one task at a time)."""
        if not self._replenishing and not self._closed and self._short():
            self._replenishing = True
            self._spawn_task(self._replenish_loop(delay))

    async def _replenish_loop(self, delay: float) -> None:
        try:
            while not self._closed and self._short():
                await asyncio.sleep(delay)
                try:
                    await self._add_slot()
                    delay = 0.0
                except Exception as error:
                    self.start_error = str(error)
                    delay = min(max(delay * 2, 0.5), 30.0)
                    log.warning("sandbox slot failed to start (%s); retrying in %.1f s", error, delay)
        finally:
            self._replenishing = False

    # -- execution -----------------------------------------------------------------

    async def execute(self, code: str, session_id: str | None = None, tenant: str | None = None) -> ExecutionResult:
        """Run a block (see Executor.execute): what it causes is the result; ExecutorError is the pool's own fault."""
        started = time.monotonic()
        self.counters["executions"] += 1
        try:
            if session_id is None:
                return await self._execute(code, None, tenant, started)
            lock = self._session_locks.setdefault(session_id, asyncio.Lock())
            async with lock:  # one block of a session at a time, in order
                return await self._execute(code, session_id, tenant, started)
        except ExecutorError:
            raise
        except Exception as error:  # a bug here is the executor's fault too, never the block's output
            raise ExecutorError(f"the sandbox pool failed: {error!r}") from error

    async def _execute(self, code: str, session_id: str | None, tenant: str | None, started: float) -> ExecutionResult:
        slot = await self._acquire(session_id, tenant)
        try:
            return await self._run(slot, code, session_id, started)
        finally:
            slot.inflight -= 1
            async with self._changed:
                self._changed.notify_all()

    async def _acquire(self, session_id: str | None, tenant: str | None) -> Slot:
        """A live slot with room (the tenant's, the session's own); starts the pool if needed."""
        deadline = time.monotonic() + self.start_timeout_s
        async with self._changed:
            while True:
                if self._closed:
                    raise SandboxUnavailable("the executor is closed")
                slot = self._pick_for_tenant(tenant) if self.isolate_tenants else self._pick(session_id)
                if slot is not None:
                    slot.inflight += 1
                    if session_id is not None and self._session_slot.get(session_id) is not slot:
                        self._session_slot[session_id] = slot
                        slot.sessions.add(session_id)
                    return slot
                if not self._live() and not self._starting:
                    self._changed.release()
                    try:
                        await self.start()  # the first use, or every slot died: start (or fail) now
                    finally:
                        await self._changed.acquire()
                    continue
                self._replenish(delay=0.0)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SandboxUnavailable(f"no sandbox became available within {self.start_timeout_s} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def _pick(self, session_id: str | None) -> Slot | None:
        if session_id is not None:
            slot = self._session_slot.get(session_id)
            if slot is not None:
                if slot.alive:
                    return slot if slot.trusted and slot.inflight < slot.capacity else None
                del self._session_slot[session_id]  # its slot died: the state is gone, start over
        candidates = [slot for slot in self._live() if slot.trusted and slot.inflight < slot.capacity]
        if not candidates:
            return None
        # Among equals, the least recently used: consecutive executions alternate between slots, so
        # each container carries half of the forks and exits that executions leave behind (and its
        # CPU quota is not what a closed loop of single blocks waits on).
        slot = min(candidates, key=lambda slot: (slot.inflight, len(slot.sessions), slot.last_used))
        slot.last_used = next(self._picks)
        return slot

    def _pick_for_tenant(self, tenant: str | None) -> Slot | None:
        """The tenant's own slot, leasing it an idle one first; None while it has no room or none is idle."""
        key = tenant or ""  # no tenant: the one default tenant
        slot = self._tenant_slot.get(key)
        if slot is None or not slot.alive:
            slot = self._lease(key)
            if slot is None:
                return None
        return slot if slot.trusted and slot.inflight < slot.capacity else None

    def _lease(self, key: str) -> Slot | None:
        """Lease an idle slot to tenant `key`; None while none is idle and trusted.

        One silent for FRESH_S is pinged as it is leased (it may have frozen while it waited; a
        millisecond per request otherwise): the tenant's first block waits for the answer, and
        without one the slot is replaced and the tenant leases another. (Leased before the answer,
        not after: the answer itself must settle it, however long this process takes to look.)
        """
        idle = [slot for slot in self._idle() if slot.trusted]
        if not idle:
            return None
        slot = idle[0]  # the longest idle: the containers take turns, and each is checked as it is leased
        slot.tenant = key
        self._tenant_slot[key] = slot
        if slot.silent_s() >= FRESH_S:
            self._verify(slot, f"{slot.silent_s():.1f} s idle")
        self._replenish(delay=0.0)  # another idle slot for the next tenant, ahead of its demand
        return slot

    async def release(self, tenant: str) -> None:
        """The tenant is done: its slot (container) is destroyed, never to serve anyone else."""
        slot = self._tenant_slot.pop(tenant, None)
        if slot is None:
            return
        self.counters["released"] += 1
        self._retire(slot)

    async def _run(self, slot: Slot, code: str, session_id: str | None, started: float) -> ExecutionResult:
        message = {
            "op": "exec",
            "code": code,
            "session": session_id,
            "timeout": self.timeout_s,
            "cap": self.max_output_bytes,
        }
        note = f" {RESET_NOTE}" if session_id is not None else ""
        try:
            request_id, future = slot.conn.request(message)
        except RunnerLost as error:
            raise ExecutorError(f"the sandbox was lost before the block ran ({error})") from None
        unit = self.backend.unit
        sent = time.monotonic()
        try:
            reply = await self._reply(slot, future)
        except TimeoutError:
            slot.conn.pending.pop(request_id, None)
            self.counters["killed_by_slot_loss"] += 1
            waited = time.monotonic() - sent
            await self._condemn(slot, f"no answer within {waited:.0f} s")
            error = f"The sandbox stopped answering; it is being replaced.{note}"
            lost = f"the {unit} stopped answering while the block ran (no result within {waited:.0f} s); replaced"
            return _result(ExecutionStatus.KILLED, "", error, started, lost)
        except RunnerLost:
            self.counters["killed_by_slot_loss"] += 1
            reason = await self.backend.death_reason(slot)
            await self._condemn(slot, reason)
            error = f"The sandbox died ({reason}); it is being replaced.{note}"
            lost = f"the {unit} died while the block ran ({reason}); replaced"
            return _result(ExecutionStatus.KILLED, "", error, started, lost)
        except asyncio.CancelledError:
            # Kill the block, and wait (a little) until it is dead before giving up the slot; a kill
            # the runner does not acknowledge makes the slot suspect (it may have frozen under the block).
            acknowledged = False
            with contextlib.suppress(Exception):
                slot.conn.send({"op": "cancel", "id": request_id})
                await asyncio.wait_for(asyncio.shield(future), self.health_timeout_s)
                acknowledged = True
            slot.conn.pending.pop(request_id, None)
            if not acknowledged and slot.alive:
                self._verify(slot, "a cancelled block's kill was not acknowledged")
            raise
        status = ExecutionStatus(reply["status"])
        if session_id is not None and status in (ExecutionStatus.TIMEOUT, ExecutionStatus.KILLED):
            if self._session_slot.get(session_id) is slot:
                slot.sessions.discard(session_id)  # the runner dropped the session's process
        return _result(status, reply.get("stdout", ""), reply.get("error", ""), started)

    async def _reply(self, slot: Slot, future: asyncio.Future[dict]) -> dict:
        """The runner's result of a block; RunnerLost if it dies, TimeoutError if it stops answering.

        A runner kills a block at its timeout and answers at once, so a result LATE_S past the
        timeout means the runner may have frozen: it is pinged then, and one that does not answer
        is replaced at once instead of at the no-answer limit (timeout + answer_grace_s).
        """
        sent = time.monotonic()
        limit = self.timeout_s + self.answer_grace_s
        late = min(self.timeout_s + LATE_S, limit)
        try:
            return await asyncio.wait_for(asyncio.shield(future), late)
        except TimeoutError:
            if late >= limit:
                raise
        healthy = await asyncio.shield(self._verify(slot, f"a block ran {LATE_S:g} s past its timeout"))
        if not healthy and not future.done():
            raise TimeoutError
        return await asyncio.wait_for(asyncio.shield(future), max(limit - (time.monotonic() - sent), 0.0))

    async def close_session(self, session_id: str) -> None:
        """Kill the session's process (a block running in it ends KILLED) and forget it."""
        self._session_locks.pop(session_id, None)
        slot = self._session_slot.pop(session_id, None)
        if slot is None:
            return
        slot.sessions.discard(session_id)
        if slot.alive:
            try:
                await slot.conn.call({"op": "close_session", "session": session_id}, self.health_timeout_s)
            except TimeoutError:  # the runner kills the session's process and says so at once, unless it froze
                self._verify(slot, "a session's close was not acknowledged")
            except RunnerLost:
                pass  # its watcher replaces it


def _result(
    status: ExecutionStatus, stdout: str, error: str, started: float, sandbox_lost: str | None = None
) -> ExecutionResult:
    return ExecutionResult(status, stdout, error, time.monotonic() - started, sandbox_lost)


# ---------------------------------------------------------------------------


class DockerExecutor(SandboxPool):
    """The service's default executor: warm, hardened sandbox containers (see DockerBackend)."""

    def __init__(
        self,
        image: str = "sctir-sandbox:latest",
        size: int = 2,
        concurrency: int = 4,
        timeout_s: float = 5.0,
        max_output_bytes: int = 64 * 1024,
        limits: DockerLimits | None = None,
        pool_name: str = "sctir",
        environment: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
        answer_grace_s: float = 10.0,
        runner_args: list[str] | None = None,
        max_containers: int | None = None,
        confine: bool = True,
        health_timeout_s: float = 2.0,
    ) -> None:
        backend = DockerBackend(
            image=image,
            pool_name=pool_name,
            limits=limits,
            environment=environment,
            runner_args=runner_args,
            confine=confine,
        )
        super().__init__(
            backend,
            size=size,
            concurrency=concurrency,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            start_timeout_s=start_timeout_s,
            answer_grace_s=answer_grace_s,
            name=f"{pool_name}",
            isolate_tenants=True,
            max_slots=max_containers,
            health_timeout_s=health_timeout_s,
        )
