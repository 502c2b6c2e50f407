"""The hub's processes: the zygote's lifecycle, spawning spares, reaping, killing strays, health checks.

`Supervisor` is the layer of the hub above the loop (hub.py: Hub < Runs < Supervisor < Loop). The
layers above provide `_adopt` (a new spare announced itself), `_queued` and `_running` (the
demand for spares) and `_on_proc_exit` (a process of an execution ended).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time

from .hardening import PR_SET_CHILD_SUBREAPER, harden_self, prctl
from .health import Health
from .loop import Loop, log
from .records import Proc
from .wire import PROTOCOL_VERSION

RUNNER_DIR = os.path.dirname(os.path.abspath(__file__))  # the program: the zygote is this, with --zygote


def _processes():
    """(pid, ppid, sid, state) of every process in sight, from /proc/PID/stat."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:  # os.open, not open(): 3 system calls instead of 7
            fd = os.open(f"/proc/{entry}/stat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                fields = os.read(fd, 4096).rsplit(b")", 1)[1].split()
            finally:
                os.close(fd)
        except (OSError, IndexError):
            continue
        yield int(entry), int(fields[1]), int(fields[3]), fields[0]


class Supervisor(Loop):
    def __init__(self, opts) -> None:
        super().__init__()
        self.opts = opts
        self.procs: dict[int, Proc] = {}
        self.spares: list[Proc] = []
        self.zygote_pid: int | None = None
        self.zygote_sock: socket.socket | None = None
        self.zygote_ready = False
        self.zygote_restarts = -1
        self.zygote_info: dict = {}
        self.spawning = 0  # spawns asked of the zygote that it has not reported as forked (or failed)
        self.forked: set[int] = set()  # spares forked by the zygote that have not announced themselves
        self.spawn_backoff = 0.0
        self.spawn_timer: list | None = None
        self.quiet_until = 0.0  # no spawning before this (a result was just sent)
        self.hello_sent = False
        self.dead_groups: dict[int, int] = {}  # pgid -> sweeps left
        self.sweep_timer: list | None = None
        self.workroot = opts.workroot or tempfile.mkdtemp(prefix="sctir-runner-")
        os.makedirs(self.workroot, mode=0o700, exist_ok=True)
        self.opts.workroot = self.workroot
        self.health = Health(self.workroot)
        self.unhealthy: str | None = None

    # -- hooks of the layers above -------------------------------------------------

    def _adopt(self, proc: Proc) -> None:
        raise NotImplementedError

    def _queued(self) -> int:
        """How many requests wait for a spare."""
        raise NotImplementedError

    def _running(self) -> bool:
        """Whether any execution is running."""
        raise NotImplementedError

    def _on_proc_exit(self, proc: Proc, status: int) -> None:
        raise NotImplementedError

    # -- starting, reaping, sweeping -----------------------------------------------

    def _start(self) -> None:
        if not self.is_init:
            prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of executions come to us, to be killed
        harden_self()
        self._start_zygote()

    def _on_signal(self) -> None:
        self._reap()

    def _kill_proc(self, proc: Proc) -> None:
        if proc.status is not None:
            return
        for kill in (os.killpg, os.kill):
            try:
                kill(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._close_fd(proc.job_w)
        proc.job_w = -1

    def _reap(self, sweep: bool = True) -> None:
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            reaped = True
            if pid == self.zygote_pid:
                self._on_zygote_exit(status)
                continue
            proc = self.procs.pop(pid, None)
            if proc is not None:
                self._on_proc_exit(proc, status)
        if reaped and sweep:
            self._sweep()

    def _strays(self) -> set[int]:
        """Processes that belong to no live execution, to be killed.

        Known are: the hub, the zygote, the spares it reported forking, and the processes of
        the sessions (sid) of live executions. On a host (a subreaper) the unknown children of
        the hub and of the zygote are strays; in a container (PID 1, everything in sight is
        ours) every unknown process is: a fork bomb's children that left their group with
        setsid, and a child a block made with clone(CLONE_PARENT), which the zygote's parent
        pid does not make a spare. While a fork's report is on its way (`spawning`), unknown
        children of the zygote are left for the next sweep.
        """
        known = {self.pid, self.zygote_pid, *self.procs, *self.forked}
        zygote_children_pending = self.spawning > 0
        if not self.is_init:
            children: set[int] = set()
            for parent in (self.pid, self.zygote_pid):
                if parent is None:
                    continue
                try:
                    with open(f"/proc/{parent}/task/{parent}/children") as file:
                        found = {int(pid) for pid in file.read().split()}
                except (OSError, ValueError):
                    continue
                if parent != self.zygote_pid or not zygote_children_pending:
                    children |= found
            return children - known
        strays = set()
        for pid, ppid, sid, state in _processes():
            if pid in known or state == b"Z" or sid in self.procs:
                continue  # ours, a zombie (reaped by its parent), or a live execution's
            if ppid == self.zygote_pid and zygote_children_pending:
                continue
            strays.add(pid)
        return strays

    def _kill_leftovers(self, proc: Proc) -> None:
        """After a session's block: kill every process of its session but the session itself."""
        for pid, _, sid, _ in _processes():
            if sid == proc.pid and pid != proc.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _sweep(self) -> None:
        """Kill the groups of ended executions and every stray process until none is left."""
        self.cancel_timer(self.sweep_timer)
        self.sweep_timer = None
        for pgid in list(self.dead_groups):
            try:
                os.killpg(pgid, signal.SIGKILL)
                self.dead_groups[pgid] -= 1
                if self.dead_groups[pgid] <= 0:
                    del self.dead_groups[pgid]
            except (ProcessLookupError, PermissionError):
                del self.dead_groups[pgid]
        found = self.spawning > 0  # a fork not yet reported: look again soon
        for _ in range(20):  # kill all that is there in one go, again while something keeps forking
            strays = self._strays()
            if not strays:
                break
            found = True
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self._reap(sweep=False)
        if self.dead_groups or found:
            self.sweep_timer = self.add_timer(0.05, self._sweep_and_reap)

    def _sweep_and_reap(self) -> None:
        self.sweep_timer = None
        self._reap()
        self._sweep()

    # -- the zygote and spares --------------------------------------------------

    def _start_zygote(self) -> None:
        self.zygote_restarts += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        import subprocess

        flags = subprocess._args_from_interpreter_flags()
        argv = [sys.executable, *flags, RUNNER_DIR, "--zygote", "--hub-pid", str(self.pid)]
        argv += ["--workroot", self.workroot, "--preload", self.opts.preload]
        argv += ["--warmup"] if self.opts.warmup else ["--no-warmup"]
        argv += ["--confine"] if self.opts.confine else []
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
        ]
        try:
            self.zygote_pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions)
        except OSError as error:
            theirs.close()
            ours.close()
            log(f"cannot start the zygote: {error}")
            self.add_timer(1.0, self._start_zygote)
            return
        theirs.close()
        ours.setblocking(False)
        self.zygote_sock = ours
        self.zygote_ready = False
        self.spawning = 0
        self.sel.register(ours, selectors.EVENT_READ, self._on_zygote_message)

    def _on_zygote_message(self) -> bool:
        """Handle one message of the zygote; False when none was waiting."""
        sock = self.zygote_sock
        if sock is None:
            return False
        try:
            data, fds, _, _ = socket.recv_fds(sock, 4096, 4)  # a non-blocking socket
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data, fds = b"", []
        if not data:
            self._drop_zygote()
            return False
        message = json.loads(data)
        if "ready" in message:
            self._on_zygote_ready(message)
            return True
        if "forked" in message:
            self.spawning = max(0, self.spawning - 1)
            if message["forked"] not in self.procs:  # the spare's own announcement may come first
                self.forked.add(message["forked"])
            return True
        if "exit" in message:
            proc = self.procs.pop(message["exit"], None)
            if proc is not None:
                self._on_proc_exit(proc, message["status"])
                self._sweep()
            elif message["exit"] in self.forked:  # a spare that died before announcing itself
                self.forked.discard(message["exit"])
                self._spawn_failed(f"a new spare exited ({message['status']})", counted=True)
            return True
        name = str(message.get("dir", ""))
        if "pid" in message and len(fds) == 4 and len(name) == 24 and name.isalnum():
            self.forked.discard(message["pid"])
            for fd in fds:
                os.set_blocking(fd, False)
            proc = Proc(message["pid"], fds, os.path.join(self.workroot, name))
            self.procs[proc.pid] = proc
            self.spawn_backoff = 0.0
            self._adopt(proc)
        else:
            for fd in fds:
                os.close(fd)
            self._spawn_failed(message.get("error"))
        return True

    def _spawn_failed(self, error: object, counted: bool = False) -> None:
        """A spawn failed: back off. `counted`: it was forked (and so already taken off `spawning`)."""
        if not counted:
            self.spawning = max(0, self.spawning - 1)
        self.spawn_backoff = min(1.0, max(0.02, self.spawn_backoff * 2))
        log(f"spawn failed: {error}; retrying in {self.spawn_backoff:.2f} s")
        if self.spawn_timer is None:
            self.spawn_timer = self.add_timer(self.spawn_backoff, self._spawn_retry)

    def _spawn_retry(self) -> None:
        self.spawn_timer = None
        self._replenish()

    def _on_zygote_ready(self, message: dict) -> None:
        if not message.get("ready"):
            error = message.get("error", "the zygote failed")
            log(f"not ready: {error}")
            if not self.hello_sent:
                self.send({"type": "hello", "ready": False, "error": error, "protocol": PROTOCOL_VERSION})
                self.hello_sent = True
            self.stopping = True
            return
        self.zygote_ready = True
        self.zygote_info = message
        self._replenish()
        if not self.hello_sent:
            self.hello_sent = True
            self.send(
                {
                    "type": "hello",
                    "ready": True,
                    "protocol": PROTOCOL_VERSION,
                    "pid": self.pid,
                    "python": sys.version.split()[0],
                    "spares": self.opts.spares,
                    **{k: v for k, v in message.items() if k != "ready"},
                }
            )

    def _drop_zygote(self) -> None:
        if self.zygote_sock is not None:
            try:
                self.sel.unregister(self.zygote_sock)
            except (KeyError, ValueError):
                pass
            self.zygote_sock.close()
            self.zygote_sock = None
        self.zygote_ready = False
        self.spawning = 0
        self.forked.clear()  # its unannounced spares cannot announce any more: they exit, strays to us

    def _on_zygote_exit(self, status: int) -> None:
        self.zygote_pid = None
        while self._on_zygote_message():
            pass  # the exits it reported before dying
        self._drop_zygote()
        # Its children are ours now (we are PID 1 or their subreaper) and we reap them; one it
        # reaped without telling us is gone: account for it as killed.
        for proc in list(self.procs.values()):
            try:
                os.kill(proc.pid, 0)
            except ProcessLookupError:
                del self.procs[proc.pid]
                self._on_proc_exit(proc, signal.SIGKILL)
            except PermissionError:
                pass
        if self.stopping:
            return
        if not self.hello_sent:  # it never became ready
            self.send(
                {
                    "type": "hello",
                    "ready": False,
                    "protocol": PROTOCOL_VERSION,
                    "error": f"the zygote exited ({status})",
                }
            )
            self.hello_sent = True
            self.stopping = True
            return
        log("the zygote died; starting a new one")
        self.add_timer(0.05 if self.zygote_restarts < 3 else 0.5, self._start_zygote)

    def _replenish(self) -> None:
        """Ask the zygote for spares: at once when demand needs them, otherwise when it disturbs least.

        A fork of the zygote slows down the blocks running beside it by milliseconds (measured:
        1.3 ms -> 6 ms for a trivial block on 2 cores) and, in a container, the delivery of a
        result just sent (+2-5 ms). So: with no spare left (or requests waiting), fork all that is
        missing now; at or below half the target, fork one at a time; above it, fork only when no
        block runs and `linger` seconds after the last result.
        """
        if self.stopping or not self.zygote_ready or self.zygote_sock is None or self.spawn_timer is not None:
            return
        queued = self._queued()
        want = self.opts.spares + queued - len(self.spares) - self.spawning - len(self.forked)
        if want <= 0:
            return
        if self.spares and not queued:
            if len(self.spares) <= self.opts.spares // 2:
                want = 1 if self.spawning == 0 and not self.forked else 0  # trickle
            elif self._running():
                return  # made when the running blocks are done
            else:
                wait = self.quiet_until - time.monotonic()
                if wait > 0:  # a result was just sent: let it be delivered first
                    self.spawn_timer = self.add_timer(wait, self._spawn_retry)
                    return
        for _ in range(want):
            try:
                self.zygote_sock.send(b"spawn")
            except OSError:
                return
            self.spawning += 1

    # -- the container's health --------------------------------------------------

    def _check_health(self) -> None:
        """After each result: repair what a block broke, or tell the host that this runner is unfit."""
        live = {p.workdir for p in self.procs.values() if p.run is None or p.run.final is None}
        problem = self.health.check(live, purge=self.opts.purge_tmp)
        if problem is not None and problem != self.unhealthy:
            log(f"unhealthy: {problem}")
            self.send({"type": "unhealthy", "reason": problem})
        self.unhealthy = problem

    # -- stopping ------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self.zygote_pid is not None:
            try:
                os.kill(self.zygote_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in list(self.procs.values()):
            self._kill_proc(proc)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            self._reap()
            if not self.procs:
                break
            time.sleep(0.01)
        self._flush_blocking()
        shutil.rmtree(self.workroot, ignore_errors=True)
